package bolt

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/storetest"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestStoragePromisesIndexingOften runs the shared suite with runs of the
// owner indexes every two new leases, so its listings and mass
// revocations meet leases in the indexes, unindexed, and on their way.
func TestStoragePromisesIndexingOften(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Engine, storetest.Engine) {
		s := MustOpenStore(t)
		s.indexRun = 2
		e := storetest.Engine{Store: s, Grants: s.Grants(), Replay: func(clk clock.Clock) storetest.ReplayCache { return s.ReplayCache(clk) }}
		return e, e
	})
}

// ownedLease is a new active lease of agent whose lineage has the pod.
func ownedLease(t *testing.T, s *Store, at time.Time, agent, pod string) *leases.Lease {
	t.Helper()
	l := leasetest.NewPending(at, agent, time.Hour)
	l.State = leases.StateActive
	l.Lineage = leases.Lineage{Issuer: "https://iss", JTI: "jti-" + l.ID, PodUID: pod}
	e := audit.Entry{Kind: audit.KindMint, Decision: audit.Allow, AgentID: agent, LeaseID: l.ID}
	if err := s.CreateActive(context.Background(), l, at, e); err != nil {
		t.Fatalf("create lease: %v", err)
	}
	return l
}

// listIDs lists the ids f selects, page by page (pages of three).
func listIDs(t *testing.T, s *Store, f leases.Filter) []string {
	t.Helper()
	var out []string
	f.Limit = 3
	for {
		ls, err := s.List(context.Background(), f)
		if err != nil {
			t.Fatalf("List(%+v): %v", f, err)
		}
		for _, l := range ls {
			out = append(out, l.ID)
		}
		if len(ls) < f.Limit {
			return out
		}
		f.Before = ls[len(ls)-1].ID
	}
}

// newestFirst is ids in reverse order of creation.
func newestFirst(ids []string) []string {
	out := slices.Clone(ids)
	slices.Reverse(out)
	return out
}

// waitIndexed waits until no run of the owner indexes is under way and
// fewer than a run's worth of leases wait for one.
func waitIndexed(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.indexing.Load() || s.unindexed.Load() >= int64(s.indexRun) {
		if time.Now().After(deadline) {
			t.Fatalf("owner index runs did not finish: %d unindexed, run under way %v", s.unindexed.Load(), s.indexing.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

func bucketLen(t *testing.T, s *Store, b []byte) int {
	t.Helper()
	n := 0
	if err := s.db.View(func(tx *bbolt.Tx) error { n = tx.Bucket(b).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOwnerIndexRunsKeepListingsWhole: with runs of the owner indexes every
// five leases, every listing by agent and by lineage, taken after each new
// lease, holds exactly that owner's leases newest first, page after page;
// after the runs the leases are in the indexes and no longer unindexed.
func TestOwnerIndexRunsKeepListingsWhole(t *testing.T) {
	s := MustOpenStore(t)
	s.indexRun = 5
	agents, pods := []string{"a/one", "a/two", "a/three"}, []string{"pod-x", "pod-y"}
	byAgent, byPod := map[string][]string{}, map[string][]string{}
	for i := range 40 {
		agent, pod := agents[i%3], pods[i%2]
		l := ownedLease(t, s, t0.Add(time.Duration(i)*time.Millisecond), agent, pod)
		byAgent[agent] = append(byAgent[agent], l.ID)
		byPod[pod] = append(byPod[pod], l.ID)
		if got, want := listIDs(t, s, leases.Filter{AgentID: agent}), newestFirst(byAgent[agent]); !slices.Equal(got, want) {
			t.Fatalf("after lease %d, leases of %s = %v, want %v", i, agent, got, want)
		}
		if got, want := listIDs(t, s, leases.Filter{Lineage: "pod:" + pod}), newestFirst(byPod[pod]); !slices.Equal(got, want) {
			t.Fatalf("after lease %d, leases of pod %s = %v, want %v", i, pod, got, want)
		}
		if got := listIDs(t, s, leases.Filter{Lineage: "jti:https://iss#jti-" + l.ID}); !slices.Equal(got, []string{l.ID}) {
			t.Fatalf("lease by its jti = %v, want %s", got, l.ID)
		}
	}
	waitIndexed(t, s)
	if n := bucketLen(t, s, bucketUnindexed); n >= s.indexRun {
		t.Fatalf("%d leases still unindexed after the runs, want fewer than %d", n, s.indexRun)
	}
	// 40 leases, one agent key and two lineage keys each.
	if n := bucketLen(t, s, bucketLeaseAgent) + bucketLen(t, s, bucketUnindexed); n < 40 {
		t.Fatalf("agent index + unindexed hold %d leases, want 40", n)
	}
	if n, u := bucketLen(t, s, bucketLineage), bucketLen(t, s, bucketUnindexed); n != 2*(40-u) {
		t.Fatalf("lineage index holds %d keys with %d leases unindexed, want %d", n, u, 2*(40-u))
	}
	for _, agent := range agents {
		if got, want := listIDs(t, s, leases.Filter{AgentID: agent}), newestFirst(byAgent[agent]); !slices.Equal(got, want) {
			t.Fatalf("after the runs, leases of %s = %v, want %v", agent, got, want)
		}
	}
}

// TestOwnerKeysInBothPlacesCountOnce: a crash between a run's transactions
// leaves a lease both in the owner indexes and unindexed; listings and a
// mass revocation take it once, the next run clears it, and pruning
// removes it from both.
func TestOwnerKeysInBothPlacesCountOnce(t *testing.T) {
	path := t.TempDir() + "/valet.db"
	s := mustOpenStoreAt(t, path)
	var ids []string
	for i := range 6 {
		ids = append(ids, ownedLease(t, s, t0.Add(time.Duration(i)*time.Millisecond), "a/one", "pod-x").ID)
	}
	// The first half reached the indexes, still unindexed too.
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, id := range ids[:3] {
			l, err := getLease(tx, id)
			if err != nil {
				return err
			}
			if err := putOwnerIndex(tx, l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []leases.Filter{{AgentID: "a/one"}, {Lineage: "pod:pod-x"}} {
		if got := listIDs(t, s, f); !slices.Equal(got, newestFirst(ids)) {
			t.Fatalf("List(%+v) = %v, want each lease once: %v", f, got, newestFirst(ids))
		}
	}

	// Reopened (the crash), the store counts them and a run clears them.
	s.Close()
	s = mustOpenStoreAt(t, path)
	if n := s.unindexed.Load(); n != 6 {
		t.Fatalf("reopened store counts %d unindexed leases, want 6", n)
	}
	if n, err := s.indexOwners(context.Background()); err != nil || n != 6 {
		t.Fatalf("indexOwners = %d, %v; want 6", n, err)
	}
	if n := bucketLen(t, s, bucketUnindexed); n != 0 {
		t.Fatalf("%d leases unindexed after the run, want 0", n)
	}
	if got := listIDs(t, s, leases.Filter{AgentID: "a/one"}); !slices.Equal(got, newestFirst(ids)) {
		t.Fatalf("after the run, leases = %v, want %v", got, newestFirst(ids))
	}

	// Two more, unindexed; a mass revocation by agent ends all eight once.
	for i := range 2 {
		ids = append(ids, ownedLease(t, s, t0.Add(time.Second+time.Duration(i)*time.Millisecond), "a/one", "pod-x").ID)
	}
	sig := &agents.Signal{ID: leases.NewID(t0.Add(time.Minute)), Subject: agents.Subject{Kind: agents.SubjectAgent, ID: "a/one"},
		Severity: agents.SeverityHigh, Reason: "exfiltration", Source: agents.Source{Kind: agents.SourceOperator, Name: "alice"},
		Action: agents.ActionRevoke, ReceivedAt: t0.Add(time.Minute), Agents: []string{"a/one"},
		Containment: &agents.Containment{State: agents.ContainmentPending}}
	if _, err := s.RecordSignal(context.Background(), sig, broker.SignalChange{}, audit.Entry{Kind: audit.KindSignal, Actor: audit.SystemActor}, audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	ended, next, err := s.EndLive(context.Background(), sig.ID, leases.Filter{AgentID: "a/one"}, "", t0.Add(time.Hour), 100,
		leases.StateRevoked, t0.Add(2*time.Second), audit.Entry{Kind: audit.KindRevoke, Actor: audit.SystemActor, Reason: "signal"})
	if err != nil || next != "" {
		t.Fatalf("EndLive = next %q, %v", next, err)
	}
	var got []string
	for _, l := range ended {
		got = append(got, l.ID)
	}
	if !slices.Equal(got, newestFirst(ids)) {
		t.Fatalf("mass revocation ended %v, want each lease once: %v", got, newestFirst(ids))
	}
}

// TestOwnerIndexRunSkipsPrunedLeases: a lease pruned while unindexed
// leaves no key behind, in the indexes or for the next run.
func TestOwnerIndexRunSkipsPrunedLeases(t *testing.T) {
	s := MustOpenStore(t)
	l := ownedLease(t, s, t0, "a/one", "pod-x")
	keep := ownedLease(t, s, t0.Add(time.Millisecond), "a/one", "pod-x")
	leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0.Add(time.Second))
	if _, err := s.RevocationDone(context.Background(), l.ID, leases.StateReleased, t0.Add(time.Second), audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneEnded(context.Background(), t0.Add(48*time.Hour), 100); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	if keys := indexKeysFor(t, s, l.ID); len(keys) != 0 {
		t.Fatalf("pruned unindexed lease left keys %q", keys)
	}
	if n, err := s.indexOwners(context.Background()); err != nil || n != 1 {
		t.Fatalf("indexOwners = %d, %v; want 1 (the kept lease)", n, err)
	}
	if keys := indexKeysFor(t, s, l.ID); len(keys) != 0 {
		t.Fatalf("run after the prune put keys %q", keys)
	}
	if got := listIDs(t, s, leases.Filter{AgentID: "a/one"}); !slices.Equal(got, []string{keep.ID}) {
		t.Fatalf("leases of the agent = %v, want %s", got, keep.ID)
	}
}

// indexedLeaseFile writes a store file holding one lease of agent a/one
// (pod-x), moved into the owner indexes, edits it with edit and closes it.
func indexedLeaseFile(t *testing.T, edit func(tx *bbolt.Tx) error) (string, *leases.Lease) {
	t.Helper()
	path := t.TempDir() + "/valet.db"
	s := mustOpenStoreAt(t, path)
	l := ownedLease(t, s, t0, "a/one", "pod-x")
	if n, err := s.indexOwners(context.Background()); err != nil || n != 1 {
		t.Fatalf("indexOwners = %d, %v", n, err)
	}
	if err := s.db.Update(edit); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return path, l
}

// TestLeaseLayoutRefusesNewer: a file whose leases record a newer layout
// is refused, not rewritten; layout 2 files open as leaseLayout.
func TestLeaseLayoutRefusesNewer(t *testing.T) {
	for _, tc := range []struct {
		layout byte
		ok     bool
	}{{indexLayout, true}, {leaseLayout, true}, {leaseLayout + 1, false}} {
		t.Run(fmt.Sprint(tc.layout), func(t *testing.T) {
			path, l := indexedLeaseFile(t, func(tx *bbolt.Tx) error {
				return tx.Bucket(bucketLeaseMeta).Put(layoutKey, []byte{tc.layout})
			})
			s2, err := Open(path, Options{})
			if !tc.ok {
				if err == nil {
					s2.Close()
					t.Fatalf("opened a file of lease layout %d", tc.layout)
				}
				return
			}
			if err != nil {
				t.Fatalf("open layout %d: %v", tc.layout, err)
			}
			defer s2.Close()
			if got := listIDs(t, s2, leases.Filter{AgentID: "a/one"}); !slices.Equal(got, []string{l.ID}) {
				t.Fatalf("leases of the agent = %v, want %s", got, l.ID)
			}
			var v []byte
			_ = s2.db.View(func(tx *bbolt.Tx) error { v = slices.Clone(tx.Bucket(bucketLeaseMeta).Get(layoutKey)); return nil })
			if !slices.Equal(v, []byte{leaseLayout}) {
				t.Fatalf("layout after open = %v, want %d", v, leaseLayout)
			}
		})
	}
}

// TestReadOnlyOlderLayoutListsByOwner: a file of lease layout 2 (no
// unindexed leases) opened read-only, as the offline tools open it, lists
// by agent and lineage from its indexes.
func TestReadOnlyOlderLayoutListsByOwner(t *testing.T) {
	path, l := indexedLeaseFile(t, func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket(bucketUnindexed); err != nil {
			return err
		}
		return tx.Bucket(bucketLeaseMeta).Put(layoutKey, []byte{indexLayout})
	})
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for _, f := range []leases.Filter{{AgentID: "a/one"}, {Lineage: "pod:pod-x"}} {
		if got := listIDs(t, ro, f); !slices.Equal(got, []string{l.ID}) {
			t.Fatalf("List(%+v) read-only = %v, want %s", f, got, l.ID)
		}
	}
}
