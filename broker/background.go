package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// This file holds the duties the broker performs in the background, on its
// own clock: refused credentials are summarized and agent sightings
// written (Run), and the passes the scheduled jobs make: ended leases, old
// signals and consumed attestations are cleaned up (Housekeep). (Lease
// expiry and the revocation queue are the leases package's: leases.Expirer
// and leases.RevocationQueue; grant expiry is ExpireGrants in approve.go;
// the release of quarantines past their time ReleaseDue in contain.go.)

// Intervals and bounds of the background duties.
const (
	// pruneChunk bounds what one transaction of a housekeeping pass
	// deletes. A pass deletes chunk after chunk until nothing past the
	// retention is left, so pruning keeps up with any rate at which
	// leases end, and each chunk holds the store's single writer only
	// briefly (mints wait behind it). The owner-index keys of ended
	// leases lie on random pages, each materialized and rewritten by the
	// transaction: 1,000 leases held ~15 MiB of bbolt nodes and page
	// buffers until their commit (seen as the soak's live heap jumping
	// when a collection fell inside one); 250 hold a quarter.
	pruneChunk = 250
	// SightingInterval is how often what the flows saw of agents (first
	// and last seen, roles minted) is written to their records, in one
	// transaction for all.
	SightingInterval = time.Second
)

// ReplayPurger is the attestation replay cache as housekeeping sees it
// (broker/bolt's ReplayCache): Purge deletes the consumed ids whose
// attestations expired before now and says how many it deleted.
type ReplayPurger interface {
	Purge(now time.Time) (int, error)
}

// endedPruner is a lease store that deletes ended leases (broker/bolt's
// Store.PruneEnded), or a grant store that deletes ended grants
// (broker/bolt's Grants.PruneEnded): up to limit of those that ended
// before cutoff, in one transaction, returning how many.
type endedPruner interface {
	PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error)
}

// prunerFunc makes a function with PruneEnded's shape an endedPruner.
type prunerFunc func(ctx context.Context, cutoff time.Time, limit int) (int, error)

func (f prunerFunc) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return f(ctx, cutoff, limit)
}

// Run performs the broker's own background duties until ctx ends, each
// on its own goroutine, and returns once all have stopped: every minute,
// refused credentials counted but not recorded one by one are summarized
// in the audit log, and once more when ctx ends (SummarizeRefusals); and
// with agent records (Options.Agents):
//
//   - every SightingInterval, what the flows saw of agents is written to
//     their records, and once more when ctx ends;
//   - at once and every ContainmentRetryInterval, mass revocations that
//     did not finish are resumed (ResumeContainment);
//   - the detectors' detections are raised as signals (RaiseSignal).
//
// Grant expiry, housekeeping and the release of quarantines past their
// time are scheduled jobs (broker/jobs/builtin: grant-expiry,
// housekeeping, quarantine-release) that call ExpireGrants, Housekeep and
// ReleaseDue. Failures are logged and retried at the next interval. Call
// Run once.
func (b *Broker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	duties := []func(context.Context){b.SummarizeRefusals}
	if b.agents != nil {
		duties = append(duties,
			b.writeSightings,
			func(ctx context.Context) {
				b.resumeContainment(ctx)
				b.every(ctx, ContainmentRetryInterval, b.resumeContainment)
			},
			b.raiseDetections,
		)
	}
	for _, duty := range duties {
		wg.Add(1)
		go func() {
			defer wg.Done()
			duty(ctx)
		}()
	}
	wg.Wait()
}

// Housekeeping is what a housekeeping pass did.
type Housekeeping struct {
	// Pruned counts the ended leases deleted; GrantsPruned the ended
	// grants deleted; Purged the consumed attestation ids deleted;
	// SignalsPruned the signals deleted.
	Pruned, GrantsPruned, Purged, SignalsPruned int
}

// Housekeep deletes leases and grants that ended more than
// leases.retention ago (their audit records stay), signals received more
// than signals.retention ago (those whose mass revocation is done) and,
// with Options.Replay set, the consumed attestation ids past their expiry,
// at the broker's time. Leases, grants and signals are deleted in
// transactions of pruneChunk until none past the retention is left or ctx
// ends. A grant that still needs something (a break-glass review, a mint
// in progress) stays until it no longer does. It does them all and
// returns what it
// did with the errors of any.
func (b *Broker) Housekeep(ctx context.Context) (Housekeeping, error) {
	var h Housekeeping
	var errs []error
	now := b.clock.Now()
	cutoff := now.Add(-b.cfg.Leases.Retention.D())
	if p, ok := b.store.(endedPruner); ok {
		n, err := pruneAll(ctx, p, cutoff)
		h.Pruned = n
		if err != nil {
			errs = append(errs, fmt.Errorf("prune ended leases: %w", err))
		}
	} else {
		errs = append(errs, errors.New("the lease store cannot delete ended leases; leases.retention is not applied"))
	}
	if p, ok := b.grants.(endedPruner); ok {
		n, err := pruneAll(ctx, p, cutoff)
		h.GrantsPruned = n
		if err != nil {
			errs = append(errs, fmt.Errorf("prune ended grants: %w", err))
		}
	} else if b.grants != nil {
		errs = append(errs, errors.New("the grant store cannot delete ended grants; leases.retention is not applied to grants"))
	}
	if b.replay != nil {
		n, err := b.replay.Purge(now)
		h.Purged = n
		if err != nil {
			errs = append(errs, fmt.Errorf("purge the replay cache: %w", err))
		}
	}
	if b.signals != nil {
		n, err := pruneAll(ctx, prunerFunc(b.signals.PruneSignals), now.Add(-b.cfg.Signals.Retention.D()))
		h.SignalsPruned = n
		if err != nil {
			errs = append(errs, fmt.Errorf("prune signals: %w", err))
		}
	}
	return h, errors.Join(errs...)
}

// pruneAll deletes what ended before cutoff through p, pruneChunk at a
// time, until a chunk comes back short or ctx ends, and returns how many
// it deleted.
func pruneAll(ctx context.Context, p endedPruner, cutoff time.Time) (int, error) {
	total := 0
	for {
		n, err := p.PruneEnded(ctx, cutoff, pruneChunk)
		total += n
		if err != nil || n < pruneChunk {
			return total, err
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}

// every calls f each interval d of the broker's clock until ctx ends.
func (b *Broker) every(ctx context.Context, d time.Duration, f func(context.Context)) {
	for {
		t := b.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		f(ctx)
	}
}

// writeSightings writes what the flows saw of agents every
// SightingInterval, and once more when ctx ends.
func (b *Broker) writeSightings(ctx context.Context) {
	b.every(ctx, SightingInterval, func(ctx context.Context) {
		if err := b.flushSightings(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("write agent sightings", "err", err)
		}
	})
	if err := b.flushSightings(context.WithoutCancel(ctx)); err != nil {
		b.log.Error("write agent sightings", "err", err)
	}
}

func (b *Broker) resumeContainment(ctx context.Context) {
	if _, err := b.ResumeContainment(ctx); err != nil && ctx.Err() == nil {
		b.log.Error("resume mass revocations", "err", err)
	}
}
