package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// listOwnerIDs lists the ids f selects, pages of three, without failing the
// test (it runs off the test's goroutine).
func listOwnerIDs(s *Store, f leases.Filter) ([]string, error) {
	var out []string
	f.Limit = 3
	for {
		ls, err := s.List(context.Background(), f)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			out = append(out, l.ID)
		}
		if len(ls) < f.Limit {
			return out, nil
		}
		f.Before = ls[len(ls)-1].ID
	}
}

// checkOwnerIndexes checks the owner indexes against the leases: every key
// (indexed or unindexed) is a key of a stored lease, and every lease has
// each of its keys in the indexes or unindexed.
func checkOwnerIndexes(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bbolt.Tx) error {
		u := tx.Bucket(bucketUnindexed)
		has := func(b, key, id []byte) bool { return tx.Bucket(b).Get(key) != nil || u.Get(id) != nil }
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			l, err := decodeLease(v)
			if err != nil {
				return err
			}
			if !has(bucketLeaseAgent, indexKey(l.AgentID, k), k) {
				t.Errorf("lease %s of %s is in neither the agent index nor unindexed", k, l.AgentID)
			}
			for _, lid := range l.Lineage.IDs() {
				if !has(bucketLineage, indexKey(lid, k), k) {
					t.Errorf("lease %s of %s is in neither the lineage index nor unindexed", k, lid)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketLeaseAgent, bucketLineage} {
			err := tx.Bucket(b).ForEach(func(k, _ []byte) error {
				n, w := binary.Uvarint(k)
				id := k[w+int(n):]
				l, err := getLease(tx, string(id))
				if err != nil {
					t.Errorf("%s key %q: lease %s: %v", b, k, id, err)
					return nil
				}
				value := string(k[w : w+int(n)])
				if bytes.Equal(b, bucketLeaseAgent) && value != l.AgentID || bytes.Equal(b, bucketLineage) && !slices.Contains(l.Lineage.IDs(), value) {
					t.Errorf("%s key %q is not a key of lease %s", b, k, id)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return tx.Bucket(bucketUnindexed).ForEach(func(k, _ []byte) error {
			if tx.Bucket(bucketLeases).Get(k) == nil {
				t.Errorf("unindexed lease %s is not stored", k)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOwnerListingsWholeUnderConcurrentRunsAndPrunes: writers mint, end and
// list their own agent's leases while runs of the owner indexes (every
// three leases) and prunes go on; every listing, page by page, holds each
// of the writer's live leases exactly once, newest first, and nothing of
// another agent. Afterwards the indexes and the leases agree, and a mass
// revocation per pod, paged two at a time with runs between its pages,
// ends exactly the live leases of that pod.
func TestOwnerListingsWholeUnderConcurrentRunsAndPrunes(t *testing.T) {
	s := MustOpenStore(t)
	s.indexRun = 3
	const writers, perWriter = 4, 30
	var done atomic.Bool
	var pruned atomic.Int64
	var wg, pruner sync.WaitGroup
	pruner.Add(1)
	go func() {
		defer pruner.Done()
		for !done.Load() {
			n, err := s.PruneEnded(context.Background(), t0.Add(48*time.Hour), 5)
			if err != nil {
				t.Errorf("PruneEnded: %v", err)
				return
			}
			pruned.Add(int64(n))
		}
	}()
	live := make([][]*leases.Lease, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent := fmt.Sprintf("a/w%d", w)
			for i := range perWriter {
				at := t0.Add(time.Duration(i*writers+w) * time.Millisecond)
				l := leasetest.NewPending(at, agent, time.Hour)
				l.State = leases.StateActive
				l.Lineage = leases.Lineage{Issuer: "https://iss", JTI: "jti-" + l.ID, PodUID: fmt.Sprintf("pod-%d", w%2)}
				if err := s.CreateActive(context.Background(), l, at, audit.Entry{Kind: audit.KindMint, Decision: audit.Allow, AgentID: agent, LeaseID: l.ID}); err != nil {
					t.Errorf("create: %v", err)
					return
				}
				live[w] = append(live[w], l)
				if i%3 == 2 {
					// End an older one: the pruner takes it.
					old := live[w][0]
					live[w] = live[w][1:]
					if _, err := s.End(context.Background(), old.ID, leases.StateReleased, at, audit.Entry{}); err != nil {
						t.Errorf("end: %v", err)
						return
					}
					if _, err := s.RevocationDone(context.Background(), old.ID, leases.StateReleased, at, audit.Entry{}); err != nil {
						t.Errorf("revocation done: %v", err)
						return
					}
				}
				got, err := listOwnerIDs(s, leases.Filter{AgentID: agent})
				if err != nil {
					t.Errorf("list %s: %v", agent, err)
					return
				}
				if !slices.IsSortedFunc(got, func(a, b string) int { return strings.Compare(b, a) }) || len(slices.Compact(slices.Clone(got))) != len(got) {
					t.Errorf("leases of %s = %v: not each once, newest first", agent, got)
					return
				}
				for _, l := range live[w] {
					if !slices.Contains(got, l.ID) {
						t.Errorf("after lease %d, live lease %s of %s is missing from %v", i, l.ID, agent, got)
						return
					}
				}
				for _, id := range got {
					if l, err := s.Get(context.Background(), id); err == nil && l.AgentID != agent {
						t.Errorf("listing of %s holds %s of %s", agent, id, l.AgentID)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	done.Store(true)
	pruner.Wait()
	if t.Failed() {
		return
	}
	if n, err := s.PruneEnded(context.Background(), t0.Add(48*time.Hour), 1000); err != nil {
		t.Fatal(err)
	} else {
		pruned.Add(int64(n))
	}
	if want := int64(writers * (perWriter / 3)); pruned.Load() != want {
		t.Fatalf("pruned %d leases, want %d", pruned.Load(), want)
	}
	waitIndexed(t, s)
	checkOwnerIndexes(t, s)

	for pod := range 2 {
		var want []string
		for w := pod; w < writers; w += 2 {
			for _, l := range live[w] {
				want = append(want, l.ID)
			}
		}
		slices.Sort(want)
		slices.Reverse(want)
		got := endLiveIDs(t, s, leases.Filter{Lineage: fmt.Sprintf("pod:pod-%d", pod)}, 2, func() {
			if _, err := s.indexOwners(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
		if !slices.Equal(got, want) {
			t.Errorf("mass revocation of pod-%d ended %v, want %v", pod, got, want)
		}
	}
}

// TestOwnerIndexRunRacingAPrune: a lease pruned after a run read it and
// before the run's transaction puts its keys gets no keys; the run still
// indexes the others.
func TestOwnerIndexRunRacingAPrune(t *testing.T) {
	s := MustOpenStore(t)
	gone := ownedLease(t, s, t0, "a/one", "pod-x")
	kept := ownedLease(t, s, t0.Add(time.Millisecond), "a/one", "pod-x")
	leasetestEnd(t, s, gone.ID)
	ended := leasetest.MustGet(t, s, gone.ID)

	// A write holds the committer until the run has read the unindexed
	// leases and queued its first transaction, then prunes gone.
	entered, release := make(chan struct{}), make(chan struct{})
	pruneErr := make(chan error, 1)
	go func() {
		pruneErr <- s.update(context.Background(), func(tx *bbolt.Tx) error {
			select {
			case <-entered:
			default:
				close(entered)
			}
			<-release
			return deleteLease(tx, ended)
		})
	}()
	<-entered
	type result struct {
		n   int
		err error
	}
	run := make(chan result, 1)
	go func() {
		n, err := s.indexOwners(context.Background())
		run <- result{n, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.c.reqs) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the run did not queue its transaction")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-pruneErr; err != nil {
		t.Fatal(err)
	}
	if r := <-run; r.err != nil || r.n != 2 {
		t.Fatalf("indexOwners = %d, %v; want 2", r.n, r.err)
	}
	if keys := indexKeysFor(t, s, gone.ID); len(keys) != 0 {
		t.Fatalf("the run put keys %q for a lease pruned under it", keys)
	}
	if keys := ownerKeysFor(t, s, kept.ID); len(keys) != 3 {
		t.Fatalf("kept lease's owner keys = %q, want its agent and two lineage keys", keys)
	}
	if n := bucketLen(t, s, bucketUnindexed); n != 0 {
		t.Fatalf("%d leases unindexed after the run, want 0", n)
	}
	checkOwnerIndexes(t, s)
}

// TestOwnerPagesAcrossIndexedBothAndUnindexed: with an owner's leases
// spread over the index alone, the unindexed log alone, and both (a run
// cut short), listings page through each lease once, newest first, and a
// mass revocation two at a time, with a run between its pages, ends each
// once.
func TestOwnerPagesAcrossIndexedBothAndUnindexed(t *testing.T) {
	s := MustOpenStore(t)
	var ids []string
	for i := range 11 {
		ids = append(ids, ownedLease(t, s, t0.Add(time.Duration(i)*time.Millisecond), "a/one", "pod-x").ID)
	}
	err := s.update(context.Background(), func(tx *bbolt.Tx) error {
		for i, id := range ids {
			if i%3 == 2 {
				continue // unindexed only
			}
			l, err := getLease(tx, id)
			if err != nil {
				return err
			}
			if err := putOwnerIndex(tx, l); err != nil {
				return err
			}
			if i%3 == 1 {
				if err := tx.Bucket(bucketUnindexed).Delete([]byte(id)); err != nil { // indexed only
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := newestFirst(ids)
	for _, f := range []leases.Filter{{AgentID: "a/one"}, {Lineage: "pod:pod-x"}} {
		if got := listIDs(t, s, f); !slices.Equal(got, want) {
			t.Fatalf("List(%+v) = %v, want %v", f, got, want)
		}
		for _, before := range ids {
			f.Before = before
			var w []string
			for _, id := range want {
				if id < before {
					w = append(w, id)
				}
			}
			if got := listIDs(t, s, f); !slices.Equal(got, w) {
				t.Fatalf("List(%+v) = %v, want %v", f, got, w)
			}
		}
	}
	runs := 0
	got := endLiveIDs(t, s, leases.Filter{AgentID: "a/one"}, 2, func() {
		if runs++; runs == 2 {
			if _, err := s.indexOwners(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	})
	if !slices.Equal(got, want) {
		t.Fatalf("mass revocation ended %v, want %v", got, want)
	}
	checkOwnerIndexes(t, s)
}

// TestCloseDuringOwnerIndexRuns: Close while writers mint and runs of the
// owner indexes (every lease) go on returns with no run left and no run
// error logged; reopened, the file lists every lease that was created,
// once, newest first, by agent and by lineage.
func TestCloseDuringOwnerIndexRuns(t *testing.T) {
	var logs logCount
	path := t.TempDir() + "/valet.db"
	s, err := Open(path, Options{Logger: slog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	s.indexRun = 1
	const writers = 3
	created := make([][]string, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				at := t0.Add(time.Duration(i*writers+w) * time.Millisecond)
				l := leasetest.NewPending(at, "a/one", time.Hour)
				l.State = leases.StateActive
				l.Lineage = leases.Lineage{PodUID: "pod-x"}
				err := s.CreateActive(context.Background(), l, at, audit.Entry{Kind: audit.KindMint, Decision: audit.Allow, AgentID: "a/one", LeaseID: l.ID})
				if errors.Is(err, errClosed) {
					return
				}
				if err != nil {
					t.Errorf("create: %v", err)
					return
				}
				created[w] = append(created[w], l.ID)
			}
		}()
	}
	leasetest.Eventually(t, "leases reach the owner index", func() bool { return bucketLen(t, s, bucketLeaseAgent) >= 20 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if s.indexing.Load() {
		t.Error("a run of the owner indexes is still under way after Close")
	}
	if n := logs.count("index leases by agent and lineage"); n != 0 {
		t.Errorf("runs logged %d errors: %q", n, logs.msgs)
	}

	s = mustOpenStoreAt(t, path)
	var want []string
	for _, ids := range created {
		want = append(want, ids...)
	}
	slices.Sort(want)
	slices.Reverse(want)
	for _, f := range []leases.Filter{{AgentID: "a/one", Limit: 1000}, {Lineage: "pod:pod-x", Limit: 1000}} {
		var got []string
		ls, err := s.List(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			got = append(got, l.ID)
		}
		if !slices.Equal(got, want) {
			t.Errorf("reopened, List(%+v) = %d leases, want the %d created", f, len(got), len(want))
		}
	}
	checkOwnerIndexes(t, s)
}

// TestReadOnlyListsUnindexedLeases: a file with leases still unindexed,
// opened read-only, lists them by agent and lineage; a mass revocation on
// it is refused and ends nothing.
func TestReadOnlyListsUnindexedLeases(t *testing.T) {
	path := t.TempDir() + "/valet.db"
	s := mustOpenStoreAt(t, path)
	indexed := ownedLease(t, s, t0, "a/one", "pod-x")
	if n, err := s.indexOwners(context.Background()); err != nil || n != 1 {
		t.Fatalf("indexOwners = %d, %v", n, err)
	}
	unindexed := ownedLease(t, s, t0.Add(time.Millisecond), "a/one", "pod-x")
	s.Close()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	want := []string{unindexed.ID, indexed.ID}
	for _, f := range []leases.Filter{{AgentID: "a/one"}, {Lineage: "pod:pod-x"}} {
		if got := listIDs(t, ro, f); !slices.Equal(got, want) {
			t.Errorf("List(%+v) read-only = %v, want %v", f, got, want)
		}
	}
	ended, _, err := ro.EndLive(context.Background(), "", leases.Filter{AgentID: "a/one"}, "", t0.Add(time.Hour), 10,
		leases.StateRevoked, t0.Add(time.Minute), audit.Entry{Kind: audit.KindRevoke})
	if err == nil || len(ended) != 0 {
		t.Fatalf("EndLive on a read-only store = %d ended, %v; want an error", len(ended), err)
	}
	if st := leasetest.MustGet(t, ro, unindexed.ID).State; st != leases.StateActive {
		t.Fatalf("lease is %s after a refused mass revocation", st)
	}
}
