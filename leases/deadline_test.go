package leases_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestUnconfirmedRevocationLastsUntilTheCredentialIsDead ends leases of
// every kind of backend credential in every way a lease can end, with a
// backend that never confirms a revocation. Each lease must stay revoking,
// then irrevocable (listed and counted), and be retried until the latest
// time its credential can be valid at the backend plus ExpiryGrace; only
// then may it read expired, saying that revocation was never confirmed.
func TestUnconfirmedRevocationLastsUntilTheCredentialIsDead(t *testing.T) {
	const maxBackoff = 8 * time.Second
	capabilities := []struct {
		name string
		// holder: the holder can extend the credential without valet.
		holder, renewable, selfContained bool
		// renewTo, if set, is where valet renewed the lease before it ended.
		renewTo time.Duration
		// fixed, if set, is when the credential dies at the backend, past
		// its lease (Lease.CredentialExpires), after t0.
		fixed      time.Duration
		validUntil time.Duration // after t0
	}{
		// A JWT lives until the exp of the last one issued: the lease's
		// expiry as last renewed.
		{name: "self-contained", renewable: true, selfContained: true, renewTo: 40 * time.Second, validUntil: 40 * time.Second},
		// A renewable Vault token renews itself up to the lease's maximum.
		{name: "renewable by its holder", holder: true, renewable: true, validUntil: 3 * time.Minute},
		// An external credential only valet extends dies at its expiry.
		{name: "revocable", renewTo: 30 * time.Second, renewable: true, validUntil: 30 * time.Second},
		{name: "revocable, not renewable", validUntil: 10 * time.Second},
		// A holder-renewable backend, but this lease was minted without
		// renewals: the token's own maximum is its expiry.
		{name: "holder backend, lease not renewable", holder: true, validUntil: 10 * time.Second},
		// A GitHub installation token lives its fixed hour (here 40 s)
		// past a shorter lease, renewed or not, pending or active.
		{name: "fixed lifetime past the lease", fixed: 40 * time.Second, validUntil: 40 * time.Second},
		{name: "fixed lifetime, renewed", fixed: 40 * time.Second, renewable: true, renewTo: 30 * time.Second, validUntil: 40 * time.Second},
		{name: "fixed lifetime, renewed past it", fixed: 40 * time.Second, renewable: true, renewTo: 50 * time.Second, validUntil: 50 * time.Second},
	}
	reasons := []struct {
		name    string
		pending bool // the lease ends while still pending
		end     func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease
	}{
		{name: "released", end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			return leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0.Add(time.Second))
		}},
		{name: "revoked", end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			return leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0.Add(time.Second))
		}},
		{name: "expired", end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			out, err := s.ExpireDue(context.Background(), l.ExpiresAt, 10)
			if err != nil || len(out) != 1 {
				t.Fatalf("ExpireDue = %v, %v; want the lease", out, err)
			}
			return out[0]
		}},
		{name: "abandoned", pending: true, end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			out, err := s.Abandon(context.Background(), l.ID, "", t0.Add(time.Second), audit.Entry{Kind: audit.KindMintFailed, Actor: audit.SystemActor})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}},
		{name: "recovered", pending: true, end: func(t *testing.T, s *bolt.Store, l *leases.Lease) *leases.Lease {
			out, err := s.RecoverPending(context.Background(), t0.Add(time.Second))
			if err != nil || len(out) != 1 {
				t.Fatalf("RecoverPending = %v, %v; want the lease", out, err)
			}
			return out[0]
		}},
	}
	for _, cp := range capabilities {
		for _, rs := range reasons {
			if rs.pending && cp.selfContained {
				continue // a self-contained lease is never pending
			}
			t.Run(cp.name+"/"+rs.name, func(t *testing.T) {
				ctx := context.Background()
				s := MustOpenStore(t)
				s.SetRevokeAtExpiry(func(*leases.Lease) bool { return cp.holder })
				clk := clock.NewFake(t0)
				be := leasetest.NewFakeBackend(-1)
				be.Clk = clk
				l := leasetest.NewPending(t0, "a", 10*time.Second)
				l.Renewable = cp.renewable
				l.MaxExpires = t0.Add(3 * time.Minute)
				if cp.fixed > 0 {
					l.CredentialExpires = t0.Add(cp.fixed)
				}
				if rs.pending {
					leasetest.MustCreate(t, s, l)
				} else {
					l = leasetest.MustActivate(t, s, l)
				}
				if cp.renewTo > 0 && !rs.pending {
					var err error
					if l, err = s.Renew(ctx, l.ID, t0.Add(time.Second), t0.Add(cp.renewTo), audit.Entry{Kind: audit.KindRenew, Actor: audit.SystemActor}); err != nil {
						t.Fatal(err)
					}
				}
				validUntil := t0.Add(cp.validUntil)
				if rs.pending {
					validUntil = t0.Add(10 * time.Second)
					if cp.holder && cp.renewable {
						validUntil = l.MaxExpires
					}
					if cp.fixed > 0 {
						validUntil = l.CredentialExpires
					}
				}
				deadline := validUntil.Add(leases.ExpiryGrace)
				if rs.name == "expired" {
					clk.Set(l.ExpiresAt)
				}
				ended := rs.end(t, s, l)
				if rs.name == "expired" && !cp.holder && !l.CredentialExpires.After(l.ExpiresAt) {
					// The credential died with the lease: nothing to revoke.
					if ended.State != leases.StateExpired || be.CallsFor(l.ID) != 0 {
						t.Fatalf("expired lease is %s after %d backend calls; want expired at once", ended.State, be.CallsFor(l.ID))
					}
					return
				}
				if ended.State != leases.StateRevoking {
					t.Fatalf("ended lease is %s, want revoking", ended.State)
				}
				clk.Set(ended.NextAttempt)
				q := leasetest.NewQueue(s, be, clk, 2)
				q.Cfg().MaxBackoff = maxBackoff
				leasetest.StartQueue(t, q)

				for n := 1; ; n++ {
					var got *leases.Lease
					leasetest.Eventually(t, fmt.Sprintf("attempt %d is recorded", n), func() bool {
						got = leasetest.MustGet(t, s, l.ID)
						return got.State.Terminal() || got.RevokeAttempts == n && clk.Waiters() == 1
					})
					if got.State.Terminal() {
						t.Fatalf("after %d unconfirmed attempts, at +%v, the lease reads %s; its credential may be valid at the backend until +%v",
							n-1, clk.Now().Sub(t0), got.State, deadline.Sub(t0))
					}
					if n >= 2 && got.State != leases.StateIrrevocable {
						t.Fatalf("after %d failures the lease is %s, want irrevocable", n, got.State)
					}
					if got.NextAttempt.After(deadline) {
						t.Fatalf("next attempt at +%v, after the deadline +%v", got.NextAttempt.Sub(t0), deadline.Sub(t0))
					}
					if !got.NextAttempt.Before(deadline) {
						break
					}
					clk.Set(got.NextAttempt)
				}
				// Just before the deadline the lease is visible as
				// irrevocable to operators and metrics.
				if listed, err := s.List(ctx, leases.Filter{State: leases.StateIrrevocable}); err != nil || len(listed) != 1 || listed[0].ID != l.ID {
					t.Errorf("List(irrevocable) = %v, %v; want the lease", listed, err)
				}
				if c := leasetest.MustCounts(t, s); c[leases.StateIrrevocable] != 1 {
					t.Errorf("counts %v, want one irrevocable lease", c)
				}
				clk.Set(deadline)
				leasetest.Eventually(t, "the lease reads expired", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateExpired })

				calls := be.CallTimes(l.ID)
				if len(calls) == 0 {
					t.Fatal("the backend was never called")
				}
				for _, at := range calls {
					if !at.Before(deadline) {
						t.Errorf("backend called at +%v, at or after the deadline +%v", at.Sub(t0), deadline.Sub(t0))
					}
				}
				if last := calls[len(calls)-1]; last.Before(deadline.Add(-maxBackoff)) {
					t.Errorf("last attempt at +%v; retries stopped before the deadline +%v", last.Sub(t0), deadline.Sub(t0))
				}
				recs, _ := s.ListAudit(context.Background(), audit.Filter{LeaseID: l.ID, Newest: true, Limit: 1})
				if recs[0].Kind != audit.KindExpire {
					t.Errorf("last audit record is %s; want %s (nothing was revoked)", recs[0].Kind, audit.KindExpire)
				}
				if reason := recs[0].Reason; !strings.Contains(reason, "never confirmed") || !strings.Contains(reason, validUntil.UTC().Format(time.RFC3339)) {
					t.Errorf("last audit reason %q; want it to say revocation was never confirmed and the credential expired at %s", reason, validUntil.UTC().Format(time.RFC3339))
				}
				leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateExpired: 1})
				leasetest.MustVerifyAudit(t, s)
			})
		}
	}
}
