package bolt

import (
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// malformedOwners are unindexed values a torn or damaged file may hold for
// a lease of agent "a/one" whose lineage has "pod:pod-x". "wrong keys
// first" decodes an agent and a lineage id that are not the lease's before
// it breaks.
var malformedOwners = []struct {
	name  string
	value []byte
}{
	{"garbage", []byte{0xff}},
	{"length past the end", append(binary.AppendUvarint(nil, 40), "a/one"...)},
	{"wrong keys first", append(encodeOwners("a/evil", []string{"pod:pod-evil"}), 0xff)},
}

// spoilOwners replaces the unindexed value of lease id with v.
func spoilOwners(t *testing.T, s *Store, id string, v []byte) {
	t.Helper()
	err := s.update(context.Background(), func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketUnindexed).Put([]byte(id), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// endLiveIDs ends the live leases f selects, limit a transaction, following
// next, and returns the ids ended in order.
func endLiveIDs(t *testing.T, s *Store, f leases.Filter, limit int, between func()) []string {
	t.Helper()
	var out []string
	before := ""
	for {
		ended, next, err := s.EndLive(context.Background(), "", f, before, t0.Add(time.Hour), limit,
			leases.StateRevoked, t0.Add(time.Minute), audit.Entry{Kind: audit.KindRevoke, Actor: audit.SystemActor, Reason: "signal"})
		if err != nil {
			t.Fatalf("EndLive(%+v, before %q): %v", f, before, err)
		}
		for _, l := range ended {
			out = append(out, l.ID)
		}
		if next == "" {
			return out
		}
		before = next
		if between != nil {
			between()
		}
	}
}

// TestOwnerReadersSurviveAMalformedUnindexedValue: one unindexed lease
// whose owner keys cannot be decoded neither fails the listings and mass
// revocations of other owners nor hides its own lease: its owners are read
// from the lease itself, as a run does, and the keys it decodes before it
// breaks count for nothing.
func TestOwnerReadersSurviveAMalformedUnindexedValue(t *testing.T) {
	for _, tc := range malformedOwners {
		t.Run(tc.name, func(t *testing.T) {
			s := MustOpenStore(t)
			other := ownedLease(t, s, t0, "a/two", "pod-y")
			bad := ownedLease(t, s, t0.Add(time.Millisecond), "a/one", "pod-x")
			good := ownedLease(t, s, t0.Add(2*time.Millisecond), "a/one", "pod-x")
			spoilOwners(t, s, bad.ID, tc.value)

			for _, c := range []struct {
				f    leases.Filter
				want []string
			}{
				{leases.Filter{AgentID: "a/two"}, []string{other.ID}},
				{leases.Filter{AgentID: "a/one"}, []string{good.ID, bad.ID}},
				{leases.Filter{Lineage: "pod:pod-x"}, []string{good.ID, bad.ID}},
				{leases.Filter{AgentID: "a/evil"}, nil},
				{leases.Filter{Lineage: "pod:pod-evil"}, nil},
			} {
				if got := listIDs(t, s, c.f); !slices.Equal(got, c.want) {
					t.Errorf("List(%+v) = %v, want %v", c.f, got, c.want)
				}
			}
			if got := endLiveIDs(t, s, leases.Filter{Lineage: "pod:pod-evil"}, 10, nil); len(got) != 0 {
				t.Errorf("mass revocation of pod-evil ended %v, leases of another pod", got)
			}
			if got, want := endLiveIDs(t, s, leases.Filter{AgentID: "a/one"}, 1, nil), []string{good.ID, bad.ID}; !slices.Equal(got, want) {
				t.Errorf("mass revocation of a/one ended %v, want %v", got, want)
			}
		})
	}
}

// TestOwnerIndexRunPutsOnlyTheLeasesKeys: a run meeting a malformed
// unindexed value puts the keys of the lease itself and nothing it decoded
// before the value broke; for a lease that is gone it puts nothing. No
// index entry is left to point at a pruned lease.
func TestOwnerIndexRunPutsOnlyTheLeasesKeys(t *testing.T) {
	for _, tc := range malformedOwners {
		t.Run(tc.name, func(t *testing.T) {
			s := MustOpenStore(t)
			bad := ownedLease(t, s, t0, "a/one", "pod-x")
			spoilOwners(t, s, bad.ID, tc.value)
			if n, err := s.indexOwners(context.Background()); err != nil || n != 1 {
				t.Fatalf("indexOwners = %d, %v; want 1", n, err)
			}
			want := []string{"leases.agent:" + string(indexKey("a/one", []byte(bad.ID))),
				"leases.lineage:" + string(indexKey("jti:https://iss#jti-"+bad.ID, []byte(bad.ID))),
				"leases.lineage:" + string(indexKey("pod:pod-x", []byte(bad.ID)))}
			got := ownerKeysFor(t, s, bad.ID)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("owner keys after the run = %q, want %q", got, want)
			}

			leasetestEnd(t, s, bad.ID)
			if n, err := s.PruneEnded(context.Background(), t0.Add(48*time.Hour), 10); err != nil || n != 1 {
				t.Fatalf("PruneEnded = %d, %v; want 1", n, err)
			}
			if keys := indexKeysFor(t, s, bad.ID); len(keys) != 0 {
				t.Fatalf("pruned lease left keys %q", keys)
			}
		})
		t.Run(tc.name+", lease gone", func(t *testing.T) {
			s := MustOpenStore(t)
			gone := ownedLease(t, s, t0, "a/one", "pod-x")
			spoilOwners(t, s, gone.ID, tc.value)
			spoil(t, s, gone.ID, true)
			if _, err := s.indexOwners(context.Background()); err != nil {
				t.Fatalf("indexOwners: %v", err)
			}
			if keys := ownerKeysFor(t, s, gone.ID); len(keys) != 0 {
				t.Fatalf("run left keys %q for a lease that is gone", keys)
			}
		})
	}
}

// ownerKeysFor is indexKeysFor restricted to the owner indexes.
func ownerKeysFor(t *testing.T, s *Store, id string) []string {
	t.Helper()
	return slices.DeleteFunc(indexKeysFor(t, s, id), func(k string) bool {
		return !strings.HasPrefix(k, "leases.agent:") && !strings.HasPrefix(k, "leases.lineage:")
	})
}

// leasetestEnd ends lease id (released) so that it can be pruned.
func leasetestEnd(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, err := s.End(context.Background(), id, leases.StateReleased, t0.Add(time.Second), audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevocationDone(context.Background(), id, leases.StateReleased, t0.Add(time.Second), audit.Entry{}); err != nil {
		t.Fatal(err)
	}
}

// TestNoOwnerIndexRunAfterClose: a new lease counted after Close began (its
// commit came just before the committer closed) starts no run: no
// goroutine outlives Close to read a closed file.
func TestNoOwnerIndexRunAfterClose(t *testing.T) {
	var logs logCount
	s, err := Open(t.TempDir()+"/valet.db", Options{Logger: slog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	s.indexRun = 1
	ownedLease(t, s, t0, "a/one", "pod-x")
	waitIndexed(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.noteUnindexed(1)
	started := s.indexing.Load()
	s.bg.Wait()
	if started {
		t.Error("a run of the owner indexes started after Close")
	}
	if n := logs.count("index leases by agent and lineage"); n != 0 {
		t.Errorf("%d runs after Close logged errors: %q", n, logs.msgs)
	}
}
