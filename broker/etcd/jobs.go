package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
)

func (s *Store) jobKey(name string) string { return s.p + "j/" + name }

func decodeJob(name string, v []byte) (*jobs.State, error) {
	st := &jobs.State{Name: name}
	if v == nil {
		return st, nil
	}
	if err := json.Unmarshal(v, st); err != nil {
		return nil, fmt.Errorf("decode job state %s: %w", name, err)
	}
	st.Name = name
	return st, nil
}

// JobState implements jobs.Store.
func (s *Store) JobState(ctx context.Context, name string) (*jobs.State, error) {
	resp, err := s.kv.Get(s.opCtx(ctx), s.jobKey(name))
	if err != nil {
		return nil, s.unavailable(err)
	}
	var v []byte
	if len(resp.Kvs) == 1 {
		v = resp.Kvs[0].Value
	}
	return decodeJob(name, v)
}

// UpdateJob implements jobs.Store: compare-and-swap on the job's state
// with its audit records, fenced by the leadership (only the leader runs
// jobs), so two runs of one job never overlap on any replica.
func (s *Store) UpdateJob(ctx context.Context, name string, now time.Time, change func(st *jobs.State) ([]audit.Entry, error)) (*jobs.State, error) {
	var out *jobs.State
	err := s.updateAlone(ctx, func(t *tx) error {
		out = nil
		if err := t.fetch(s.jobKey(name), s.auditHeadKey()); err != nil {
			return err
		}
		v, err := t.get(s.jobKey(name))
		if err != nil {
			return err
		}
		st, err := decodeJob(name, v)
		if err != nil {
			return err
		}
		entries, err := change(st)
		if errors.Is(err, jobs.ErrUnchanged) {
			out = st
			return nil
		}
		if err != nil {
			return err
		}
		t.fenced = s.fencing()
		nv, err := json.Marshal(st)
		if err != nil {
			return err
		}
		t.put(s.jobKey(name), nv)
		if _, err := t.appendAudit(now, entries...); err != nil {
			return err
		}
		out = st
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
