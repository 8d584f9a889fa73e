package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Buckets of the signals. Their indexes are maintained by putSignal and
// deleteSignal alone.
var (
	bucketSignals       = []byte("signals")         // id -> JSON Signal
	bucketSignalAgent   = []byte("signals.agent")   // indexKey(agent, id) -> nil
	bucketSignalSubject = []byte("signals.subject") // indexKey(subject, id) -> nil
	bucketSignalPending = []byte("signals.pending") // id -> nil: containment under way
)

// RecordSignal implements broker.SignalStore.
func (s *Store) RecordSignal(ctx context.Context, sig *agents.Signal, c broker.SignalChange, e, qe audit.Entry) ([]string, error) {
	v, err := json.Marshal(sig)
	if err != nil {
		return nil, err
	}
	var quarantined []string
	err = s.update(ctx, func(tx *bbolt.Tx) error {
		quarantined = quarantined[:0]
		if tx.Bucket(bucketSignals).Get([]byte(sig.ID)) != nil {
			return fmt.Errorf("signal %s already exists", sig.ID)
		}
		if err := putSignalEncoded(tx, nil, sig, v); err != nil {
			return err
		}
		var entries []audit.Entry
		if len(sig.Agents) == 0 {
			entries = append(entries, e)
		}
		for _, id := range sig.Agents {
			old, err := getAgent(tx, id)
			var a *agents.Agent
			switch {
			case errors.Is(err, agents.ErrNotFound):
				old, a = nil, &agents.Agent{ID: id} // its leases predate its record: not seen since
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
			if err := s.putAgent(tx, old, a); err != nil {
				return err
			}
		}
		_, err := appendAudit(tx, sig.ReceivedAt, s.sink, entries...)
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
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		old, err := getSignal(tx, id)
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
		if err := putSignal(tx, old, &sig); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := appendAudit(tx, now, s.sink, sig.Recorded(e)); err != nil {
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
	var sig *agents.Signal
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		sig, err = getSignal(tx, id)
		return err
	})
	return sig, err
}

// ListSignals implements broker.SignalStore.
func (s *Store) ListSignals(ctx context.Context, f agents.SignalFilter) ([]*agents.Signal, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []*agents.Signal
	err := s.db.View(func(tx *bbolt.Tx) error {
		bucket, prefix := bucketSignals, []byte(nil)
		if f.AgentID != "" {
			bucket, prefix = bucketSignalAgent, indexPrefix(f.AgentID)
		}
		records := tx.Bucket(bucketSignals)
		return walkNewestFirst(tx.Bucket(bucket), prefix, f.Before, func(id []byte) (bool, error) {
			v := records.Get(id)
			if v == nil {
				s.ReportSkipped("signal listing", string(id), fmt.Errorf("index %s points at a missing signal", bucket))
				return true, nil
			}
			sig, err := decodeSignal(v)
			if err != nil {
				s.ReportSkipped("signal listing", string(id), err)
				return true, nil
			}
			if f.Match(sig) {
				out = append(out, sig)
			}
			return len(out) < f.Limit, nil
		})
	})
	return out, err
}

// PendingSignals implements broker.SignalStore.
func (s *Store) PendingSignals(ctx context.Context) ([]*agents.Signal, error) {
	var out []*agents.Signal
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSignalPending).ForEach(func(k, _ []byte) error {
			sig, err := getSignal(tx, string(k))
			if err != nil {
				s.ReportSkipped("pending signals", string(k), err)
				return nil
			}
			out = append(out, sig)
			return nil
		})
	})
	return out, err
}

// PruneSignals implements broker.SignalStore.
func (s *Store) PruneSignals(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		n = 0
		var old []*agents.Signal
		c := tx.Bucket(bucketSignals).Cursor()
		for k, v := c.First(); k != nil && len(old) < limit; k, v = c.Next() {
			sig, err := decodeSignal(v)
			if err != nil {
				s.ReportSkipped("signal pruning", string(k), err)
				continue
			}
			if !sig.ReceivedAt.Before(cutoff) {
				break // ids are time-ordered: the rest are newer
			}
			if !sig.Pending() {
				old = append(old, sig)
			}
		}
		for _, sig := range old {
			if err := deleteSignal(tx, sig); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// maxExamined bounds how many leases one EndLive transaction reads,
// whatever it ends: the index of an agent holds its ended leases too.
const maxExamined = 4096

// EndLive implements broker.SignalStore.
func (s *Store) EndLive(ctx context.Context, signalID string, f leases.Filter, before string, createdBy time.Time, limit int, reason leases.State,
	now time.Time, e audit.Entry) ([]*leases.Lease, string, error) {
	if !reason.Terminal() {
		return nil, "", fmt.Errorf("end leases: %q is not a terminal state", reason)
	}
	if f.Lineage == "" && f.AgentID == "" && f.State != leases.StateActive && f.State != leases.StatePending {
		return nil, "", errors.New("end leases: the filter needs an agent, a lineage, or the state active or pending (an index to walk)")
	}
	walk := f
	walk.Before = before
	// Every live lease of the filter's owner, whatever f.State (which
	// only picks the index to walk when no owner is given).
	owned := f
	owned.State = ""
	limit = max(1, limit)
	examine := max(limit, maxExamined)
	var out []*leases.Lease
	var next string
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		out, next = out[:0], ""
		// The walk only reads: the changes below move keys of the index
		// it may be walking (the state index).
		var ids []string
		examined := 0
		err := s.walkLeaseIndex(tx, walk, func(id []byte) (bool, error) {
			examined++
			l, err := getLease(tx, string(id))
			if err != nil {
				s.ReportSkipped("mass revocation", string(id), err)
			} else if (l.State == leases.StatePending || l.State == leases.StateActive) && !l.CreatedAt.After(createdBy) && owned.Matches(l) {
				ids = append(ids, l.ID)
			}
			if len(ids) >= limit || examined >= examine {
				next = string(id)
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, id := range ids {
			old, err := getLease(tx, id)
			if err != nil {
				return err
			}
			l := *old
			if err := l.End(reason, now); err != nil {
				continue // ErrUnchanged: not live after all
			}
			if err := putLease(tx, old, &l); err != nil {
				return err
			}
			if _, err := appendAudit(tx, now, s.sink, l.Recorded(e)); err != nil {
				return err
			}
			out = append(out, &l)
		}
		if signalID == "" || len(out) == 0 {
			return nil
		}
		old, err := getSignal(tx, signalID)
		if err != nil {
			return fmt.Errorf("signal %s: %w", signalID, err)
		}
		sig := *old
		if old.Containment == nil {
			return fmt.Errorf("signal %s has no containment to count leases in", signalID)
		}
		c := *old.Containment
		c.Ended += len(out)
		sig.Containment = &c
		return putSignal(tx, old, &sig)
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

func getSignal(tx *bbolt.Tx, id string) (*agents.Signal, error) {
	v := tx.Bucket(bucketSignals).Get([]byte(id))
	if v == nil {
		return nil, agents.ErrNotFound
	}
	return decodeSignal(v)
}

func decodeSignal(v []byte) (*agents.Signal, error) {
	var sig agents.Signal
	if err := json.Unmarshal(v, &sig); err != nil {
		return nil, fmt.Errorf("decode signal: %w", err)
	}
	return &sig, nil
}

func putSignal(tx *bbolt.Tx, old, sig *agents.Signal) error {
	v, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	return putSignalEncoded(tx, old, sig, v)
}

// putSignalEncoded stores sig (encoded as v) and its indexes; old is nil
// for a new signal. A signal's agents and subject never change, so only a
// new one writes their keys.
func putSignalEncoded(tx *bbolt.Tx, old, sig *agents.Signal, v []byte) error {
	id := []byte(sig.ID)
	if err := tx.Bucket(bucketSignals).Put(id, v); err != nil {
		return err
	}
	if old == nil {
		for _, a := range sig.Agents {
			if err := tx.Bucket(bucketSignalAgent).Put(indexKey(a, id), nil); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketSignalSubject).Put(indexKey(sig.Subject.String(), id), nil); err != nil {
			return err
		}
	}
	pending := tx.Bucket(bucketSignalPending)
	if sig.Pending() {
		return pending.Put(id, nil)
	}
	return pending.Delete(id)
}

func deleteSignal(tx *bbolt.Tx, sig *agents.Signal) error {
	id := []byte(sig.ID)
	for _, d := range []struct{ b, k []byte }{
		{bucketSignals, id},
		{bucketSignalPending, id},
		{bucketSignalSubject, indexKey(sig.Subject.String(), id)},
	} {
		if err := tx.Bucket(d.b).Delete(d.k); err != nil {
			return err
		}
	}
	for _, a := range sig.Agents {
		if err := tx.Bucket(bucketSignalAgent).Delete(indexKey(a, id)); err != nil {
			return err
		}
	}
	return nil
}
