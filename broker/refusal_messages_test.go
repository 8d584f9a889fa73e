package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// TestStoreRefusalsTellTheirReasonOnly: when a store refuses a change
// (the lease or grant changed state meanwhile, or is not in the state the
// change needs), the client is told the reason in the broker's words, never
// the store's error text (its sentinel errors are for the log).
func TestStoreRefusalsTellTheirReasonOnly(t *testing.T) {
	op := &broker.Operator{Name: "alice", Method: "token"}
	cases := []struct {
		name string
		// do runs the refused call; it returns the id of the lease or grant
		// the message must name, and the error.
		do       func(t *testing.T, f *fixture) (string, error)
		code     string
		want     string // the message, with %s for the id
		internal string // store text that must not be shown
	}{
		{
			name: "approve a denied grant",
			do: func(t *testing.T, f *fixture) (string, error) {
				id := requestGrant(t, f, "asker")
				if _, err := f.b.DenyGrant(context.Background(), op, id, "no", ""); err != nil {
					t.Fatal(err)
				}
				_, err := f.b.ApproveGrant(context.Background(), op, id, "yes", "")
				return id, err
			},
			code: broker.ECONFLICT, want: "grant %s is denied", internal: "not in a state that allows this",
		},
		{
			name: "redeem a denied grant",
			do: func(t *testing.T, f *fixture) (string, error) {
				id := requestGrant(t, f, "asker")
				if _, err := f.b.DenyGrant(context.Background(), op, id, "no", ""); err != nil {
					t.Fatal(err)
				}
				_, err := f.b.RedeemGrant(context.Background(), broker.RedeemRequest{Attestation: f.attest(t, "asker"), GrantID: id})
				return id, err
			},
			code: broker.ECONFLICT, want: "grant %s is denied, not approved", internal: "not in a state that allows this",
		},
		{
			name: "a lease expires while its backend renews it",
			do: func(t *testing.T, f *fixture) (string, error) {
				tok := f.attest(t, "renewer")
				res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "long", TTL: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				f.rn.renew = func(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
					f.clock.Advance(2 * time.Minute)
					return &backends.Renewal{ExpiresAt: req.ExpiresAt}, nil
				}
				p, err := f.b.AuthenticateAgent(context.Background(), tok, "", "")
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.b.RenewLease(context.Background(), broker.Caller{Agent: p}, broker.RenewRequest{ID: res.Lease.ID, TTL: 10 * time.Minute})
				return res.Lease.ID, err
			},
			code: broker.ECONFLICT, want: "lease %s ended while it was being renewed", internal: "not in a state that allows this",
		},
		{
			name: "a pending lease is revoked while its backend mints",
			do: func(t *testing.T, f *fixture) (string, error) {
				var id string
				f.be.mint = func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
					id = req.CorrelationID
					if _, err := f.store.End(ctx, id, leases.StateRevoked, f.clock.Now(), audit.Entry{Kind: audit.KindRevoke, Actor: audit.Actor{Type: audit.ActorOperator, ID: "bob"}}); err != nil {
						t.Fatal(err)
					}
					return ok(ctx, req)
				}
				_, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "minter"), Role: "r"})
				return id, err
			},
			code: broker.ECONFLICT, want: "lease %s was ended before its credential could be recorded", internal: "not in a state that allows this",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles,
					config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }),
					config.Defaulted(func(r *broker.Role) {
						r.Name, r.Backend, r.TTL, r.MaxTTL = "long", "renewing", config.Duration(time.Minute), config.Duration(time.Hour)
					}))
			})
			id, err := tc.do(t, f)
			msg := broker.ErrorMessage(err)
			if broker.ErrorCode(err) != tc.code || !strings.Contains(msg, strings.ReplaceAll(tc.want, "%s", id)) {
				t.Fatalf("error %v, want %s saying %q", err, tc.code, strings.ReplaceAll(tc.want, "%s", id))
			}
			if strings.Contains(msg, tc.internal) {
				t.Errorf("client message %q carries the store's error text %q", msg, tc.internal)
			}
		})
	}
}

// requestGrant asks for the fixture's role "admin", which needs one
// approval, as agent sub, and returns the pending grant's id.
func requestGrant(t *testing.T, f *fixture, sub string) string {
	t.Helper()
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, sub), Role: "admin", Reason: "fix the outage"})
	if err != nil || res.Grant == nil {
		t.Fatalf("Mint = %+v, %v; want a pending grant", res, err)
	}
	return res.Grant.ID
}
