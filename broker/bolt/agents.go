package bolt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/audit"
)

// Buckets of the agent records. Their indexes are maintained by putAgent
// alone, so they cannot drift from the records.
var (
	bucketAgents           = []byte("agents")             // id -> JSON Agent
	bucketAgentSeen        = []byte("agents.seen")        // last-seen(8) id -> nil
	bucketAgentQuarantined = []byte("agents.quarantined") // id -> nil: records with a quarantine
	bucketAgentRelease     = []byte("agents.release")     // release-at(8) id -> nil: quarantines that end on their own
)

func initAgents(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketAgents, bucketAgentSeen, bucketAgentQuarantined, bucketAgentRelease,
		bucketSignals, bucketSignalAgent, bucketSignalSubject, bucketSignalPending} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("agents: create bucket %s: %w", b, err)
		}
	}
	return nil
}

// loadGates reads the gates of the flagged agents at Open.
func (s *Store) loadGates() error {
	return s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		if b == nil {
			return nil // a read-only store of an older file
		}
		return b.ForEach(func(k, v []byte) error {
			a, err := decodeAgent(v)
			if err != nil {
				s.ReportSkipped("agent gates", string(k), err)
				return nil
			}
			s.gates.Set(a.ID, a.Gate())
			return nil
		})
	})
}

// Gate implements broker.AgentStore from memory.
func (s *Store) Gate(id string) agents.Gate { return s.gates.Get(id) }

// GetAgent implements broker.AgentStore.
func (s *Store) GetAgent(ctx context.Context, id string) (*agents.Agent, error) {
	var a *agents.Agent
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		a, err = getAgent(tx, id)
		return err
	})
	return a, err
}

// ListAgents implements broker.AgentStore.
func (s *Store) ListAgents(ctx context.Context, f agents.Filter) ([]*agents.Agent, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var before []byte
	if f.Before != "" {
		t, id, ok := agents.ParseCursor(f.Before)
		if !ok {
			return nil, fmt.Errorf("list agents: %q is not an agent cursor", f.Before)
		}
		before = timeKey(t, []byte(id))
	}
	var out []*agents.Agent
	err := s.db.View(func(tx *bbolt.Tx) error {
		records := tx.Bucket(bucketAgents)
		read := func(id []byte) *agents.Agent {
			v := records.Get(id)
			if v == nil {
				s.ReportSkipped("agent listing", string(id), errors.New("an agent index points at a missing record"))
				return nil
			}
			a, err := decodeAgent(v)
			if err != nil {
				s.ReportSkipped("agent listing", string(id), err)
				return nil
			}
			return a
		}
		if f.Quarantined {
			// Few agents are quarantined at once: read them all, order
			// them as the listing by last seen does, and page.
			var all []*agents.Agent
			err := tx.Bucket(bucketAgentQuarantined).ForEach(func(k, _ []byte) error {
				if a := read(k); a != nil && (before == nil || bytes.Compare(timeKey(a.LastSeen, []byte(a.ID)), before) < 0) {
					all = append(all, a)
				}
				return nil
			})
			slices.SortFunc(all, func(x, y *agents.Agent) int {
				return -cmp.Or(x.LastSeen.Compare(y.LastSeen), cmp.Compare(x.ID, y.ID))
			})
			out = all[:min(len(all), f.Limit)]
			return err
		}
		return walkNewestFirst(tx.Bucket(bucketAgentSeen), nil, string(before), func(k []byte) (bool, error) {
			if len(k) <= 8 {
				return true, nil
			}
			if a := read(k[8:]); a != nil {
				out = append(out, a)
			}
			return len(out) < f.Limit, nil
		})
	})
	return out, err
}

// See implements broker.AgentStore.
func (s *Store) See(ctx context.Context, sightings []agents.Sighting) error {
	if len(sightings) == 0 {
		return nil
	}
	return s.update(ctx, func(tx *bbolt.Tx) error {
		for _, st := range sightings {
			old, err := getAgent(tx, st.AgentID)
			var a *agents.Agent
			switch {
			case errors.Is(err, agents.ErrNotFound):
				old, a = nil, agents.New(st.AgentID, st.First)
			case err != nil:
				// A record that cannot be read is not overwritten by a
				// sighting: it stays for an operator to look at.
				s.ReportSkipped("agent sightings", st.AgentID, err)
				continue
			default:
				a = old.Clone()
			}
			if err := a.See(st); errors.Is(err, agents.ErrUnchanged) && old != nil {
				continue
			}
			if err := s.putAgent(tx, old, a); err != nil {
				return err
			}
		}
		return nil
	})
}

// Isolate implements broker.AgentStore.
func (s *Store) Isolate(ctx context.Context, id string, q agents.Quarantine, e audit.Entry) (*agents.Agent, error) {
	return s.changeAgent(ctx, id, true, q.Since, e, func(a *agents.Agent) error { return a.Isolate(q) })
}

// Release implements broker.AgentStore.
func (s *Store) Release(ctx context.Context, id string, r agents.Release, e audit.Entry) (*agents.Agent, error) {
	return s.changeAgent(ctx, id, false, r.At, e, func(a *agents.Agent) error { return a.Release(r) })
}

// ReleaseDue implements broker.AgentStore.
func (s *Store) ReleaseDue(ctx context.Context, now time.Time) ([]*agents.Agent, error) {
	var out []*agents.Agent
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		out = out[:0]
		var due [][]byte
		c := tx.Bucket(bucketAgentRelease).Cursor()
		for k, _ := c.First(); k != nil && !keyTime(k).After(now); k, _ = c.Next() {
			due = append(due, append([]byte{}, k...))
		}
		for _, k := range due {
			old, err := getAgent(tx, string(k[8:]))
			if err != nil {
				// It can never be released through the index: take it
				// out so that it does not hold up the others.
				s.ReportSkipped("automatic release", string(k[8:]), err)
				if err := tx.Bucket(bucketAgentRelease).Delete(k); err != nil {
					return err
				}
				continue
			}
			a := old.Clone()
			if err := a.ReleaseDue(now); err != nil {
				continue
			}
			if err := s.putAgent(tx, old, a); err != nil {
				return err
			}
			if _, err := appendAudit(tx, now, s.sink, audit.Entry{Kind: audit.KindAgentRelease, Actor: audit.SystemActor,
				Decision: audit.Allow, AgentID: a.ID, Reason: a.LastRelease.Reason}); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// changeAgent loads an agent's record (a new one when create is set and
// there is none), applies fn (one of its state changes), stores the result
// and appends e, in one transaction: compare-and-swap on the stored
// record. fn returning agents.ErrUnchanged leaves the record as it is and
// writes no audit record.
func (s *Store) changeAgent(ctx context.Context, id string, create bool, now time.Time, e audit.Entry, fn func(a *agents.Agent) error) (*agents.Agent, error) {
	var out *agents.Agent
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		old, err := getAgent(tx, id)
		var a *agents.Agent
		switch {
		case errors.Is(err, agents.ErrNotFound) && create:
			old, a = nil, &agents.Agent{ID: id} // never seen: no first or last sighting
		case err != nil:
			return err
		default:
			a = old.Clone()
		}
		if err := fn(a); err != nil {
			if errors.Is(err, agents.ErrUnchanged) && old != nil {
				out = old
				return nil
			}
			return err
		}
		if err := s.putAgent(tx, old, a); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := appendAudit(tx, now, s.sink, a.Recorded(e)); err != nil {
				return err
			}
		}
		out = a
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is not
		// ours to read.
		return nil, err
	}
	return out, nil
}

func getAgent(tx *bbolt.Tx, id string) (*agents.Agent, error) {
	v := tx.Bucket(bucketAgents).Get([]byte(id))
	if v == nil {
		return nil, agents.ErrNotFound
	}
	return decodeAgent(v)
}

func decodeAgent(v []byte) (*agents.Agent, error) {
	var a agents.Agent
	if err := json.Unmarshal(v, &a); err != nil {
		return nil, fmt.Errorf("decode agent: %w", err)
	}
	return &a, nil
}

// putAgent stores a and brings its indexes and its in-memory gate in line
// with the change from old (nil for a new record).
func (s *Store) putAgent(tx *bbolt.Tx, old, a *agents.Agent) error {
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	id := []byte(a.ID)
	if err := tx.Bucket(bucketAgents).Put(id, v); err != nil {
		return err
	}
	type idx struct{ bucket, key []byte }
	keys := func(x *agents.Agent) []idx {
		if x == nil {
			return nil
		}
		out := []idx{{bucketAgentSeen, timeKey(x.LastSeen, id)}}
		if x.Quarantine != nil {
			out = append(out, idx{bucketAgentQuarantined, id})
			if !x.Quarantine.ReleaseAt.IsZero() {
				out = append(out, idx{bucketAgentRelease, timeKey(x.Quarantine.ReleaseAt, id)})
			}
		}
		return out
	}
	newKeys := keys(a)
	for _, o := range keys(old) {
		if !slices.ContainsFunc(newKeys, func(n idx) bool { return bytes.Equal(o.bucket, n.bucket) && bytes.Equal(o.key, n.key) }) {
			if err := tx.Bucket(o.bucket).Delete(o.key); err != nil {
				return err
			}
		}
	}
	for _, n := range newKeys {
		if err := tx.Bucket(n.bucket).Put(n.key, nil); err != nil {
			return err
		}
	}
	if old == nil || gateChanged(old.Gate(), a.Gate()) {
		g := a.Gate()
		tx.OnCommit(func() { s.gates.Set(a.ID, g) })
	}
	return nil
}

func gateChanged(x, y agents.Gate) bool {
	if x.Risk.Score != y.Risk.Score || !x.Risk.At.Equal(y.Risk.At) || (x.Quarantine == nil) != (y.Quarantine == nil) {
		return true
	}
	if x.Quarantine == nil {
		return false
	}
	qx, qy := x.Quarantine, y.Quarantine
	return !qx.Since.Equal(qy.Since) || !qx.ReleaseAt.Equal(qy.ReleaseAt) || qx.Reason != qy.Reason || qx.SignalID != qy.SignalID
}
