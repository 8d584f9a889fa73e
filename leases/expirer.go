package leases

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/clock"
)

// ExpiryStore is what the Expirer needs from storage. An engine's
// implementation keeps these promises:
//
//   - NextExpiry returns the earliest expiry of an active lease, read from
//     the lease records (an index of them), never from the engine's own
//     TTLs: a lease's expiry is a value, renewed in the same transaction
//     as its record.
//   - ExpireDue ends up to limit active leases whose expiry is at or
//     before now, each with its audit record in the same transaction, and
//     returns them as they are afterwards. A lease whose holder can extend
//     its credential (see Lease.ValidUntil) goes to the revocation queue
//     instead of becoming expired. An index entry whose lease cannot be
//     read is dropped (and reported), never allowed to stop expiry.
//
// Only one process may run an Expirer over a store: with several
// replicas, the engine runs it on the elected leader and fences its
// writes.
type ExpiryStore interface {
	NextExpiry() (time.Time, bool, error)
	ExpireDue(ctx context.Context, now time.Time, limit int) ([]*Lease, error)
}

// Expirer ends active leases when their TTL runs out. It arms one timer for
// the earliest expiry in the index and wakes when a lease with an earlier
// expiry appears, so it never scans the store on a tick and never holds the
// leases in memory.
type Expirer struct {
	store ExpiryStore
	clock clock.Clock
	log   *slog.Logger
	batch int
	// OnExpire, if set, is called after each committed batch (for metrics).
	OnExpire func(expired []*Lease, now time.Time)

	mu    sync.Mutex
	armed time.Time // deadline of the current timer; zero when none
	wake  chan struct{}
}

// NewExpirer returns an Expirer for store. Call Run to start it.
func NewExpirer(store ExpiryStore, clk clock.Clock, log *slog.Logger) *Expirer {
	if log == nil {
		log = slog.Default()
	}
	return &Expirer{store: store, clock: clk, log: log, batch: 1000, wake: make(chan struct{}, 1)}
}

// Notify tells the Expirer that a lease now expires at t. It wakes the loop
// only if t is earlier than the deadline it is waiting for.
func (e *Expirer) Notify(t time.Time) {
	e.mu.Lock()
	earlier := e.armed.IsZero() || t.Before(e.armed)
	e.mu.Unlock()
	if earlier {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
}

// Run expires leases until ctx ends.
func (e *Expirer) Run(ctx context.Context) {
	retry := time.Second
	for {
		// Clear the deadline before reading the index: a Notify that races
		// with the read then always wakes the next wait.
		e.mu.Lock()
		e.armed = time.Time{}
		e.mu.Unlock()
		now := e.clock.Now()
		next, ok, err := e.store.NextExpiry()
		if err == nil && ok && !next.After(now) {
			var expired []*Lease
			expired, err = e.store.ExpireDue(ctx, now, e.batch)
			if err == nil {
				if e.OnExpire != nil && len(expired) > 0 {
					e.OnExpire(expired, now)
				}
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.log.Error("lease expiry failed; retrying", "err", err)
			next, ok = now.Add(retry), true
		}
		var timer clock.Timer
		var fire <-chan time.Time
		e.mu.Lock()
		if ok {
			e.armed = next
			timer = e.clock.NewTimer(next.Sub(now))
			fire = timer.C()
		}
		e.mu.Unlock()
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-fire:
		case <-e.wake:
			if timer != nil {
				timer.Stop()
			}
		}
	}
}
