package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

func (s *Store) signalKey(id string) string { return s.p + "s/" + id }

func decodeSignal(v []byte) (*agents.Signal, error) {
	var sig agents.Signal
	if err := json.Unmarshal(v, &sig); err != nil {
		return nil, fmt.Errorf("decode signal: %w", err)
	}
	return &sig, nil
}

func (t *tx) getSignal(id string) (*agents.Signal, error) {
	v, err := t.get(t.s.signalKey(id))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, agents.ErrNotFound
	}
	return decodeSignal(v)
}

// putSignal stores sig and its indexes; old is nil for a new signal.
func (t *tx) putSignal(old, sig *agents.Signal) error {
	s := t.s
	v, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	t.put(s.signalKey(sig.ID), v)
	if old == nil {
		for _, a := range sig.Agents {
			t.put(s.p+"si/a/"+vkey(a)+sig.ID, nil)
		}
		t.put(s.p+"si/sub/"+vkey(sig.Subject.String())+sig.ID, nil)
	}
	if sig.Pending() {
		t.put(s.p+"si/p/"+sig.ID, nil)
	} else if old != nil && old.Pending() {
		t.del(s.p + "si/p/" + sig.ID)
	}
	return nil
}

func (t *tx) deleteSignal(sig *agents.Signal) {
	s := t.s
	t.del(s.signalKey(sig.ID))
	t.del(s.p + "si/p/" + sig.ID)
	t.del(s.p + "si/sub/" + vkey(sig.Subject.String()) + sig.ID)
	for _, a := range sig.Agents {
		t.del(s.p + "si/a/" + vkey(a) + sig.ID)
	}
}

// RecordSignal implements broker.SignalStore, in one transaction: a
// signal concerning more agents than fit in one etcd transaction (about
// a dozen) is refused whole.
func (s *Store) RecordSignal(ctx context.Context, sig *agents.Signal, c broker.SignalChange, e, qe audit.Entry) ([]string, error) {
	var quarantined []string
	err := s.update(ctx, func(t *tx) error {
		quarantined = quarantined[:0]
		keys := []string{s.signalKey(sig.ID), s.auditHeadKey()}
		for _, id := range sig.Agents {
			keys = append(keys, s.agentKey(id))
		}
		if err := t.root().fetch(keys...); err != nil {
			return err
		}
		if v, err := t.get(s.signalKey(sig.ID)); err != nil {
			return err
		} else if v != nil {
			return fmt.Errorf("signal %s already exists", sig.ID)
		}
		if err := t.putSignal(nil, sig); err != nil {
			return err
		}
		var entries []audit.Entry
		if len(sig.Agents) == 0 {
			entries = append(entries, e)
		}
		for _, id := range sig.Agents {
			old, err := t.getAgent(id)
			var a *agents.Agent
			switch {
			case errors.Is(err, agents.ErrNotFound):
				old, a = nil, &agents.Agent{ID: id}
			case err != nil:
				return fmt.Errorf("agent %s: %w", id, err)
			default:
				a = old.Clone()
			}
			var q *agents.Quarantine
			if c.Quarantine != nil {
				cp := *c.Quarantine
				q = &cp
			}
			ae := e
			ae.AgentID = id
			entries = append(entries, ae)
			if a.Apply(sig, c.Points, c.HalfLife, q) {
				quarantined = append(quarantined, id)
				qa := qe
				qa.AgentID = id
				entries = append(entries, qa)
			}
			if err := t.putAgent(old, a); err != nil {
				return err
			}
		}
		_, err := t.appendAudit(sig.ReceivedAt, entries...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return quarantined, nil
}

// Contained implements broker.SignalStore.
func (s *Store) Contained(ctx context.Context, id string, ended int, now time.Time, e audit.Entry) (*agents.Signal, error) {
	var out *agents.Signal
	err := s.update(ctx, func(t *tx) error {
		out = nil
		if err := t.root().fetch(s.signalKey(id), s.auditHeadKey()); err != nil {
			return err
		}
		old, err := t.getSignal(id)
		if err != nil {
			return err
		}
		sig := *old
		if old.Containment != nil {
			cp := *old.Containment
			sig.Containment = &cp
		}
		if err := sig.Contained(ended, now); err != nil {
			if errors.Is(err, agents.ErrUnchanged) {
				out = old
				return nil
			}
			return err
		}
		if err := t.putSignal(old, &sig); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := t.appendAudit(now, sig.Recorded(e)); err != nil {
				return err
			}
		}
		out = &sig
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GetSignal implements broker.SignalStore.
func (s *Store) GetSignal(ctx context.Context, id string) (*agents.Signal, error) {
	return getOne(ctx, s, s.signalKey(id), agents.ErrNotFound, decodeSignal)
}

// ListSignals implements broker.SignalStore.
func (s *Store) ListSignals(ctx context.Context, f agents.SignalFilter) ([]*agents.Signal, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	prefix := s.p + "s/"
	if f.AgentID != "" {
		prefix = s.p + "si/a/" + vkey(f.AgentID)
	}
	var out []*agents.Signal
	err := s.walkDesc(ctx, prefix, f.Before, func(id string) (bool, error) {
		sig, err := s.GetSignal(ctx, id)
		if err != nil {
			if errors.Is(err, ErrUnavailable) {
				return false, err
			}
			s.ReportSkipped("signal listing", id, err)
			return true, nil
		}
		if f.Match(sig) {
			out = append(out, sig)
		}
		return len(out) < f.Limit, nil
	})
	return out, err
}

// PendingSignals implements broker.SignalStore.
func (s *Store) PendingSignals(ctx context.Context) ([]*agents.Signal, error) {
	p := s.p + "si/p/"
	resp, err := s.kv.Get(s.opCtx(ctx), p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, s.unavailable(err)
	}
	var out []*agents.Signal
	for _, kv := range resp.Kvs {
		id := string(kv.Key[len(p):])
		sig, err := s.GetSignal(ctx, id)
		if err != nil {
			if errors.Is(err, ErrUnavailable) {
				return nil, err
			}
			s.ReportSkipped("pending signals", id, err)
			continue
		}
		out = append(out, sig)
	}
	return out, nil
}

// PruneSignals implements broker.SignalStore, in transactions fenced by
// the leadership.
func (s *Store) PruneSignals(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	total := 0
	after := s.p + "s/"
	for total < limit {
		resp, err := s.kv.Get(s.opCtx(ctx), after, clientv3.WithRange(prefixEnd(s.p+"s/")), clientv3.WithLimit(int64(min(limit-total, 10))))
		if err != nil {
			return total, s.unavailable(err)
		}
		var old []*agents.Signal
		stop := !resp.More
		for _, kv := range resp.Kvs {
			sig, err := decodeSignal(kv.Value)
			if err != nil {
				s.ReportSkipped("signal pruning", string(kv.Key), err)
				continue
			}
			if !sig.ReceivedAt.Before(cutoff) {
				stop = true
				break
			}
			if !sig.Pending() {
				old = append(old, sig)
			}
		}
		if len(resp.Kvs) > 0 {
			after = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if len(old) > 0 {
			err = s.updateAlone(ctx, func(t *tx) error {
				t.fenced = s.fencing()
				for _, sig := range old {
					if _, err := t.get(s.signalKey(sig.ID)); err != nil {
						return err
					}
					t.deleteSignal(sig)
				}
				return nil
			})
			if err != nil {
				return total, err
			}
			total += len(old)
		}
		if stop || len(resp.Kvs) == 0 {
			break
		}
	}
	return total, nil
}

// EndLive implements broker.SignalStore. One call ends at most what fits
// in one etcd transaction (perTxn leases), fewer than limit when limit is
// larger: the caller continues from next, as after any batch. Called with
// a context of LeaderDuty (a containment the leader resumes) it is fenced.
func (s *Store) EndLive(ctx context.Context, signalID string, f leases.Filter, before string, createdBy time.Time, limit int, reason leases.State,
	now time.Time, e audit.Entry) ([]*leases.Lease, string, error) {
	if !reason.Terminal() {
		return nil, "", fmt.Errorf("end leases: %q is not a terminal state", reason)
	}
	var prefix string
	switch {
	case f.Lineage != "":
		prefix = s.p + "li/g/" + vkey(f.Lineage)
	case f.AgentID != "":
		prefix = s.p + "li/a/" + vkey(f.AgentID)
	case f.State == leases.StateActive || f.State == leases.StatePending:
		prefix = s.p + "li/s/" + string(f.State) + "/"
	default:
		return nil, "", errors.New("end leases: the filter needs an agent, a lineage, or the state active or pending (an index to walk)")
	}
	limit = min(max(1, limit), perTxn-1)
	const maxExamined = 4096
	// Walk the index outside the transaction: only the leases it ends are
	// read in it (and compared at commit).
	var ids []string
	next, examined := "", 0
	err := s.walkDesc(ctx, prefix, before, func(id string) (bool, error) {
		examined++
		ids = append(ids, id)
		if len(ids) >= limit || examined%maxTxnOps == 0 {
			// Read the leases gathered and keep the live ones.
			var err error
			if ids, err = s.keepLive(ctx, ids, f, createdBy); err != nil {
				return false, err
			}
		}
		if len(ids) >= limit || examined >= maxExamined {
			next = id
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return nil, "", err
	}
	if ids, err = s.keepLive(ctx, ids, f, createdBy); err != nil {
		return nil, "", err
	}
	if len(ids) > limit {
		next = ids[limit-1]
		ids = ids[:limit]
	}
	var out []*leases.Lease
	run := s.update
	if isDuty(ctx) {
		run = s.updateAlone
	}
	err = run(ctx, func(t *tx) error {
		out = out[:0]
		t.fenced = isDuty(ctx) && s.fencing()
		keys := []string{s.auditHeadKey()}
		for _, id := range ids {
			keys = append(keys, s.leaseKey(id))
		}
		if signalID != "" {
			keys = append(keys, s.signalKey(signalID))
		}
		if err := t.root().fetch(keys...); err != nil {
			return err
		}
		for _, id := range ids {
			old, err := t.getLease(id)
			if err != nil {
				return err
			}
			l := *old
			if err := l.End(reason, now); err != nil {
				continue // not live after all
			}
			if err := t.putLease(old, &l); err != nil {
				return err
			}
			if _, err := t.appendAudit(now, l.Recorded(e)); err != nil {
				return err
			}
			out = append(out, &l)
		}
		if signalID == "" || len(out) == 0 {
			return nil
		}
		old, err := t.getSignal(signalID)
		if err != nil {
			return fmt.Errorf("signal %s: %w", signalID, err)
		}
		if old.Containment == nil {
			return fmt.Errorf("signal %s has no containment to count leases in", signalID)
		}
		sig := *old
		c := *old.Containment
		c.Ended += len(out)
		sig.Containment = &c
		return t.putSignal(old, &sig)
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// keepLive reads the leases ids and keeps those EndLive would end.
func (s *Store) keepLive(ctx context.Context, ids []string, f leases.Filter, createdBy time.Time) ([]string, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.leaseKey(id)
	}
	vals, err := s.getValues(ctx, keys)
	if err != nil {
		return nil, err
	}
	// Every live lease of the filter's owner, whatever f.State (which
	// only picks the index to walk when no owner is given).
	owned := f
	owned.State = ""
	out := ids[:0]
	for _, id := range ids {
		v, ok := vals[s.leaseKey(id)]
		if !ok {
			continue
		}
		l, err := decodeLease(v.val)
		if err != nil {
			s.ReportSkipped("mass revocation", id, err)
			continue
		}
		if (l.State == leases.StatePending || l.State == leases.StateActive) && !l.CreatedAt.After(createdBy) && owned.Matches(l) {
			out = append(out, id)
		}
	}
	return out, nil
}
