package bolt

import (
	"bytes"
	"context"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the Store methods that the expiry scheduler, the
// revocation queue and start-up recovery use. Each is one transaction.

// NextExpiry returns the earliest expiry of an active lease, read from the
// first key of the expiry index.
func (s *Store) NextExpiry() (time.Time, bool, error) {
	return s.firstTime(bucketExpiry)
}

// NextRevocation returns the earliest next attempt in the revocation queue.
func (s *Store) NextRevocation() (time.Time, bool, error) {
	return s.firstTime(bucketRevoke)
}

// expiryBacklogCap bounds how far ExpiryBacklog counts.
const expiryBacklogCap = 1_000_000

// ExpiryBacklog counts the active leases whose expiry is at or before now
// (the expirer's backlog: normally none, or the few that expired since its
// last pass), reading the expiry index from its first key and stopping at
// the first lease still valid, and at expiryBacklogCap.
func (s *Store) ExpiryBacklog(now time.Time) (int, error) {
	n := 0
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketExpiry).Cursor()
		for k, _ := c.First(); k != nil && !keyTime(k).After(now) && n < expiryBacklogCap; k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, err
}

func (s *Store) firstTime(bucket []byte) (time.Time, bool, error) {
	var t time.Time
	var ok bool
	err := s.db.View(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(bucket).Cursor().First()
		if k != nil {
			t, ok = keyTime(k), true
		}
		return nil
	})
	return t, ok, err
}

// SetRevokeAtExpiry names the leases whose credentials their holder can
// extend at the backend without valet (a renewable Vault token renews
// itself), up to the lease's maximum. Such a credential is revoked at its
// backend when its lease expires, and its revocation is retried until the
// lease's maximum has passed (see ValidUntil). A lease whose credential
// lives a fixed time past it (Lease.CredentialExpires) is revoked at its
// expiry too, whatever f says. Other leases simply become expired at their
// expiry: their credentials died on their own.
func (s *Store) SetRevokeAtExpiry(f func(l *leases.Lease) bool) { s.revokeAtExpiry = f }

// ValidUntil implements leases.RevocationStore: l.ValidUntil, with the
// leases SetRevokeAtExpiry names as those whose holder can extend them.
func (s *Store) ValidUntil(l *leases.Lease) time.Time {
	return l.ValidUntil(s.revokesAtExpiry(l))
}

func (s *Store) revokesAtExpiry(l *leases.Lease) bool {
	return s.revokeAtExpiry != nil && s.revokeAtExpiry(l)
}

// ExpireDue ends up to limit active leases whose expiry is at or before
// now, each with an audit record, in one transaction. Most become expired:
// their credentials died on their own with the lease. Those whose
// credential may outlive the lease (SetRevokeAtExpiry names them, or their
// CredentialExpires is after now) become revoking (end reason expired) and
// go to the revocation queue.
func (s *Store) ExpireDue(ctx context.Context, now time.Time, limit int) ([]*leases.Lease, error) {
	var out []*leases.Lease
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		out = out[:0]
		c := tx.Bucket(bucketExpiry).Cursor()
		var due [][]byte
		for k, _ := c.First(); k != nil && !keyTime(k).After(now) && len(due) < limit; k, _ = c.Next() {
			due = append(due, append([]byte{}, k...))
		}
		for _, k := range due {
			id := k[8:]
			old, err := getLease(tx, string(id))
			if err != nil {
				// It can never be expired through the index: take it out
				// so that it does not hold up the leases behind it.
				s.ReportSkipped("expiry", string(id), err)
				if err := tx.Bucket(bucketExpiry).Delete(k); err != nil {
					return err
				}
				continue
			}
			l := *old
			reason := l.Expire(now, s.revokesAtExpiry(&l))
			if err := putLease(tx, old, &l); err != nil {
				return err
			}
			if _, err := appendAudit(tx, now, s.sink, audit.Entry{
				Kind: audit.KindExpire, Actor: audit.SystemActor, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID,
				Reason: reason,
			}); err != nil {
				return err
			}
			out = append(out, &l)
		}
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is
		// not ours to read.
		return nil, err
	}
	return out, nil
}

// DueRevocations returns up to limit leases whose next revocation attempt is
// at or before now, earliest first.
func (s *Store) DueRevocations(now time.Time, limit int) ([]*leases.Lease, error) {
	var out []*leases.Lease
	if limit <= 0 {
		return nil, nil
	}
	err := s.EachDueRevocation(now, nil, func(l *leases.Lease) bool {
		out = append(out, l)
		return len(out) < limit
	})
	return out, err
}

// EachDueRevocation calls fn with each lease whose next revocation attempt
// is at or before now, earliest first, until fn returns false. want, when
// not nil, is answered from the queue index's value (whether the lease
// has a handle) before the lease is read; an entry written before the
// index held it is read to answer. An entry of the queue whose lease
// cannot be read is skipped (and logged once): one bad record must not
// stop every revocation behind it.
func (s *Store) EachDueRevocation(now time.Time, want func(hasHandle bool) bool, fn func(l *leases.Lease) bool) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketRevoke).Cursor()
		for k, v := c.First(); k != nil && !keyTime(k).After(now); k, v = c.Next() {
			if want != nil && len(v) == 1 && !want(v[0] == revokeByHandle) {
				continue
			}
			l, err := getLease(tx, string(k[8:]))
			if err != nil {
				s.ReportSkipped("revocation queue", string(k[8:]), err)
				continue
			}
			if want != nil && len(v) != 1 && !want(l.Handle != "") {
				continue
			}
			if !fn(l) {
				return nil
			}
		}
		return nil
	})
}

// NextRevocationAfter returns the earliest next attempt in the revocation
// queue that is after now.
func (s *Store) NextRevocationAfter(now time.Time) (time.Time, bool, error) {
	var t time.Time
	var ok bool
	err := s.db.View(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(bucketRevoke).Cursor().Seek(timeKey(now.Add(time.Nanosecond), nil))
		if k != nil {
			t, ok = keyTime(k), true
		}
		return nil
	})
	return t, ok, err
}

// RevocationDone records that the backend revoked the credential (or that
// it expired on its own, when final is StateExpired): the lease reaches its
// terminal state.
func (s *Store) RevocationDone(ctx context.Context, id string, final leases.State, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.RevocationDone(final) })
}

// RevocationFailed records a failed attempt and when to try next. When
// irrevocable is true the lease becomes (or stays) irrevocable.
func (s *Store) RevocationFailed(ctx context.Context, id string, cause string, next time.Time, irrevocable bool, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.RevocationFailed(cause, next, irrevocable) })
}

// RevocationImpossible records that the backend cannot revoke the
// credential: the lease stays revoking, to end expired, and its next
// attempt is at until (see leases.Lease.RevocationImpossible).
func (s *Store) RevocationImpossible(ctx context.Context, id string, cause string, until time.Time, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.RevocationImpossible(cause, until) })
}

// RecoverPending ends every pending lease: they are intents left by a
// process that stopped between recording a lease and activating it. Each
// becomes revoking (reason revoked) so the revocation queue revokes whatever
// the backend may have issued, by correlation id. Call it only at start-up,
// when no mint of this process can be in flight.
func (s *Store) RecoverPending(ctx context.Context, now time.Time) ([]*leases.Lease, error) {
	var out []*leases.Lease
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		out = out[:0]
		prefix := indexPrefix(string(leases.StatePending))
		c := tx.Bucket(bucketLeaseState).Cursor()
		var ids [][]byte
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			ids = append(ids, append([]byte{}, k[len(prefix):]...))
		}
		for _, id := range ids {
			old, err := getLease(tx, string(id))
			if err != nil {
				s.ReportSkipped("recovery of pending leases", string(id), err)
				continue
			}
			l := *old
			l.Recover(now)
			if err := putLease(tx, old, &l); err != nil {
				return err
			}
			if _, err := appendAudit(tx, now, s.sink, audit.Entry{
				Kind: audit.KindRecover, Actor: audit.SystemActor, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID,
				Reason: "pending lease left by an interrupted mint; revoking by correlation id",
			}); err != nil {
				return err
			}
			out = append(out, &l)
		}
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is
		// not ours to read.
		return nil, err
	}
	return out, nil
}

// PruneEnded deletes up to limit leases that ended before cutoff. Their
// audit records stay.
func (s *Store) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		n = 0
		c := tx.Bucket(bucketEnded).Cursor()
		var keys [][]byte
		for k, _ := c.First(); k != nil && keyTime(k).Before(cutoff) && len(keys) < limit; k, _ = c.Next() {
			keys = append(keys, append([]byte{}, k...))
		}
		for _, k := range keys {
			l, err := getLease(tx, string(k[8:]))
			if err != nil {
				s.ReportSkipped("pruning", string(k[8:]), err)
				if err := tx.Bucket(bucketEnded).Delete(k); err != nil {
					return err
				}
				continue
			}
			if err := deleteLease(tx, l); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): n is
		// not ours to read.
		return 0, err
	}
	return n, nil
}
