package claimpath

import (
	"reflect"
	"testing"
)

func TestLookup(t *testing.T) {
	m := map[string]any{
		"sub":           "a",
		"kubernetes.io": map[string]any{"namespace": "agents", "pod": map[string]any{"uid": "u-1"}},
		"realm_access":  map[string]any{"roles": []any{"approvers"}},
		"a.b":           "top-level name with a dot",
		"a":             map[string]any{"b": "nested"},
	}
	cases := []struct {
		name, path string
		want       any
		ok         bool
	}{
		{"top level", "sub", "a", true},
		{"nested", "realm_access.roles", []any{"approvers"}, true},
		{"a name with dots, then nested", "kubernetes.io.pod.uid", "u-1", true},
		{"a whole name with a dot wins over the path", "a.b", "top-level name with a dot", true},
		{"absent", "email", nil, false},
		{"into a scalar", "sub.x", nil, false},
		{"empty path", "", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Lookup(m, c.path)
			if ok != c.ok || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("Lookup(%q) = %v, %v; want %v, %v", c.path, got, ok, c.want, c.ok)
			}
		})
	}
}
