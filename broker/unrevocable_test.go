package broker_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/config"
)

// TestUnrevocableBackendLeasesNeverReadEndedEarly: a backend that cannot
// revoke its credentials (backends.ErrUnrevocable, as Google's access and
// ID tokens) is asked once, and every way a lease can end records the
// request truthfully: the lease reads revoking, unrevocable, to end
// expired, while its credential still works, and expired (never released
// or revoked) once the credential's own expiry plus the grace has passed.
func TestUnrevocableBackendLeasesNeverReadEndedEarly(t *testing.T) {
	alice := &broker.Operator{Name: "alice", Method: "token"}
	cases := []struct {
		name string
		role string // "r" on backend ext, "fixed-r" on the fixed-lifetime backend (an hour)
		// end ends the lease and returns it as the call returned it (nil:
		// read it from the store).
		end func(t *testing.T, f *fixture, l *leases.Lease) *leases.Lease
		// records are the audit records of the end, before the expiry.
		records []string
		// validFor is how long after the mint the credential lives.
		validFor time.Duration
	}{
		{
			name: "the agent releases", role: "r", validFor: time.Minute,
			end: func(t *testing.T, f *fixture, l *leases.Lease) *leases.Lease {
				out, err := f.b.EndLease(context.Background(), f.agent(t, "a"), l.ID, "", "")
				if err != nil {
					t.Fatal(err)
				}
				return out
			},
			records: []string{"lease.release/", "lease.unrevocable/"},
		},
		{
			name: "an operator revokes", role: "r", validFor: time.Minute,
			end: func(t *testing.T, f *fixture, l *leases.Lease) *leases.Lease {
				out, err := f.b.EndLease(context.Background(), broker.Caller{Operator: alice}, l.ID, "leaked", "")
				if err != nil {
					t.Fatal(err)
				}
				return out
			},
			records: []string{"lease.revoke/", "lease.unrevocable/"},
		},
		{
			name: "an operator revokes every lease of the agent", role: "r", validFor: time.Minute,
			end: func(t *testing.T, f *fixture, l *leases.Lease) *leases.Lease {
				n, err := f.b.RevokeMatching(context.Background(), alice, leases.Filter{AgentID: l.AgentID}, "contained", "")
				if err != nil || n != 1 {
					t.Fatalf("RevokeMatching = %d, %v", n, err)
				}
				return nil
			},
			records: []string{"lease.revoke/", "lease.unrevocable/"},
		},
		{
			name: "a credential that outlives its lease expires with it", role: "fixed-r", validFor: time.Hour,
			end: func(t *testing.T, f *fixture, l *leases.Lease) *leases.Lease {
				f.clock.Set(l.ExpiresAt)
				ended, err := f.store.ExpireDue(context.Background(), f.clock.Now(), 10)
				if err != nil || len(ended) != 1 {
					t.Fatalf("ExpireDue = %+v, %v", ended, err)
				}
				out, err := f.queue.RevokeNow(context.Background(), ended[0])
				if err != nil {
					t.Fatal(err)
				}
				return out
			},
			records: []string{"lease.expire/", "lease.unrevocable/"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
					r.Name, r.Backend, r.TTL = "fixed-r", "fixed", config.Duration(time.Minute)
				}))
			})
			f.be.unrevocable = true
			start := f.clock.Now()
			if tc.role == "fixed-r" {
				f.be.mint = func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
					return &backends.Credential{Handle: "h-" + req.CorrelationID, ExpiresAt: f.clock.Now().Add(time.Hour), Data: map[string]any{"token": "x"}}, nil
				}
			}
			l := f.mint(t, "a", tc.role, time.Minute)
			f.clock.Advance(10 * time.Second)
			mark := f.auditMark(t)
			got := tc.end(t, f, l)
			if got == nil {
				got = f.lease(t, l.ID)
			}
			validUntil := start.Add(tc.validFor)
			if v := f.store.ValidUntil(got); !v.Equal(validUntil) {
				t.Fatalf("the store says the credential is valid until %s; want %s (lease %+v)", v, validUntil, got)
			}
			for _, seen := range []*leases.Lease{got, f.lease(t, l.ID)} {
				if seen.StateAt(f.clock.Now()) != leases.StateRevoking || !seen.Unrevocable || seen.EndReason != leases.StateExpired ||
					!seen.NextAttempt.Equal(validUntil.Add(leases.ExpiryGrace)) {
					t.Fatalf("the lease reads %+v; want revoking, unrevocable, to end expired a grace after %s", seen, validUntil)
				}
			}
			if k := kinds(f.written(t, mark)); !slices.Equal(k, tc.records) {
				t.Errorf("audit records %v, want %v", k, tc.records)
			}
			if n := f.be.alive(); n != 1 || len(f.be.revoked) != 0 {
				t.Fatalf("credentials alive %d, revoked %v: nothing can have been revoked", n, f.be.revoked)
			}

			// Nothing is retried while the credential lives.
			if due, _ := f.store.DueRevocations(validUntil.Add(leases.ExpiryGrace-time.Nanosecond), 10); len(due) != 0 {
				t.Fatalf("due before the credential is dead: %+v", due)
			}
			f.clock.Set(validUntil.Add(leases.ExpiryGrace))
			mark = f.auditMark(t)
			out, err := f.queue.RevokeNow(context.Background(), f.lease(t, l.ID))
			if err != nil || out.State != leases.StateExpired {
				t.Fatalf("at the deadline the lease is %+v, %v; want expired", out, err)
			}
			recs := f.written(t, mark)
			if k := kinds(recs); !slices.Equal(k, []string{"lease.expire/"}) || !strings.Contains(recs[0].Reason, "could not be revoked") {
				t.Errorf("final records %v (%q); want an expiry saying the credential could not be revoked", k, recs[0].Reason)
			}
		})
	}
}
