package leases

import "testing"

// TestFilterMatches: a lease matches when it has every field the filter
// sets, its lineage included; Before and Limit play no part.
func TestFilterMatches(t *testing.T) {
	l := &Lease{AgentID: "a/one", Role: "r", Backend: "tokens", State: StateActive,
		Lineage: Lineage{Issuer: "https://iss", JTI: "j1", PodUID: "pod-x"}}
	for _, tc := range []struct {
		name string
		f    Filter
		want bool
	}{
		{"empty filter", Filter{}, true},
		{"every field", Filter{AgentID: "a/one", Role: "r", Backend: "tokens", State: StateActive, Lineage: "pod:pod-x"}, true},
		{"jti lineage", Filter{Lineage: "jti:https://iss#j1"}, true},
		{"cursor and limit ignored", Filter{Before: "0", Limit: 1}, true},
		{"other agent", Filter{AgentID: "a/two"}, false},
		{"agent differing in case", Filter{AgentID: "A/one"}, false},
		{"other role", Filter{Role: "q"}, false},
		{"other backend", Filter{Backend: "vault"}, false},
		{"other state", Filter{State: StatePending}, false},
		{"other pod", Filter{Lineage: "pod:pod-y"}, false},
		{"lineage of another kind with the same value", Filter{Lineage: "run:https://iss#j1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f.Matches(l); got != tc.want {
				t.Fatalf("%+v.Matches = %v, want %v", tc.f, got, tc.want)
			}
		})
	}
}
