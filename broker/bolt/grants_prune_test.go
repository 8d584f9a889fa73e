package bolt

import (
	"cmp"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

// Grants that ended before the cutoff are deleted with their index
// entries; their audit records stay. Grants that still need something
// (a break-glass review, a redeem whose lease is not recorded yet) stay,
// as do those that ended after the cutoff or have not ended.
func TestGrantsPruneEnded(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	cutoff := now.Add(time.Hour)
	op := func(at time.Time) grants.Decision { return grants.Decision{Operator: "op", At: at} }
	cases := []struct {
		name  string
		make  func(t *testing.T, s *Grants, g *grants.Grant) // after Create
		kind  string
		state grants.State
		kept  bool
		// expires is the pending grant's deadline after now (default 2h).
		expires time.Duration
	}{
		{name: "denied before the cutoff", state: grants.StateDenied, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			must(t)(s.Deny(ctx, g.ID, op(now), audit.Entry{Kind: audit.KindGrantDeny}))
		}},
		{name: "denied after the cutoff", state: grants.StateDenied, kept: true, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			must(t)(s.Deny(ctx, g.ID, op(cutoff.Add(time.Second)), audit.Entry{Kind: audit.KindGrantDeny}))
		}},
		{name: "expired before the cutoff", state: grants.StateExpired, expires: 30 * time.Minute, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			if _, err := s.ExpireDue(ctx, g.ExpiresAt); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "redeemed with its lease", state: grants.StateRedeemed, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			redeem(t, s, g, now)
			must(t)(s.Redeemed(ctx, g.ID, "lease-1", now))
		}},
		{name: "redeemed, lease not recorded, before its redeem deadline", state: grants.StateRedeemed, kept: true, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			redeem(t, s, g, now)
		}},
		{name: "approved", state: grants.StateApproved, kept: true, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			must(t)(s.Approve(ctx, g.ID, op(now), 2*time.Hour, audit.Entry{Kind: audit.KindGrantApprove}))
		}},
		{name: "pending", state: grants.StatePending, kept: true, make: func(*testing.T, *Grants, *grants.Grant) {}},
		{name: "break-glass awaiting review", kind: grants.KindBreakGlass, state: grants.StateRedeemed, kept: true,
			make: func(*testing.T, *Grants, *grants.Grant) {}},
		{name: "break-glass reviewed", kind: grants.KindBreakGlass, state: grants.StateRedeemed, make: func(t *testing.T, s *Grants, g *grants.Grant) {
			must(t)(s.Review(ctx, g.ID, op(now), audit.Entry{Kind: audit.KindGrantReview}))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newGrantStore(t)
			g := newGrant("test/a", now.Add(-time.Hour))
			g.ExpiresAt = now.Add(cmp.Or(tc.expires, 2*time.Hour))
			if tc.kind == grants.KindBreakGlass {
				g.Kind, g.State, g.EndedAt, g.Required = grants.KindBreakGlass, grants.StateRedeemed, now, 0
			}
			if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
				t.Fatal(err)
			}
			tc.make(t, s, g)
			n, err := s.PruneEnded(ctx, cutoff, 10)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 0, false: 1}[tc.kept]; n != want {
				t.Errorf("PruneEnded = %d, want %d", n, want)
			}
			got, err := s.Get(ctx, g.ID)
			switch {
			case tc.kept && (err != nil || got.State != tc.state):
				t.Errorf("Get = %+v, %v; want the grant, %s", got, err, tc.state)
			case !tc.kept && !errors.Is(err, grants.ErrNotFound):
				t.Errorf("Get = %+v, %v; want ErrNotFound", got, err)
			}
			// No index still names a pruned grant.
			for _, f := range []grants.Filter{{}, {AgentID: g.AgentID}, {State: tc.state}, {ReviewPending: true}} {
				gs, err := s.List(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				if listed := slices.ContainsFunc(gs, func(x *grants.Grant) bool { return x.ID == g.ID }); listed && !tc.kept {
					t.Errorf("List(%+v) still lists the pruned grant", f)
				}
			}
			recs, err := s.s.ListAudit(ctx, audit.Filter{Limit: 100})
			if err != nil || len(recs) == 0 || recs[0].Details["grant_id"] != g.ID {
				t.Errorf("audit records = %+v, %v; want the grant's records kept", recs, err)
			}
		})
	}
}

// A pass deletes at most limit grants; the next pass goes on where it
// stopped, and a grant whose state changes is never left in the index of
// ended grants under its old time.
func TestGrantsPruneEndedInChunks(t *testing.T) {
	s := newGrantStore(t)
	ctx := context.Background()
	now := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	for i := range 7 {
		g := newGrant("test/a", now.Add(time.Duration(i)*time.Second))
		if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Deny(ctx, g.ID, grants.Decision{Operator: "op", At: now}, audit.Entry{Kind: audit.KindGrantDeny}); err != nil {
			t.Fatal(err)
		}
	}
	var got []int
	for {
		n, err := s.PruneEnded(ctx, now.Add(time.Minute), 3)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
		if n < 3 {
			break
		}
	}
	if !slices.Equal(got, []int{3, 3, 1}) {
		t.Errorf("passes pruned %v, want [3 3 1]", got)
	}
	if err := s.s.db.View(func(tx *bbolt.Tx) error {
		if k, _ := tx.Bucket(bucketGrantEnded).Cursor().First(); k != nil {
			t.Errorf("index of ended grants still holds %q", k)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A database written before grants were pruned gets its index of ended
// grants when it is opened, so the grants that ended then are pruned too.
func TestGrantsEndedIndexBuiltOnOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "valet.db")
	ctx := context.Background()
	now := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	st := mustOpenStoreAt(t, path)
	s := st.Grants()
	g := newGrant("test/a", now)
	if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deny(ctx, g.ID, grants.Decision{Operator: "op", At: now}, audit.Entry{Kind: audit.KindGrantDeny}); err != nil {
		t.Fatal(err)
	}
	// As an older valet left it: no index of ended grants.
	if err := st.db.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket(bucketGrantEnded) }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	s = mustOpenStoreAt(t, path).Grants()
	if n, err := s.PruneEnded(ctx, now.Add(time.Minute), 10); err != nil || n != 1 {
		t.Fatalf("PruneEnded after reopening = %d, %v; want the denied grant pruned", n, err)
	}
}

// redeem approves g and redeems it at now.
func redeem(t *testing.T, s *Grants, g *grants.Grant, now time.Time) {
	t.Helper()
	ctx := context.Background()
	must(t)(s.Approve(ctx, g.ID, grants.Decision{Operator: "op", At: now}, 2*time.Hour, audit.Entry{Kind: audit.KindGrantApprove}))
	must(t)(s.Redeem(ctx, g.ID, g.AgentID, g.Binding, now, audit.Entry{Kind: audit.KindGrantRedeem}))
}

// must fails the test on a grant change's error.
func must(t *testing.T) func(*grants.Grant, error) {
	t.Helper()
	return func(_ *grants.Grant, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}
