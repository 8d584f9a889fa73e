package leases_test

import (
	"path/filepath"
	"testing"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases/leasetest"
)

// t0 is the start of every test's fake time (leasetest.T0).
var t0 = leasetest.T0

// quietLog discards the log lines that failure paths write on purpose.
var quietLog = leasetest.QuietLog

// MustOpenStore opens a store on a fresh file in tb.TempDir() and closes it
// when the test ends: the queue and the expirer run on a real engine.
func MustOpenStore(tb testing.TB) *bolt.Store {
	tb.Helper()
	s, err := bolt.Open(filepath.Join(tb.TempDir(), "valet.db"), bolt.Options{})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}
