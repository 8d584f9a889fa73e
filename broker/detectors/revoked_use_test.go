package detectors

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
)

// usedAfter introspects the token of lease (ended as state at start of
// the test) after d more.
func (h *harness) usedAfter(d time.Duration, lease string, state leases.State) {
	h.clock.Advance(d)
	h.observe(broker.Observation{Kind: broker.ObserveEndedUse, AgentID: "a", Role: "tok", LeaseID: lease, LeaseState: state, EndedAt: start})
}

// TestRevokedUse: introspecting the token of a lease revoked or released
// past the grace fires; within the grace it does not, and an agent is
// signalled once per cooldown.
func TestRevokedUse(t *testing.T) {
	on := func(c *Config) { c.RevokedUse.Enabled = true }
	runCases(t, on, agent("a"), agents.SeverityMedium, []detectorCase{
		{
			name:  "a revoked token used two minutes later",
			run:   func(h *harness, _ *rand.Rand) { h.usedAfter(2*time.Minute, "L1", leases.StateRevoked) },
			count: 1, reason: []string{"introspected the token of lease L1 of agent a (role tok), revoked 2m0s ago"},
			evidence: map[string]string{"lease_id": "L1", "lease_state": "revoked", "ended_at": at(start), "since_end": "2m0s", "grace": "1m0s", "role": "tok"},
		},
		{
			name: "a released token used within the grace",
			run: func(h *harness, _ *rand.Rand) {
				h.usedAfter(59*time.Second, "L1", leases.StateReleased)
				h.usedAfter(time.Second, "L1", leases.StateReleased)
			},
		},
		{
			name:  "a released token used past the grace",
			run:   func(h *harness, _ *rand.Rand) { h.usedAfter(61*time.Second, "L1", leases.StateReleased) },
			count: 1, evidence: map[string]string{"lease_state": "released"},
		},
		{
			name: "no grace",
			edit: func(c *Config) { c.RevokedUse.Grace = 0 },
			run: func(h *harness, _ *rand.Rand) {
				h.usedAfter(0, "L1", leases.StateRevoked)
				h.usedAfter(time.Second, "L1", leases.StateRevoked)
			},
			count: 1, evidence: map[string]string{"since_end": "1s"},
		},
		{
			name: "many uses of an agent's tokens within the cooldown",
			run: func(h *harness, _ *rand.Rand) {
				for i := range 10 {
					h.usedAfter(time.Minute, "L"+itoa(i%3), leases.StateRevoked)
				}
				h.usedAfter(15*time.Minute, "L1", leases.StateRevoked)
			},
			count: 2,
		},
		{
			name: "other observations",
			run: func(h *harness, _ *rand.Rand) {
				h.observe(mint("a", "tok"))
				h.observe(denied("a"))
			},
		},
	})
}
