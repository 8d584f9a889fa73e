package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

var (
	bucketGrants      = []byte("grants")        // id -> JSON Grant
	bucketGrantState  = []byte("grants.state")  // indexKey(state, id) -> nil
	bucketGrantAgent  = []byte("grants.agent")  // indexKey(agent, id) -> nil
	bucketGrantReview = []byte("grants.review") // id -> nil: break-glass grants awaiting review
	bucketGrantEnded  = []byte("grants.ended")  // ended(8) id -> nil: terminal grants (for retention)
	bucketGrantMeta   = []byte("grants.meta")   // "layout" -> indexLayout
)

// Grants keeps grants in the store's file, writing through its group
// committer so a grant change and its audit record commit together. It
// implements broker.GrantStore.
type Grants struct {
	s *Store
}

// Grants returns the store's grants.
func (s *Store) Grants() *Grants { return &Grants{s: s} }

// initGrants creates the grant buckets and rebuilds the indexes of a
// database written with an older key layout. A database written before
// grants were pruned gets its index of ended grants built here.
func initGrants(tx *bbolt.Tx) error {
	endedNew := tx.Bucket(bucketGrantEnded) == nil
	for _, b := range [][]byte{bucketGrants, bucketGrantState, bucketGrantAgent, bucketGrantReview, bucketGrantEnded, bucketGrantMeta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("grants: create buckets: %w", err)
		}
	}
	if err := migrateGrantIndexes(tx); err != nil {
		return fmt.Errorf("grants: %w", err)
	}
	if endedNew {
		err := tx.Bucket(bucketGrants).ForEach(func(k, v []byte) error {
			var g grants.Grant
			if json.Unmarshal(v, &g) != nil || !g.State.Terminal() {
				return nil // an unreadable grant is reported where it is read
			}
			return tx.Bucket(bucketGrantEnded).Put(timeKey(g.EndedAt, []byte(g.ID)), nil)
		})
		if err != nil {
			return fmt.Errorf("grants: index the ended grants: %w", err)
		}
	}
	return nil
}

// Create records a new grant with its audit record.
func (s *Grants) Create(ctx context.Context, g *grants.Grant, now time.Time, e audit.Entry) error {
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return s.s.update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketGrants).Get([]byte(g.ID)) != nil {
			return fmt.Errorf("grant %s already exists", g.ID)
		}
		if err := putGrantEncoded(tx, nil, g, v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketGrantAgent).Put(indexKey(g.AgentID, []byte(g.ID)), nil); err != nil {
			return err
		}
		_, err := appendAudit(tx, now, s.s.sink, g.Recorded(e))
		return err
	})
}

// Get returns a grant or ErrNotFound.
func (s *Grants) Get(ctx context.Context, id string) (*grants.Grant, error) {
	var g *grants.Grant
	err := s.s.db.View(func(tx *bbolt.Tx) error {
		var err error
		g, err = getGrant(tx, id)
		return err
	})
	return g, err
}

// List returns grants matching f, newest first.
func (s *Grants) List(ctx context.Context, f grants.Filter) ([]*grants.Grant, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []*grants.Grant
	err := s.s.db.View(func(tx *bbolt.Tx) error {
		match := func(g *grants.Grant) bool {
			return (f.State == "" || g.State == f.State) && (f.AgentID == "" || g.AgentID == f.AgentID) &&
				(f.Role == "" || g.Role == f.Role) && (f.Kind == "" || g.Kind == f.Kind) &&
				(!f.ReviewPending || (g.Kind == grants.KindBreakGlass && g.Review == nil))
		}
		var bucket, prefix []byte
		switch {
		case f.ReviewPending:
			bucket = bucketGrantReview
		case f.State != "":
			bucket, prefix = bucketGrantState, indexPrefix(string(f.State))
		case f.AgentID != "":
			bucket, prefix = bucketGrantAgent, indexPrefix(f.AgentID)
		default:
			bucket = bucketGrants
		}
		records := tx.Bucket(bucketGrants)
		return walkNewestFirst(tx.Bucket(bucket), prefix, f.Before, func(id []byte) (bool, error) {
			v := records.Get(id)
			if v == nil {
				s.s.ReportSkipped("grant listing", string(id), fmt.Errorf("grant index %s points at a missing grant", bucket))
				return true, nil
			}
			var g grants.Grant
			if err := json.Unmarshal(v, &g); err != nil {
				s.s.ReportSkipped("grant listing", string(id), err)
				return true, nil
			}
			if match(&g) {
				out = append(out, &g)
			}
			return len(out) < f.Limit, nil
		})
	})
	return out, err
}

// Approve adds an operator's approval to a pending grant. Once required
// distinct operators (compared as identity.Equal does) have approved, the
// grant is approved and redeemable for redeemWithin. It returns ErrState
// (wrapped) when the grant is not pending or has expired or when the
// operator already approved it, and ErrSelfApproval (wrapped) when the
// operator is one of its requesters.
func (s *Grants) Approve(ctx context.Context, id string, d grants.Decision, redeemWithin time.Duration, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.Approve(d, redeemWithin) })
}

// Deny ends a pending grant.
func (s *Grants) Deny(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.Deny(d) })
}

// Redeem consumes an approved grant: compare-and-swap from approved to
// redeemed in one transaction, so of concurrent redeems exactly one wins.
// The caller must be the grant's agent and present the same binding, before
// the grant's redeem deadline.
func (s *Grants) Redeem(ctx context.Context, id, agentID, binding string, now time.Time, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, now, e, func(g *grants.Grant) error { return g.Redeem(agentID, binding, now) })
}

// Redeemed records the lease a redeemed grant minted.
func (s *Grants) Redeemed(ctx context.Context, id, leaseID string, now time.Time) (*grants.Grant, error) {
	return s.change(ctx, id, now, audit.Entry{}, func(g *grants.Grant) error {
		g.LeaseID = leaseID
		return nil
	})
}

// Unredeem gives an approved grant back after its mint failed, so the agent
// can try again before the deadline.
func (s *Grants) Unredeem(ctx context.Context, id string, now time.Time, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, now, e, func(g *grants.Grant) error { return g.Unredeem() })
}

// Review records an operator's after-the-fact review of a break-glass
// grant. It returns ErrState (wrapped) when the grant is not a break-glass
// grant or was reviewed already, and ErrSelfApproval (wrapped) when the
// operator is one of its requesters.
func (s *Grants) Review(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *grants.Grant) error { return g.AddReview(d) })
}

// ExpireDue records the expiry of pending and approved grants past their
// deadlines, each with an audit record, and returns them.
func (s *Grants) ExpireDue(ctx context.Context, now time.Time) ([]*grants.Grant, error) {
	var out []*grants.Grant
	err := s.s.update(ctx, func(tx *bbolt.Tx) error {
		out = out[:0]
		for _, st := range []grants.State{grants.StatePending, grants.StateApproved} {
			prefix := indexPrefix(string(st))
			c := tx.Bucket(bucketGrantState).Cursor()
			var ids []string
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				ids = append(ids, string(k[len(prefix):]))
			}
			for _, id := range ids {
				old, err := getGrant(tx, id)
				if err != nil {
					// One unreadable grant must not stop the expiry of
					// every other.
					s.s.ReportSkipped("grant expiry", id, err)
					continue
				}
				g := *old
				reason, ok := g.Expire(now)
				if !ok {
					continue
				}
				if err := putGrant(tx, old, &g); err != nil {
					return err
				}
				if _, err := appendAudit(tx, now, s.s.sink, g.Recorded(audit.Entry{
					Kind: audit.KindGrantExpired, Actor: audit.Actor{Type: audit.ActorSystem, ID: "valet"}, Reason: reason,
				})); err != nil {
					return err
				}
				out = append(out, &g)
			}
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

func (s *Grants) change(ctx context.Context, id string, now time.Time, e audit.Entry, fn func(g *grants.Grant) error) (*grants.Grant, error) {
	var out *grants.Grant
	err := s.s.update(ctx, func(tx *bbolt.Tx) error {
		old, err := getGrant(tx, id)
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
		if err := putGrant(tx, old, &g); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := appendAudit(tx, now, s.s.sink, g.Recorded(e)); err != nil {
				return err
			}
		}
		out = &g
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is
		// not ours to read.
		return nil, err
	}
	return out, nil
}

func getGrant(tx *bbolt.Tx, id string) (*grants.Grant, error) {
	v := tx.Bucket(bucketGrants).Get([]byte(id))
	if v == nil {
		return nil, grants.ErrNotFound
	}
	var g grants.Grant
	if err := json.Unmarshal(v, &g); err != nil {
		return nil, fmt.Errorf("decode grant %s: %w", id, err)
	}
	return &g, nil
}

func putGrant(tx *bbolt.Tx, old, g *grants.Grant) error {
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return putGrantEncoded(tx, old, g, v)
}

// putGrantEncoded stores g and keeps the state, ended and review indexes
// in line.
func putGrantEncoded(tx *bbolt.Tx, old, g *grants.Grant, v []byte) error {
	id := []byte(g.ID)
	if err := tx.Bucket(bucketGrants).Put(id, v); err != nil {
		return err
	}
	ended := tx.Bucket(bucketGrantEnded)
	if old != nil && old.State.Terminal() && (!g.State.Terminal() || !old.EndedAt.Equal(g.EndedAt)) {
		if err := ended.Delete(timeKey(old.EndedAt, id)); err != nil {
			return err
		}
	}
	if g.State.Terminal() {
		if err := ended.Put(timeKey(g.EndedAt, id), nil); err != nil {
			return err
		}
	}
	if old == nil || old.State != g.State {
		if old != nil {
			if err := tx.Bucket(bucketGrantState).Delete(indexKey(string(old.State), []byte(g.ID))); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketGrantState).Put(indexKey(string(g.State), []byte(g.ID)), nil); err != nil {
			return err
		}
	}
	review := tx.Bucket(bucketGrantReview)
	if g.Kind == grants.KindBreakGlass && g.Review == nil {
		return review.Put([]byte(g.ID), nil)
	}
	return review.Delete([]byte(g.ID))
}

// PruneEnded deletes up to limit grants that ended before cutoff and
// need nothing more, with their index entries, in one transaction, and
// returns how many it deleted. Their audit records stay. A grant needs
// more while it is a break-glass grant awaiting its review, and while it
// is redeemed without its lease recorded before its redeem deadline (a
// mint in progress may still give it back, Unredeem). A grant that cannot
// be read is reported and taken out of the index of ended grants.
func (s *Grants) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	var n int
	err := s.s.update(ctx, func(tx *bbolt.Tx) error {
		n = 0
		ended := tx.Bucket(bucketGrantEnded)
		c := ended.Cursor()
		var doomed []*grants.Grant
		var unreadable [][]byte
		for k, _ := c.First(); k != nil && keyTime(k).Before(cutoff) && len(doomed) < limit; k, _ = c.Next() {
			g, err := getGrant(tx, string(k[8:]))
			if err != nil {
				s.s.ReportSkipped("grant pruning", string(k[8:]), err)
				unreadable = append(unreadable, bytes.Clone(k))
				continue
			}
			if g.Kind == grants.KindBreakGlass && g.Review == nil ||
				g.State == grants.StateRedeemed && g.LeaseID == "" && !g.RedeemBy.Before(cutoff) {
				continue
			}
			doomed = append(doomed, g)
		}
		for _, k := range unreadable {
			if err := ended.Delete(k); err != nil {
				return err
			}
		}
		for _, g := range doomed {
			id := []byte(g.ID)
			for _, d := range []struct{ b, k []byte }{
				{bucketGrants, id},
				{bucketGrantState, indexKey(string(g.State), id)},
				{bucketGrantAgent, indexKey(g.AgentID, id)},
				{bucketGrantReview, id},
				{bucketGrantEnded, timeKey(g.EndedAt, id)},
			} {
				if err := tx.Bucket(d.b).Delete(d.k); err != nil {
					return err
				}
			}
		}
		n = len(doomed)
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): n is not
		// ours to read.
		return 0, err
	}
	return n, nil
}

// migrateGrantIndexes brings the state and agent indexes to the current
// key layout (migrateIndexes).
func migrateGrantIndexes(tx *bbolt.Tx) error {
	return migrateIndexes(tx, bucketGrantMeta, bucketGrants, indexLayout, [][]byte{bucketGrantState, bucketGrantAgent}, func(v []byte) error {
		var g grants.Grant
		if err := json.Unmarshal(v, &g); err != nil {
			return err
		}
		id := []byte(g.ID)
		if err := tx.Bucket(bucketGrantState).Put(indexKey(string(g.State), id), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketGrantAgent).Put(indexKey(g.AgentID, id), nil)
	})
}
