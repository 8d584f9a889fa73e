package detectors

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
)

// from is a request of agent a from ip, its lease living 15m from now.
func (h *harness) from(kind, ip string) {
	h.observe(broker.Observation{Kind: kind, AgentID: "a", Role: "r", LeaseID: "L", SourceIP: ip, ExpiresAt: h.clock.Now().Add(15 * time.Minute)})
}

// TestNewNetwork: an agent holding a live lease that asks from a network
// it never used fires; addresses within its networks, or a move while it
// holds nothing live, stay quiet.
func TestNewNetwork(t *testing.T) {
	on := func(c *Config) { c.NewNetwork.Enabled = true }
	mintFrom := func(ips ...string) func(h *harness, _ *rand.Rand) {
		return func(h *harness, _ *rand.Rand) {
			for _, ip := range ips {
				h.from(broker.ObserveMint, ip)
			}
		}
	}
	runCases(t, on, agent("a"), agents.SeverityMedium, []detectorCase{
		{
			name: "addresses within one /24",
			run: func(h *harness, rng *rand.Rand) {
				for range 200 {
					h.from(broker.ObserveMint, fmt.Sprintf("10.1.2.%d", rng.IntN(256)))
					h.clock.Advance(time.Minute)
				}
			},
		},
		{
			name: "a new /24 while a lease is live",
			run: func(h *harness, _ *rand.Rand) {
				h.from(broker.ObserveMint, "10.1.2.3")
				h.clock.Advance(5 * time.Minute)
				h.from(broker.ObserveMint, "10.1.3.3")
			},
			count: 1, reason: []string{"agent a asked to mint from network 10.1.3.0/24, new to it, while it holds live leases"},
			evidence: map[string]string{"network": "10.1.3.0/24", "source_ip": "10.1.3.3", "known_networks": "1", "request": "mint",
				"live_until": at(start.Add(20 * time.Minute))},
		},
		{
			name: "a new /24 after every lease expired",
			run: func(h *harness, _ *rand.Rand) {
				h.from(broker.ObserveMint, "10.1.2.3")
				h.clock.Advance(15 * time.Minute)
				h.from(broker.ObserveMint, "10.1.3.3")
			},
		},
		{
			name: "a renewal from a new network",
			run: func(h *harness, _ *rand.Rand) {
				h.from(broker.ObserveMint, "10.1.2.3")
				h.clock.Advance(10 * time.Minute)
				h.from(broker.ObserveRenew, "192.0.2.44")
			},
			count: 1, evidence: map[string]string{"request": "renew", "network": "192.0.2.0/24"},
		},
		{
			name: "IPv6 within one /64, and the IPv4-mapped form of a known address",
			// The third is new, and fires.
			run:   mintFrom("2001:db8:1:2::10", "2001:db8:1:2:ffff::1", "10.9.9.9", "::ffff:10.9.9.200"),
			count: 1, evidence: map[string]string{"network": "10.9.9.0/24"},
		},
		{
			name:  "a new IPv6 /64",
			run:   mintFrom("2001:db8:1:2::10", "2001:db8:1:3::10"),
			count: 1, evidence: map[string]string{"network": "2001:db8:1:3::/64"},
		},
		{
			name: "a prefix length of 0 makes one network",
			edit: func(c *Config) { c.NewNetwork.IPv4Prefix = 0 },
			run:  mintFrom("10.1.2.3", "192.0.2.1"),
		},
		{
			name:  "a forgotten network is new again",
			edit:  func(c *Config) { c.NewNetwork.MaxNetworks, c.NewNetwork.Cooldown = 1, 0 },
			run:   mintFrom("10.1.2.3", "10.1.3.3", "10.1.2.3"),
			count: 2,
		},
		{
			name: "no address, or one that is not an address",
			run:  mintFrom("10.1.2.3", "", "unix-socket"),
		},
		{
			name: "denials do not move the agent",
			run: func(h *harness, _ *rand.Rand) {
				h.from(broker.ObserveMint, "10.1.2.3")
				h.observe(broker.Observation{Kind: broker.ObserveDenied, AgentID: "a", SourceIP: "192.0.2.1"})
			},
		},
	})
}
