package broker_test

import (
	"testing"

	"github.com/valet-broker/valet/broker"
)

// The reason of a decision says what decided it, naming the policies that
// failed to evaluate when they did.
func TestDecisionReason(t *testing.T) {
	tests := []struct {
		name string
		dec  broker.Decision
		want string
	}{
		{"allowed", broker.Decision{Allowed: true, PolicyIDs: []string{"p"}}, "permitted by policy"},
		{
			"allowed while a permit failed to evaluate",
			broker.Decision{Allowed: true, PolicyIDs: []string{"p"}, Errors: []broker.PolicyError{{PolicyID: "q"}}},
			"permitted by policy",
		},
		{"forbidden", broker.Decision{PolicyIDs: []string{"f"}}, "forbidden by policy"},
		{"default deny", broker.Decision{}, "no policy permits this request (deny by default)"},
		{
			"default deny after a permit failed to evaluate",
			broker.Decision{Errors: []broker.PolicyError{{PolicyID: "p", Message: "no attribute"}}},
			"no policy permits this request (deny by default; policy evaluation error in p)",
		},
		{
			"fail closed on one forbid",
			broker.Decision{FailedClosed: true, PolicyIDs: []string{"f"}, Errors: []broker.PolicyError{{PolicyID: "f", Forbid: true}}},
			"policy evaluation error in forbid policy f (fail closed)",
		},
		{
			"fail closed on two forbids",
			broker.Decision{FailedClosed: true, PolicyIDs: []string{"f", "g"},
				Errors: []broker.PolicyError{{PolicyID: "f", Forbid: true}, {PolicyID: "g", Forbid: true}}},
			"policy evaluation error in forbid policies f, g (fail closed)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.dec.Reason(); got != tt.want {
				t.Errorf("Reason() = %q, want %q", got, tt.want)
			}
		})
	}
}
