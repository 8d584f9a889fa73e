package leases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// RevokeFunc revokes a lease's credential at its backend. A lease recovered
// from a crash has no Handle; the backend then revokes by correlation id
// (the lease id). Revoking something already revoked must succeed. A
// revocation that succeeded may return a note for its audit record (for
// example that it ended other credentials too); "" adds nothing. When the
// backend cannot revoke the credential at all, the error is in the chain
// of ErrUnrevocable (see Unrevocable).
type RevokeFunc func(ctx context.Context, l *Lease) (note string, err error)

// ErrUnrevocable, in the chain of a RevokeFunc's error, means that the
// backend offers no way to revoke the credential: it stays valid until its
// own expiry, the latest time it can be valid (RevocationStore.ValidUntil).
// The queue does not retry it and never reads it ended before then: it
// records the revocation as impossible (RevocationStore
// .RevocationImpossible, an audit record of kind lease.unrevocable), the
// lease stays revoking with end reason expired, and once ValidUntil plus
// ExpiryGrace has passed it ends expired, saying that the credential could
// not be revoked and expired at the backend.
var ErrUnrevocable = errors.New("the credential cannot be revoked at its backend")

// Unrevocable marks err, a backend's answer that it cannot revoke a
// credential, as ErrUnrevocable for the queue. The error's text stays
// err's (the backend's reason).
func Unrevocable(err error) error { return unrevocableError{err} }

type unrevocableError struct{ error }

func (e unrevocableError) Is(target error) bool { return target == ErrUnrevocable }
func (e unrevocableError) Unwrap() error        { return e.error }

// RevocationStore is what the revocation queue needs from storage. The
// queue is an index of the store, so a restart resumes it. An engine's
// implementation keeps these promises:
//
//   - EachDueRevocation calls fn with each revoking or irrevocable lease
//     whose next attempt is at or before now, earliest first, until fn
//     returns false; NextRevocationAfter returns the earliest next attempt
//     after now. Both read the next attempt from the lease records, never
//     from the engine's own timers or TTLs. An entry whose lease cannot be
//     read is skipped (and reported), never allowed to stop the queue.
//     want, when not nil, is asked first whether a lease with (or
//     without) a handle is wanted; a lease it refuses is skipped without
//     being read or passed to fn. An engine answers it from its queue
//     index where it can, so that a walk past many leases of a lane that
//     is full costs no reads (a mass revocation queues thousands at once).
//   - RevocationDone ends a revoking or irrevocable lease in state final,
//     RevocationFailed records a failed attempt (the cause, the next
//     attempt, irrevocable once the attempts are used up), and
//     RevocationImpossible records that the backend cannot revoke the
//     credential at all (Lease.RevocationImpossible: the cause, the time it
//     is known dead); each writes e, the attempt's audit record, in the
//     same transaction as the change, and returns the lease as it is
//     afterwards.
//   - ValidUntil is the latest time l's credential can be valid at its
//     backend if it is never revoked (see Lease.ValidUntil).
//   - Get returns a lease or ErrNotFound.
//
// Only one process may run a queue over a store: with several replicas,
// the engine runs it on the elected leader and fences its writes.
type RevocationStore interface {
	Get(ctx context.Context, id string) (*Lease, error)
	EachDueRevocation(now time.Time, want func(hasHandle bool) bool, fn func(l *Lease) bool) error
	NextRevocationAfter(now time.Time) (time.Time, bool, error)
	RevocationDone(ctx context.Context, id string, final State, now time.Time, e audit.Entry) (*Lease, error)
	RevocationFailed(ctx context.Context, id string, cause string, next time.Time, irrevocable bool, now time.Time, e audit.Entry) (*Lease, error)
	RevocationImpossible(ctx context.Context, id string, cause string, until time.Time, now time.Time, e audit.Entry) (*Lease, error)
	ValidUntil(l *Lease) time.Time
}

// RevocationQueueConfig configures a RevocationQueue. The numbers are
// taken as given (valet passes the validated leases.* settings);
// NewRevocationQueue refuses values it cannot use rather than replace them.
type RevocationQueueConfig struct {
	Store  RevocationStore
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
	// Concurrency bounds parallel revocations by handle (at least 1).
	Concurrency int
	// RecoveryConcurrency bounds parallel revocations by correlation id
	// (leases without a handle, left by interrupted mints), which may have
	// to search the backend and can be slow or keep failing; 0 means
	// max(1, Concurrency/4). They have slots of their own, so they never
	// hold up revocations by handle, nor those them.
	RecoveryConcurrency int
	// Timeout bounds one backend call (positive; valet uses
	// DefaultRevokeTimeout).
	Timeout time.Duration
	// OnAttempt, if set, is called after every attempt with its outcome:
	// "revoked" (the backend confirmed), "failed" (retried later),
	// "unrevocable" (the backend cannot revoke it: it lives until its
	// expiry) or "expired" (the credential died on its own first) — for
	// metrics.
	OnAttempt func(outcome string)
}

// RevocationQueue revokes ended leases at their backends: at least once,
// with exponential backoff and jitter, durably (the queue is an index in the
// store, so a restart resumes it). After Attempts failures a lease becomes
// irrevocable and is retried at MaxBackoff until the latest time its
// credential can be valid at the backend (RevocationStore.ValidUntil plus
// ExpiryGrace) has passed, whatever ended the lease; only then, with the
// credential dead on its own, does the lease become expired (invariant 5).
// A credential its backend cannot revoke (ErrUnrevocable) is not retried:
// its lease waits, revoking, for that same moment.
type RevocationQueue struct {
	cfg  RevocationQueueConfig
	wake chan struct{}
	// sems[lane] holds a slot per attempt in flight from Run.
	sems [lanes]chan struct{}

	mu       sync.Mutex
	inflight map[string]chan struct{} // closed when the attempt ends
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
	if cfg.RecoveryConcurrency < 0 {
		errs = append(errs, fmt.Errorf("revocation queue: recovery concurrency must not be negative; it is %d", cfg.RecoveryConcurrency))
	}
	if cfg.RecoveryConcurrency == 0 {
		cfg.RecoveryConcurrency = max(1, cfg.Concurrency/4)
	}
	if cfg.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("revocation timeout must be positive; it is %s", cfg.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("revocation queue: %w", err)
	}
	q := &RevocationQueue{
		cfg:      cfg,
		wake:     make(chan struct{}, 1),
		inflight: map[string]chan struct{}{},
	}
	q.sems[laneHandle] = make(chan struct{}, cfg.Concurrency)
	q.sems[laneRecovery] = make(chan struct{}, cfg.RecoveryConcurrency)
	return q, nil
}

// Lanes of the queue: each has its own concurrency budget.
const (
	laneHandle   = iota // revocation by handle
	laneRecovery        // revocation by correlation id (no handle)
	lanes
)

func laneOf(l *Lease) int { return laneOfHandle(l.Handle != "") }

func laneOfHandle(hasHandle bool) int {
	if hasHandle {
		return laneHandle
	}
	return laneRecovery
}

// Kick wakes the queue, e.g. after a lease was ended.
func (q *RevocationQueue) Kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run works the queue until ctx ends, then waits for attempts in flight.
// It walks the due leases in order of next attempt and starts each whose
// lane has a free slot, so a lane whose attempts hang or keep failing never
// delays the other.
func (q *RevocationQueue) Run(ctx context.Context) {
	defer q.wg.Wait()
	for {
		// Drain a pending kick first: anything it announced is read below.
		select {
		case <-q.wake:
		default:
		}
		now := q.cfg.Clock.Now()
		var free [lanes]int
		for i, sem := range q.sems {
			free[i] = cap(sem) - len(sem) // only this loop takes slots
		}
		var picked []*Lease
		// Leases of a lane without a free slot are passed over unread.
		want := func(hasHandle bool) bool { return free[laneOfHandle(hasHandle)] > 0 }
		err := q.cfg.Store.EachDueRevocation(now, want, func(l *Lease) bool {
			if lane := laneOf(l); free[lane] > 0 && !q.claimed(l.ID) {
				picked = append(picked, l)
				free[lane]--
			}
			return free[laneHandle]+free[laneRecovery] > 0
		})
		if err != nil && ctx.Err() != nil {
			return
		}
		if err != nil {
			q.cfg.Logger.Error("revocation queue read failed", "err", err)
		}
		started := 0
		for _, p := range picked {
			if !q.claim(p.ID) {
				continue
			}
			// The walk may have read the lease just before an attempt in
			// flight recorded its outcome: attempt only what is still due.
			l, err := q.cfg.Store.Get(ctx, p.ID)
			if err != nil || l.State != StateRevoking && l.State != StateIrrevocable || l.NextAttempt.After(now) {
				q.release(p.ID)
				continue
			}
			sem := q.sems[laneOf(l)]
			select {
			case sem <- struct{}{}:
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
				defer func() { <-sem }()
				defer q.release(l.ID)
				q.attempt(ctx, l)
			}(l)
		}
		if started > 0 {
			continue
		}
		// What is due is in flight or waits for a slot (a finished attempt
		// kicks us), or nothing is due: sleep until the next attempt after
		// now is due.
		var timer clock.Timer
		var fire <-chan time.Time
		if err != nil {
			timer = q.cfg.Clock.NewTimer(time.Second)
			fire = timer.C()
		} else if next, ok, err := q.cfg.Store.NextRevocationAfter(now); err == nil && ok {
			timer = q.cfg.Clock.NewTimer(next.Sub(now))
			fire = timer.C()
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

func (q *RevocationQueue) claimed(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight[id] != nil
}

func (q *RevocationQueue) claim(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.inflight[id] != nil {
		return false
	}
	q.inflight[id] = make(chan struct{})
	return true
}

// attemptDone returns a channel closed when the attempt in flight for id
// ends, or nil when there is none.
func (q *RevocationQueue) attemptDone(id string) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight[id]
}

func (q *RevocationQueue) release(id string) {
	q.mu.Lock()
	if ch := q.inflight[id]; ch != nil {
		close(ch)
	}
	delete(q.inflight, id)
	q.mu.Unlock()
}

// RevokeNow makes the first attempt for a lease that was just ended, on the
// caller's goroutine, so a release usually completes before the API answers.
// If the attempt fails the lease stays queued. When the queue's own worker is
// making an attempt for the lease at that moment, RevokeNow waits for it
// (until ctx ends) instead of making a second one. It returns the lease as it
// is afterwards.
func (q *RevocationQueue) RevokeNow(ctx context.Context, l *Lease) (*Lease, error) {
	if l.State != StateRevoking && l.State != StateIrrevocable {
		return l, nil
	}
	if !q.claim(l.ID) {
		// The queue is making an attempt for this lease right now: answer
		// with its outcome, not with the state from before it.
		if done := q.attemptDone(l.ID); done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return l, nil
			}
		}
		return q.cfg.Store.Get(context.WithoutCancel(ctx), l.ID)
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
		return audit.Entry{Kind: kind, Actor: audit.SystemActor, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID, Reason: reason,
			Details: map[string]string{"backend": l.Backend}}
	}
	validUntil := q.cfg.Store.ValidUntil(l)
	deadline := validUntil.Add(ExpiryGrace)
	if !now.Before(deadline) {
		// The credential has expired at the backend on its own (invariant
		// 2); there is nothing left to revoke. Until this moment the lease
		// never reads ended without the backend's confirmation. The record
		// is an expiry: nothing was revoked.
		observe("expired")
		reason := fmt.Sprintf("revocation was never confirmed; the credential expired at the backend at %s (the lease was ending as %s)",
			validUntil.UTC().Format(time.RFC3339), l.EndReason)
		if l.Unrevocable {
			reason = fmt.Sprintf("the credential could not be revoked; it expired at the backend at %s", validUntil.UTC().Format(time.RFC3339))
		}
		out, err := q.cfg.Store.RevocationDone(ctx, l.ID, StateExpired, now, entry(audit.KindExpire, reason))
		if err != nil {
			q.cfg.Logger.Error("record revocation failed", "lease", l.ID, "err", err)
			return nil
		}
		return out
	}
	callCtx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	note, err := q.cfg.Revoke(callCtx, l)
	cancel()
	now = q.cfg.Clock.Now()
	if err == nil {
		observe("revoked")
		final := l.EndReason
		if final == "" {
			final = StateRevoked
		}
		reason := "revoked at backend"
		if note != "" {
			reason += ": " + note
		}
		out, err := q.cfg.Store.RevocationDone(ctx, l.ID, final, now, entry(audit.KindRevoked, reason))
		if err != nil {
			q.cfg.Logger.Error("record revocation failed", "lease", l.ID, "err", err)
			return nil
		}
		return out
	}
	if errors.Is(err, ErrUnrevocable) {
		// Retrying cannot help: the credential lives until it expires, and
		// the lease says so until then.
		observe("unrevocable")
		reason := fmt.Sprintf("%v; the credential stays valid at the backend until %s, and the lease ends expired then",
			err, validUntil.UTC().Format(time.RFC3339))
		out, rerr := q.cfg.Store.RevocationImpossible(ctx, l.ID, err.Error(), deadline, now, entry(audit.KindUnrevocable, reason))
		if rerr != nil {
			q.cfg.Logger.Error("record that a credential cannot be revoked failed", "lease", l.ID, "err", rerr)
			return nil
		}
		return out
	}
	observe("failed")
	attempts := l.RevokeAttempts + 1
	irrevocable := attempts >= q.cfg.Attempts
	delay := q.backoff(attempts)
	// Never sleep past the deadline: the lease reads expired as soon as
	// its credential is dead, not a backoff later.
	next := now.Add(delay)
	if next.After(deadline) {
		next = deadline
	}
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
