package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
)

// bucketJobs holds each scheduled job's state: name -> JSON jobs.State.
var bucketJobs = []byte("jobs")

func initJobs(tx *bbolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketJobs); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketJobs, err)
	}
	return nil
}

// JobState implements jobs.Store.
func (s *Store) JobState(ctx context.Context, name string) (*jobs.State, error) {
	var st *jobs.State
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		st, err = getJob(tx, name)
		return err
	})
	return st, err
}

// UpdateJob implements jobs.Store: the change and its audit records in one
// transaction of the group committer.
func (s *Store) UpdateJob(ctx context.Context, name string, now time.Time, change func(st *jobs.State) ([]audit.Entry, error)) (*jobs.State, error) {
	var out *jobs.State
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		st, err := getJob(tx, name)
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
		v, err := json.Marshal(st)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketJobs).Put([]byte(name), v); err != nil {
			return err
		}
		if len(entries) > 0 {
			if _, err := appendAudit(tx, now, s.sink, entries...); err != nil {
				return err
			}
		}
		out = st
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is not
		// ours to read.
		return nil, err
	}
	return out, nil
}

func getJob(tx *bbolt.Tx, name string) (*jobs.State, error) {
	st := &jobs.State{Name: name}
	b := tx.Bucket(bucketJobs)
	if b == nil {
		return st, nil // a read-only database of a version without jobs
	}
	v := b.Get([]byte(name))
	if v == nil {
		return st, nil
	}
	if err := json.Unmarshal(v, st); err != nil {
		return nil, fmt.Errorf("decode job state %s: %w", name, err)
	}
	st.Name = name
	return st, nil
}
