package broker_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/jwt"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// observingDetector keeps every observation; it detects nothing.
type observingDetector struct {
	mu  sync.Mutex
	obs []broker.Observation
}

func (d *observingDetector) Name() string { return "observer" }
func (d *observingDetector) Policy() broker.SignalPolicy {
	return broker.SignalPolicy{AllowedActions: []agents.Action{agents.ActionAlert}}
}
func (d *observingDetector) Observe(o broker.Observation) []broker.Detection {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.obs = append(d.obs, o)
	return nil
}

// take returns the observations of kind seen so far and forgets them all.
func (d *observingDetector) take(kind string) []broker.Observation {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []broker.Observation
	for _, o := range d.obs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	d.obs = nil
	return out
}

// detectorFixture is a fixture whose broker has d as its only detector,
// a jwt backend "tokens" with role "tok" (ttl 5m) and role "long" on the
// renewing backend (ttl 10m, max_ttl 1h). With requireJTI, every
// attestation is accepted once.
func detectorFixture(t *testing.T, d broker.Detector, requireJTI bool) *fixture {
	t.Helper()
	return newFixtureWith(t, func(cfg *fixtureConfig) {
		cfg.Detectors, cfg.RequireJTI = []broker.Detector{d}, requireJTI
		cfg.Backends = append(cfg.Backends, backends.Config{Name: "tokens", Type: jwt.Type})
		cfg.Roles = append(cfg.Roles,
			config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.TTL = "tok", "tokens", config.Duration(5*time.Minute) }),
			config.Defaulted(func(r *broker.Role) {
				r.Name, r.Backend, r.TTL, r.MaxTTL = "long", "renewing", config.Duration(10*time.Minute), config.Duration(time.Hour)
			}))
	}, func(clk *clock.Fake, dir string) map[string]backends.Backend {
		be, err := jwt.New("tokens", nil, backends.Deps{DataDir: dir, KEK: make([]byte, 32), PublicURL: "https://valet.test", Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]backends.Backend{"tokens": be}
	})
}

// attestJTI is an attestation of sub with the given jti (its lineage
// jti:https://issuer.test#<jti>).
func (f *fixture) attestJTI(t *testing.T, sub, jti string) string {
	t.Helper()
	tok, err := f.issuer.Sign(map[string]any{"sub": sub, "aud": "valet", "jti": jti})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestDetectorObservesMintAndRenew: a mint is observed with its lease's
// expiry, where it came from and its lineage; a renewal with the expiry
// before and after, and, only when the agent renews, its address and
// lineage (an operator's renewal says nothing of the agent's network).
func TestDetectorObservesMintAndRenew(t *testing.T) {
	ctx := context.Background()
	d := &observingDetector{}
	f := detectorFixture(t, d, false)
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attestJTI(t, "a", "m1"), Role: "long", SourceIP: "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Lease
	mints := d.take(broker.ObserveMint)
	if len(mints) != 1 {
		t.Fatalf("mint observations %+v, want one", mints)
	}
	if o := mints[0]; o.AgentID != "test/a" || o.Role != "long" || o.LeaseID != l.ID || !o.ExpiresAt.Equal(l.ExpiresAt) ||
		o.SourceIP != "192.0.2.7" || o.Lineage.JTI != "m1" || !o.Time.Equal(l.CreatedAt) {
		t.Fatalf("mint observation %+v, lease %+v", o, l)
	}

	cases := []struct {
		name   string
		caller func() broker.Caller
		wantIP string
		jti    string
	}{
		{"the agent renews", func() broker.Caller {
			p, err := f.b.AuthenticateAgent(ctx, f.attestJTI(t, "a", "r1"), "192.0.2.8", "")
			if err != nil {
				t.Fatal(err)
			}
			return broker.Caller{Agent: p}
		}, "198.51.100.1", "r1"},
		{"an operator renews", func() broker.Caller { return broker.Caller{Operator: operator} }, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := f.lease(t, l.ID).ExpiresAt
			f.clock.Advance(time.Minute)
			rr, err := f.b.RenewLease(ctx, c.caller(), broker.RenewRequest{ID: l.ID, SourceIP: "198.51.100.1"})
			if err != nil {
				t.Fatal(err)
			}
			renews := d.take(broker.ObserveRenew)
			if len(renews) != 1 {
				t.Fatalf("renew observations %+v, want one", renews)
			}
			o := renews[0]
			if o.LeaseID != l.ID || o.AgentID != "test/a" || !o.RenewedFrom.Equal(before) || !o.ExpiresAt.Equal(rr.Lease.ExpiresAt) ||
				!o.ExpiresAt.After(before) || !o.Time.Equal(f.clock.Now()) {
				t.Fatalf("renew observation %+v; expiry before %s, after %s", o, before, rr.Lease.ExpiresAt)
			}
			if o.SourceIP != c.wantIP || o.Lineage.JTI != c.jti {
				t.Fatalf("renew observation from %q with lineage %+v, want %q and jti %q", o.SourceIP, o.Lineage, c.wantIP, c.jti)
			}
		})
	}
}

// TestDetectorObservesReplay: an attestation whose jti was used before is
// refused (401) and observed as a replay of its agent and lineage, with
// the address it came from; the first use is no replay.
func TestDetectorObservesReplay(t *testing.T) {
	ctx := context.Background()
	d := &observingDetector{}
	f := detectorFixture(t, d, true)
	tok := f.attestJTI(t, "a", "once")
	if _, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "tok", SourceIP: "192.0.2.7"}); err != nil {
		t.Fatal(err)
	}
	if got := d.take(broker.ObserveReplay); len(got) != 0 {
		t.Fatalf("the first use was observed as a replay: %+v", got)
	}
	_, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "tok", SourceIP: "203.0.113.9"})
	if broker.ErrorCode(err) != broker.EUNAUTHORIZED {
		t.Fatalf("replayed mint: %v, want EUNAUTHORIZED", err)
	}
	got := d.take(broker.ObserveReplay)
	if len(got) != 1 || got[0].AgentID != "test/a" || got[0].Lineage.JTI != "once" || got[0].SourceIP != "203.0.113.9" {
		t.Fatalf("replay observations %+v, want one of test/a, jti once, from 203.0.113.9", got)
	}
	// A token that does not verify at all names no agent: no observation.
	if _, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok + "x", Role: "tok"}); err == nil {
		t.Fatal("a broken token minted")
	}
	if got := d.take(broker.ObserveReplay); len(got) != 0 {
		t.Fatalf("a bad signature was observed as a replay: %+v", got)
	}
}

// TestDetectorObservesEndedUse: introspecting the token of a lease that
// was released or revoked is observed (someone still uses it); the token
// of a live lease, or of one that expired, is not.
func TestDetectorObservesEndedUse(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		end  func(t *testing.T, f *fixture, l *leases.Lease)
		want leases.State // "" for no observation
	}{
		{"live", func(*testing.T, *fixture, *leases.Lease) {}, ""},
		{"released by its agent", func(t *testing.T, f *fixture, l *leases.Lease) {
			if _, err := f.b.EndLease(ctx, f.agent(t, "a"), l.ID, "", ""); err != nil {
				t.Fatal(err)
			}
		}, leases.StateReleased},
		{"revoked by an operator", func(t *testing.T, f *fixture, l *leases.Lease) {
			if _, err := f.b.EndLease(ctx, broker.Caller{Operator: operator}, l.ID, "leaked", ""); err != nil {
				t.Fatal(err)
			}
		}, leases.StateRevoked},
		{"expired", func(t *testing.T, f *fixture, _ *leases.Lease) { f.clock.Advance(6 * time.Minute) }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &observingDetector{}
			f := detectorFixture(t, d, false)
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attestJTI(t, "a", "j"), Role: "tok"})
			if err != nil {
				t.Fatal(err)
			}
			c.end(t, f, res.Lease)
			ended := f.lease(t, res.Lease.ID)
			f.clock.Advance(time.Second)
			in, err := f.b.Introspect(ctx, res.Credential["access_token"].(string))
			if err != nil {
				t.Fatal(err)
			}
			got := d.take(broker.ObserveEndedUse)
			if c.want == "" {
				if len(got) != 0 {
					t.Fatalf("observed %+v", got)
				}
				return
			}
			if in.Active {
				t.Fatal("the ended lease's token is active")
			}
			if len(got) != 1 {
				t.Fatalf("observations %+v, want one", got)
			}
			if o := got[0]; o.LeaseID != res.Lease.ID || o.AgentID != "test/a" || o.Role != "tok" || o.LeaseState != c.want ||
				!o.EndedAt.Equal(ended.EndedAt) || o.EndedAt.IsZero() || o.Lineage.JTI != "j" || !o.Time.Equal(f.clock.Now()) {
				t.Fatalf("observation %+v, want lease %s %s at %s", o, res.Lease.ID, c.want, ended.EndedAt)
			}
		})
	}
}

// TestDetectorObservesLineageRevoked: a lineage is observed revoked when
// a signal about it revokes, or an operator revokes it; an alert about it
// revokes nothing and is not.
func TestDetectorObservesLineageRevoked(t *testing.T) {
	ctx := context.Background()
	const lineage = "jti:https://issuer.test#j1"
	cases := []struct {
		name       string
		revoke     func(t *testing.T, f *fixture)
		wantReason string // "" for no observation
	}{
		{"a revoking signal", func(t *testing.T, f *fixture) {
			f.raise(t, broker.OperatorSource(operator), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectLineage, ID: lineage},
				Severity: agents.SeverityMedium, Reason: "leaked", Action: agents.ActionRevoke})
		}, "from operator:alice"},
		{"an alert", func(t *testing.T, f *fixture) {
			f.raise(t, broker.OperatorSource(operator), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectLineage, ID: lineage},
				Severity: agents.SeverityLow, Reason: "odd", Action: agents.ActionAlert})
		}, ""},
		{"an operator", func(t *testing.T, f *fixture) {
			if _, err := f.b.RevokeMatching(ctx, operator, leases.Filter{Lineage: lineage}, "leaked", ""); err != nil {
				t.Fatal(err)
			}
		}, "operator alice"},
		{"an operator revoking an agent", func(t *testing.T, f *fixture) {
			if _, err := f.b.RevokeMatching(ctx, operator, leases.Filter{AgentID: "test/a"}, "leaked", ""); err != nil {
				t.Fatal(err)
			}
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &observingDetector{}
			f := detectorFixture(t, d, false)
			if _, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attestJTI(t, "a", "j1"), Role: "tok"}); err != nil {
				t.Fatal(err)
			}
			c.revoke(t, f)
			got := d.take(broker.ObserveLineageRevoked)
			if c.wantReason == "" {
				if len(got) != 0 {
					t.Fatalf("observed %+v", got)
				}
				return
			}
			if len(got) != 1 || got[0].LineageID != lineage || !strings.Contains(got[0].Reason, c.wantReason) {
				t.Fatalf("observations %+v, want lineage %s by %q", got, lineage, c.wantReason)
			}
		})
	}
}

// evidenceDetector raises one alert with evidence for each mint.
type evidenceDetector struct{}

func (evidenceDetector) Name() string { return "evidence" }
func (evidenceDetector) Policy() broker.SignalPolicy {
	return broker.SignalPolicy{AllowedActions: []agents.Action{agents.ActionAlert}}
}
func (evidenceDetector) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveMint {
		return nil
	}
	return []broker.Detection{{Subject: agentSubject(o.AgentID), Severity: agents.SeverityLow, Reason: "seen", Action: agents.ActionAlert,
		Evidence: map[string]string{"mints": "1", "threshold": "0"}}}
}

// TestDetectionEvidence: what a detector saw is kept on its signal and
// in the signal's audit record.
func TestDetectionEvidence(t *testing.T) {
	ctx := context.Background()
	f := detectorFixture(t, evidenceDetector{}, false)
	mark := f.auditMark(t)
	f.mint(t, "a", "tok", 0)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.b.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	var sig *agents.Signal
	waitUntil(t, "the detection is recorded", func() bool {
		ss, err := f.store.ListSignals(ctx, agents.SignalFilter{Source: "detector:evidence"})
		if err == nil && len(ss) == 1 {
			sig = ss[0]
		}
		return sig != nil
	})
	if sig.Evidence["mints"] != "1" || sig.Evidence["threshold"] != "0" || len(sig.Evidence) != 2 {
		t.Fatalf("signal evidence %v", sig.Evidence)
	}
	var rec *audit.Record
	for _, r := range f.written(t, mark) {
		if r.Kind == audit.KindSignal {
			rec = &r
		}
	}
	if rec == nil || rec.Details["evidence.mints"] != "1" || rec.Details["evidence.threshold"] != "0" || rec.Actor.ID != "detector:evidence" {
		t.Fatalf("signal record %+v, want the evidence in its details", rec)
	}
}
