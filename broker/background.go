package broker

import (
	"context"
	"sync"
	"time"
)

// This file holds the duties the broker performs in the background, on its
// own clock: grants past their deadlines are recorded expired, refused
// credentials are summarized, and ended leases and consumed attestations
// are cleaned up. (Lease expiry and the revocation queue are the leases
// package's: leases.Expirer and leases.RevocationQueue.)

// Intervals of the background duties.
const (
	// GrantExpiryInterval is how often grants past their deadlines are
	// recorded expired, so operators and webhooks hear of them promptly.
	GrantExpiryInterval = 5 * time.Second
	// HousekeepingInterval is how often ended leases past leases.retention
	// and consumed attestation ids past their expiry are deleted.
	HousekeepingInterval = time.Minute
	// pruneBatch bounds the leases one housekeeping pass deletes (and
	// the signals).
	pruneBatch = 10000
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

// endedPruner is a lease store that deletes ended leases
// (broker/bolt's Store.PruneEnded): up to limit of those that ended before
// cutoff, returning how many.
type endedPruner interface {
	PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error)
}

// Run performs the broker's background duties until ctx ends, each on its
// own goroutine, and returns once all have stopped:
//
//   - every GrantExpiryInterval, grants past their deadlines are recorded
//     expired and announced (ExpireGrants);
//   - every minute, refused credentials counted but not recorded one by one
//     are summarized in the audit log, and once more when ctx ends
//     (SummarizeRefusals);
//   - every HousekeepingInterval, leases that ended more than
//     leases.retention ago are deleted (at most 10000 a pass), signals
//     received more than signals.retention ago, and, with Options.Replay
//     set, consumed attestation ids past their expiry;
//
// and with agent records (Options.Agents):
//
//   - every SightingInterval, what the flows saw of agents is written to
//     their records, and once more when ctx ends;
//   - every GrantExpiryInterval, quarantines past their release time are
//     recorded released and announced;
//   - at once and every ContainmentRetryInterval, mass revocations that
//     did not finish are resumed (ResumeContainment);
//   - the detectors' detections are raised as signals (RaiseSignal).
//
// Failures are logged and retried at the next interval. Call Run once.
func (b *Broker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	duties := []func(context.Context){
		func(ctx context.Context) { b.every(ctx, GrantExpiryInterval, b.expireGrants) },
		b.SummarizeRefusals,
		func(ctx context.Context) { b.every(ctx, HousekeepingInterval, b.housekeeping) },
	}
	if b.agents != nil {
		duties = append(duties,
			b.writeSightings,
			func(ctx context.Context) { b.every(ctx, GrantExpiryInterval, b.releaseDue) },
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

func (b *Broker) expireGrants(ctx context.Context) {
	if _, err := b.ExpireGrants(ctx); err != nil && ctx.Err() == nil {
		b.log.Error("expire grants", "err", err)
	}
}

// housekeeping deletes leases ended longer than leases.retention ago and
// purges the replay cache.
func (b *Broker) housekeeping(ctx context.Context) {
	now := b.clock.Now()
	if p, ok := b.store.(endedPruner); ok {
		if _, err := p.PruneEnded(ctx, now.Add(-b.cfg.Leases.Retention.D()), pruneBatch); err != nil && ctx.Err() == nil {
			b.log.Error("prune ended leases", "err", err)
		}
	} else {
		b.log.Error("the lease store cannot delete ended leases; leases.retention is not applied")
	}
	if b.replay != nil {
		if _, err := b.replay.Purge(now); err != nil && ctx.Err() == nil {
			b.log.Error("purge replay cache", "err", err)
		}
	}
	if b.signals != nil {
		if _, err := b.signals.PruneSignals(ctx, now.Add(-b.cfg.Signals.Retention.D()), pruneBatch); err != nil && ctx.Err() == nil {
			b.log.Error("prune signals", "err", err)
		}
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
