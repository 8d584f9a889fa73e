package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/config"
)

// TestRedeemGrant: the agent that asked redeems an approved grant once,
// before its deadline, for exactly the request that was approved, if the
// policy allows it (invariant 9). A redemption mints a lease that names the
// grant and its approvers and records the lease on the grant; a refused
// one mints nothing and leaves the grant approved.
func TestRedeemGrant(t *testing.T) {
	ctx := context.Background()
	alice := &broker.Operator{Name: "alice", Method: "token"}
	cases := []struct {
		name    string
		asker   string
		redeem  func(t *testing.T, f *fixture) string // the attestation; default: the asker's
		approve bool                                  // alice approves first (default true unless pending)
		pending bool
		glass   bool
		before  func(t *testing.T, f *fixture, id string)
		// want
		code    string
		msg     string
		state   grants.State // stored
		records []string
	}{
		{
			name: "the asking agent redeems", asker: "asker",
			state: grants.StateRedeemed, records: []string{"grant.redeem/allow", "mint/allow"},
		},
		{
			name: "a second redemption", asker: "asker",
			before: func(t *testing.T, f *fixture, id string) {
				if _, err := f.b.RedeemGrant(ctx, broker.RedeemRequest{Attestation: f.attest(t, "asker"), GrantID: id}); err != nil {
					t.Fatal(err)
				}
			},
			code: broker.ECONFLICT, msg: "is redeemed, not approved", state: grants.StateRedeemed,
		},
		{
			name: "another agent", asker: "asker",
			redeem: func(t *testing.T, f *fixture) string { return f.attest(t, "thief") },
			code:   broker.ENOTFOUND, state: grants.StateApproved,
		},
		{
			name: "before it is approved", asker: "asker", pending: true,
			code: broker.ECONFLICT, msg: "is pending, not approved", state: grants.StatePending,
		},
		{
			name: "after the redeem deadline", asker: "asker",
			before: func(t *testing.T, f *fixture, id string) { f.clock.Advance(16 * time.Minute) },
			code:   broker.ECONFLICT, msg: "is expired", state: grants.StateApproved,
		},
		{
			name: "the policy forbids it", asker: "no-redeem",
			code: broker.EFORBIDDEN, msg: "may not redeem role admin", state: grants.StateApproved, records: []string{"grant.redeem/deny"},
		},
		{
			name: "a break-glass grant", asker: "asker", glass: true,
			code: broker.ECONFLICT, msg: "cannot be redeemed", state: grants.StateRedeemed,
		},
		{
			name: "an attestation that does not verify", asker: "asker",
			redeem: func(*testing.T, *fixture) string { return "not.a.token" },
			code:   broker.EUNAUTHORIZED, state: grants.StateApproved, records: []string{"grant.redeem/deny"},
		},
		{
			name: "the grant was changed after its approval", asker: "asker",
			before: func(t *testing.T, f *fixture, id string) {
				var decodeErr error
				err := f.store.Tamper("grants", []byte(id), func(v []byte) []byte {
					var g map[string]any
					if decodeErr = json.Unmarshal(v, &g); decodeErr != nil {
						return v
					}
					g["ttl"] = "24h0m0s"
					out, _ := json.Marshal(g)
					return out
				})
				if err == nil {
					err = decodeErr
				}
				if err != nil {
					t.Fatal(err)
				}
			},
			code: broker.EFORBIDDEN, msg: "approved for a different request", state: grants.StateApproved, records: []string{"grant.redeem/deny"},
		},
		{
			name: "the mint fails", asker: "asker",
			before: func(t *testing.T, f *fixture, id string) {
				f.be.mint = func(context.Context, backends.MintRequest) (*backends.Credential, error) {
					return nil, errors.New("permission denied at backend")
				}
			},
			code: broker.EBADGATEWAY, state: grants.StateApproved,
			records: []string{"grant.redeem/allow", "mint.failed/allow", "lease.revoked/", "grant.redeem/deny"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
					r.Name, r.Backend, r.Approval.Required, r.Approval.BreakGlass.Allowed = "admin", "ext", 1, true
				}))
				writePolicy(t, cfg, "redeem.cedar", `forbid(principal, action == Action::"redeem", resource) when { principal.sub == "no-redeem" };`)
			})
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, tc.asker), Role: "admin", Reason: "rotate the root key", BreakGlass: tc.glass})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v; want a grant", res, err)
			}
			id := res.Grant.ID
			if !tc.pending && !tc.glass {
				if _, err := f.b.ApproveGrant(ctx, alice, id, "ok", ""); err != nil {
					t.Fatal(err)
				}
			}
			if tc.before != nil {
				tc.before(t, f, id)
			}
			tok := f.attest(t, tc.asker)
			if tc.redeem != nil {
				tok = tc.redeem(t, f)
			}
			leasesBefore := f.counts(t)
			mark := f.auditMark(t)
			out, err := f.b.RedeemGrant(ctx, broker.RedeemRequest{Attestation: tok, GrantID: id, RequestID: "redeem-1"})
			if got := kinds(f.written(t, mark)); !slices.Equal(got, tc.records) {
				t.Errorf("audit records %v, want %v", got, tc.records)
			}
			stored, gerr := f.grants.Get(ctx, id)
			if gerr != nil {
				t.Fatal(gerr)
			}
			if stored.State != tc.state {
				t.Errorf("stored grant is %s, want %s", stored.State, tc.state)
			}
			if tc.code != "" {
				if out != nil || broker.ErrorCode(err) != tc.code || !strings.Contains(broker.ErrorMessage(err), tc.msg) {
					t.Fatalf("RedeemGrant = %+v, %v; want %s saying %q", out, err, tc.code, tc.msg)
				}
				if got := f.counts(t); got[leases.StateActive] != leasesBefore[leases.StateActive] {
					t.Errorf("a refused redemption left an active lease: %v, was %v", got, leasesBefore)
				}
				return
			}
			if err != nil || out.Lease == nil || out.Grant == nil {
				t.Fatalf("RedeemGrant = %+v, %v; want a lease and its grant", out, err)
			}
			l := f.lease(t, out.Lease.ID)
			if l.State != leases.StateActive || l.GrantID != id || !slices.Equal(l.Approvers, []string{"alice"}) || l.AgentID != "test/"+tc.asker {
				t.Errorf("lease %+v, want active, of the asker, naming the grant and its approver", l)
			}
			if stored.LeaseID != l.ID {
				t.Errorf("grant records lease %q, want %q", stored.LeaseID, l.ID)
			}
		})
	}
}
