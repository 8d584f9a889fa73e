package leases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker/audit"
	"github.com/valet-broker/valet/broker/clock"
)

// RevokeFunc revokes a lease's credential at its backend. A lease recovered
// from a crash has no Handle; the backend then revokes by correlation id
// (the lease id). Revoking something already revoked must succeed.
type RevokeFunc func(ctx context.Context, l *Lease) error

// RevocationQueueConfig configures a RevocationQueue. The numbers are
// taken as given (valet passes the validated leases.* settings);
// NewRevocationQueue refuses values it cannot use rather than replace them.
type RevocationQueueConfig struct {
	Store  *BoltStore
	Revoke RevokeFunc
	// Clock is the source of time (nil: clock.Real{}).
	Clock clock.Clock
	// Logger receives failures (nil: slog.Default()).
	Logger *slog.Logger
	// Attempts is how many failures make a lease irrevocable (at least 1).
	Attempts int
	// Backoff is the first retry delay (positive); it doubles up to
	// MaxBackoff (not less than Backoff), with jitter.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Concurrency bounds parallel backend calls (at least 1).
	Concurrency int
	// Timeout bounds one backend call (positive; valet uses
	// DefaultRevokeTimeout).
	Timeout time.Duration
	// OnAttempt, if set, is called after every attempt with its outcome:
	// "revoked" (the backend confirmed), "failed" (retried later) or
	// "expired" (the credential died on its own first) — for metrics.
	OnAttempt func(outcome string)
}

// RevocationQueue revokes ended leases at their backends: at least once,
// with exponential backoff and jitter, durably (the queue is an index in the
// store, so a restart resumes it). After Attempts failures a lease becomes
// irrevocable and is retried at MaxBackoff until its expiry has passed, when
// the credential is dead on its own and the lease becomes expired.
type RevocationQueue struct {
	cfg  RevocationQueueConfig
	wake chan struct{}
	sem  chan struct{}

	mu       sync.Mutex
	inflight map[string]bool
	wg       sync.WaitGroup
}

// DefaultRevokeTimeout is the bound on one backend revocation call that
// valet passes as RevocationQueueConfig.Timeout.
const DefaultRevokeTimeout = 30 * time.Second

// NewRevocationQueue returns a queue; call Run to start it. It returns an
// error, naming the leases.* key, when Attempts or Concurrency is below 1,
// Backoff or Timeout is not positive, or MaxBackoff is less than Backoff.
func NewRevocationQueue(cfg RevocationQueueConfig) (*RevocationQueue, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	var errs []error
	if cfg.Attempts < 1 {
		errs = append(errs, fmt.Errorf("leases.revoke_attempts must be at least 1; it is %d", cfg.Attempts))
	}
	if cfg.Backoff <= 0 {
		errs = append(errs, fmt.Errorf("leases.revoke_backoff must be positive; it is %s", cfg.Backoff))
	}
	if cfg.MaxBackoff < cfg.Backoff || cfg.MaxBackoff <= 0 {
		errs = append(errs, fmt.Errorf("leases.revoke_max_backoff must be positive and not less than revoke_backoff (%s); it is %s", cfg.Backoff, cfg.MaxBackoff))
	}
	if cfg.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("leases.revoke_concurrency must be at least 1; it is %d", cfg.Concurrency))
	}
	if cfg.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("revocation timeout must be positive; it is %s", cfg.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("revocation queue: %w", err)
	}
	return &RevocationQueue{
		cfg:      cfg,
		wake:     make(chan struct{}, 1),
		sem:      make(chan struct{}, cfg.Concurrency),
		inflight: map[string]bool{},
	}, nil
}

// Kick wakes the queue, e.g. after a lease was ended.
func (q *RevocationQueue) Kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run works the queue until ctx ends, then waits for attempts in flight.
func (q *RevocationQueue) Run(ctx context.Context) {
	defer q.wg.Wait()
	for {
		// Drain a pending kick first: anything it announced is read below.
		select {
		case <-q.wake:
		default:
		}
		now := q.cfg.Clock.Now()
		due, err := q.cfg.Store.DueRevocations(now, 4*q.cfg.Concurrency)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			q.cfg.Logger.Error("revocation queue read failed", "err", err)
		}
		started := 0
		for _, l := range due {
			if !q.claim(l.ID) {
				continue
			}
			select {
			case q.sem <- struct{}{}:
			case <-ctx.Done():
				q.release(l.ID)
				return
			}
			started++
			q.wg.Add(1)
			go func(l *Lease) {
				defer q.wg.Done()
				// Release before kicking (defers run last first): the
				// loop skips claimed leases and sleeps without a timer
				// until the next kick.
				defer q.Kick()
				defer func() { <-q.sem }()
				defer q.release(l.ID)
				q.attempt(ctx, l)
			}(l)
		}
		if started > 0 {
			continue
		}
		// Everything due is in flight (a finished attempt kicks us) or
		// nothing is due: sleep until the next attempt is due.
		var timer clock.Timer
		var fire <-chan time.Time
		if err != nil {
			timer = q.cfg.Clock.NewTimer(time.Second)
			fire = timer.C()
		} else if len(due) == 0 {
			if next, ok, err := q.cfg.Store.NextRevocation(); err == nil && ok {
				timer = q.cfg.Clock.NewTimer(next.Sub(now))
				fire = timer.C()
			}
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-fire:
		case <-q.wake:
			if timer != nil {
				timer.Stop()
			}
		}
	}
}

func (q *RevocationQueue) claim(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.inflight[id] {
		return false
	}
	q.inflight[id] = true
	return true
}

func (q *RevocationQueue) release(id string) {
	q.mu.Lock()
	delete(q.inflight, id)
	q.mu.Unlock()
}

// RevokeNow makes the first attempt for a lease that was just ended, on the
// caller's goroutine, so a release usually completes before the API answers.
// If the attempt fails the lease stays queued. It returns the lease as it is
// afterwards.
func (q *RevocationQueue) RevokeNow(ctx context.Context, l *Lease) (*Lease, error) {
	if l.State != StateRevoking && l.State != StateIrrevocable {
		return l, nil
	}
	if !q.claim(l.ID) {
		return l, nil
	}
	// Run may be asleep until a later retry, or have skipped this lease
	// while it was claimed: wake it so a failed attempt is retried on time.
	defer q.Kick()
	defer q.release(l.ID)
	out := q.attempt(ctx, l)
	if out == nil {
		return q.cfg.Store.Get(ctx, l.ID)
	}
	return out, nil
}

// attempt revokes one lease and records the outcome. It returns the updated
// lease, or nil if recording failed.
func (q *RevocationQueue) attempt(ctx context.Context, l *Lease) *Lease {
	observe := func(outcome string) {
		if q.cfg.OnAttempt != nil {
			q.cfg.OnAttempt(outcome)
		}
	}
	// Once started, an attempt records its outcome even if the request that
	// started it goes away.
	ctx = context.WithoutCancel(ctx)
	now := q.cfg.Clock.Now()
	entry := func(kind, reason string) audit.Entry {
		return audit.Entry{Kind: kind, Actor: systemActor, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID, Reason: reason,
			Details: map[string]string{"backend": l.Backend}}
	}
	if !now.Before(deadEnd(l).Add(ExpiryGrace)) {
		// The credential has expired at the backend on its own (invariant
		// 2); there is nothing left to revoke.
		observe("expired")
		out, err := q.cfg.Store.RevocationDone(ctx, l.ID, StateExpired, now,
			entry(audit.KindRevoked, fmt.Sprintf("credential expired before revocation was confirmed (was ending as %s)", l.EndReason)))
		if err != nil {
			q.cfg.Logger.Error("record revocation failed", "lease", l.ID, "err", err)
			return nil
		}
		return out
	}
	callCtx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	err := q.cfg.Revoke(callCtx, l)
	cancel()
	now = q.cfg.Clock.Now()
	if err == nil {
		observe("revoked")
		final := l.EndReason
		if final == "" {
			final = StateRevoked
		}
		out, err := q.cfg.Store.RevocationDone(ctx, l.ID, final, now, entry(audit.KindRevoked, "revoked at backend"))
		if err != nil {
			q.cfg.Logger.Error("record revocation failed", "lease", l.ID, "err", err)
			return nil
		}
		return out
	}
	observe("failed")
	attempts := l.RevokeAttempts + 1
	irrevocable := attempts >= q.cfg.Attempts
	delay := q.backoff(attempts)
	next := now.Add(delay)
	kind := audit.KindRevokeFailed
	if irrevocable && l.State != StateIrrevocable {
		kind = audit.KindIrrevocable
	}
	q.cfg.Logger.Warn("revocation failed", "lease", l.ID, "backend", l.Backend, "attempt", attempts, "retry_in", delay, "err", err)
	e := entry(kind, err.Error())
	e.Details["attempt"] = fmt.Sprint(attempts)
	out, rerr := q.cfg.Store.RevocationFailed(ctx, l.ID, err.Error(), next, irrevocable, now, e)
	if rerr != nil {
		q.cfg.Logger.Error("record revocation failure failed", "lease", l.ID, "err", rerr)
		return nil
	}
	return out
}

// deadEnd is when the lease's credential is dead at its backend whether or
// not it is revoked: its expiry, or, for a credential revoked at expiry
// because its holder could extend it, the lease's maximum (the backend caps
// extensions there).
func deadEnd(l *Lease) time.Time {
	if l.EndReason == StateExpired && l.MaxExpires.After(l.ExpiresAt) {
		return l.MaxExpires
	}
	return l.ExpiresAt
}

// backoff is Backoff·2^(attempts-1), capped at MaxBackoff, with "equal
// jitter": a random duration in [d/2, d], so many leases failing together do
// not retry in lockstep.
func (q *RevocationQueue) backoff(attempts int) time.Duration {
	d := q.cfg.Backoff
	for i := 1; i < attempts && d < q.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, q.cfg.MaxBackoff)
	half := d / 2
	return half + rand.N(d-half+1)
}
