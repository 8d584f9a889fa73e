package leases_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestUnrevocableCredentialReadsLiveUntilItsExpiry: a backend that cannot
// revoke its credentials (leases.ErrUnrevocable) is asked once; the lease
// then says so (revoking, unrevocable, to end expired) and is not retried,
// and it reads expired only once the latest time the credential can be
// valid plus ExpiryGrace has passed — never released or revoked — however
// the lease ended.
func TestUnrevocableCredentialReadsLiveUntilItsExpiry(t *testing.T) {
	const ttl = 10 * time.Minute
	cases := []struct {
		name string
		// end ends the lease (created at t0, expiring ttl later) and
		// returns it revoking, as the broker or the expirer would.
		end        func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease
		credential time.Duration // the credential's own life past the lease's expiry (0: none)
		pending    bool          // the lease stays pending: an interrupted mint
	}{
		{name: "released by its agent", end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			return leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0.Add(time.Minute))
		}},
		{name: "revoked by an operator", end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			return leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0.Add(time.Minute))
		}},
		{name: "expired with a credential that outlives it", credential: 50 * time.Minute, end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			ended, err := s.ExpireDue(context.Background(), l.ExpiresAt, 10)
			if err != nil || len(ended) != 1 || ended[0].State != leases.StateRevoking {
				t.Fatalf("ExpireDue = %+v, %v; want the lease revoking", ended, err)
			}
			return ended[0]
		}},
		{name: "recovered after an interrupted mint", pending: true, end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			rec, err := s.RecoverPending(context.Background(), t0.Add(time.Minute))
			if err != nil || len(rec) != 1 {
				t.Fatalf("RecoverPending = %+v, %v", rec, err)
			}
			return rec[0]
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			s := MustOpenStore(t)
			clk := clock.NewFake(t0)
			be := leasetest.NewFakeBackend(0)
			be.Unrevocable = true
			q := leasetest.NewQueue(s, be, clk, 3)
			var seen []string
			q.Cfg().OnAttempt = func(outcome string) { seen = append(seen, outcome) }

			l := leasetest.NewPending(t0, "a", ttl)
			if c.credential > 0 {
				l.CredentialExpires = l.ExpiresAt.Add(c.credential)
			}
			if c.pending {
				leasetest.MustCreate(t, s, l)
			} else {
				l = leasetest.MustActivate(t, s, l)
			}
			validUntil := l.ExpiresAt.Add(c.credential)
			deadline := validUntil.Add(leases.ExpiryGrace)
			ended := c.end(t, s, l)
			clk.Set(ended.EndedAt)

			got, err := q.RevokeNow(ctx, ended)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != leases.StateRevoking || !got.Unrevocable || got.EndReason != leases.StateExpired ||
				!got.NextAttempt.Equal(deadline) || !strings.Contains(got.LastError, leasetest.ErrCannotRevoke.Error()) {
				t.Fatalf("after the attempt the lease is %+v; want revoking, unrevocable, to end expired at %s, saying why", got, deadline)
			}
			if kinds := leasetest.AuditKinds(t, s, l.ID); kinds[len(kinds)-1] != audit.KindUnrevocable {
				t.Fatalf("audit kinds %v; want the impossible revocation recorded", kinds)
			}
			recs, _ := s.ListAudit(ctx, audit.Filter{LeaseID: l.ID, Newest: true, Limit: 1})
			if r := recs[0].Reason; !strings.Contains(r, "stays valid at the backend until "+validUntil.UTC().Format(time.RFC3339)) {
				t.Fatalf("the record says %q; want when the credential dies", r)
			}
			leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateRevoking: 1})

			// Nothing is due before the credential is dead: no retry, no
			// irrevocable alarm.
			if due, _ := s.DueRevocations(deadline.Add(-time.Nanosecond), 10); len(due) != 0 {
				t.Fatalf("due before the deadline: %+v", due)
			}
			leasetest.StartQueue(t, q)
			clk.Set(deadline)
			q.Kick()
			leasetest.Eventually(t, "the lease reads expired", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateExpired })
			if n := be.CallsFor(l.ID); n != 1 {
				t.Errorf("the backend was asked %d times; once is enough to learn it cannot revoke", n)
			}
			kinds := leasetest.AuditKinds(t, s, l.ID)
			if kinds[len(kinds)-1] != audit.KindExpire || slices.Contains(kinds, audit.KindRevoked) || slices.Contains(kinds, audit.KindIrrevocable) {
				t.Errorf("audit kinds %v; want it to end with an expiry, never revoked nor irrevocable", kinds)
			}
			recs, _ = s.ListAudit(ctx, audit.Filter{LeaseID: l.ID, Newest: true, Limit: 1})
			if r := recs[0].Reason; !strings.Contains(r, "could not be revoked; it expired at the backend at "+validUntil.UTC().Format(time.RFC3339)) {
				t.Errorf("the last record says %q", r)
			}
			if !slices.Equal(seen, []string{"unrevocable", "expired"}) {
				t.Errorf("outcomes %v; want unrevocable, then expired", seen)
			}
			leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateExpired: 1})
			leasetest.MustVerifyAudit(t, s)
		})
	}
}
