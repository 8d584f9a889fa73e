package detectors

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
)

// renewEvery renews lease L of agent a (ttl 15m) every step±jitter for d.
func (h *harness) renewEvery(rng *rand.Rand, step, jitter, d time.Duration) {
	expires := h.clock.Now().Add(15 * time.Minute)
	for end := h.clock.Now().Add(d); h.clock.Now().Before(end); {
		wait := step
		if jitter > 0 {
			wait += time.Duration(rng.Int64N(int64(2*jitter))) - jitter
		}
		h.clock.Advance(wait)
		next := h.clock.Now().Add(15 * time.Minute)
		h.observe(broker.Observation{Kind: broker.ObserveRenew, AgentID: "a", Role: "r", LeaseID: "L", RenewedFrom: expires, ExpiresAt: next})
		expires = next
	}
}

// TestRenewalHold: renewals that top a lease up again and again for more
// than hold fire once; renewals near the end of the lease's time, or a
// run broken by one, stay quiet.
func TestRenewalHold(t *testing.T) {
	on := func(c *Config) { c.RenewalHold.Enabled = true }
	runCases(t, on, agents.Subject{Kind: agents.SubjectLease, ID: "L"}, agents.SeverityLow, []detectorCase{
		{
			name:  "topped up every 5 minutes for two hours",
			run:   func(h *harness, rng *rand.Rand) { h.renewEvery(rng, 5*time.Minute, 0, 2*time.Hour) },
			count: 1, reason: []string{"lease L of agent a (role r) has been kept at its maximum by 14 renewals for 1h5m0s (hold 1h0m0s)"},
			evidence: map[string]string{"held_since": at(start.Add(5 * time.Minute)), "held": "1h5m0s", "top_ups": "14", "hold": "1h0m0s"},
		},
		{
			name: "renewed near its end for hours",
			run:  func(h *harness, rng *rand.Rand) { h.renewEvery(rng, 11*time.Minute, time.Minute, 5*time.Hour) },
		},
		{
			name: "topped up for less than hold",
			run:  func(h *harness, rng *rand.Rand) { h.renewEvery(rng, 5*time.Minute, time.Minute, 55*time.Minute) },
		},
		{
			name: "a run broken by a late renewal",
			run: func(h *harness, rng *rand.Rand) {
				h.renewEvery(rng, 5*time.Minute, 0, 50*time.Minute)
				h.renewEvery(rng, 12*time.Minute, 0, 12*time.Minute)
				h.renewEvery(rng, 5*time.Minute, 0, 50*time.Minute)
			},
		},
		{
			name:  "hold 0: the second top-up in a row",
			edit:  func(c *Config) { c.RenewalHold.Hold = 0 },
			run:   func(h *harness, rng *rand.Rand) { h.renewEvery(rng, 5*time.Minute, 0, 15*time.Minute) },
			count: 1, evidence: map[string]string{"top_ups": "2", "held": "5m0s"},
		},
		{
			name:  "once per run, even without a cooldown",
			edit:  func(c *Config) { c.RenewalHold.Cooldown = 0 },
			run:   func(h *harness, rng *rand.Rand) { h.renewEvery(rng, 5*time.Minute, 0, 3*time.Hour) },
			count: 1,
		},
	})
}
