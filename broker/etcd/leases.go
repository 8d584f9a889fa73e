package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Lanes of the revocation queue's index values.
const (
	laneHandle      = "h"
	laneCorrelation = "c"
)

func (s *Store) leaseKey(id string) string { return s.p + "l/" + id }

// leaseIndexes are the index keys (and values) of l as stored.
func (s *Store) leaseIndexes(l *leases.Lease) map[string]string {
	m := map[string]string{s.p + "li/s/" + string(l.State) + "/" + l.ID: ""}
	if l.State == leases.StateActive {
		m[s.p+"li/e/"+tkey(l.ExpiresAt)+"/"+l.ID] = ""
	}
	if l.State == leases.StateRevoking || l.State == leases.StateIrrevocable {
		lane := laneCorrelation
		if l.Handle != "" {
			lane = laneHandle
		}
		m[s.p+"li/q/"+tkey(l.NextAttempt)+"/"+l.ID] = lane
	}
	if l.State.Terminal() {
		m[s.p+"li/x/"+tkey(l.EndedAt)+"/"+l.ID] = ""
	}
	return m
}

// ownerKeys index a lease by its agent and lineage ids; they never change.
func (s *Store) ownerKeys(l *leases.Lease) []string {
	out := []string{s.p + "li/a/" + vkey(l.AgentID) + l.ID}
	for _, lid := range l.Lineage.IDs() {
		out = append(out, s.p+"li/g/"+vkey(lid)+l.ID)
	}
	return out
}

// putLease stores l and brings its indexes in line with the change from
// old (nil for a new lease).
func (t *tx) putLease(old, l *leases.Lease) error {
	v, err := l.Encode()
	if err != nil {
		return err
	}
	s := t.s
	t.put(s.leaseKey(l.ID), v)
	newKeys := s.leaseIndexes(l)
	if old != nil {
		for k := range s.leaseIndexes(old) {
			if _, keep := newKeys[k]; !keep {
				t.del(k)
			}
		}
	} else {
		for _, k := range s.ownerKeys(l) {
			t.put(k, nil)
		}
	}
	for k, v := range newKeys {
		t.put(k, []byte(v))
	}
	return nil
}

func (t *tx) deleteLease(l *leases.Lease) {
	s := t.s
	t.del(s.leaseKey(l.ID))
	for k := range s.leaseIndexes(l) {
		t.del(k)
	}
	for _, k := range s.ownerKeys(l) {
		t.del(k)
	}
}

func (t *tx) getLease(id string) (*leases.Lease, error) {
	v, err := t.get(t.s.leaseKey(id))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, leases.ErrNotFound
	}
	return decodeLease(v)
}

func decodeLease(v []byte) (*leases.Lease, error) {
	var l leases.Lease
	if err := json.Unmarshal(v, &l); err != nil {
		return nil, fmt.Errorf("decode lease: %w", err)
	}
	return &l, nil
}

// CreatePending implements broker.LeaseStore.
func (s *Store) CreatePending(ctx context.Context, l *leases.Lease) error {
	if l.State != leases.StatePending {
		return fmt.Errorf("create pending lease: state must be pending")
	}
	return s.create(ctx, l, time.Time{}, nil)
}

// CreateActive implements broker.LeaseStore.
func (s *Store) CreateActive(ctx context.Context, l *leases.Lease, now time.Time, e audit.Entry) error {
	if l.State != leases.StateActive {
		return fmt.Errorf("create active lease: state must be active")
	}
	return s.create(ctx, l, now, &e)
}

// create stores a new lease and, when e is set, its audit record. The
// transaction also reads the agent's gate, so a quarantine committed by
// another replica after this one's gate answered from memory refuses the
// lease (EQUARANTINED) instead of letting it land.
func (s *Store) create(ctx context.Context, l *leases.Lease, now time.Time, e *audit.Entry) error {
	if l.ID == "" {
		return fmt.Errorf("create lease: need an id")
	}
	return s.update(ctx, func(t *tx) error {
		keys := []string{s.leaseKey(l.ID), s.gateKey(l.AgentID)}
		if e != nil {
			keys = append(keys, s.auditHeadKey())
		}
		if err := t.root().fetch(keys...); err != nil {
			return err
		}
		if cur, err := t.get(s.leaseKey(l.ID)); err != nil {
			return err
		} else if cur != nil {
			return fmt.Errorf("lease %s already exists", l.ID)
		}
		if err := t.checkGate(l.AgentID, l.CreatedAt); err != nil {
			return err
		}
		if err := t.putLease(nil, l); err != nil {
			return err
		}
		if e == nil {
			return nil
		}
		_, err := t.appendAudit(now, l.Recorded(*e))
		return err
	})
}

// Activate implements broker.LeaseStore.
func (s *Store) Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, false, func(l *leases.Lease) error { return l.Activate(a) })
}

// Renew implements broker.LeaseStore.
func (s *Store) Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, false, func(l *leases.Lease) error { return l.Renew(now, expiresAt) })
}

// End implements broker.LeaseStore.
func (s *Store) End(ctx context.Context, id string, reason leases.State, now time.Time, e audit.Entry) (*leases.Lease, error) {
	if !reason.Terminal() {
		return nil, fmt.Errorf("end lease: %q is not a terminal state", reason)
	}
	return s.change(ctx, id, now, e, false, func(l *leases.Lease) error { return l.End(reason, now) })
}

// Abandon implements broker.LeaseStore.
func (s *Store) Abandon(ctx context.Context, id, handle string, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, false, func(l *leases.Lease) error { return l.Abandon(handle, now) })
}

// change loads a lease, applies fn (one of its state changes), stores the
// result and appends e, in one transaction: compare-and-swap on the
// stored lease. fn returning leases.ErrUnchanged writes nothing. A fenced
// change (a leader's duty) commits only while this replica leads.
func (s *Store) change(ctx context.Context, id string, now time.Time, e audit.Entry, fence bool, fn func(l *leases.Lease) error) (*leases.Lease, error) {
	var out *leases.Lease
	run := s.update
	if fence {
		run = s.updateAlone
	}
	err := run(ctx, func(t *tx) error {
		out = nil
		keys := []string{s.leaseKey(id)}
		if e.Kind != "" {
			keys = append(keys, s.auditHeadKey())
		}
		if err := t.root().fetch(keys...); err != nil {
			return err
		}
		old, err := t.getLease(id)
		if err != nil {
			return err
		}
		l := *old
		if err := fn(&l); err != nil {
			if errors.Is(err, leases.ErrUnchanged) {
				out = old
				return nil
			}
			return err
		}
		t.fenced = fence && s.fencing()
		if err := t.putLease(old, &l); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := t.appendAudit(now, l.Recorded(e)); err != nil {
				return err
			}
		}
		out = &l
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Get implements broker.LeaseStore and leases.RevocationStore.
func (s *Store) Get(ctx context.Context, id string) (*leases.Lease, error) {
	return getOne(ctx, s, s.leaseKey(id), leases.ErrNotFound, decodeLease)
}

// walkDesc calls fn with the ids under prefix (keys prefix+id), newest
// first, below the id before (from the newest when empty), until fn
// returns false.
func (s *Store) walkDesc(ctx context.Context, prefix, before string, fn func(id string) (bool, error)) error {
	end := prefixEnd(prefix)
	if before != "" {
		end = prefix + before
	}
	for {
		resp, err := s.kv.Get(s.opCtx(ctx), prefix, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(256),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		if err != nil {
			return s.unavailable(err)
		}
		for _, kv := range resp.Kvs {
			more, err := fn(string(kv.Key[len(prefix):]))
			if err != nil || !more {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		end = string(resp.Kvs[len(resp.Kvs)-1].Key)
	}
}

// getValues reads keys in requests of at most maxTxnOps reads each; a
// missing key has no entry.
func (s *Store) getValues(ctx context.Context, keys []string) (map[string]kv, error) {
	out := make(map[string]kv, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k)
		}
		resp, err := s.kv.Txn(s.opCtx(ctx)).Then(ops...).Commit()
		if err != nil {
			return nil, s.unavailable(err)
		}
		for _, r := range resp.Responses {
			if kvs := r.GetResponseRange().Kvs; len(kvs) == 1 {
				out[string(kvs[0].Key)] = kv{val: kvs[0].Value, mod: kvs[0].ModRevision}
			}
		}
		keys = keys[n:]
	}
	return out, nil
}

// List implements broker.LeaseStore. With an agent, lineage or state
// filter it walks that index; otherwise all leases newest first.
func (s *Store) List(ctx context.Context, f leases.Filter) ([]*leases.Lease, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	prefix := s.p + "l/"
	switch {
	case f.Lineage != "":
		prefix = s.p + "li/g/" + vkey(f.Lineage)
	case f.AgentID != "":
		prefix = s.p + "li/a/" + vkey(f.AgentID)
	case f.State != "":
		prefix = s.p + "li/s/" + string(f.State) + "/"
	}
	var out []*leases.Lease
	var page []string
	flush := func() error {
		keys := make([]string, len(page))
		for i, id := range page {
			keys[i] = s.leaseKey(id)
		}
		vals, err := s.getValues(ctx, keys)
		if err != nil {
			return err
		}
		for _, id := range page {
			v, ok := vals[s.leaseKey(id)]
			if !ok {
				s.ReportSkipped("listing", id, errors.New("an index points at a missing lease"))
				continue
			}
			l, err := decodeLease(v.val)
			if err != nil {
				s.ReportSkipped("listing", id, err)
				continue
			}
			if f.Matches(l) && len(out) < f.Limit {
				out = append(out, l)
			}
		}
		page = page[:0]
		return nil
	}
	err := s.walkDesc(ctx, prefix, f.Before, func(id string) (bool, error) {
		page = append(page, id)
		if len(page) < f.Limit-len(out) && len(page) < maxTxnOps {
			return true, nil
		}
		if err := flush(); err != nil {
			return false, err
		}
		return len(out) < f.Limit, nil
	})
	if err == nil && len(page) > 0 {
		err = flush()
	}
	return out, err
}

// Counts returns how many leases are in each state, counted by etcd on
// the state index (no values are read).
func (s *Store) Counts() (map[leases.State]int64, error) {
	out := map[leases.State]int64{}
	for _, st := range []leases.State{leases.StatePending, leases.StateActive, leases.StateRevoking, leases.StateIrrevocable,
		leases.StateReleased, leases.StateRevoked, leases.StateExpired} {
		p := s.p + "li/s/" + string(st) + "/"
		resp, err := s.kv.Get(s.opCtx(context.Background()), p, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return nil, s.unavailable(err)
		}
		if resp.Count > 0 {
			out[st] = resp.Count
		}
	}
	return out, nil
}
