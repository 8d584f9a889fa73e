package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// This file holds the duties the broker performs in the background, on its
// own clock: refused credentials are summarized (Run), and the passes the
// scheduled jobs make: ended leases and consumed attestations are cleaned
// up (Housekeep). (Lease expiry and the revocation queue are the leases
// package's: leases.Expirer and leases.RevocationQueue; grant expiry is
// ExpireGrants in approve.go.)

// pruneBatch bounds the leases one housekeeping pass deletes.
const pruneBatch = 10000

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

// Run performs the broker's own background duty until ctx ends: every
// minute, refused credentials counted but not recorded one by one are
// summarized in the audit log, and once more when ctx ends
// (SummarizeRefusals). Grant expiry and housekeeping are scheduled jobs
// (broker/jobs/builtin: grant-expiry and housekeeping) that call
// ExpireGrants and Housekeep. Call Run once.
func (b *Broker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, duty := range []func(context.Context){
		b.SummarizeRefusals,
	} {
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
	// Pruned counts the ended leases deleted; Purged the consumed
	// attestation ids deleted.
	Pruned, Purged int
}

// Housekeep deletes leases that ended more than leases.retention ago (at
// most 10000 a pass; their audit records stay) and, with Options.Replay
// set, the consumed attestation ids past their expiry, at the broker's
// time. It does both and returns what it did with the errors of either.
func (b *Broker) Housekeep(ctx context.Context) (Housekeeping, error) {
	var h Housekeeping
	var errs []error
	now := b.clock.Now()
	if p, ok := b.store.(endedPruner); ok {
		n, err := p.PruneEnded(ctx, now.Add(-b.cfg.Leases.Retention.D()), pruneBatch)
		h.Pruned = n
		if err != nil {
			errs = append(errs, fmt.Errorf("prune ended leases: %w", err))
		}
	} else {
		errs = append(errs, errors.New("the lease store cannot delete ended leases; leases.retention is not applied"))
	}
	if b.replay != nil {
		n, err := b.replay.Purge(now)
		h.Purged = n
		if err != nil {
			errs = append(errs, fmt.Errorf("purge the replay cache: %w", err))
		}
	}
	return h, errors.Join(errs...)
}
