package grants

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

var (
	bucketGrants = []byte("grants")        // id -> JSON Grant
	bucketState  = []byte("grants.state")  // leases.IndexKey(state, id) -> nil
	bucketAgent  = []byte("grants.agent")  // leases.IndexKey(agent, id) -> nil
	bucketReview = []byte("grants.review") // id -> nil: break-glass grants awaiting review
	bucketMeta   = []byte("grants.meta")   // "layout" -> leases.IndexLayout
)

// Store keeps grants in the lease store's database, writing through its
// group committer so a grant change and its audit record commit together.
type Store struct {
	db *leases.BoltStore
}

// NewStore creates the grant buckets in db, and rebuilds the indexes of a
// database written with an older key layout.
func NewStore(db *leases.BoltStore) (*Store, error) {
	err := db.DB().Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketGrants, bucketState, bucketAgent, bucketReview, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return migrateIndexes(tx)
	})
	if err != nil {
		return nil, fmt.Errorf("grants: create buckets: %w", err)
	}
	return &Store{db: db}, nil
}

// Create records a new grant with its audit record.
func (s *Store) Create(ctx context.Context, g *Grant, now time.Time, e audit.Entry) error {
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return s.db.Update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketGrants).Get([]byte(g.ID)) != nil {
			return fmt.Errorf("grant %s already exists", g.ID)
		}
		if err := put(tx, nil, g, v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAgent).Put(leases.IndexKey(g.AgentID, []byte(g.ID)), nil); err != nil {
			return err
		}
		return s.db.AppendAuditTx(tx, now, withGrant(e, g))
	})
}

// Get returns a grant or ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*Grant, error) {
	var g *Grant
	err := s.db.DB().View(func(tx *bbolt.Tx) error {
		var err error
		g, err = get(tx, id)
		return err
	})
	return g, err
}

// List returns grants matching f, newest first.
func (s *Store) List(ctx context.Context, f Filter) ([]*Grant, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []*Grant
	err := s.db.DB().View(func(tx *bbolt.Tx) error {
		match := func(g *Grant) bool {
			return (f.State == "" || g.State == f.State) && (f.AgentID == "" || g.AgentID == f.AgentID) &&
				(f.Role == "" || g.Role == f.Role) && (f.Kind == "" || g.Kind == f.Kind) &&
				(!f.ReviewPending || (g.Kind == KindBreakGlass && g.Review == nil))
		}
		var bucket, prefix []byte
		switch {
		case f.ReviewPending:
			bucket = bucketReview
		case f.State != "":
			bucket, prefix = bucketState, leases.IndexPrefix(string(f.State))
		case f.AgentID != "":
			bucket, prefix = bucketAgent, leases.IndexPrefix(f.AgentID)
		default:
			bucket = bucketGrants
		}
		grants := tx.Bucket(bucketGrants)
		return leases.WalkNewestFirst(tx.Bucket(bucket), prefix, f.Before, func(id []byte) (bool, error) {
			v := grants.Get(id)
			if v == nil {
				s.db.ReportSkipped("grant listing", string(id), fmt.Errorf("grant index %s points at a missing grant", bucket))
				return true, nil
			}
			var g Grant
			if err := json.Unmarshal(v, &g); err != nil {
				s.db.ReportSkipped("grant listing", string(id), err)
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
func (s *Store) Approve(ctx context.Context, id string, d Decision, redeemWithin time.Duration, e audit.Entry) (*Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *Grant) error {
		if st := g.StateAt(d.At); st != StatePending {
			return fmt.Errorf("%w: grant %s is %s", ErrState, id, st)
		}
		if g.IsRequester(d.Operator) {
			return fmt.Errorf("%w: %s asked for this access and cannot approve it", ErrSelfApproval, d.Operator)
		}
		if g.HasApproved(d.Operator) {
			return fmt.Errorf("%w: %s already approved grant %s; approvals must come from distinct operators", ErrState, d.Operator, id)
		}
		g.Approvals = append(g.Approvals, d)
		if len(g.Approvals) >= g.Required {
			g.State = StateApproved
			g.ApprovedAt = d.At
			g.RedeemBy = d.At.Add(redeemWithin)
		}
		return nil
	})
}

// ErrSelfApproval: an operator tried to approve or review a request they
// made.
var ErrSelfApproval = errors.New("self-approval refused")

// Deny ends a pending grant.
func (s *Store) Deny(ctx context.Context, id string, d Decision, e audit.Entry) (*Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *Grant) error {
		if st := g.StateAt(d.At); st != StatePending && st != StateApproved {
			return fmt.Errorf("%w: grant %s is %s", ErrState, id, st)
		}
		g.State = StateDenied
		g.Denial = &d
		g.EndedAt = d.At
		return nil
	})
}

// Redeem consumes an approved grant: compare-and-swap from approved to
// redeemed in one transaction, so of concurrent redeems exactly one wins.
// The caller must be the grant's agent and present the same binding, before
// the grant's redeem deadline.
func (s *Store) Redeem(ctx context.Context, id, agentID, binding string, now time.Time, e audit.Entry) (*Grant, error) {
	return s.change(ctx, id, now, e, func(g *Grant) error {
		if g.AgentID != agentID {
			return fmt.Errorf("%w: grant %s belongs to another agent", ErrNotFound, id)
		}
		if st := g.StateAt(now); st != StateApproved {
			return fmt.Errorf("%w: grant %s is %s, not approved", ErrState, id, st)
		}
		if g.Binding != binding {
			return fmt.Errorf("%w: grant %s was approved for a different request", ErrTampered, id)
		}
		g.State = StateRedeemed
		g.EndedAt = now
		return nil
	})
}

// ErrTampered: the stored request does not match its binding.
var ErrTampered = errors.New("grant does not match the approved request")

// Redeemed records the lease a redeemed grant minted.
func (s *Store) Redeemed(ctx context.Context, id, leaseID string, now time.Time) (*Grant, error) {
	return s.change(ctx, id, now, audit.Entry{}, func(g *Grant) error {
		g.LeaseID = leaseID
		return nil
	})
}

// Unredeem gives an approved grant back after its mint failed, so the agent
// can try again before the deadline.
func (s *Store) Unredeem(ctx context.Context, id string, now time.Time, e audit.Entry) (*Grant, error) {
	return s.change(ctx, id, now, e, func(g *Grant) error {
		if g.State != StateRedeemed || g.LeaseID != "" {
			return errUnchanged
		}
		g.State = StateApproved
		g.EndedAt = time.Time{}
		return nil
	})
}

// Review records an operator's after-the-fact review of a break-glass
// grant. It returns ErrState (wrapped) when the grant is not a break-glass
// grant or was reviewed already, and ErrSelfApproval (wrapped) when the
// operator is one of its requesters.
func (s *Store) Review(ctx context.Context, id string, d Decision, e audit.Entry) (*Grant, error) {
	return s.change(ctx, id, d.At, e, func(g *Grant) error {
		if g.Kind != KindBreakGlass {
			return fmt.Errorf("%w: grant %s is not a break-glass grant", ErrState, id)
		}
		if g.Review != nil {
			return fmt.Errorf("%w: grant %s was reviewed by %s already", ErrState, id, g.Review.Operator)
		}
		if g.IsRequester(d.Operator) {
			return fmt.Errorf("%w: %s asked for this access and cannot review it", ErrSelfApproval, d.Operator)
		}
		g.Review = &d
		return nil
	})
}

// ExpireDue records the expiry of pending and approved grants past their
// deadlines, each with an audit record, and returns them.
func (s *Store) ExpireDue(ctx context.Context, now time.Time) ([]*Grant, error) {
	var out []*Grant
	err := s.db.Update(ctx, func(tx *bbolt.Tx) error {
		out = out[:0]
		for _, st := range []State{StatePending, StateApproved} {
			prefix := leases.IndexPrefix(string(st))
			c := tx.Bucket(bucketState).Cursor()
			var ids []string
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				ids = append(ids, string(k[len(prefix):]))
			}
			for _, id := range ids {
				old, err := get(tx, id)
				if err != nil {
					// One unreadable grant must not stop the expiry of
					// every other.
					s.db.ReportSkipped("grant expiry", id, err)
					continue
				}
				if old.StateAt(now) != StateExpired {
					continue
				}
				g := *old
				g.State, g.EndedAt = StateExpired, now
				if err := putGrant(tx, old, &g); err != nil {
					return err
				}
				reason := "not approved in time"
				if old.State == StateApproved {
					reason = "approved but not redeemed in time"
				}
				if err := s.db.AppendAuditTx(tx, now, withGrant(audit.Entry{
					Kind: audit.KindGrantExpired, Actor: audit.Actor{Type: audit.ActorSystem, ID: "valet"}, Reason: reason,
				}, &g)); err != nil {
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

// errUnchanged leaves a grant as it is without an error.
var errUnchanged = errors.New("unchanged")

func (s *Store) change(ctx context.Context, id string, now time.Time, e audit.Entry, fn func(g *Grant) error) (*Grant, error) {
	var out *Grant
	err := s.db.Update(ctx, func(tx *bbolt.Tx) error {
		old, err := get(tx, id)
		if err != nil {
			return err
		}
		g := *old
		g.Approvals = append([]Decision(nil), old.Approvals...)
		if err := fn(&g); err != nil {
			if errors.Is(err, errUnchanged) {
				out = old
				return nil
			}
			return err
		}
		if err := putGrant(tx, old, &g); err != nil {
			return err
		}
		if e.Kind != "" {
			if err := s.db.AppendAuditTx(tx, now, withGrant(e, &g)); err != nil {
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

// withGrant fills an audit entry's subject fields from the grant.
func withGrant(e audit.Entry, g *Grant) audit.Entry {
	if e.AgentID == "" {
		e.AgentID = g.AgentID
	}
	if e.Role == "" {
		e.Role = g.Role
	}
	if e.LeaseID == "" {
		e.LeaseID = g.LeaseID
	}
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	e.Details["grant_id"] = g.ID
	return e
}

func get(tx *bbolt.Tx, id string) (*Grant, error) {
	v := tx.Bucket(bucketGrants).Get([]byte(id))
	if v == nil {
		return nil, ErrNotFound
	}
	var g Grant
	if err := json.Unmarshal(v, &g); err != nil {
		return nil, fmt.Errorf("decode grant %s: %w", id, err)
	}
	return &g, nil
}

func putGrant(tx *bbolt.Tx, old, g *Grant) error {
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return put(tx, old, g, v)
}

// put stores g and keeps the state and review indexes in line.
func put(tx *bbolt.Tx, old, g *Grant, v []byte) error {
	if err := tx.Bucket(bucketGrants).Put([]byte(g.ID), v); err != nil {
		return err
	}
	if old == nil || old.State != g.State {
		if old != nil {
			if err := tx.Bucket(bucketState).Delete(leases.IndexKey(string(old.State), []byte(g.ID))); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketState).Put(leases.IndexKey(string(g.State), []byte(g.ID)), nil); err != nil {
			return err
		}
	}
	review := tx.Bucket(bucketReview)
	if g.Kind == KindBreakGlass && g.Review == nil {
		return review.Put([]byte(g.ID), nil)
	}
	return review.Delete([]byte(g.ID))
}

// migrateIndexes brings the state and agent indexes to the current key
// layout (leases.MigrateIndexes).
func migrateIndexes(tx *bbolt.Tx) error {
	return leases.MigrateIndexes(tx, bucketMeta, bucketGrants, [][]byte{bucketState, bucketAgent}, func(v []byte) error {
		var g Grant
		if err := json.Unmarshal(v, &g); err != nil {
			return err
		}
		id := []byte(g.ID)
		if err := tx.Bucket(bucketState).Put(leases.IndexKey(string(g.State), id), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketAgent).Put(leases.IndexKey(g.AgentID, id), nil)
	})
}
