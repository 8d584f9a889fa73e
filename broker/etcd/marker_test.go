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
	open := func(t *testing.T, p string) *Store {
		t.Helper()
		s, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: p, Replica: "valet-0", Logger: leasetest.QuietLog})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
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
