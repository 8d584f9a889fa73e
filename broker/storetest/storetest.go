// Package storetest is the one suite of storage promises that every
// storage engine runs (docs/ARCHITECTURE.md, Storage promises; the doc
// comments of broker/storage.go, leases.RevocationStore,
// leases.ExpiryStore, jobs.Store and audit.Reader). An engine's test calls
// Run with a function that opens two handles on one fresh store: for an
// engine of one process both are the same store; for a replicated engine
// they are two replicas, and the suite checks that what one committed the
// other sees, and that compare-and-swap holds across them.
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// Store is everything an engine's store offers valet.
type Store interface {
	broker.LeaseStore
	broker.Auditor
	broker.AgentStore
	broker.SignalStore
	leases.RevocationStore
	leases.ExpiryStore
	audit.Reader
	jobs.Store
	// RecoverPending ends every pending lease (start-up recovery).
	RecoverPending(ctx context.Context, now time.Time) ([]*leases.Lease, error)
	// PruneEnded deletes up to limit leases that ended before cutoff.
	PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error)
	// ExpiryBacklog counts the active leases whose expiry is at or
	// before now.
	ExpiryBacklog(now time.Time) (int, error)
	// Counts returns how many leases are in each state.
	Counts() (map[leases.State]int64, error)
	// SetRevokeAtExpiry names the leases revoked at their expiry.
	SetRevokeAtExpiry(f func(l *leases.Lease) bool)
	// AuditHead returns the log's head as committed.
	AuditHead(ctx context.Context) (audit.Head, error)
}

// ReplayCache is the attestation replay cache with its housekeeping.
type ReplayCache interface {
	attest.ReplayCache
	broker.ReplayPurger
}

// Engine is one handle on a store: the store and its views.
type Engine struct {
	Store  Store
	Grants broker.GrantStore
	// Replay returns the replay cache reading the time from clk.
	Replay func(clk clock.Clock) ReplayCache
}

// Open opens two handles on one fresh, empty store (the same one twice
// for an engine of one process) and closes them when the test ends.
type Open func(t *testing.T) (a, b Engine)
