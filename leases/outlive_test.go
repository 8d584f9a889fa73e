package leases_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestStateAtPastExpiry: an active lease past its expiry reads expired,
// unless its credential outlives it at the backend: then it reads revoking
// until the expirer has queued the revocation and the backend confirmed it.
func TestStateAtPastExpiry(t *testing.T) {
	cases := []struct {
		name     string
		outlives time.Duration // the credential's own expiry after t0, if set
		at       time.Duration
		want     leases.State
	}{
		{"before expiry", 0, 5 * time.Second, leases.StateActive},
		{"at expiry", 0, 10 * time.Second, leases.StateExpired},
		{"credential outlives the lease, before expiry", 15 * time.Minute, 5 * time.Second, leases.StateActive},
		{"credential outlives the lease, past expiry", 15 * time.Minute, 11 * time.Second, leases.StateRevoking},
		{"credential dies with the lease", 10 * time.Second, 11 * time.Second, leases.StateExpired},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := leasetest.NewPending(t0, "a", 10*time.Second)
			l.State = leases.StateActive
			if c.outlives > 0 {
				l.CredentialExpires = t0.Add(c.outlives)
			}
			if got := l.StateAt(t0.Add(c.at)); got != c.want {
				t.Fatalf("StateAt(+%s) = %s, want %s", c.at, got, c.want)
			}
		})
	}
}

// TestRevocationNoteReachesTheAuditRecord: what a backend says about a
// revocation it confirmed (for example that it ended other credentials
// too) is in the revocation's audit record.
func TestRevocationNoteReachesTheAuditRecord(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	be.Note = "every older session of the role was revoked too"
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Minute))
	ended := leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0.Add(time.Second))
	q := leasetest.NewQueue(s, be, clk, 2)
	out, err := q.RevokeNow(context.Background(), ended)
	if err != nil || out.State != leases.StateReleased {
		t.Fatalf("RevokeNow = %+v, %v; want released", out, err)
	}
	recs, err := s.ListAudit(context.Background(), audit.Filter{LeaseID: l.ID, Newest: true, Limit: 1})
	if err != nil || len(recs) != 1 || recs[0].Kind != audit.KindRevoked || !strings.Contains(recs[0].Reason, be.Note) {
		t.Fatalf("last audit record %+v, %v; want the revocation with the backend's note", recs, err)
	}
}
