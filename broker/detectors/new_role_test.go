package detectors

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/agents"
)

// agentRecords are agent records as the store lists them: most recently
// seen first, in pages.
type agentRecords []*agents.Agent

func (rs agentRecords) ListAgents(_ context.Context, f agents.Filter) ([]*agents.Agent, error) {
	i := 0
	if f.Before != "" {
		i = slices.IndexFunc(rs, func(a *agents.Agent) bool { return a.Cursor() == f.Before }) + 1
	}
	return rs[i:min(i+f.Limit, len(rs))], nil
}

// TestNewRole: an agent's first mint of a role fires once its learning
// period is over, and never for the roles it minted (in this run or, from
// its record, before).
func TestNewRole(t *testing.T) {
	on := func(c *Config) { c.NewRole.Enabled = true }
	record := &agents.Agent{ID: "old", FirstSeen: start.Add(-48 * time.Hour), LastSeen: start.Add(-time.Hour), Roles: []string{"deploy", "read"}}
	recent := &agents.Agent{ID: "recent", FirstSeen: start.Add(-time.Hour), LastSeen: start.Add(-time.Minute), Roles: []string{"read"}}
	mints := func(steps ...any) func(h *harness, _ *rand.Rand) {
		return func(h *harness, _ *rand.Rand) {
			for _, s := range steps {
				switch s := s.(type) {
				case time.Duration:
					h.clock.Advance(s)
				case [2]string:
					h.observe(mint(s[0], s[1]))
				}
			}
		}
	}
	a := func(role string) [2]string { return [2]string{"a", role} }
	runCases(t, on, agent("a"), agents.SeverityLow, []detectorCase{
		{
			name: "roles learnt in the learning period",
			run:  mints(a("read"), time.Hour, a("deploy"), 2*time.Hour, a("read"), 3*time.Hour, a("admin"), 30*time.Hour, a("read"), a("deploy"), a("admin")),
		},
		{
			name:  "a new role after the learning period",
			run:   mints(a("read"), 25*time.Hour, a("read"), a("admin"), a("admin")),
			count: 1, reason: []string{"agent a minted role admin for the first time (first seen " + at(start) + "; learning 24h0m0s)"},
			evidence: map[string]string{"role": "admin", "known_roles": "read", "first_seen": at(start), "learning": "24h0m0s"},
		},
		{
			name: "roles from the agent record",
			deps: Deps{Agents: agentRecords{recent, record}},
			run: mints([2]string{"old", "read"}, [2]string{"old", "deploy"}, [2]string{"recent", "admin"}, // still learning
				[2]string{"old", "admin"}),
			count: 1, subject: agent("old"), evidence: map[string]string{"role": "admin", "known_roles": "deploy,read", "first_seen": at(record.FirstSeen)},
		},
		{
			name:  "no learning period",
			edit:  func(c *Config) { c.NewRole.Learning = 0 },
			run:   mints(a("read"), a("read")),
			count: 1, evidence: map[string]string{"role": "read", "known_roles": ""},
		},
		{
			name:  "a second new role within the cooldown",
			run:   mints(a("read"), 25*time.Hour, a("deploy"), time.Minute, a("admin")),
			count: 1, evidence: map[string]string{"role": "deploy"},
		},
		{
			name: "an agent beyond max_tracked is learnt afresh",
			deps: Deps{Agents: manyAgents(3)},
			edit: func(c *Config) { c.MaxTracked = 2 },
			run: mints([2]string{"agent-2", "admin"}, // the least recently seen: not loaded
				[2]string{"agent-0", "admin"}),
			count: 1, subject: agent("agent-0"), evidence: map[string]string{"role": "admin", "known_roles": "read"},
		},
	})
}

// manyAgents are n records seen 48h ago and more, each with role read,
// agent-0 the most recently seen.
func manyAgents(n int) agentRecords {
	var rs agentRecords
	for i := range n {
		seen := start.Add(-time.Duration(i+1) * time.Minute)
		rs = append(rs, &agents.Agent{ID: fmt.Sprintf("agent-%d", i), FirstSeen: seen.Add(-48 * time.Hour), LastSeen: seen, Roles: []string{"read"}})
	}
	return rs
}

// TestNewRoleLoadsPages: every page of records is read, up to the agents
// the detector tracks.
func TestNewRoleLoadsPages(t *testing.T) {
	rs := manyAgents(2500)
	d := newNewRole(NewRoleConfig{}, 10000)
	if err := d.load(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if got := d.agents.len(); got != 2500 {
		t.Fatalf("loaded %d agents, want 2500", got)
	}
	d = newNewRole(NewRoleConfig{}, 100)
	if err := d.load(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if got := d.agents.len(); got != 100 {
		t.Fatalf("loaded %d agents, want 100", got)
	}
	if _, ok := d.agents.lookup("agent-99"); !ok {
		t.Fatal("the 100th most recently seen agent was not loaded")
	}
}
