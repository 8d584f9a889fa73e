package bolt

import (
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/leasetest"
)

// t0 is the start of every test's fake time (leasetest.T0).
var t0 = leasetest.T0

// MustOpenStore opens a Store on a fresh file in tb.TempDir() and closes
// it when the test ends.
func MustOpenStore(tb testing.TB) *Store {
	tb.Helper()
	return mustOpenStoreAt(tb, filepath.Join(tb.TempDir(), "valet.db"))
}

// mustOpenStoreAt opens (or reopens) the store at path; closing it twice is
// harmless, so tests may close it early to reopen the file.
func mustOpenStoreAt(tb testing.TB, path string) *Store {
	tb.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// lastCommittedTx is the id of the last committed write transaction (bbolt
// numbers them; a read transaction sees the id of the last commit).
func lastCommittedTx(tb testing.TB, db *bbolt.DB) int {
	tb.Helper()
	var id int
	if err := db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		tb.Fatalf("read txid: %v", err)
	}
	return id
}
