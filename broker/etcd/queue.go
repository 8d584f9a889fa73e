package etcd

import (
	"context"
	"errors"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// perTxn is how many leases one transaction of a duty changes: each
// change writes the lease, up to four index keys and an audit record,
// and the transaction must stay within maxTxnOps.
const perTxn = 14

// NextExpiry implements leases.ExpiryStore from the first key of the
// expiry index.
func (s *Store) NextExpiry() (time.Time, bool, error) {
	return s.firstTime(s.p+"li/e/", "")
}

// NextRevocationAfter implements leases.RevocationStore.
func (s *Store) NextRevocationAfter(now time.Time) (time.Time, bool, error) {
	return s.firstTime(s.p+"li/q/", tkey(now.Add(time.Nanosecond)))
}

// ExpiryBacklog counts the active leases whose expiry is at or before now
// (the expirer's backlog: normally none, or the few that expired since
// its last pass), from the expiry index.
func (s *Store) ExpiryBacklog(now time.Time) (int, error) {
	prefix := s.p + "li/e/"
	resp, err := s.kv.Get(s.opCtx(context.Background()), prefix, clientv3.WithRange(prefix+tkey(now.Add(time.Nanosecond))), clientv3.WithCountOnly())
	if err != nil {
		return 0, s.unavailable(err)
	}
	return int(resp.Count), nil
}

// firstTime reads the time of the first key of a time index at or after
// from (the start when empty).
func (s *Store) firstTime(prefix, from string) (time.Time, bool, error) {
	resp, err := s.kv.Get(s.opCtx(context.Background()), prefix+from, clientv3.WithRange(prefixEnd(prefix)), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
	if err != nil {
		return time.Time{}, false, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return time.Time{}, false, nil
	}
	t, ok := parseTkey(string(resp.Kvs[0].Key[len(prefix):])[:16])
	return t, ok, nil
}

// dueKeys returns up to limit keys of a time index whose time is at or
// before now, earliest first, after the key from (exclusive; "" for the
// start), with their values.
func (s *Store) dueKeys(ctx context.Context, prefix string, now time.Time, from string, limit int) ([]*struct{ key, id, val string }, bool, error) {
	start := prefix
	if from != "" {
		start = from + "\x00"
	}
	end := prefix + tkey(now.Add(time.Nanosecond))
	resp, err := s.kv.Get(s.opCtx(ctx), start, clientv3.WithRange(end), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, false, s.unavailable(err)
	}
	out := make([]*struct{ key, id, val string }, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		rest := k[len(prefix):]
		id := ""
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			id = rest[i+1:]
		}
		out = append(out, &struct{ key, id, val string }{k, id, string(kv.Value)})
	}
	return out, resp.More, nil
}

// SetRevokeAtExpiry names the leases whose credentials their holder can
// extend at the backend without valet (see broker/bolt's Store).
func (s *Store) SetRevokeAtExpiry(f func(l *leases.Lease) bool) { s.revokeAtExpiry = f }

// ValidUntil implements leases.RevocationStore.
func (s *Store) ValidUntil(l *leases.Lease) time.Time { return l.ValidUntil(s.revokesAtExpiry(l)) }

func (s *Store) revokesAtExpiry(l *leases.Lease) bool {
	return s.revokeAtExpiry != nil && s.revokeAtExpiry(l)
}

// ExpireDue implements leases.ExpiryStore: it ends up to limit active
// leases past their expiry (at most perTxn per call: the Expirer calls
// again while leases are due), each with its audit record, in one
// transaction fenced by the leadership.
func (s *Store) ExpireDue(ctx context.Context, now time.Time, limit int) ([]*leases.Lease, error) {
	var out []*leases.Lease
	err := s.updateAlone(ctx, func(t *tx) error {
		out = out[:0]
		t.fenced = s.fencing()
		due, _, err := s.dueKeys(ctx, s.p+"li/e/", now, "", min(limit, perTxn))
		if err != nil {
			return err
		}
		keys := []string{s.auditHeadKey()}
		for _, d := range due {
			keys = append(keys, s.leaseKey(d.id))
		}
		if err := t.fetch(keys...); err != nil {
			return err
		}
		for _, d := range due {
			old, err := t.getLease(d.id)
			if err != nil || old.State != leases.StateActive {
				// It can never be expired through the index: take it out
				// so that it does not hold up the leases behind it.
				if err == nil {
					err = errors.New("the expiry index points at a lease that is " + string(old.State))
				}
				s.ReportSkipped("expiry", d.id, err)
				t.del(d.key)
				continue
			}
			l := *old
			reason := l.Expire(now, s.revokesAtExpiry(&l))
			if err := t.putLease(old, &l); err != nil {
				return err
			}
			if _, err := t.appendAudit(now, audit.Entry{Kind: audit.KindExpire, Actor: audit.SystemActor, AgentID: l.AgentID, Role: l.Role,
				LeaseID: l.ID, Reason: reason}); err != nil {
				return err
			}
			out = append(out, &l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DueRevocations returns up to limit leases whose next revocation attempt
// is at or before now, earliest first.
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

// EachDueRevocation implements leases.RevocationStore: it walks the queue
// index in pages, answers want from the index's value (the lane) and
// reads only the leases wanted.
func (s *Store) EachDueRevocation(now time.Time, want func(hasHandle bool) bool, fn func(l *leases.Lease) bool) error {
	ctx := context.Background()
	from := ""
	for {
		due, more, err := s.dueKeys(ctx, s.p+"li/q/", now, from, 256)
		if err != nil {
			return err
		}
		var ids, keys []string
		for _, d := range due {
			if want != nil && (d.val == laneHandle || d.val == laneCorrelation) && !want(d.val == laneHandle) {
				continue
			}
			ids = append(ids, d.id)
			keys = append(keys, s.leaseKey(d.id))
		}
		vals, err := s.getValues(ctx, keys)
		if err != nil {
			return err
		}
		for _, id := range ids {
			v, ok := vals[s.leaseKey(id)]
			if !ok {
				s.ReportSkipped("revocation queue", id, errors.New("the queue points at a missing lease"))
				continue
			}
			l, err := decodeLease(v.val)
			if err != nil {
				s.ReportSkipped("revocation queue", id, err)
				continue
			}
			if want != nil && !want(l.Handle != "") {
				continue
			}
			if !fn(l) {
				return nil
			}
		}
		if !more || len(due) == 0 {
			return nil
		}
		from = due[len(due)-1].key
	}
}

// RevocationDone implements leases.RevocationStore. Written by the
// leader's queue (a context of LeaderDuty) it is fenced.
func (s *Store) RevocationDone(ctx context.Context, id string, final leases.State, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, isDuty(ctx), func(l *leases.Lease) error { return l.RevocationDone(final) })
}

// RevocationFailed implements leases.RevocationStore.
func (s *Store) RevocationFailed(ctx context.Context, id string, cause string, next time.Time, irrevocable bool, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, isDuty(ctx), func(l *leases.Lease) error { return l.RevocationFailed(cause, next, irrevocable) })
}

// RevocationImpossible implements leases.RevocationStore.
func (s *Store) RevocationImpossible(ctx context.Context, id string, cause string, until time.Time, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, isDuty(ctx), func(l *leases.Lease) error { return l.RevocationImpossible(cause, until) })
}

// RecoverPending ends the pending leases created more than PendingGrace
// before now: intents left by a replica that stopped between recording a
// lease and activating it. Younger ones may belong to a mint still under
// way on another replica and are left alone. Each ended lease becomes
// revoking (reason revoked), revoked by correlation id. Any replica may
// call it (at start); the leader calls it periodically (RunRecovery), as
// no restart of a dead replica may come.
func (s *Store) RecoverPending(ctx context.Context, now time.Time) ([]*leases.Lease, error) {
	cutoff := now.Add(-s.pendingGrace)
	var all []*leases.Lease
	prefix := s.p + "li/s/" + string(leases.StatePending) + "/"
	from := prefix
	for {
		resp, err := s.kv.Get(s.opCtx(ctx), from, clientv3.WithRange(prefixEnd(prefix)), clientv3.WithKeysOnly(), clientv3.WithLimit(perTxn))
		if err != nil {
			return all, s.unavailable(err)
		}
		var ids []string
		for _, kv := range resp.Kvs {
			ids = append(ids, string(kv.Key[len(prefix):]))
		}
		var out []*leases.Lease
		err = s.updateAlone(ctx, func(t *tx) error {
			out = out[:0]
			keys := []string{s.auditHeadKey()}
			for _, id := range ids {
				keys = append(keys, s.leaseKey(id))
			}
			if err := t.fetch(keys...); err != nil {
				return err
			}
			for _, id := range ids {
				old, err := t.getLease(id)
				if err != nil {
					s.ReportSkipped("recovery of pending leases", id, err)
					continue
				}
				if old.State != leases.StatePending || old.CreatedAt.After(cutoff) {
					continue
				}
				l := *old
				l.Recover(now)
				if err := t.putLease(old, &l); err != nil {
					return err
				}
				if _, err := t.appendAudit(now, audit.Entry{Kind: audit.KindRecover, Actor: audit.SystemActor, AgentID: l.AgentID, Role: l.Role,
					LeaseID: l.ID, Reason: "pending lease left by an interrupted mint; revoking by correlation id"}); err != nil {
					return err
				}
				out = append(out, &l)
			}
			return nil
		})
		if err != nil {
			return all, err
		}
		all = append(all, out...)
		if !resp.More || len(resp.Kvs) == 0 {
			return all, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// PruneEnded deletes up to limit leases that ended before cutoff, in
// transactions fenced by the leadership. Their audit records stay.
func (s *Store) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	total := 0
	for total < limit {
		n, dropped := 0, 0
		err := s.updateAlone(ctx, func(t *tx) error {
			n, dropped = 0, 0
			t.fenced = s.fencing()
			due, _, err := s.dueKeys(ctx, s.p+"li/x/", cutoff.Add(-time.Nanosecond), "", min(limit-total, 12))
			if err != nil {
				return err
			}
			for _, d := range due {
				l, err := t.getLease(d.id)
				if err != nil {
					s.ReportSkipped("pruning", d.id, err)
					t.del(d.key)
					dropped++
					continue
				}
				t.deleteLease(l)
				n++
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n+dropped == 0 {
			break
		}
	}
	return total, nil
}
