package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/audit"
)

func (s *Store) gateKey(id string) string  { return s.p + "gate/" + id }
func (s *Store) agentKey(id string) string { return s.p + "ag/" + id }

func decodeGate(v []byte) (agents.Gate, error) {
	var g agents.Gate
	if len(v) == 0 {
		return g, nil
	}
	err := json.Unmarshal(v, &g)
	return g, err
}

// loadGates reads every gate and starts the watch that keeps them.
func (s *Store) loadGates(ctx context.Context) error {
	p := s.p + "gate/"
	resp, err := s.kv.Get(s.opCtx(ctx), p, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("etcd store: read the agents' gates: %w", s.unavailable(err))
	}
	for _, kv := range resp.Kvs {
		g, err := decodeGate(kv.Value)
		if err != nil {
			s.ReportSkipped("agent gates", string(kv.Key[len(p):]), err)
			continue
		}
		s.gates.Set(string(kv.Key[len(p):]), g)
	}
	s.wg.Add(1)
	go s.watchGates(resp.Header.Revision + 1)
	return nil
}

// watchGates applies every change of a gate key, from rev on, resuming
// after a broken watch from the last revision it saw (reading all gates
// again when etcd compacted past it).
func (s *Store) watchGates(rev int64) {
	defer s.wg.Done()
	p := s.p + "gate/"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.closing
		cancel()
	}()
	for ctx.Err() == nil {
		wch := s.client.Watch(clientv3.WithRequireLeader(ctx), p, clientv3.WithPrefix(), clientv3.WithRev(rev))
		for wr := range wch {
			if wr.CompactRevision != 0 {
				// Missed changes: read every gate again.
				if resp, err := s.kv.Get(s.opCtx(ctx), p, clientv3.WithPrefix()); err == nil {
					all := map[string]agents.Gate{}
					for _, kv := range resp.Kvs {
						if g, err := decodeGate(kv.Value); err == nil {
							all[string(kv.Key[len(p):])] = g
						}
					}
					s.gates.Replace(all)
					rev = resp.Header.Revision + 1
				}
				break
			}
			for _, ev := range wr.Events {
				id := string(ev.Kv.Key[len(p):])
				if ev.Type == clientv3.EventTypeDelete {
					s.gates.Set(id, agents.Gate{})
					continue
				}
				if g, err := decodeGate(ev.Kv.Value); err == nil {
					s.gates.Set(id, g)
				}
			}
			if wr.Header.Revision > 0 {
				rev = max(rev, wr.Header.Revision+1)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkGate reads the agent's gate in t (compared at commit) and refuses
// with EQUARANTINED when it is quarantined at now. A gate this replica's
// copy did not have yet is taken into the copy at once.
func (t *tx) checkGate(agentID string, now time.Time) error {
	v, err := t.get(t.s.gateKey(agentID))
	if err != nil {
		return err
	}
	g, err := decodeGate(v)
	if err != nil {
		return fmt.Errorf("agent %s: decode gate: %w", agentID, err)
	}
	t.s.gates.Set(agentID, g)
	if q := g.Quarantine; q.ActiveAt(now) {
		return broker.Errorf(broker.EQUARANTINED, "agent %s is quarantined since %s (%s); an operator must release it before it gets credentials again",
			agentID, q.Since.UTC().Format(time.RFC3339), q.Reason)
	}
	return nil
}

// Gate implements broker.AgentStore from memory.
func (s *Store) Gate(id string) agents.Gate { return s.gates.Get(id) }

func (t *tx) getAgent(id string) (*agents.Agent, error) {
	v, err := t.get(t.s.agentKey(id))
	if err != nil {
		return nil, err
	}
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

func (s *Store) agentIndexes(a *agents.Agent) []string {
	out := []string{s.p + "agi/seen/" + tkey(a.LastSeen) + "/" + a.ID}
	if a.Quarantine != nil {
		out = append(out, s.p+"agi/q/"+a.ID)
		if !a.Quarantine.ReleaseAt.IsZero() {
			out = append(out, s.p+"agi/rel/"+tkey(a.Quarantine.ReleaseAt)+"/"+a.ID)
		}
	}
	return out
}

// putAgent stores a, its indexes and, when it changed, its gate key.
func (t *tx) putAgent(old, a *agents.Agent) error {
	s := t.s
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	t.put(s.agentKey(a.ID), v)
	newKeys := s.agentIndexes(a)
	if old != nil {
		for _, k := range s.agentIndexes(old) {
			if !slices.Contains(newKeys, k) {
				t.del(k)
			}
		}
	}
	for _, k := range newKeys {
		t.put(k, nil)
	}
	g := a.Gate()
	if old == nil || gateChanged(old.Gate(), g) {
		if g.Quarantine == nil && g.Risk.Score <= 0 {
			if old != nil {
				t.del(s.gateKey(a.ID))
			}
		} else {
			gv, err := json.Marshal(g)
			if err != nil {
				return err
			}
			t.put(s.gateKey(a.ID), gv)
		}
		t.onCommit(func() { s.gates.Set(a.ID, g) })
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

// GetAgent implements broker.AgentStore.
func (s *Store) GetAgent(ctx context.Context, id string) (*agents.Agent, error) {
	return getOne(ctx, s, s.agentKey(id), agents.ErrNotFound, decodeAgent)
}

// ListAgents implements broker.AgentStore.
func (s *Store) ListAgents(ctx context.Context, f agents.Filter) ([]*agents.Agent, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	before := ""
	if f.Before != "" {
		t, id, ok := agents.ParseCursor(f.Before)
		if !ok {
			return nil, fmt.Errorf("list agents: %q is not an agent cursor", f.Before)
		}
		before = tkey(t) + "/" + id
	}
	read := func(ids []string) ([]*agents.Agent, error) {
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = s.agentKey(id)
		}
		vals, err := s.getValues(ctx, keys)
		if err != nil {
			return nil, err
		}
		var out []*agents.Agent
		for _, id := range ids {
			v, ok := vals[s.agentKey(id)]
			if !ok {
				s.ReportSkipped("agent listing", id, errors.New("an agent index points at a missing record"))
				continue
			}
			a, err := decodeAgent(v.val)
			if err != nil {
				s.ReportSkipped("agent listing", id, err)
				continue
			}
			out = append(out, a)
		}
		return out, nil
	}
	if f.Quarantined {
		p := s.p + "agi/q/"
		resp, err := s.kv.Get(s.opCtx(ctx), p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, s.unavailable(err)
		}
		var ids []string
		for _, kv := range resp.Kvs {
			ids = append(ids, string(kv.Key[len(p):]))
		}
		all, err := read(ids)
		if err != nil {
			return nil, err
		}
		all = slices.DeleteFunc(all, func(a *agents.Agent) bool {
			return before != "" && tkey(a.LastSeen)+"/"+a.ID >= before
		})
		slices.SortFunc(all, func(x, y *agents.Agent) int {
			return -cmp.Or(x.LastSeen.Compare(y.LastSeen), cmp.Compare(x.ID, y.ID))
		})
		return all[:min(len(all), f.Limit)], nil
	}
	var ids []string
	err := s.walkDesc(ctx, s.p+"agi/seen/", before, func(k string) (bool, error) {
		if i := strings.IndexByte(k, '/'); i >= 0 {
			ids = append(ids, k[i+1:])
		}
		return len(ids) < f.Limit, nil
	})
	if err != nil {
		return nil, err
	}
	return read(ids)
}

// See implements broker.AgentStore: sightings in transactions of at most
// a few agents each (no audit record).
func (s *Store) See(ctx context.Context, sightings []agents.Sighting) error {
	for len(sightings) > 0 {
		n := min(len(sightings), 20)
		chunk := sightings[:n]
		sightings = sightings[n:]
		err := s.update(ctx, func(t *tx) error {
			var keys []string
			for _, st := range chunk {
				keys = append(keys, s.agentKey(st.AgentID))
			}
			if err := t.root().fetch(keys...); err != nil {
				return err
			}
			for _, st := range chunk {
				old, err := t.getAgent(st.AgentID)
				var a *agents.Agent
				switch {
				case errors.Is(err, agents.ErrNotFound):
					old, a = nil, agents.New(st.AgentID, st.First)
				case err != nil:
					s.ReportSkipped("agent sightings", st.AgentID, err)
					continue
				default:
					a = old.Clone()
				}
				if err := a.See(st); errors.Is(err, agents.ErrUnchanged) && old != nil {
					continue
				}
				if err := t.putAgent(old, a); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Isolate implements broker.AgentStore.
func (s *Store) Isolate(ctx context.Context, id string, q agents.Quarantine, e audit.Entry) (*agents.Agent, error) {
	return s.changeAgent(ctx, id, true, q.Since, e, func(a *agents.Agent) error { return a.Isolate(q) })
}

// Release implements broker.AgentStore.
func (s *Store) Release(ctx context.Context, id string, r agents.Release, e audit.Entry) (*agents.Agent, error) {
	return s.changeAgent(ctx, id, false, r.At, e, func(a *agents.Agent) error { return a.Release(r) })
}

// ReleaseDue implements broker.AgentStore, in transactions fenced by the
// leadership.
func (s *Store) ReleaseDue(ctx context.Context, now time.Time) ([]*agents.Agent, error) {
	var all []*agents.Agent
	for {
		var out []*agents.Agent
		progress := 0
		err := s.updateAlone(ctx, func(t *tx) error {
			out, progress = out[:0], 0
			t.fenced = s.fencing()
			due, _, err := s.dueKeys(ctx, s.p+"agi/rel/", now, "", perTxn)
			if err != nil {
				return err
			}
			for _, d := range due {
				progress++
				old, err := t.getAgent(d.id)
				if err != nil {
					s.ReportSkipped("automatic release", d.id, err)
					t.del(d.key)
					continue
				}
				a := old.Clone()
				if err := a.ReleaseDue(now); err != nil {
					t.del(d.key)
					continue
				}
				if err := t.putAgent(old, a); err != nil {
					return err
				}
				if _, err := t.appendAudit(now, audit.Entry{Kind: audit.KindAgentRelease, Actor: audit.SystemActor,
					Decision: audit.Allow, AgentID: a.ID, Reason: a.LastRelease.Reason}); err != nil {
					return err
				}
				out = append(out, a)
			}
			return nil
		})
		if err != nil {
			return all, err
		}
		all = append(all, out...)
		if progress < perTxn {
			return all, nil
		}
	}
}

// changeAgent loads an agent's record (a new one when create is set and
// there is none), applies fn, stores the result and appends e, in one
// transaction: compare-and-swap on the stored record.
func (s *Store) changeAgent(ctx context.Context, id string, create bool, now time.Time, e audit.Entry, fn func(a *agents.Agent) error) (*agents.Agent, error) {
	var out *agents.Agent
	err := s.update(ctx, func(t *tx) error {
		out = nil
		if err := t.root().fetch(s.agentKey(id), s.auditHeadKey()); err != nil {
			return err
		}
		old, err := t.getAgent(id)
		var a *agents.Agent
		switch {
		case errors.Is(err, agents.ErrNotFound) && create:
			old, a = nil, &agents.Agent{ID: id}
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
		if err := t.putAgent(old, a); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := t.appendAudit(now, a.Recorded(e)); err != nil {
				return err
			}
		}
		out = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
