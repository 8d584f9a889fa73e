package detectors

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
)

func denied(agentID string) broker.Observation {
	return broker.Observation{Kind: broker.ObserveDenied, AgentID: agentID, Role: "admin", Reason: "policy forbids: no admin\nfor agents"}
}

// deniedEvery has agent a denied n times, step apart.
func (h *harness) deniedEvery(n int, step time.Duration) {
	for range n {
		h.clock.Advance(step)
		h.observe(denied("a"))
	}
}

// TestDenialBurst: a burst of denials of one agent within the window
// fires, also across a window boundary; a steady trickle, or denials
// spread over agents, stays quiet.
func TestDenialBurst(t *testing.T) {
	on := func(c *Config) { c.DenialBurst.Enabled = true }
	runCases(t, on, agent("a"), agents.SeverityMedium, []detectorCase{
		{
			name:  "ten denials in half a minute",
			run:   func(h *harness, _ *rand.Rand) { h.deniedEvery(10, 3*time.Second) },
			count: 1, reason: []string{"agent a was denied 10 requests within 1m0s"},
			evidence: map[string]string{"denials": "10", "threshold": "10", "window": "1m0s",
				"last_reason": "policy forbids: no admin for agents", "last_role": "admin"},
		},
		{
			name: "nine denials in a minute",
			run:  func(h *harness, _ *rand.Rand) { h.deniedEvery(9, 6*time.Second) },
		},
		{
			name: "a steady trickle",
			run: func(h *harness, rng *rand.Rand) {
				for range 360 { // one every 10±3 s for an hour
					h.deniedEvery(1, time.Duration(7+rng.IntN(7))*time.Second)
				}
			},
		},
		{
			// Six in each of two windows: counted per fixed window, never
			// ten.
			name: "a burst across a window boundary",
			run: func(h *harness, _ *rand.Rand) {
				h.clock.Advance(56500 * time.Millisecond)
				h.deniedEvery(12, 500*time.Millisecond) // :57 to :59.5, then 1:00 to 1:02.5
			},
			count: 1, evidence: map[string]string{"denials": "11"}, // at 1:02, of the previous window's share 5.8
		},
		{
			name: "denials spread over agents",
			run: func(h *harness, _ *rand.Rand) {
				for i := range 27 {
					h.clock.Advance(time.Second)
					h.observe(denied(string(rune('a' + i%3))))
				}
			},
		},
		{
			name:  "a long burst within the cooldown",
			run:   func(h *harness, _ *rand.Rand) { h.deniedEvery(300, time.Second) },
			count: 1,
		},
		{
			name:  "without a cooldown",
			edit:  func(c *Config) { c.DenialBurst.Cooldown = 0 },
			run:   func(h *harness, _ *rand.Rand) { h.deniedEvery(12, time.Second) },
			count: 3,
		},
		{
			name: "mints are not denials",
			run: func(h *harness, _ *rand.Rand) {
				for range 20 {
					h.observe(mint("a", "admin"))
				}
			},
		},
	})
}
