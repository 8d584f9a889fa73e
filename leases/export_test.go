package leases

import "time"

// The tests of the revocation queue and the expirer run them on a real
// store (broker/bolt), so they are in package leases_test; these let them
// look inside.

// Cfg is the queue's configuration, which a test may change before it runs.
func (q *RevocationQueue) Cfg() *RevocationQueueConfig { return &q.cfg }

// Claimed reports whether an attempt on lease id is in flight.
func (q *RevocationQueue) Claimed(id string) bool { return q.claimed(id) }

// InFlight is how many attempts are in flight.
func (q *RevocationQueue) InFlight() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.inflight)
}

// Backoff is the delay before the retry after attempts failures.
func (q *RevocationQueue) Backoff(attempts int) time.Duration { return q.backoff(attempts) }

// Slots are the sizes of the queue's two lanes: revocation by handle and by
// correlation id.
func (q *RevocationQueue) Slots() (handle, recovery int) {
	return cap(q.sems[laneHandle]), cap(q.sems[laneRecovery])
}

// ArmedAt is the deadline the expirer's timer is armed for (zero: none).
func (e *Expirer) ArmedAt() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.armed
}
