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

// pruneChunk bounds what one transaction of a housekeeping pass deletes.
// A pass deletes chunk after chunk until nothing past the retention is
// left, so pruning keeps up with any rate at which leases end, and each
// chunk holds the store's single writer only briefly (mints wait behind
// it).
const pruneChunk = 1000

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
	// Pruned counts the ended leases deleted; GrantsPruned the ended
	// grants deleted; Purged the consumed attestation ids deleted.
	Pruned, GrantsPruned, Purged int
}

// Housekeep deletes leases and grants that ended more than
// leases.retention ago (their audit records stay) and, with
// Options.Replay set, the consumed attestation ids past their expiry, at
// the broker's time. Leases and grants are deleted in transactions of
// pruneChunk until none past the retention is left or ctx ends. A grant
// that still needs something (a break-glass review, a mint in progress)
// stays until it no longer does. It does all three and returns what it
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
