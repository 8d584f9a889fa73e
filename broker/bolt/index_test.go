package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestIndexKeysSurviveHostileValues stores leases whose agent ids and
// lineage values hold the bytes an index key was once split at (NUL), or
// extend another lease's value, and checks that listing and revoking by
// each value finds exactly its own leases and never fails.
func TestIndexKeysSurviveHostileValues(t *testing.T) {
	s := MustOpenStore(t)
	type owner struct {
		agent   string
		lineage leases.Lineage
	}
	owners := []owner{
		{"test/victim", leases.Lineage{Issuer: "https://iss", JTI: "J1", PodUID: "pod-1", RunID: "7"}},
		{"test/victim\x00zz", leases.Lineage{Issuer: "https://iss", JTI: "J1\x00zz", PodUID: "pod-1\x00zz", RunID: "7\x00zz"}},
		{"test/victim\x00", leases.Lineage{Issuer: "https://iss", JTI: "J1\x00", PodUID: "pod-1\x00", RunID: "7\x00"}},
		// A value whose bytes look like a length prefix and another value.
		{"\x0btest/victim", leases.Lineage{Issuer: "https://iss", JTI: "\x02J1", PodUID: "\x05pod-1"}},
		{"test", leases.Lineage{Issuer: "https://iss#J1", JTI: "zz"}},
	}
	mine := map[int][]string{} // owner index -> lease ids
	for i, o := range owners {
		for j := range 2 {
			l := leasetest.NewPending(t0.Add(time.Duration(i*2+j)*time.Second), o.agent, time.Hour)
			l.Lineage = o.lineage
			leasetest.MustActivate(t, s, l)
			mine[i] = append(mine[i], l.ID)
		}
	}
	ctx := context.Background()
	ids := func(f leases.Filter) []string {
		t.Helper()
		ls, err := s.List(ctx, f)
		if err != nil {
			t.Fatalf("List(%#v): %v", f, err)
		}
		var out []string
		for _, l := range ls {
			out = append(out, l.ID)
		}
		slices.Sort(out)
		return out
	}
	for i, o := range owners {
		want := slices.Sorted(slices.Values(mine[i]))
		filters := []leases.Filter{{AgentID: o.agent}}
		for _, lid := range o.lineage.IDs() {
			filters = append(filters, leases.Filter{Lineage: lid})
		}
		for _, f := range filters {
			if got := ids(f); !slices.Equal(got, want) {
				t.Errorf("List(%#v) = %v, want owner %d's %v", f, got, i, want)
			}
		}
	}
	// Revoke everything of the victim's attestation, as RevokeMatching
	// does: list, then end each. The others' leases stay active.
	for _, id := range ids(leases.Filter{Lineage: "jti:https://iss#J1"}) {
		leasetest.MustEnd(t, s, id, leases.StateRevoked, t0.Add(time.Minute))
	}
	for i := range owners {
		for _, id := range mine[i] {
			st := leasetest.MustGet(t, s, id).State
			if (i == 0) != (st == leases.StateRevoking) {
				t.Errorf("owner %d's lease %s is %s after revoking the victim's lineage", i, id, st)
			}
		}
	}
	// Pruning ended leases removes exactly their index entries.
	for _, id := range mine[0] {
		if _, err := s.RevocationDone(ctx, id, leases.StateRevoked, t0.Add(time.Minute), audit.Entry{}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PruneEnded(ctx, t0.Add(time.Hour), 100); err != nil || n != 2 {
		t.Fatalf("PruneEnded = %d, %v; want 2 pruned", n, err)
	}
	for i, o := range owners[1:] {
		if got := ids(leases.Filter{AgentID: o.agent}); len(got) != 2 {
			t.Errorf("owner %d has %d leases after pruning the victim's, want 2", i+1, len(got))
		}
	}
	for _, id := range mine[0] {
		if keys := indexKeysFor(t, s, id); len(keys) != 0 {
			t.Errorf("pruned lease %s left index keys %q", id, keys)
		}
	}
}

// TestOpenMigratesOldIndexLayout opens a database written with the first
// index layout (value 0x00 id) and checks that every index answers after
// the store rebuilt it.
func TestOpenMigratesOldIndexLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "valet.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var leasesIn []*leases.Lease
	for i := range 3 {
		l := leasetest.NewPending(t0.Add(time.Duration(i)*time.Second), "test/agent", time.Hour)
		l.State = leases.StateActive
		l.Lineage = leases.Lineage{Issuer: "https://iss", JTI: "J" + string(rune('1'+i)), PodUID: "pod-1"}
		leasesIn = append(leasesIn, l)
	}
	old := func(v, id string) []byte { return append(append([]byte(v), 0), id...) }
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketLeases, bucketExpiry, bucketLeaseAgent, bucketLineage, bucketLeaseState, bucketRevoke, bucketEnded, bucketLeaseMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		for _, l := range leasesIn {
			v, _ := json.Marshal(l)
			put := func(b, k []byte) {
				if err == nil {
					err = tx.Bucket(b).Put(k, v)
				}
			}
			put(bucketLeases, []byte(l.ID))
			v = nil
			put(bucketLeaseAgent, old(l.AgentID, l.ID))
			put(bucketLeaseState, old(string(l.State), l.ID))
			put(bucketExpiry, timeKey(l.ExpiresAt, []byte(l.ID)))
			for _, lid := range l.Lineage.IDs() {
				put(bucketLineage, old(lid, l.ID))
			}
		}
		n := make([]byte, 8)
		binary.BigEndian.PutUint64(n, 3)
		if err == nil {
			err = tx.Bucket(bucketLeaseMeta).Put([]byte("count/active"), n)
		}
		return err
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s := mustOpenStoreAt(t, path)
	for _, f := range []leases.Filter{{AgentID: "test/agent"}, {State: leases.StateActive}, {Lineage: "pod:pod-1"}} {
		ls, err := s.List(context.Background(), f)
		if err != nil || len(ls) != 3 {
			t.Fatalf("List(%+v) after migration = %d leases, %v; want 3", f, len(ls), err)
		}
	}
	ls, err := s.List(context.Background(), leases.Filter{Lineage: "jti:https://iss#J2"})
	if err != nil || len(ls) != 1 || ls[0].ID != leasesIn[1].ID {
		t.Fatalf("List by jti after migration = %v, %v; want lease %s", ls, err, leasesIn[1].ID)
	}
	// Changes after the migration keep the indexes in line.
	leasetest.MustEnd(t, s, leasesIn[0].ID, leases.StateRevoked, t0.Add(time.Minute))
	if ls, _ := s.List(context.Background(), leases.Filter{State: leases.StateActive}); len(ls) != 2 {
		t.Fatalf("%d active leases after ending one, want 2", len(ls))
	}
	// And a second open leaves the migrated indexes as they are.
	s.Close()
	s = mustOpenStoreAt(t, path)
	if ls, _ := s.List(context.Background(), leases.Filter{AgentID: "test/agent"}); len(ls) != 3 {
		t.Fatalf("%d leases of the agent after reopening, want 3", len(ls))
	}
}
