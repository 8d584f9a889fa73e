package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
	"github.com/valet-broker/valet/leases/leasetest"
)

// failingSignals is the signal store, whose EndLive fails on demand after
// a number of calls, as a store that goes down in the middle of a mass
// revocation would.
type failingSignals struct {
	*bolt.Store
	mu            sync.Mutex
	endLiveCalls  int
	failEndLiveAt int // the call that fails (1-based); 0 never
}

func (f *failingSignals) EndLive(ctx context.Context, signalID string, lf leases.Filter, before string, createdBy time.Time, limit int,
	reason leases.State, now time.Time, e audit.Entry) ([]*leases.Lease, string, error) {
	f.mu.Lock()
	f.endLiveCalls++
	fail := f.endLiveCalls == f.failEndLiveAt
	f.mu.Unlock()
	if fail {
		return nil, "", errors.New("injected: store down")
	}
	return f.Store.EndLive(ctx, signalID, lf, before, createdBy, limit, reason, now, e)
}

// source is a REST signal source of the fixture's, authenticated by its
// token; edit changes its configuration.
func source(t *testing.T, edit func(*broker.SignalSourceConfig)) *broker.SignalSource {
	t.Helper()
	c := config.Defaulted(func(c *broker.SignalSourceConfig) {
		c.Name, c.TokenSHA256 = "siem", broker.HashToken("siem-token")
		if edit != nil {
			edit(c)
		}
	})
	src, ok, err := broker.NewSignalSources([]broker.SignalSourceConfig{c}, nil, nil).Authenticate(context.Background(), "siem-token")
	if err != nil || !ok {
		t.Fatalf("authenticate the source: %v, %v", ok, err)
	}
	return src
}

var operator = &broker.Operator{Name: "alice", Method: "token"}

func agentSubject(id string) agents.Subject { return agents.Subject{Kind: agents.SubjectAgent, ID: id} }

func (f *fixture) raise(t *testing.T, src *broker.SignalSource, req broker.SignalRequest) *broker.SignalResult {
	t.Helper()
	res, err := f.b.RaiseSignal(context.Background(), src, req)
	if err != nil {
		t.Fatalf("RaiseSignal(%+v): %v", req, err)
	}
	return res
}

// TestSignalQuarantineRevokesAndRelease: a high signal for an agent holding
// many leases ends them all through the revocation queue, refuses the
// agent's mints, renewals and redeems with EQUARANTINED until an operator
// releases it, and leaves a record of every step.
func TestSignalQuarantineRevokesAndRelease(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Roles = append(c.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.MaxTTL = "rn", "renewing", config.Duration(2*time.Hour) }))
		c.Roles = append(c.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "up", "ext", 1 }))
	})
	ctx := context.Background()
	const n = 1200 // more than one batch
	var held []*leases.Lease
	for i := range n {
		l := leasetest.NewPending(f.clock.Now(), "test/agent-1", time.Hour)
		l.Role, l.Backend, l.Handle = "r", "ext", fmt.Sprint("h-", i)
		held = append(held, l)
	}
	leasetest.SeedActive(t, f.store, held)
	f.mint(t, "agent-1", "rn", 0)
	bystander := f.mint(t, "agent-2", "r", 0)
	grant, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "agent-1"), Role: "up", Reason: "needs it"})
	if err != nil || grant.Grant == nil {
		t.Fatalf("request a grant: %+v, %v", grant, err)
	}
	if _, err := f.b.ApproveGrant(ctx, &broker.Operator{Name: "bob"}, grant.Grant.ID, "ok", ""); err != nil {
		t.Fatal(err)
	}
	leasetest.StartQueue(t, f.queue)
	mark := f.auditMark(t)

	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityHigh, Reason: "exfiltration seen"})
	if res.Signal.Action != agents.ActionQuarantine || !slices.Equal(res.Quarantined, []string{"test/agent-1"}) || res.Ended != n+1 {
		t.Fatalf("result: action %s, quarantined %v, ended %d; want quarantine, [test/agent-1], %d", res.Signal.Action, res.Quarantined, res.Ended, n+1)
	}
	if res.Signal.Containment.State != agents.ContainmentDone || res.Signal.Containment.Ended != n+1 {
		t.Fatalf("containment: %+v", res.Signal.Containment)
	}
	leasetest.Eventually(t, "every lease of the agent is revoked at its backend", func() bool {
		c := f.counts(t)
		return c[leases.StateRevoked] == n+1 && c[leases.StateRevoking] == 0
	})
	if got := f.lease(t, bystander.ID); got.State != leases.StateActive {
		t.Errorf("another agent's lease is %s", got.State)
	}

	refusals := []struct {
		name string
		do   func() error
	}{
		{"mint", func() error {
			_, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "agent-1"), Role: "r"})
			return err
		}},
		{"redeem", func() error {
			_, err := f.b.RedeemGrant(ctx, broker.RedeemRequest{Attestation: f.attest(t, "agent-1"), GrantID: grant.Grant.ID})
			return err
		}},
	}
	for _, r := range refusals {
		err := r.do()
		if broker.ErrorCode(err) != broker.EQUARANTINED || !strings.Contains(broker.ErrorMessage(err), "quarantined") {
			t.Errorf("%s of a quarantined agent: %v, want EQUARANTINED", r.name, err)
		}
	}

	count := map[string]int{}
	for after := mark; ; {
		recs := f.written(t, after)
		for _, r := range recs {
			count[r.Kind+"/"+r.Decision]++
		}
		if len(recs) < 1000 {
			break
		}
		after = recs[len(recs)-1].Seq
	}
	want := map[string]int{"signal/allow": 1, "agent.quarantine/allow": 1, "lease.revoke/allow": n + 1, "signal.contained/allow": 1,
		"lease.revoked/": n + 1, "mint/deny": 1, "grant.redeem/deny": 1}
	for k, v := range want {
		if count[k] != v {
			t.Errorf("%d %s records, want %d (all: %v)", count[k], k, v, count)
		}
	}

	if _, err := f.b.ReleaseAgent(ctx, operator, "test/agent-1", "", ""); broker.ErrorCode(err) != broker.EINVALID {
		t.Fatalf("release without a reason: %v", err)
	}
	a, err := f.b.ReleaseAgent(ctx, operator, "test/agent-1", "false positive, checked", "")
	if err != nil || a.Quarantine != nil {
		t.Fatalf("release: %+v, %v", a, err)
	}
	if _, err := f.b.ReleaseAgent(ctx, operator, "test/agent-1", "again", ""); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Fatalf("releasing twice: %v, want ECONFLICT", err)
	}
	f.mint(t, "agent-1", "r", 0)
}

// TestQuarantineRefusesRenewal: a quarantined agent's lease that is still
// active is renewed for nobody, its agent or an operator.
func TestQuarantineRefusesRenewal(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Roles = append(c.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.MaxTTL = "rn", "renewing", config.Duration(2*time.Hour) }))
	})
	ctx := context.Background()
	l := f.mint(t, "agent-1", "rn", 0)
	// Quarantine straight in the store, leaving the lease active.
	if _, err := f.store.Isolate(ctx, "test/agent-1", agents.Quarantine{Since: f.clock.Now(), Reason: "held"}, audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []broker.Caller{f.agent(t, "agent-1"), {Operator: operator}} {
		_, err := f.b.RenewLease(ctx, c, broker.RenewRequest{ID: l.ID})
		if broker.ErrorCode(err) != broker.EQUARANTINED {
			t.Errorf("renewal by %+v: %v, want EQUARANTINED", c, err)
		}
	}
	if got := f.lease(t, l.ID); !got.ExpiresAt.Equal(l.ExpiresAt) {
		t.Errorf("the refused renewal moved the expiry")
	}
}

// TestSignalRefusals: a signal of bad shape, about an unknown subject, or
// asking for an action its source may not changes nothing and is audited
// as refused.
func TestSignalRefusals(t *testing.T) {
	f := newFixture(t, nil)
	l := f.mint(t, "agent-1", "r", 0)
	cases := []struct {
		name string
		src  *broker.SignalSource
		edit func(r *broker.SignalRequest)
		code string
		msg  string
	}{
		{"no subject", nil, func(r *broker.SignalRequest) { r.Subject = agents.Subject{} }, broker.EINVALID, "names one subject"},
		{"an agent id of no shape", nil, func(r *broker.SignalRequest) { r.Subject.ID = "no-slash" }, broker.EINVALID, "agent_id must be"},
		{"a lease id of no shape", nil, func(r *broker.SignalRequest) { r.Subject = agents.Subject{Kind: agents.SubjectLease, ID: "x"} }, broker.EINVALID, "lease_id"},
		{"a lineage of no kind", nil, func(r *broker.SignalRequest) { r.Subject = agents.Subject{Kind: agents.SubjectLineage, ID: "foo:1"} }, broker.EINVALID, "lineage must start with"},
		{"unknown severity", nil, func(r *broker.SignalRequest) { r.Severity = "severe" }, broker.EINVALID, "severity must be"},
		{"no reason", nil, func(r *broker.SignalRequest) { r.Reason = " " }, broker.EINVALID, "reason is required"},
		{"a reason with a newline", nil, func(r *broker.SignalRequest) { r.Reason = "a\nb" }, broker.EINVALID, "one line"},
		{"a reason too long", nil, func(r *broker.SignalRequest) { r.Reason = strings.Repeat("x", 1025) }, broker.EINVALID, "longer than 1024"},
		{"an unknown action", nil, func(r *broker.SignalRequest) { r.Action = "nuke" }, broker.EINVALID, "action must be"},
		{"an event in the future", nil, func(r *broker.SignalRequest) { r.EventTime = f.clock.Now().Add(time.Hour) }, broker.EINVALID, "future"},
		{"an agent never seen", nil, func(r *broker.SignalRequest) { r.Subject.ID = "test/nobody" }, broker.ENOTFOUND, "not known"},
		{"an unknown lease", nil, func(r *broker.SignalRequest) {
			r.Subject = agents.Subject{Kind: agents.SubjectLease, ID: leases.NewID(f.clock.Now())}
		}, broker.ENOTFOUND, "not found"},
		{"a lineage no lease has", nil, func(r *broker.SignalRequest) { r.Subject = agents.Subject{Kind: agents.SubjectLineage, ID: "pod:none"} }, broker.ENOTFOUND, "no lease derives"},
		{"an unknown role", nil, func(r *broker.SignalRequest) { r.Subject = agents.Subject{Kind: agents.SubjectRole, ID: "nope"} }, broker.ENOTFOUND, "does not exist"},
		{"an action the source may not ask for", source(t, func(c *broker.SignalSourceConfig) { c.AllowedActions = []agents.Action{agents.ActionAlert} }),
			func(r *broker.SignalRequest) { r.Action = agents.ActionRevoke }, broker.EFORBIDDEN, "may not ask for action revoke"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src
			if src == nil {
				src = source(t, nil)
			}
			req := broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityCritical, Reason: "seen", RequestID: "req-1"}
			c.edit(&req)
			mark := f.auditMark(t)
			_, err := f.b.RaiseSignal(context.Background(), src, req)
			if broker.ErrorCode(err) != c.code || !strings.Contains(broker.ErrorMessage(err), c.msg) {
				t.Fatalf("error %v, want %s containing %q", err, c.code, c.msg)
			}
			recs := f.written(t, mark)
			if got := kinds(recs); !slices.Equal(got, []string{"signal/deny"}) || recs[0].RequestID != "req-1" || recs[0].Actor.ID != "source:siem" {
				t.Fatalf("audit records %v (%+v), want one refused signal", got, recs)
			}
			if got := f.lease(t, l.ID); got.State != leases.StateActive {
				t.Fatalf("the agent's lease is %s", got.State)
			}
			if g := f.store.Gate("test/agent-1"); g.Quarantine != nil || g.Risk.Score != 0 {
				t.Fatalf("the agent's gate changed: %+v", g)
			}
			if ss, _ := f.store.ListSignals(context.Background(), agents.SignalFilter{}); len(ss) != 0 {
				t.Fatalf("a signal was stored: %+v", ss[0])
			}
		})
	}
}

// TestSignalRateLimit: a source over its rate is refused, and its refusals
// are recorded at most once a second.
func TestSignalRateLimit(t *testing.T) {
	f := newFixture(t, nil)
	f.mint(t, "agent-1", "r", 0)
	src := source(t, func(c *broker.SignalSourceConfig) { c.Rate, c.Burst = 1, 1 })
	req := broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityInfo, Reason: "noise"}
	f.raise(t, src, req)
	mark := f.auditMark(t)
	for range 5 {
		_, err := f.b.RaiseSignal(context.Background(), src, req)
		if broker.ErrorCode(err) != broker.ERATELIMIT {
			t.Fatalf("over the rate: %v, want ERATELIMIT", err)
		}
	}
	if got := kinds(f.written(t, mark)); !slices.Equal(got, []string{"signal/deny"}) {
		t.Fatalf("records of the refusals: %v, want one", got)
	}
	f.clock.Advance(2 * time.Second)
	f.raise(t, src, req)
}

// TestRiskInPolicy: a signal's points are context.risk for the policy, and
// decay with the half-life.
func TestRiskInPolicy(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Signals.HalfLife = config.Duration(time.Hour)
		writePolicy(t, c, "risk.cedar", `forbid(principal, action, resource) when { context.risk >= 70 };`)
	})
	f.mint(t, "agent-1", "r", 0)
	alertOnly := source(t, func(c *broker.SignalSourceConfig) { c.AllowedActions = []agents.Action{agents.ActionAlert} })
	res := f.raise(t, alertOnly, broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityCritical, Reason: "odd"})
	if res.Signal.Action != agents.ActionAlert || res.Signal.Points != 90 || res.Ended != 0 {
		t.Fatalf("an alert-only source's critical signal: %+v", res)
	}
	_, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "agent-1"), Role: "r"})
	if broker.ErrorCode(err) != broker.EFORBIDDEN || !strings.Contains(broker.ErrorMessage(err), "forbidden by policy") {
		t.Fatalf("mint at risk 90: %v, want the policy's refusal", err)
	}
	// 90 halves to 45 in an hour: below the threshold.
	f.clock.Advance(time.Hour)
	a, err := f.b.GetAgent(context.Background(), "test/agent-1")
	if err != nil || f.b.Risk(a.Risk) != 45 {
		t.Fatalf("risk an hour later: %v, %v", a, err)
	}
	f.mint(t, "agent-1", "r", 0)
}

// TestLineageRevocationAcrossBackends: a lineage signal revokes everything
// derived from that attestation, on every backend, and nothing else.
func TestLineageRevocationAcrossBackends(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Roles = append(c.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.MaxTTL = "rn", "renewing", config.Duration(2*time.Hour) }))
	})
	ctx := context.Background()
	leasetest.StartQueue(t, f.queue)
	tok, err := f.issuer.Sign(map[string]any{"sub": "agent-1", "aud": "valet", "jti": "att-1"})
	if err != nil {
		t.Fatal(err)
	}
	var derived []string
	for _, role := range []string{"r", "rn", "r"} {
		res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: role})
		if err != nil {
			t.Fatal(err)
		}
		derived = append(derived, res.Lease.ID)
	}
	other := f.mint(t, "agent-1", "r", 0) // the same agent, another attestation
	lineage := "jti:https://issuer.test#att-1"
	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectLineage, ID: lineage},
		Severity: agents.SeverityMedium, Reason: "attestation leaked"})
	if res.Signal.Action != agents.ActionRevoke || res.Ended != 3 || len(res.Quarantined) != 0 || !slices.Equal(res.Signal.Agents, []string{"test/agent-1"}) {
		t.Fatalf("lineage signal: %+v", res)
	}
	leasetest.Eventually(t, "the derived leases are revoked", func() bool {
		for _, id := range derived {
			if f.lease(t, id).State != leases.StateRevoked {
				return false
			}
		}
		return true
	})
	f.be.mu.Lock()
	var backendsRevoked []string
	for _, r := range f.be.revoked {
		if slices.Contains(derived, r.CorrelationID) {
			backendsRevoked = append(backendsRevoked, r.CorrelationID)
		}
	}
	f.be.mu.Unlock()
	if len(backendsRevoked) != 3 {
		t.Errorf("%d derived credentials revoked at the backends, want 3", len(backendsRevoked))
	}
	if got := f.lease(t, other.ID); got.State != leases.StateActive {
		t.Errorf("a lease of another attestation is %s", got.State)
	}
}

// TestLeaseSignal: a signal about a lease ends that lease only, counted
// once, and concerns its agent.
func TestLeaseSignal(t *testing.T) {
	f := newFixture(t, nil)
	a := f.mint(t, "agent-1", "r", 0)
	b := f.mint(t, "agent-1", "r", 0)
	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectLease, ID: a.ID},
		Severity: agents.SeverityMedium, Reason: "token seen in a log"})
	if res.Ended != 1 || res.Signal.Containment.Ended != 1 || !slices.Equal(res.Signal.Agents, []string{"test/agent-1"}) {
		t.Fatalf("lease signal: ended %d, containment %+v, agents %v", res.Ended, res.Signal.Containment, res.Signal.Agents)
	}
	if got := f.lease(t, a.ID); got.State != leases.StateRevoking {
		t.Errorf("the signalled lease is %s", got.State)
	}
	if got := f.lease(t, b.ID); got.State != leases.StateActive {
		t.Errorf("another lease of the agent is %s", got.State)
	}
	// Again: nothing left to end.
	if res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectLease, ID: a.ID},
		Severity: agents.SeverityMedium, Reason: "again"}); res.Ended != 0 || res.Signal.Containment.Ended != 0 {
		t.Fatalf("second lease signal: ended %d, containment %+v", res.Ended, res.Signal.Containment)
	}
}

// TestRoleSignal: a signal about a role revokes every live lease of the
// role, quarantines nobody, and raises no agent's risk.
func TestRoleSignal(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Roles = append(c.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend = "other", "ext" }))
	})
	a := f.mint(t, "agent-1", "r", 0)
	b := f.mint(t, "agent-2", "r", 0)
	c := f.mint(t, "agent-2", "other", 0)
	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectRole, ID: "r"},
		Severity: agents.SeverityCritical, Reason: "role's backend compromised"})
	if res.Signal.Action != agents.ActionRevoke || res.Ended != 2 || len(res.Quarantined) != 0 {
		t.Fatalf("role signal: %+v", res)
	}
	for _, l := range []*leases.Lease{a, b} {
		if got := f.lease(t, l.ID); got.State != leases.StateRevoking {
			t.Errorf("lease of role r is %s", got.State)
		}
	}
	if got := f.lease(t, c.ID); got.State != leases.StateActive {
		t.Errorf("lease of another role is %s", got.State)
	}
	if g := f.store.Gate("test/agent-1"); g.Risk.Score != 0 || g.Quarantine != nil {
		t.Errorf("a role signal moved an agent's gate: %+v", g)
	}
}

// TestContainmentResumesAfterAFailure: a mass revocation the store stops in
// the middle leaves the signal pending; ResumeContainment ends the rest,
// and only the leases that were live when the signal came.
func TestContainmentResumesAfterAFailure(t *testing.T) {
	f := newFixture(t, nil)
	var held []*leases.Lease
	for i := range 700 {
		l := leasetest.NewPending(f.clock.Now(), "test/agent-1", time.Hour)
		l.Role, l.Backend, l.Handle = "r", "ext", fmt.Sprint("h-", i)
		held = append(held, l)
	}
	leasetest.SeedActive(t, f.store, held)
	f.mint(t, "agent-1", "r", 0)
	f.sigs.failEndLiveAt = 2 // the second batch
	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityMedium, Reason: "r"})
	if !res.Signal.Pending() || res.Ended != 500 {
		t.Fatalf("after the failure: pending %v, ended %d; want pending, 500", res.Signal.Pending(), res.Ended)
	}
	f.clock.Advance(time.Second)
	late := f.mint(t, "agent-1", "r", 0) // after the signal: not its business
	n, err := f.b.ResumeContainment(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("resume: %d, %v", n, err)
	}
	sig, err := f.b.GetSignal(context.Background(), res.Signal.ID)
	if err != nil || sig.Pending() || sig.Containment.Ended != 701 {
		t.Fatalf("signal after resuming: %+v, %v", sig.Containment, err)
	}
	if got := f.lease(t, late.ID); got.State != leases.StateActive {
		t.Errorf("a lease minted after the signal is %s", got.State)
	}
	if c := f.counts(t); c[leases.StateRevoking] != 701 || c[leases.StateActive] != 1 {
		t.Errorf("counts %v", c)
	}
	if n, _ := f.b.ResumeContainment(context.Background()); n != 0 {
		t.Errorf("resumed %d again", n)
	}
}

// TestOperatorQuarantine: an operator quarantines an agent (with a reason)
// and its leases end; quarantining it again is a conflict.
func TestOperatorQuarantine(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	l := f.mint(t, "agent-1", "r", 0)
	cases := []struct {
		name, id, reason, code string
	}{
		{"no reason", "test/agent-1", "", broker.EINVALID},
		{"not an agent id", "nobody", "r", broker.EINVALID},
	}
	for _, c := range cases {
		if _, _, err := f.b.QuarantineAgent(ctx, operator, c.id, c.reason, ""); broker.ErrorCode(err) != c.code {
			t.Errorf("%s: %v, want %s", c.name, err, c.code)
		}
	}
	a, n, err := f.b.QuarantineAgent(ctx, operator, "test/agent-1", "investigating", "")
	if err != nil || n != 1 || !a.QuarantinedAt(f.clock.Now()) || a.Quarantine.By.ID != "alice" {
		t.Fatalf("quarantine: %+v, %d, %v", a, n, err)
	}
	if got := f.lease(t, l.ID); got.State != leases.StateRevoking {
		t.Errorf("the agent's lease is %s", got.State)
	}
	if _, _, err := f.b.QuarantineAgent(ctx, operator, "test/agent-1", "again", ""); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Errorf("quarantining twice: %v, want ECONFLICT", err)
	}
	// An agent valet never saw can be quarantined ahead of time; its
	// record says it was never seen.
	if a, _, err := f.b.QuarantineAgent(ctx, operator, "test/future", "known bad", ""); err != nil || !a.FirstSeen.IsZero() || !a.LastSeen.IsZero() {
		t.Fatalf("quarantine ahead: %+v, %v", a, err)
	}
	_, err = f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "future"), Role: "r"})
	if broker.ErrorCode(err) != broker.EQUARANTINED {
		t.Fatalf("mint of an agent quarantined ahead: %v", err)
	}
}

// TestAutomaticReleaseAndSightings: with signals.auto_release set, a
// signal's quarantine ends at its time (ReleaseDue records it); Run writes
// sightings.
func TestAutomaticReleaseAndSightings(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) { c.Signals.AutoRelease = config.Duration(time.Hour) })
	ctx := context.Background()
	f.mint(t, "agent-1", "r", 0)
	res := f.raise(t, source(t, nil), broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: agents.SeverityHigh, Reason: "r"})
	if len(res.Quarantined) != 1 {
		t.Fatalf("not quarantined: %+v", res)
	}
	if n, err := f.b.ReleaseDue(ctx); err != nil || n != 0 {
		t.Fatalf("ReleaseDue before its time: %d, %v", n, err)
	}
	f.clock.Advance(time.Hour)
	// Free from its release time on, recorded or not.
	f.mint(t, "agent-1", "r", 0)
	if n, err := f.b.ReleaseDue(ctx); err != nil || n != 1 {
		t.Fatalf("ReleaseDue at its time: %d, %v", n, err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.b.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run's timers: refusal summaries, sightings, mass-revocation retries.
	waitUntil(t, "Run arms its timers", func() bool { return f.clock.Waiters() == 3 })
	f.clock.Advance(broker.SightingInterval)
	waitUntil(t, "the sightings are written", func() bool {
		a, err := f.store.GetAgent(ctx, "test/agent-1")
		return err == nil && slices.Equal(a.Roles, []string{"r"})
	})
	a, err := f.store.GetAgent(ctx, "test/agent-1")
	if err != nil || a.Quarantine != nil || a.LastRelease == nil || a.LastRelease.By != audit.SystemActor {
		t.Fatalf("agent after the automatic release: %+v, %v", a, err)
	}
	if got := f.auditKinds(t); !slices.Contains(got, "agent.release/allow") {
		t.Fatalf("no release record: %v", got)
	}
}

// recordingDetector raises a low signal for every mint of role "r".
type recordingDetector struct{ seen chan broker.Observation }

func (d *recordingDetector) Name() string { return "test-detector" }
func (d *recordingDetector) Policy() broker.SignalPolicy {
	return broker.SignalPolicy{AllowedActions: []agents.Action{agents.ActionAlert}}
}
func (d *recordingDetector) Observe(o broker.Observation) []broker.Detection {
	d.seen <- o
	if o.Kind != broker.ObserveMint {
		return nil
	}
	return []broker.Detection{{Subject: agentSubject(o.AgentID), Severity: agents.SeverityLow, Reason: "mint of " + o.Role}}
}

// TestDetectorHook: detectors see mints and denials, and what they detect
// is raised through the signal pipeline by Run.
func TestDetectorHook(t *testing.T) {
	d := &recordingDetector{seen: make(chan broker.Observation, 10)}
	f := newFixture(t, func(c *fixtureConfig) { c.Detectors = []broker.Detector{d} })
	l := f.mint(t, "agent-1", "r", 0)
	if o := <-d.seen; o.Kind != broker.ObserveMint || o.AgentID != "test/agent-1" || o.LeaseID != l.ID {
		t.Fatalf("observation %+v", o)
	}
	if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "agent-1"), Role: "missing"}); err == nil {
		t.Fatal("an unknown role minted")
	}
	if o := <-d.seen; o.Kind != broker.ObserveDenied || o.Role != "missing" {
		t.Fatalf("observation %+v", o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// The gate changes once the signal's transaction has committed.
	waitUntil(t, "the detection raises the agent's risk", func() bool {
		return f.store.Gate("test/agent-1").Risk.Value(f.clock.Now(), time.Hour) == 10
	})
	ss, _ := f.store.ListSignals(context.Background(), agents.SignalFilter{AgentID: "test/agent-1"})
	if len(ss) != 1 || ss[0].Source.String() != "detector:test-detector" || ss[0].Action != agents.ActionAlert {
		t.Fatalf("signals %+v, want the detector's alert", ss)
	}
}

// TestSignalActionByPolicy: without an asked-for action, the source's
// action for the severity decides, else signals.actions', capped at what
// the source may cause.
func TestSignalActionByPolicy(t *testing.T) {
	f := newFixture(t, nil)
	f.mint(t, "agent-1", "r", 0)
	cases := []struct {
		name     string
		edit     func(*broker.SignalSourceConfig)
		severity agents.Severity
		want     agents.Action
	}{
		{"signals.actions by severity", nil, agents.SeverityMedium, agents.ActionRevoke},
		{"the source's own action", func(c *broker.SignalSourceConfig) { c.Actions.Medium = agents.ActionAlert }, agents.SeverityMedium, agents.ActionAlert},
		{"capped at the allowed", func(c *broker.SignalSourceConfig) {
			c.AllowedActions = []agents.Action{agents.ActionAlert, agents.ActionRevoke}
		},
			agents.SeverityCritical, agents.ActionRevoke},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := f.raise(t, source(t, c.edit), broker.SignalRequest{Subject: agentSubject("test/agent-1"), Severity: c.severity, Reason: "r"})
			if res.Signal.Action != c.want {
				t.Fatalf("action %s, want %s", res.Signal.Action, c.want)
			}
		})
	}
}
