package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

// Grants keeps grants under the store's prefix, writing through its
// committer so a grant change and its audit record commit together. It
// implements broker.GrantStore. Redeem is compare-and-swap on the grant's
// mod revision: of concurrent redeems on any replicas exactly one
// commits.
type Grants struct {
	s *Store
}

// Grants returns the store's grants.
func (s *Store) Grants() *Grants { return &Grants{s: s} }

func (s *Store) grantKey(id string) string { return s.p + "g/" + id }

func (s *Store) grantIndexes(g *grants.Grant) []string {
	out := []string{s.p + "gi/s/" + string(g.State) + "/" + g.ID}
	if g.Kind == grants.KindBreakGlass && g.Review == nil {
		out = append(out, s.p+"gi/r/"+g.ID)
	}
	if g.State.Terminal() {
		out = append(out, s.p+"gi/x/"+tkey(g.EndedAt)+"/"+g.ID)
	}
	return out
}

func (t *tx) putGrant(old, g *grants.Grant) error {
	s := t.s
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	t.put(s.grantKey(g.ID), v)
	newKeys := s.grantIndexes(g)
	if old == nil {
		t.put(s.p+"gi/a/"+vkey(g.AgentID)+g.ID, nil)
	} else {
		for _, k := range s.grantIndexes(old) {
			if !slices.Contains(newKeys, k) {
				t.del(k)
			}
		}
	}
	for _, k := range newKeys {
		t.put(k, nil)
	}
	return nil
}

func (t *tx) getGrant(id string) (*grants.Grant, error) {
	v, err := t.get(t.s.grantKey(id))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, grants.ErrNotFound
	}
	return decodeGrant(id, v)
}

func decodeGrant(id string, v []byte) (*grants.Grant, error) {
	var g grants.Grant
	if err := json.Unmarshal(v, &g); err != nil {
		return nil, fmt.Errorf("decode grant %s: %w", id, err)
	}
	return &g, nil
}

// Create implements broker.GrantStore.
func (s *Grants) Create(ctx context.Context, g *grants.Grant, now time.Time, e audit.Entry) error {
	return s.s.update(ctx, func(t *tx) error {
		if err := t.root().fetch(s.s.grantKey(g.ID), s.s.auditHeadKey()); err != nil {
			return err
		}
		if v, err := t.get(s.s.grantKey(g.ID)); err != nil {
			return err
		} else if v != nil {
			return fmt.Errorf("grant %s already exists", g.ID)
		}
		if err := t.putGrant(nil, g); err != nil {
			return err
		}
		_, err := t.appendAudit(now, g.Recorded(e))
		return err
	})
}

// Get implements broker.GrantStore.
func (s *Grants) Get(ctx context.Context, id string) (*grants.Grant, error) {
	return getOne(ctx, s.s, s.s.grantKey(id), grants.ErrNotFound, func(v []byte) (*grants.Grant, error) { return decodeGrant(id, v) })
}

// List implements broker.GrantStore.
func (s *Grants) List(ctx context.Context, f grants.Filter) ([]*grants.Grant, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	match := func(g *grants.Grant) bool {
		return (f.State == "" || g.State == f.State) && (f.AgentID == "" || g.AgentID == f.AgentID) &&
			(f.Role == "" || g.Role == f.Role) && (f.Kind == "" || g.Kind == f.Kind) &&
			(!f.ReviewPending || (g.Kind == grants.KindBreakGlass && g.Review == nil))
	}
	p := s.s.p
	prefix := p + "g/"
	switch {
	case f.ReviewPending:
		prefix = p + "gi/r/"
	case f.State != "":
		prefix = p + "gi/s/" + string(f.State) + "/"
	case f.AgentID != "":
		prefix = p + "gi/a/" + vkey(f.AgentID)
	}
	var out []*grants.Grant
	var page []string
	flush := func() error {
		keys := make([]string, len(page))
		for i, id := range page {
			keys[i] = s.s.grantKey(id)
		}
		vals, err := s.s.getValues(ctx, keys)
		if err != nil {
			return err
		}
		for _, id := range page {
			v, ok := vals[s.s.grantKey(id)]
			if !ok {
				s.s.ReportSkipped("grant listing", id, errors.New("a grant index points at a missing grant"))
				continue
			}
			g, err := decodeGrant(id, v.val)
			if err != nil {
				s.s.ReportSkipped("grant listing", id, err)
				continue
			}
			if match(g) && len(out) < f.Limit {
				out = append(out, g)
			}
		}
		page = page[:0]
		return nil
	}
	err := s.s.walkDesc(ctx, prefix, f.Before, func(id string) (bool, error) {
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

// Approve implements broker.GrantStore.
func (s *Grants) Approve(ctx context.Context, id string, d grants.Decision, redeemWithin time.Duration, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.Approve(d, redeemWithin) })
}

// Deny implements broker.GrantStore.
func (s *Grants) Deny(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.Deny(d) })
}

// Redeem implements broker.GrantStore: compare-and-swap from approved to
// redeemed on the grant's mod revision.
func (s *Grants) Redeem(ctx context.Context, id, agentID, binding string, now time.Time, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, now, e, func(g *grants.Grant) error { return g.Redeem(agentID, binding, now) })
}

// Redeemed implements broker.GrantStore.
func (s *Grants) Redeemed(ctx context.Context, id, leaseID string, now time.Time) (*grants.Grant, error) {
	return s.change(ctx, id, now, audit.Entry{}, func(g *grants.Grant) error {
		g.LeaseID = leaseID
		return nil
	})
}

// Unredeem implements broker.GrantStore.
func (s *Grants) Unredeem(ctx context.Context, id string, now time.Time, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, now, e, func(g *grants.Grant) error { return g.Unredeem() })
}

// Review implements broker.GrantStore.
func (s *Grants) Review(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.AddReview(d) })
}

// ExpireDue implements broker.GrantStore: it walks the pending and
// approved grants in transactions fenced by the leadership.
func (s *Grants) ExpireDue(ctx context.Context, now time.Time) ([]*grants.Grant, error) {
	var all []*grants.Grant
	for _, st := range []grants.State{grants.StatePending, grants.StateApproved} {
		prefix := s.s.p + "gi/s/" + string(st) + "/"
		resp, err := s.s.kv.Get(s.s.opCtx(ctx), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return all, s.s.unavailable(err)
		}
		var ids []string
		for _, kv := range resp.Kvs {
			ids = append(ids, string(kv.Key[len(prefix):]))
		}
		for len(ids) > 0 {
			n := min(len(ids), 20)
			chunk := ids[:n]
			ids = ids[n:]
			var out []*grants.Grant
			err := s.s.updateAlone(ctx, func(t *tx) error {
				out = out[:0]
				t.fenced = s.s.fencing()
				keys := []string{s.s.auditHeadKey()}
				for _, id := range chunk {
					keys = append(keys, s.s.grantKey(id))
				}
				if err := t.fetch(keys...); err != nil {
					return err
				}
				for _, id := range chunk {
					old, err := t.getGrant(id)
					if err != nil {
						s.s.ReportSkipped("grant expiry", id, err)
						continue
					}
					g := *old
					reason, ok := g.Expire(now)
					if !ok {
						continue
					}
					if err := t.putGrant(old, &g); err != nil {
						return err
					}
					if _, err := t.appendAudit(now, g.Recorded(audit.Entry{Kind: audit.KindGrantExpired,
						Actor: audit.Actor{Type: audit.ActorSystem, ID: "valet"}, Reason: reason})); err != nil {
						return err
					}
					out = append(out, &g)
				}
				return nil
			})
			if err != nil {
				return all, err
			}
			all = append(all, out...)
		}
	}
	return all, nil
}

// PruneEnded deletes up to limit grants that ended before cutoff and
// need nothing more, with their index entries, in transactions of at most
// a dozen grants fenced by the leadership, and returns how many it
// deleted. Their audit records stay. A grant needs more while it is a
// break-glass grant awaiting its review, and while it is redeemed without
// its lease recorded before its redeem deadline (a mint in progress may
// still give it back, Unredeem). An index entry whose grant cannot be
// read is reported and deleted.
func (s *Grants) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	st := s.s
	total, from := 0, ""
	for total < limit {
		due, more, err := st.dueKeys(ctx, st.p+"gi/x/", cutoff.Add(-time.Nanosecond), from, min(limit-total, 12))
		if err != nil || len(due) == 0 {
			return total, err
		}
		from = due[len(due)-1].key
		n := 0
		err = st.updateAlone(ctx, func(t *tx) error {
			n = 0
			t.fenced = st.fencing()
			for _, d := range due {
				g, err := t.getGrant(d.id)
				if err != nil {
					st.ReportSkipped("grant pruning", d.id, err)
					t.del(d.key)
					continue
				}
				if g.Kind == grants.KindBreakGlass && g.Review == nil ||
					g.State == grants.StateRedeemed && g.LeaseID == "" && !g.RedeemBy.Before(cutoff) {
					continue
				}
				t.del(st.grantKey(g.ID))
				t.del(st.p + "gi/a/" + vkey(g.AgentID) + g.ID)
				for _, k := range st.grantIndexes(g) {
					t.del(k)
				}
				n++
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if !more {
			break
		}
	}
	return total, nil
}

func (s *Grants) change(ctx context.Context, id string, now time.Time, e audit.Entry, fn func(g *grants.Grant) error) (*grants.Grant, error) {
	var out *grants.Grant
	err := s.s.update(ctx, func(t *tx) error {
		out = nil
		keys := []string{s.s.grantKey(id)}
		if e.Kind != "" {
			keys = append(keys, s.s.auditHeadKey())
		}
		if err := t.root().fetch(keys...); err != nil {
			return err
		}
		old, err := t.getGrant(id)
		if err != nil {
			return err
		}
		g := *old
		g.Approvals = append([]grants.Decision(nil), old.Approvals...)
		if err := fn(&g); err != nil {
			if errors.Is(err, grants.ErrUnchanged) {
				out = old
				return nil
			}
			return err
		}
		if err := t.putGrant(old, &g); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := t.appendAudit(now, g.Recorded(e)); err != nil {
				return err
			}
		}
		out = &g
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
