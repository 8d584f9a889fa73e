package broker_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// grantsFixture is a broker with a role needing two approvals from
// Alice@Example.com, bob or the SRE group, and a break-glass role with
// the same approvers.
func grantsFixture(t *testing.T) *fixture {
	t.Helper()
	approvers := broker.ApproversConfig{Operators: []string{"Alice@Example.com", "bob"}, Groups: []string{"SRE"}}
	return newFixture(t, func(c *fixtureConfig) {
		c.Roles = append(c.Roles,
			config.Defaulted(func(r *broker.Role) {
				r.Name, r.Backend, r.Approval.Required, r.Approval.Approvers = "guarded", "ext", 2, approvers
				r.Approval.RequesterClaims = []string{"email", "actor", "owner", "ext.owner"}
			}),
			config.Defaulted(func(r *broker.Role) {
				r.Name, r.Backend, r.Approval.Required, r.Approval.Approvers = "glass", "ext", 1, approvers
				r.Approval.BreakGlass.Allowed = true
			}))
	})
}

// ownedAttestation is an attestation whose email claim names the person
// behind the agent.
func (f *fixture) ownedAttestation(t *testing.T, sub, email string) string {
	t.Helper()
	tok, err := f.issuer.Sign(map[string]any{"sub": sub, "aud": "valet", "email": email})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// refusals counts the audit records of kind that record a refused
// decision.
func (f *fixture) refusals(t *testing.T, kind string) int {
	t.Helper()
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: kind, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Decision == audit.Deny && strings.HasPrefix(r.Reason, "refused: ") && r.Details["grant_id"] != "" {
			n++
		}
	}
	return n
}

func TestDecisionsCompareIdentitiesCaseInsensitively(t *testing.T) {
	f := grantsFixture(t)
	ctx := context.Background()
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.ownedAttestation(t, "owned", "OWNER@example.com"), Role: "guarded", Reason: "migrate"})
	if err != nil || res.Grant == nil {
		t.Fatalf("request: %+v %v", res, err)
	}
	id := res.Grant.ID
	steps := []struct {
		name  string
		op    broker.Operator
		code  string // "" for success
		msg   string
		state grants.State
	}{
		{"a requester in another case", broker.Operator{Name: "owner@example.com", Groups: []string{"sre"}}, broker.EFORBIDDEN,
			"owner@example.com asked for this access and cannot approve it", grants.StatePending},
		{"an approver named in another case", broker.Operator{Name: "alice@example.com"}, "", "", grants.StatePending},
		{"the same approver again, in upper case", broker.Operator{Name: "ALICE@EXAMPLE.COM", Groups: []string{"sre"}}, broker.ECONFLICT,
			"already approved", grants.StatePending},
		{"an operator outside the approvers", broker.Operator{Name: "dave", Groups: []string{"staff"}}, broker.EFORBIDDEN,
			"operator dave is not among the approvers of role guarded", grants.StatePending},
		{"a member of an approver group in another case", broker.Operator{Name: "carol", Groups: []string{"Sre"}}, "", "", grants.StateApproved},
	}
	for _, s := range steps {
		g, err := f.b.ApproveGrant(ctx, &s.op, id, "", "")
		if s.code == "" && err != nil || s.code != "" && (broker.ErrorCode(err) != s.code || !strings.Contains(broker.ErrorMessage(err), s.msg)) {
			t.Fatalf("%s: %v, want %q saying %q", s.name, err, s.code, s.msg)
		}
		if s.code == "" && g.State != s.state {
			t.Fatalf("%s: grant %s, want %s", s.name, g.State, s.state)
		}
	}
	if g, _ := f.b.GetGrant(ctx, broker.Caller{Operator: &broker.Operator{Name: "x"}}, id); strings.Join(g.Approvers(), ",") != "alice@example.com,carol" {
		t.Fatalf("approvers %v", g.Approvers())
	}
	if n := f.refusals(t, audit.KindGrantApprove); n != 2 {
		t.Fatalf("%d refused approvals audited, want 2 (the requester and the outsider)", n)
	}

	// A denial by an operator outside the approvers is refused and audited.
	res, err = f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "other"), Role: "guarded", Reason: "again"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.DenyGrant(ctx, &broker.Operator{Name: "dave"}, res.Grant.ID, "no", ""); broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Fatalf("deny by an outsider: %v", err)
	}
	if g, _ := f.b.GetGrant(ctx, broker.Caller{Operator: &broker.Operator{Name: "x"}}, res.Grant.ID); g.State != grants.StatePending {
		t.Fatalf("grant %s after a refused denial", g.State)
	}
	// An approver's denial ends it, and is not recorded as a refusal.
	if g, err := f.b.DenyGrant(ctx, &broker.Operator{Name: "BOB"}, res.Grant.ID, "no", ""); err != nil || g.State != grants.StateDenied {
		t.Fatalf("deny by an approver: %+v %v", g, err)
	}
	if n := f.refusals(t, audit.KindGrantDeny); n != 1 {
		t.Fatalf("%d refused denials audited, want 1", n)
	}
}

// TestRequesterClaimsOfEveryShape: a requester claim names the people
// behind an agent whether it holds one name or a list of them (several
// owners, an email claim sent as an array); none of them may approve.
func TestRequesterClaimsOfEveryShape(t *testing.T) {
	f := grantsFixture(t)
	ctx := context.Background()
	cases := []struct {
		name   string
		claims map[string]any
	}{
		{"email as a string", map[string]any{"email": "alice@example.com"}},
		{"email as an array", map[string]any{"email": []any{"alice@example.com"}}},
		{"one of several owners", map[string]any{"owner": []any{"bob@example.net", "ALICE@example.com"}}},
		{"an actor among other values", map[string]any{"actor": []any{42.0, "Alice@Example.com"}}},
		{"a nested claim named by its path", map[string]any{"ext": map[string]any{"owner": "alice@example.com"}}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims := map[string]any{"sub": fmt.Sprintf("owned-%d", i), "aud": "valet"}
			maps.Copy(claims, c.claims)
			tok, err := f.issuer.Sign(claims)
			if err != nil {
				t.Fatal(err)
			}
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "guarded", Reason: "migrate"})
			if err != nil || res.Grant == nil {
				t.Fatalf("request: %+v %v", res, err)
			}
			_, err = f.b.ApproveGrant(ctx, &broker.Operator{Name: "alice@example.com"}, res.Grant.ID, "", "")
			if broker.ErrorCode(err) != broker.EFORBIDDEN || !strings.Contains(broker.ErrorMessage(err), "cannot approve it") {
				t.Fatalf("approval by the person behind the agent: %v, want forbidden (self-approval)", err)
			}
			if g, _ := f.b.GetGrant(ctx, broker.Caller{Operator: &broker.Operator{Name: "x"}}, res.Grant.ID); len(g.Approvals) != 0 {
				t.Fatalf("refused approval recorded: %+v", g.Approvals)
			}
		})
	}
}

func TestReviewObeysDecisionRules(t *testing.T) {
	f := grantsFixture(t)
	ctx := context.Background()
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.ownedAttestation(t, "owned", "owner@example.com"), Role: "glass",
		Reason: "prod is down", BreakGlass: true})
	if err != nil || res.Grant == nil || res.Lease == nil {
		t.Fatalf("break-glass: %+v %v", res, err)
	}
	id := res.Grant.ID
	cases := []struct {
		name string
		op   broker.Operator
		code string
		msg  string
	}{
		{"an operator outside the approvers", broker.Operator{Name: "dave"}, broker.EFORBIDDEN, "operator dave is not among the approvers of role glass"},
		{"the person behind the agent", broker.Operator{Name: "Owner@Example.com", Groups: []string{"sre"}}, broker.EFORBIDDEN,
			"Owner@Example.com asked for this access and cannot review it"},
		{"the agent's own id", broker.Operator{Name: "test/owned", Groups: []string{"sre"}}, broker.EFORBIDDEN, "cannot review it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.b.ReviewGrant(ctx, &c.op, id, "all good", "")
			if broker.ErrorCode(err) != c.code || !strings.Contains(broker.ErrorMessage(err), c.msg) {
				t.Fatalf("%v, want %s saying %q", err, c.code, c.msg)
			}
			if g, _ := f.b.GetGrant(ctx, broker.Caller{Operator: &c.op}, id); g.Review != nil {
				t.Fatalf("refused review recorded: %+v", g.Review)
			}
		})
	}
	if n := f.refusals(t, audit.KindGrantReview); n != len(cases) {
		t.Fatalf("%d refused reviews audited, want %d", n, len(cases))
	}
	f.clock.Advance(time.Second)
	g, err := f.b.ReviewGrant(ctx, &broker.Operator{Name: "bob"}, id, "checked the session log", "")
	if err != nil || g.Review == nil || g.Review.Operator != "bob" {
		t.Fatalf("review by an approver: %+v %v", g, err)
	}
}

// TestGrantDecisions: operators approve, deny and review grants within the
// rules of the role's approval; each decision that counts is in the store
// and in the audit log, a refused one is audited as a refusal (or not at
// all when nothing was decided) and changes nothing.
func TestGrantDecisions(t *testing.T) {
	ctx := context.Background()
	alice, bob := &broker.Operator{Name: "alice@example.com", Method: "token"}, &broker.Operator{Name: "bob", Method: "token"}
	dave := &broker.Operator{Name: "dave", Method: "token"} // not an approver
	approve := func(op *broker.Operator) func(t *testing.T, f *fixture, id string) {
		return func(t *testing.T, f *fixture, id string) {
			t.Helper()
			if _, err := f.b.ApproveGrant(ctx, op, id, "ok", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name      string
		role      string // "guarded" (two approvals) unless set
		breakGlas bool
		before    func(t *testing.T, f *fixture, id string)
		decide    func(f *fixture, id string) (*grants.Grant, error)
		// want
		code      string
		msg       string
		state     grants.State // stored
		approvers string
		records   []string
	}{
		{
			name: "the first of two approvals",
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, bob, id, "fine", "req-1")
			},
			state: grants.StatePending, approvers: "bob", records: []string{"grant.approve/allow"},
		},
		{
			name:   "the second approval approves",
			before: approve(alice),
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, bob, id, "fine", "req-1")
			},
			state: grants.StateApproved, approvers: "alice@example.com,bob", records: []string{"grant.approve/allow"},
		},
		{
			name: "an approver denies",
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.DenyGrant(ctx, bob, id, "not now", "req-1")
			},
			state: grants.StateDenied, records: []string{"grant.deny/deny"},
		},
		{
			name:   "an approved grant is denied before it is redeemed",
			before: func(t *testing.T, f *fixture, id string) { approve(alice)(t, f, id); approve(bob)(t, f, id) },
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.DenyGrant(ctx, bob, id, "changed my mind", "req-1")
			},
			state: grants.StateDenied, approvers: "alice@example.com,bob", records: []string{"grant.deny/deny"},
		},
		{
			name: "approve a denied grant",
			before: func(t *testing.T, f *fixture, id string) {
				if _, err := f.b.DenyGrant(ctx, bob, id, "no", ""); err != nil {
					t.Fatal(err)
				}
			},
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, alice, id, "ok", "req-1")
			},
			code: broker.ECONFLICT, msg: "is denied", state: grants.StateDenied,
		},
		{
			name:   "approve a grant past its deadline",
			before: func(t *testing.T, f *fixture, id string) { f.clock.Advance(61 * time.Minute) },
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, alice, id, "ok", "req-1")
			},
			code: broker.ECONFLICT, msg: "is expired", state: grants.StatePending,
		},
		{
			name:   "deny a grant past its deadline",
			before: func(t *testing.T, f *fixture, id string) { f.clock.Advance(61 * time.Minute) },
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.DenyGrant(ctx, alice, id, "no", "req-1")
			},
			code: broker.ECONFLICT, msg: "is expired", state: grants.StatePending,
		},
		{
			name: "an operator outside the approvers approves",
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, dave, id, "ok", "req-1")
			},
			code: broker.EFORBIDDEN, msg: "not among the approvers", state: grants.StatePending, records: []string{"grant.approve/deny"},
		},
		{
			name: "no such grant",
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ApproveGrant(ctx, bob, "01J00000000000000000000000", "", "")
			},
			code: broker.ENOTFOUND, state: grants.StatePending,
		},
		{
			name: "review an approval grant",
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ReviewGrant(ctx, bob, id, "looked at it", "req-1")
			},
			code: broker.ECONFLICT, msg: "is not a break-glass grant", state: grants.StatePending,
		},
		{
			name: "review break-glass access", role: "glass", breakGlas: true,
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ReviewGrant(ctx, bob, id, "session log is clean", "req-1")
			},
			state: grants.StateRedeemed, records: []string{"grant.review/allow"},
		},
		{
			name: "review break-glass access without a comment", role: "glass", breakGlas: true,
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ReviewGrant(ctx, bob, id, "  ", "req-1")
			},
			code: broker.EINVALID, msg: "needs a comment", state: grants.StateRedeemed,
		},
		{
			name: "review break-glass access twice", role: "glass", breakGlas: true,
			before: func(t *testing.T, f *fixture, id string) {
				if _, err := f.b.ReviewGrant(ctx, alice, id, "fine", ""); err != nil {
					t.Fatal(err)
				}
			},
			decide: func(f *fixture, id string) (*grants.Grant, error) {
				return f.b.ReviewGrant(ctx, bob, id, "fine too", "req-1")
			},
			code: broker.ECONFLICT, msg: "was reviewed by alice@example.com already", state: grants.StateRedeemed,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := grantsFixture(t)
			role := tc.role
			if role == "" {
				role = "guarded"
			}
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "asker"), Role: role, Reason: "the database is down", BreakGlass: tc.breakGlas})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v; want a grant", res, err)
			}
			id := res.Grant.ID
			if tc.before != nil {
				tc.before(t, f, id)
			}
			mark := f.auditMark(t)
			g, err := tc.decide(f, id)
			recs := f.written(t, mark)
			if got := kinds(recs); !slices.Equal(got, tc.records) {
				t.Errorf("audit records %v, want %v", got, tc.records)
			}
			stored, gerr := f.grants.Get(ctx, id)
			if gerr != nil {
				t.Fatal(gerr)
			}
			if stored.State != tc.state || strings.Join(stored.Approvers(), ",") != tc.approvers {
				t.Errorf("stored grant is %s approved by %q, want %s approved by %q", stored.State, stored.Approvers(), tc.state, tc.approvers)
			}
			if tc.code != "" {
				if g != nil || broker.ErrorCode(err) != tc.code || !strings.Contains(broker.ErrorMessage(err), tc.msg) {
					t.Fatalf("decision = %+v, %v; want %s saying %q", g, err, tc.code, tc.msg)
				}
				return
			}
			if err != nil || g.State != tc.state {
				t.Fatalf("decision = %+v, %v; want the grant %s", g, err, tc.state)
			}
			if r := recs[0]; r.Actor.Type != audit.ActorOperator || r.Details["grant_id"] != id || r.RequestID != "req-1" {
				t.Errorf("record %+v, want the operator's, for the grant and the request", r)
			}
			if tc.state == grants.StateApproved && !stored.RedeemBy.Equal(f.clock.Now().Add(15*time.Minute)) {
				t.Errorf("approved grant redeemable until %s, want 15m (redeem_within) from now", stored.RedeemBy)
			}
		})
	}
}

// A grant whose role is no longer configured cannot be approved (its
// approvers are unknown), but any operator may deny it.
func TestDecisionsOnAGrantOfARemovedRole(t *testing.T) {
	ctx := context.Background()
	f := grantsFixture(t)
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "asker"), Role: "guarded", Reason: "migrate"})
	if err != nil || res.Grant == nil {
		t.Fatalf("Mint = %+v, %v", res, err)
	}
	cfg := *f.cfg
	cfg.Roles = slices.DeleteFunc(slices.Clone(cfg.Roles), func(r broker.Role) bool { return r.Name == "guarded" })
	b, err := broker.New(broker.Options{Config: &cfg, Store: f.store, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
		Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn}, Revoker: f.queue, Clock: f.clock, Grants: f.grants})
	if err != nil {
		t.Fatal(err)
	}
	dave := &broker.Operator{Name: "dave", Method: "token"}
	if _, err := b.ApproveGrant(ctx, dave, res.Grant.ID, "ok", ""); broker.ErrorCode(err) != broker.ECONFLICT ||
		!strings.Contains(broker.ErrorMessage(err), "no longer configured") {
		t.Fatalf("approve: %v, want ECONFLICT: the role is no longer configured", err)
	}
	if g, err := b.DenyGrant(ctx, dave, res.Grant.ID, "role is gone", ""); err != nil || g.State != grants.StateDenied {
		t.Fatalf("deny: %+v, %v; want it denied", g, err)
	}
}

// TestWaitGrant: a long poll returns as soon as the grant is decided, or
// when its wait is over, with the grant as it then is.
func TestWaitGrant(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		act   func(t *testing.T, f *fixture, id string) // once the poll waits
		state grants.State
	}{
		{"approved", func(t *testing.T, f *fixture, id string) {
			if _, err := f.b.ApproveGrant(ctx, &broker.Operator{Name: "alice"}, id, "ok", ""); err != nil {
				t.Fatal(err)
			}
		}, grants.StateApproved},
		{"denied", func(t *testing.T, f *fixture, id string) {
			if _, err := f.b.DenyGrant(ctx, &broker.Operator{Name: "alice"}, id, "no", ""); err != nil {
				t.Fatal(err)
			}
		}, grants.StateDenied},
		{"the wait is over", func(t *testing.T, f *fixture, id string) { f.clock.Advance(30 * time.Second) }, grants.StatePending},
		{"the server stops", func(t *testing.T, f *fixture, id string) { f.b.StopWaiting() }, grants.StatePending},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
			})
			id := requestGrant(t, f, "asker")
			c := f.agent(t, "asker")
			type result struct {
				g   *grants.Grant
				err error
			}
			done := make(chan result, 1)
			go func() {
				g, err := f.b.WaitGrant(ctx, c, id, 30*time.Second)
				done <- result{g, err}
			}()
			waitUntil(t, "the poll waits", func() bool { return f.b.WaitingOn(id) == 1 && f.clock.Waiters() == 1 })
			tc.act(t, f, id)
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("WaitGrant did not return within 10s")
			}
			if r.err != nil || r.g.State != tc.state {
				t.Fatalf("WaitGrant = %+v, %v; want the grant %s", r.g, r.err, tc.state)
			}
			if n := f.b.WaitingOn(id); n != 0 {
				t.Errorf("%d polls still registered after the poll returned", n)
			}
		})
	}
}
