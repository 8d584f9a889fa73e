package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

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
	return newFixture(t, func(c *broker.Config) {
		c.Roles = append(c.Roles,
			config.Defaulted(func(r *broker.Role) {
				r.Name, r.Backend, r.Approval.Required, r.Approval.Approvers = "guarded", "ext", 2, approvers
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
