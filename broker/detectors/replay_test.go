package detectors

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
)

// signalLog is signals as the store lists them: newest first, in pages.
type signalLog []*agents.Signal

func (ss signalLog) ListSignals(_ context.Context, f agents.SignalFilter) ([]*agents.Signal, error) {
	i := 0
	for f.Before != "" && i < len(ss) && ss[i].ID >= f.Before {
		i++
	}
	return ss[i:min(i+f.Limit, len(ss))], nil
}

var (
	podLineage = broker.Lineage{Issuer: "https://k8s", JTI: "j-2", PodUID: "pod-1"}
	otherPod   = broker.Lineage{Issuer: "https://k8s", JTI: "j-3", PodUID: "pod-2"}
)

func lineageSignal(id, lineage string, action agents.Action, received time.Time) *agents.Signal {
	return &agents.Signal{ID: id, Subject: agents.Subject{Kind: agents.SubjectLineage, ID: lineage}, Action: action, ReceivedAt: received,
		Source: agents.Source{Kind: agents.SourceREST, Name: "siem"}}
}

// TestReplay: a replayed attestation fires; so does an attestation from a
// lineage revoked on purpose within remember, whether valet saw the
// revocation or reads it from the signals at start; other lineages, and
// lineages only alerted about, stay quiet.
func TestReplay(t *testing.T) {
	on := func(c *Config) { c.Replay.Enabled = true }
	revokePod := broker.Observation{Kind: broker.ObserveLineageRevoked, LineageID: "pod:pod-1", Reason: "operator alice"}
	replayed := broker.Observation{Kind: broker.ObserveReplay, AgentID: "a", Lineage: podLineage, SourceIP: "203.0.113.9"}
	with := func(o broker.Observation, l broker.Lineage) broker.Observation { o.Lineage = l; return o }
	observe := func(obs ...broker.Observation) func(h *harness, _ *rand.Rand) {
		return func(h *harness, _ *rand.Rand) {
			for _, o := range obs {
				h.observe(o)
			}
		}
	}
	runCases(t, on, agent("a"), agents.SeverityHigh, []detectorCase{
		{
			name:  "a jti replay",
			run:   observe(replayed),
			count: 1, reason: []string{"an attestation of agent a was presented again after its jti was used (lineage jti:https://k8s#j-2)"},
			evidence: map[string]string{"pattern": "jti_replay", "lineage": "jti:https://k8s#j-2", "source_ip": "203.0.113.9"},
		},
		{
			name: "replays within the cooldown",
			run: func(h *harness, _ *rand.Rand) {
				for range 5 {
					h.observe(replayed)
					h.clock.Advance(time.Minute)
				}
				h.clock.Advance(15 * time.Minute)
				h.observe(replayed)
			},
			count: 2,
		},
		{
			name: "a mint from a revoked pod",
			run: func(h *harness, _ *rand.Rand) {
				h.observe(with(mint("a", "r"), otherPod))
				h.observe(revokePod)
				h.clock.Advance(time.Minute)
				h.observe(with(mint("a", "r"), otherPod))
				h.observe(with(mint("a", "r"), podLineage))
			},
			count: 1, reason: []string{"agent a presented an attestation of lineage pod:pod-1, revoked at " + at(start) + " by operator alice"},
			evidence: map[string]string{"pattern": "revoked_lineage", "lineage": "pod:pod-1", "revoked_at": at(start), "revoked_by": "operator alice",
				"request": "mint", "role": "r"},
		},
		{
			name: "a renewal and a denial from a revoked pod",
			edit: func(c *Config) { c.Replay.Cooldown = 0 },
			run: observe(revokePod, with(broker.Observation{Kind: broker.ObserveRenew, AgentID: "a"}, podLineage), with(denied("a"), podLineage),
				broker.Observation{Kind: broker.ObserveRenew, AgentID: "a"}), // an operator's renewal: no lineage
			count: 2, evidence: map[string]string{"request": "renew"},
		},
		{
			name: "after remember",
			run: func(h *harness, _ *rand.Rand) {
				h.observe(revokePod)
				h.clock.Advance(24 * time.Hour)
				h.observe(with(mint("a", "r"), podLineage))
			},
		},
		{
			name:  "remember 0: lineages are not remembered, replays still fire",
			edit:  func(c *Config) { c.Replay.Remember = 0 },
			run:   observe(revokePod, with(mint("a", "r"), podLineage), replayed),
			count: 1, evidence: map[string]string{"pattern": "jti_replay"},
		},
		{
			name: "lineages revoked by signals before the start",
			deps: Deps{Signals: signalLog{
				lineageSignal("s4", "spiffe:spiffe://x/agent", agents.ActionAlert, start.Add(-time.Hour)),
				lineageSignal("s3", "pod:pod-1", agents.ActionRevoke, start.Add(-2*time.Hour)),
				{ID: "s2", Subject: agents.Subject{Kind: agents.SubjectAgent, ID: "a"}, Action: agents.ActionQuarantine, ReceivedAt: start.Add(-3 * time.Hour)},
				lineageSignal("s1", "pod:pod-2", agents.ActionQuarantine, start.Add(-25*time.Hour)),
			}},
			edit: func(c *Config) { c.Replay.Cooldown = 0 },
			run: observe(
				with(mint("a", "r"), broker.Lineage{SPIFFEID: "spiffe://x/agent"}), // only alerted about
				with(mint("a", "r"), otherPod),                                     // revoked too long ago
				with(mint("a", "r"), podLineage)),
			count: 1, evidence: map[string]string{"lineage": "pod:pod-1", "revoked_by": "signal s3 from source:siem", "revoked_at": at(start.Add(-2 * time.Hour))},
		},
		{
			name: "a revoked jti lineage presented again",
			run: func(h *harness, _ *rand.Rand) {
				h.observe(broker.Observation{Kind: broker.ObserveLineageRevoked, LineageID: "jti:https://k8s#j-2", Reason: "signal s9 from ssf:idp"})
				h.clock.Advance(time.Hour)
				h.observe(with(mint("a", "r"), podLineage))
			},
			count: 1, evidence: map[string]string{"lineage": "jti:https://k8s#j-2", "revoked_by": "signal s9 from ssf:idp"},
		},
	})
}

// TestReplayLoadsWithinRemember: at start the detector reads signals
// page by page until they are older than remember.
func TestReplayLoadsWithinRemember(t *testing.T) {
	var log signalLog
	for i := range 2500 { // one a minute, newest first
		log = append(log, lineageSignal(string(rune(0x10000+2500-i)), "pod:p"+itoa(i), agents.ActionRevoke, start.Add(-time.Duration(i)*time.Minute)))
	}
	d := newReplay(ReplayConfig{Remember: 0}, 10000)
	d.cfg.Remember = 2000 * 60 * 1e9 // 2000 minutes
	if err := d.load(context.Background(), log, start); err != nil {
		t.Fatal(err)
	}
	if got := d.revoked.len(); got != 2001 {
		t.Fatalf("loaded %d revoked lineages, want the 2001 within remember", got)
	}
}
