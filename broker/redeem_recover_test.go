package broker_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// TestRecoverRedeemInterruptedByAStop: a replica that stopped (a crash,
// SIGKILL) between redeeming a grant and recording its lease leaves the
// grant redeemed without a lease. Once no mint can still be under way
// (twice limits.mint_timeout plus a minute, as for pending leases), the
// grant-expiry job tells the truth: the grant names the lease that was
// minted, or, when none was, is given back to be redeemed again before
// its deadline.
func TestRecoverRedeemInterruptedByAStop(t *testing.T) {
	ctx := context.Background()
	alice := &broker.Operator{Name: "alice", Method: "token"}
	cases := []struct {
		name string
		// leased: the mint had recorded its lease when the replica stopped.
		leased bool
		after  time.Duration
		// want
		state   grants.State
		records []string
		again   bool // the agent redeems it again
	}{
		{name: "no lease, after the grace", after: 81 * time.Second, state: grants.StateApproved, records: []string{"grant.redeem/deny"}, again: true},
		{name: "no lease, a mint may still be under way", after: 79 * time.Second, state: grants.StateRedeemed},
		{name: "the lease was recorded, not on the grant", leased: true, after: 81 * time.Second, state: grants.StateRedeemed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
					r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1
				}))
			})
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "asker"), Role: "admin", Reason: "rotate the root key"})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v; want a grant", res, err)
			}
			id := res.Grant.ID
			if _, err := f.b.ApproveGrant(ctx, alice, id, "ok", ""); err != nil {
				t.Fatal(err)
			}
			// The redeem's compare-and-swap committed; then the replica
			// stopped.
			g, err := f.grants.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			redeemedAt := f.clock.Now()
			binding := grants.Binding(grants.Request{AgentID: g.AgentID, Role: g.Role, TTL: g.TTL, Scope: g.Scope, Reason: g.Reason, Lineage: g.Lineage})
			if _, err := f.grants.Redeem(ctx, id, g.AgentID, binding, redeemedAt, audit.Entry{Kind: audit.KindGrantRedeem, Decision: audit.Allow}); err != nil {
				t.Fatal(err)
			}
			var leaseID string
			if tc.leased {
				l := &leases.Lease{ID: leases.NewID(redeemedAt), AgentID: g.AgentID, Role: g.Role, Backend: "ext", State: leases.StateActive,
					CreatedAt: redeemedAt, ExpiresAt: redeemedAt.Add(time.Hour), GrantID: id}
				if err := f.store.CreateActive(ctx, l, redeemedAt, audit.Entry{Kind: audit.KindMint, Decision: audit.Allow}); err != nil {
					t.Fatal(err)
				}
				leaseID = l.ID
			}
			f.clock.Advance(tc.after)
			mark := f.auditMark(t)
			if _, err := f.b.RecoverRedeemedGrants(ctx); err != nil {
				t.Fatal(err)
			}
			if got := kinds(f.written(t, mark)); !slices.Equal(got, tc.records) {
				t.Errorf("audit records %v, want %v", got, tc.records)
			}
			stored, err := f.grants.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if stored.State != tc.state || stored.LeaseID != leaseID {
				t.Fatalf("grant is %s naming lease %q; want %s naming %q", stored.State, stored.LeaseID, tc.state, leaseID)
			}
			if tc.records != nil {
				if r := f.written(t, mark)[0]; r.Actor.Type != audit.ActorSystem || !strings.Contains(r.Reason, "did not complete") {
					t.Errorf("the give-back record: %+v", r)
				}
			}
			out, err := f.b.RedeemGrant(ctx, broker.RedeemRequest{Attestation: f.attest(t, "asker"), GrantID: id})
			if tc.again != (err == nil) {
				t.Fatalf("RedeemGrant again = %+v, %v; want success %v", out, err, tc.again)
			}
			if tc.again && (out.Lease.GrantID != id || f.lease(t, out.Lease.ID).State != leases.StateActive) {
				t.Fatalf("the second redeem minted %+v", out.Lease)
			}
		})
	}
}
