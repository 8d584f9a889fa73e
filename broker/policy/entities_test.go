package policy

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go/types"
)

func TestClaimValue(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want types.Value // nil: dropped
	}{
		{"string", "x", types.String("x")},
		{"bool", true, types.Boolean(true)},
		{"integral float", float64(42), types.Long(42)},
		{"negative zero", math.Copysign(0, -1), types.Long(0)},
		{"fraction", 0.25, types.String("0.25")},
		{"min int64", float64(math.MinInt64), types.Long(math.MinInt64)},
		{"2^63 is out of range", math.Pow(2, 63), types.String("9223372036854776000")}, // shortest decimal that reads back as the same float
		{"NaN", math.NaN(), types.String("NaN")},
		{"json.Number int", json.Number("12"), types.Long(12)},
		{"json.Number exponent", json.Number("1e3"), types.Long(1000)},
		{"json.Number fraction", json.Number("1.5"), types.String("1.5")},
		{"json.Number huge", json.Number("1e400"), types.String("1e400")},
		{"int", 7, types.Long(7)},
		{"uint64 over int64", uint64(math.MaxUint64), types.String("18446744073709551615")},
		{"array", []any{"a", nil, float64(1)}, types.NewSet(types.String("a"), types.Long(1))},
		{"string slice", []string{"a", "b"}, types.NewSet(types.String("a"), types.String("b"))},
		{"object", map[string]any{"k": "v", "n": nil}, types.NewRecord(types.RecordMap{"k": types.String("v")})},
		{"null", nil, nil},
		{"unsupported type", make(chan int), nil},
		{"unsupported map", map[any]any{"k": "v"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := claimValue(tt.in, 1)
			if tt.want == nil {
				if ok {
					t.Errorf("claimValue(%v) = %v, want it dropped", tt.in, got)
				}
				return
			}
			if !ok || !got.Equal(tt.want) {
				t.Errorf("claimValue(%v) = %v, %v; want %v", tt.in, got, ok, tt.want)
			}
		})
	}
}

// nested returns {"a": {"a": ... {"a": leaf}}} with levels objects.
func nested(levels int, leaf any) map[string]any {
	m := map[string]any{"a": leaf}
	for range levels - 1 {
		m = map[string]any{"a": m}
	}
	return m
}

func TestClaimsDepthIsBounded(t *testing.T) {
	// A self-referencing map cannot come from JSON, but must not hang.
	loop := map[string]any{}
	loop["self"] = loop
	loop["list"] = []any{loop}
	claimsRecord(loop)

	// Count the levels of the converted record.
	depth := func(r types.Record) int {
		d := 1
		for {
			v, ok := r.Get("a")
			if !ok {
				return d
			}
			if r, ok = v.(types.Record); !ok {
				return d
			}
			d++
		}
	}
	if got := depth(claimsRecord(nested(1000, "leaf"))); got != maxClaimDepth {
		t.Errorf("a 1000-level claim converted to %d levels, want %d", got, maxClaimDepth)
	}

	// Through a policy: principal.claims is level 1, so principal.claims.a
	// is level 2 and the 16th level is principal.claims followed by 15 a's.
	req := baseRequest()
	req.Principal.Claims = nested(100, "leaf")
	path := func(n int) string { return "principal.claims" + strings.Repeat(".a", n) }
	set := mustLoad(t, map[string]string{"a.cedar": `
		@id("level-16-exists") permit(principal, action, resource) when { ` + path(14) + ` has a };
		@id("level-17-dropped") forbid(principal, action, resource) when { ` + path(15) + ` has a };`})
	dec, err := set.Authorize(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !dec.Allowed || len(dec.PolicyIDs) != 1 || dec.PolicyIDs[0] != "level-16-exists" || len(dec.Errors) != 0 {
		t.Errorf("decision = %+v, want allowed by level-16-exists alone", dec)
	}
}
