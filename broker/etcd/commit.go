package etcd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// commitReq is one write waiting for the committer.
type commitReq struct {
	fn    func(t *tx) error
	alone bool // a duty's write: its own transaction (and fenced when it asks)
	done  chan error
}

// maxBatch bounds how many writes share one transaction; each reads a few
// keys, all compared at commit.
const maxBatch = 24

// maxConflicts bounds how often one batch is run again after other
// replicas changed what it read.
const maxConflicts = 64

var errClosed = errors.New("etcd store is closed")

// update runs fn in a transaction that may be shared with other
// concurrent writes of this replica (group commit). It returns once the
// transaction committed, or failed. ctx bounds only the wait for a place
// in the queue: once queued, the write runs and update waits for its
// outcome. fn may run more than once (after a conflict) and must only
// touch the transaction and variables it resets on each run.
func (s *Store) update(ctx context.Context, fn func(t *tx) error) error {
	return s.enqueue(ctx, &commitReq{fn: fn, done: make(chan error, 1)})
}

// updateAlone runs fn in a transaction of its own (a duty's batch over
// many records, which sizes itself to fit one transaction).
func (s *Store) updateAlone(ctx context.Context, fn func(t *tx) error) error {
	return s.enqueue(ctx, &commitReq{fn: fn, alone: true, done: make(chan error, 1)})
}

func (s *Store) enqueue(ctx context.Context, r *commitReq) error {
	if s.down.Load() {
		// Fail fast while etcd does not answer: nothing was started.
		return s.unavailable(errors.New("the last health check got no answer from a quorum"))
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return errClosed
	}
	select {
	case s.reqs <- r:
		s.closeMu.RUnlock()
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
	return <-r.done
}

func (s *Store) runCommitter() {
	defer s.wg.Done()
	var held *commitReq // a write drained while gathering a batch it cannot join
	for {
		r := held
		held = nil
		if r == nil {
			select {
			case r = <-s.reqs:
			case <-s.closing:
				s.drainClosed()
				return
			}
		}
		batch := []*commitReq{r}
	gather:
		for !r.alone && len(batch) < maxBatch {
			select {
			case n := <-s.reqs:
				if n.alone {
					held = n
					break gather
				}
				batch = append(batch, n)
			default:
				break gather
			}
		}
		s.commitBatch(batch)
	}
}

func (s *Store) drainClosed() {
	for {
		select {
		case r := <-s.reqs:
			r.done <- errClosed
		default:
			return
		}
	}
}

// commitBatch runs the batch's functions in one transaction and commits
// it. A function that fails gets its error and the others go on without
// it; what does not fit in one transaction goes to the next; a conflict
// runs the batch again on fresh reads.
func (s *Store) commitBatch(batch []*commitReq) {
	conflicts := 0
	for len(batch) > 0 {
		t := s.newTx(context.Background())
		var applied, rest []*commitReq
		for i, r := range batch {
			c := t.child()
			if err := r.fn(c); err != nil {
				r.done <- err
				continue
			}
			if len(applied) > 0 && (t.ops()+c.ops()+1 > maxTxnOps || t.bytes+c.bytes > maxTxnBytes || len(t.reads) > maxTxnOps-8) {
				rest = batch[i:]
				break
			}
			c.merge()
			applied = append(applied, r)
		}
		batch = rest
		if len(applied) == 0 {
			continue
		}
		outcome, _, err := t.commit()
		switch {
		case err != nil:
			for _, r := range applied {
				r.done <- err
			}
		case outcome == committed:
			for _, f := range t.after {
				f()
			}
			for _, r := range applied {
				r.done <- nil
			}
		case outcome == fenced:
			for _, r := range applied {
				r.done <- ErrFenced
			}
		default:
			conflicts++
			if conflicts > maxConflicts {
				for _, r := range applied {
					r.done <- s.unavailable(fmt.Errorf("gave up after %d conflicting writes of other replicas", conflicts))
				}
				continue
			}
			// Others changed what we read: run again, after a pause that
			// grows and is jittered so replicas do not retry in step.
			time.Sleep(time.Duration(rand.N(int64(min(conflicts, 8)) * int64(time.Millisecond))))
			batch = append(applied, batch...)
		}
	}
}
