package broker

import (
	"context"
	"errors"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
)

// This file holds the reads clients make of leases and grants: one by id,
// and listings by the state each item is shown with.

// listLimit is the page size of a listing: the filter's limit, 100 when
// unset, at most 1000 (what the stores apply).
func listLimit(limit int) int {
	if limit <= 0 {
		limit = 100
	}
	return min(limit, 1000)
}

// listAsShown lists, newest first, up to limit items whose state as shown
// to clients (stateAt, computed at one moment: see leases.Lease.StateAt and
// grants.Grant.StateAt) is want, or all items when want is "", from a store
// that filters on the stored state. stored are the stored states an item
// shown as want can have (an expired lease is stored expired, or active
// past its expiry); list reads one page of one of them (at most limit
// items, newest first, ids below before). The stored states' pages are
// merged by id, which is time-ordered, starting below before; the result is
// short only when nothing more matches. stored lists the states items leave
// before the state they enter: their first pages are read in that order,
// so an item that changes state between two reads is listed (once).
func listAsShown[T any, S ~string](want S, stored []S, limit int, before string,
	list func(st S, before string, limit int) ([]T, error), id func(T) string, stateAt func(T) S) ([]T, error) {
	type stream struct {
		state  S
		before string
		buf    []T // items shown as want, not yet taken, newest first
		done   bool
	}
	streams := make([]*stream, len(stored))
	for i, st := range stored {
		streams[i] = &stream{state: st, before: before}
	}
	// fill reads pages of s until it holds a wanted item or has no more.
	fill := func(s *stream) error {
		for len(s.buf) == 0 && !s.done {
			page, err := list(s.state, s.before, limit)
			if err != nil {
				return err
			}
			s.done = len(page) < limit
			if len(page) > 0 {
				s.before = id(page[len(page)-1])
			}
			for _, it := range page {
				if want == "" || stateAt(it) == want {
					s.buf = append(s.buf, it)
				}
			}
		}
		return nil
	}
	var out []T
	seen := map[string]bool{} // an item that changed state between pages is listed once
	for len(out) < limit {
		var next *stream
		for _, s := range streams {
			if err := fill(s); err != nil {
				return nil, err
			}
			if len(s.buf) > 0 && (next == nil || id(s.buf[0]) > id(next.buf[0])) {
				next = s
			}
		}
		if next == nil {
			break
		}
		it := next.buf[0]
		next.buf = next.buf[1:]
		if !seen[id(it)] {
			seen[id(it)] = true
			out = append(out, it)
		}
	}
	return out, nil
}

// GetLease returns a lease to its owner or an operator, with its state as
// of now (an active lease past its expiry is expired). Another agent gets
// ENOTFOUND, so lease ids cannot be probed.
func (b *Broker) GetLease(ctx context.Context, c Caller, id string) (*leases.Lease, error) {
	if !leases.ValidID(id) {
		return nil, Errorf(ENOTFOUND, "lease %q not found", id)
	}
	l, err := b.store.Get(ctx, id)
	if err != nil {
		if errors.Is(err, leases.ErrNotFound) {
			return nil, Errorf(ENOTFOUND, "lease %q not found", id)
		}
		return nil, storeError(err)
	}
	if c.Operator == nil && (c.Agent == nil || c.Agent.ID != l.AgentID) {
		return nil, Errorf(ENOTFOUND, "lease %q not found", id)
	}
	l.State = l.StateAt(b.clock.Now())
	return l, nil
}

// ListLeases lists leases for an operator, newest first, each with its state
// as of now (an active lease past its expiry is expired before the expirer
// records it). f.State filters on that same state: state=active never
// lists a lease shown expired, and state=expired lists active leases past
// their expiry too. A page holds f.Limit leases (default 100, at most 1000)
// whenever that many match; a shorter page is the last.
func (b *Broker) ListLeases(ctx context.Context, f leases.Filter) ([]*leases.Lease, error) {
	now := b.clock.Now()
	stored := []leases.State{f.State}
	if f.State == leases.StateExpired {
		// The state leases leave is read before the one they enter, so
		// a lease the expirer records between the two reads is seen in
		// the second.
		stored = []leases.State{leases.StateActive, leases.StateExpired}
	}
	ls, err := listAsShown(f.State, stored, listLimit(f.Limit), f.Before,
		func(st leases.State, before string, limit int) ([]*leases.Lease, error) {
			sf := f
			sf.State, sf.Before, sf.Limit = st, before, limit
			return b.store.List(ctx, sf)
		},
		func(l *leases.Lease) string { return l.ID }, func(l *leases.Lease) leases.State { return l.StateAt(now) })
	if err != nil {
		return nil, storeError(err)
	}
	for _, l := range ls {
		l.State = l.StateAt(now)
	}
	return ls, nil
}

// ListGrants lists grants for operators, newest first, each with its state
// as of now (a pending or approved grant past its deadline is expired
// before the sweeper records it). f.State filters on that same state:
// state=pending never lists a grant shown expired, and state=expired lists
// pending and approved grants past their deadlines too. A page holds
// f.Limit grants (default 100, at most 1000) whenever that many match; a
// shorter page is the last.
func (b *Broker) ListGrants(ctx context.Context, f grants.Filter) ([]*grants.Grant, error) {
	if b.grants == nil {
		return nil, nil
	}
	now := b.clock.Now()
	stored := []grants.State{f.State}
	if f.State == grants.StateExpired {
		// The states grants leave are read before the one they enter,
		// so a grant the sweeper records between the reads is seen in
		// the later one.
		stored = []grants.State{grants.StatePending, grants.StateApproved, grants.StateExpired}
	}
	gs, err := listAsShown(f.State, stored, listLimit(f.Limit), f.Before,
		func(st grants.State, before string, limit int) ([]*grants.Grant, error) {
			sf := f
			sf.State, sf.Before, sf.Limit = st, before, limit
			return b.grants.List(ctx, sf)
		},
		func(g *grants.Grant) string { return g.ID }, func(g *grants.Grant) grants.State { return g.StateAt(now) })
	if err != nil {
		return nil, grantError(err)
	}
	for _, g := range gs {
		g.State = g.StateAt(now)
	}
	return gs, nil
}
