package detectors

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
)

// steady has the agent mint perMinute±2 times each minute (seeded) for d,
// spread over the minute, and leaves the clock at the end.
func (h *harness) steady(agentID string, perMinute int, d time.Duration, rng *rand.Rand) {
	for end := h.clock.Now().Add(d); h.clock.Now().Before(end); {
		n := perMinute
		if perMinute > 2 {
			n += rng.IntN(5) - 2
		}
		step := time.Minute / time.Duration(n+1)
		for range n {
			h.clock.Advance(step)
			h.observe(mint(agentID, "r"))
		}
		h.clock.Advance(time.Minute - step*time.Duration(n))
	}
}

// burst has the agent mint n times within the next second.
func (h *harness) burst(agentID string, n int) {
	for range n {
		h.clock.Advance(time.Second / time.Duration(n+1))
		h.observe(mint(agentID, "r"))
	}
}

// TestMintRate: an agent minting at its usual rate stays quiet; far
// above its baseline (once watched long enough, and over min_mints), or
// over the ceiling, fires once per window.
func TestMintRate(t *testing.T) {
	on := func(c *Config) { c.MintRate.Enabled = true }
	runCases(t, on, agent("a"), agents.SeverityMedium, []detectorCase{
		{
			name: "steady rate",
			run:  func(h *harness, rng *rand.Rand) { h.steady("a", 5, 3*time.Hour, rng) },
		},
		{
			name: "steady high rate below the ceiling",
			run:  func(h *harness, rng *rand.Rand) { h.steady("a", 400, 90*time.Minute, rng) },
		},
		{
			name: "burst far above the baseline",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 5, 2*time.Hour, rng)
				h.burst("a", 100)
			},
			count: 1, reason: []string{"credentials in the 1m0s window from " + at(start.Add(2*time.Hour)), "more than 10 times its baseline of"},
			evidence: map[string]string{"factor": "10", "min_mints": "30", "ceiling": "600", "window": "1m0s", "window_start": at(start.Add(2 * time.Hour))},
		},
		{
			name: "burst while the agent is learnt",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 5, 30*time.Minute, rng)
				h.burst("a", 100)
			},
		},
		{
			name: "burst under min_mints",
			run: func(h *harness, _ *rand.Rand) {
				for range 12 { // one mint every ten minutes: a baseline of 0.1
					h.observe(mint("a", "r"))
					h.clock.Advance(10 * time.Minute)
				}
				h.burst("a", 29)
			},
		},
		{
			name:  "over the ceiling from the first minute",
			run:   func(h *harness, _ *rand.Rand) { h.burst("a", 700) },
			count: 1, reason: []string{"601 credentials", "over the ceiling of 600"}, evidence: map[string]string{"mints": "601", "baseline": "0.00"},
		},
		{
			name: "idle hours lower the baseline",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 100, 2*time.Hour, rng)
				h.clock.Advance(12 * time.Hour)
				h.burst("a", 100)
			},
			count: 1, reason: []string{"more than 10 times"},
		},
		{
			name: "a high rate stays quiet against a high baseline",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 100, 2*time.Hour, rng)
				h.burst("a", 150)
			},
		},
		{
			name: "agents have their own baselines",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("busy", 200, 2*time.Hour, rng)
				h.steady("quiet", 2, 2*time.Hour, rng)
				h.burst("busy", 100)
				h.burst("quiet", 100)
			},
			count: 1, subject: agent("quiet"), reason: []string{"agent quiet minted"},
		},
		{
			name: "once per window, then the cooldown",
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 5, 2*time.Hour, rng)
				h.steady("a", 200, 5*time.Minute, rng)
			},
			count: 1, reason: []string{"more than 10 times"},
		},
		{
			name: "without a cooldown, once per window",
			edit: func(c *Config) { c.MintRate.Cooldown = 0 },
			run: func(h *harness, rng *rand.Rand) {
				h.steady("a", 5, 2*time.Hour, rng)
				h.steady("a", 200, 3*time.Minute, rng)
			},
			count: 3, reason: []string{"more than 10 times"},
		},
	})
}

// TestMintRateBaseline: the baseline is the mean count per window, idle
// windows included, and fires exactly past Factor × baseline.
func TestMintRateBaseline(t *testing.T) {
	h := newHarness(t, func(cfg *Config) { cfg.MintRate.Enabled = true; cfg.MintRate.MinMints = 0 }, Deps{})
	// Exactly 4 mints a minute for two hours: the baseline is 4.
	for range 120 {
		for range 4 {
			h.observe(mint("a", "r"))
			h.clock.Advance(10 * time.Second)
		}
		h.clock.Advance(20 * time.Second)
	}
	for range 40 { // 40 is not more than 10 × 4
		h.observe(mint("a", "r"))
	}
	h.quiet()
	h.observe(mint("a", "r"))
	d := h.only()
	if d.Evidence["mints"] != "41" || d.Evidence["baseline"] != "4.00" {
		t.Fatalf("evidence %v, want 41 mints over a baseline of 4.00", d.Evidence)
	}
}

// TestMintRateIgnoresOtherObservations: only mints count.
func TestMintRateIgnoresOtherObservations(t *testing.T) {
	h := newHarness(t, func(cfg *Config) { cfg.MintRate.Enabled = true; cfg.MintRate.Ceiling = 1 }, Deps{})
	for _, k := range []string{broker.ObserveDenied, broker.ObserveRenew, broker.ObserveReplay} {
		h.observe(broker.Observation{Kind: k, AgentID: "a"})
		h.observe(broker.Observation{Kind: k, AgentID: "a"})
	}
	h.quiet()
}
