package etcd

import (
	"context"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestUnknownOutcomeIsNotTakenForAnotherProcessWrite: a write whose
// answer was lost is found out through the replica's marker key, which
// holds the id of the last transaction that wrote it. Another process
// under the same replica name (the same replica restarted, or replicas
// on one host that all default to its name) writes that marker too: its
// transaction ids must never be taken for this process's, or a write
// that never landed would be reported committed.
func TestUnknownOutcomeIsNotTakenForAnotherProcessWrite(t *testing.T) {
	open := func(t *testing.T, p string) *Store { t.Helper(); return openNamed(t, p, "valet-0") }
	write := func(t *testing.T, s *Store) {
		t.Helper()
		if err := s.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		// other is the process that wrote the marker last; it returns
		// once it did.
		other func(t *testing.T, p string)
	}{
		{"the same replica before a restart", func(t *testing.T, p string) {
			s := open(t, p)
			write(t, s)
			s.Close()
			// A clean stop takes its marker away.
			if resp, err := s.client.Get(context.Background(), s.markerKey); err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("the marker of a closed store: %v %v", resp.Kvs, err)
			}
		}},
		{"another live replica of the same name", func(t *testing.T, p string) {
			write(t, open(t, p))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPrefix()
			tc.other(t, p)
			s := open(t, p)
			// s has written nothing: whatever transaction id it would
			// ask about next did not commit.
			committed, _, err := s.resolve(s.nextTxnID())
			if err != nil {
				t.Fatal(err)
			}
			if committed {
				t.Fatal("a transaction this process never sent was found committed: the marker holds another process's id")
			}
			// The shared marker does not stop either process writing.
			write(t, s)
			write(t, s)
			if n := leasetest.CountAudit(t, s, audit.KindServerStart); n != 3 {
				t.Fatalf("%d start records, want the other process's and this one's two", n)
			}
		})
	}
}

// TestUnknownOutcomeIsFoundOutAfterAnotherProcessWrote: replicas that
// share a name (on one host, each defaults to the host name) each find
// out their own lost answers: a transaction that committed is found
// committed although the other process wrote after it.
func TestUnknownOutcomeIsFoundOutAfterAnotherProcessWrote(t *testing.T) {
	p := newPrefix()
	a, b := openNamed(t, p, "valet-0"), openNamed(t, p, "valet-0")
	tx := a.newTx(context.Background())
	tx.put(p+"probe", []byte("x"))
	if outcome, _, err := tx.commit(); err != nil || outcome != committed {
		t.Fatalf("commit: %v %v", outcome, err)
	}
	// The id a's transaction wrote, as a lost answer would leave a to
	// ask about it.
	resp, err := a.client.Get(context.Background(), a.markerKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read a's marker: %v %v", resp, err)
	}
	id := string(resp.Kvs[0].Value)
	if err := b.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
		t.Fatal(err)
	}
	ok, _, err := a.resolve(id)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("a committed transaction was found not committed after another replica of the same name wrote: it would be run again")
	}
}

func openNamed(t *testing.T, p, replica string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: p, Replica: replica, Logger: leasetest.QuietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPruneMarkers: the leader prunes the write markers idle since the
// cutoff (a crashed process's stays otherwise), keeps its own and newer
// ones, and a replica whose marker was pruned writes on.
func TestPruneMarkers(t *testing.T) {
	write := func(t *testing.T, s *Store) {
		t.Helper()
		if err := s.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		cutoff time.Duration // from now
		pruned int
	}{
		{"idle since before the cutoff", time.Minute, 1},
		{"written after the cutoff", -time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPrefix()
			crashed, leader := openNamed(t, p, "valet-0"), openNamed(t, p, "valet-1")
			write(t, crashed)
			write(t, leader)
			n, err := leader.PruneMarkers(context.Background(), time.Now().Add(tc.cutoff))
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.pruned {
				t.Fatalf("pruned %d markers, want %d", n, tc.pruned)
			}
			resp, err := leader.client.Get(context.Background(), leader.markerKey)
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("the leader's own marker: %v %v", resp, err)
			}
			resp, err = crashed.client.Get(context.Background(), crashed.markerKey)
			if err != nil || len(resp.Kvs) != 1-tc.pruned {
				t.Fatalf("the other marker after pruning: %v %v", resp.Kvs, err)
			}
			write(t, crashed)
			if n := leasetest.CountAudit(t, leader, audit.KindServerStart); n != 3 {
				t.Fatalf("%d start records, want 3", n)
			}
		})
	}
}
