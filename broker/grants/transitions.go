package grants

import (
	"errors"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// This file holds a grant's state changes as the domain defines them. A
// storage engine loads the grant, applies one of them and stores the
// result with its audit record in one transaction (compare-and-swap on the
// stored grant), so every engine enforces the same rules and of concurrent
// redeems exactly one wins.

// ErrSelfApproval: an operator tried to approve or review a request they
// made.
var ErrSelfApproval = errors.New("self-approval refused")

// ErrTampered: the stored request does not match its binding.
var ErrTampered = errors.New("grant does not match the approved request")

// ErrUnchanged, returned by a state change, means the grant is already
// past what the change would do: the engine stores nothing, writes no
// audit record, and returns the grant as it is, without an error.
var ErrUnchanged = errors.New("unchanged")

// Approve adds an operator's approval to a pending grant. Once Required
// distinct operators (compared as identity.Equal does) have approved, the
// grant is approved and redeemable for redeemWithin. It returns ErrState
// (wrapped) when the grant is not pending or has expired or when the
// operator already approved it, and ErrSelfApproval (wrapped) when the
// operator is one of its requesters.
func (g *Grant) Approve(d Decision, redeemWithin time.Duration) error {
	if st := g.StateAt(d.At); st != StatePending {
		return refuse(ErrState, "grant %s is %s", g.ID, st)
	}
	if g.IsRequester(d.Operator) {
		return refuse(ErrSelfApproval, "%s asked for this access and cannot approve it", d.Operator)
	}
	if g.HasApproved(d.Operator) {
		return refuse(ErrState, "%s already approved grant %s; approvals must come from distinct operators", d.Operator, g.ID)
	}
	g.Approvals = append(g.Approvals, d)
	if len(g.Approvals) >= g.Required {
		g.State = StateApproved
		g.ApprovedAt = d.At
		g.RedeemBy = d.At.Add(redeemWithin)
	}
	return nil
}

// Deny ends a pending or approved grant. It returns ErrState (wrapped) for
// any other.
func (g *Grant) Deny(d Decision) error {
	if st := g.StateAt(d.At); st != StatePending && st != StateApproved {
		return refuse(ErrState, "grant %s is %s", g.ID, st)
	}
	g.State = StateDenied
	g.Denial = &d
	g.EndedAt = d.At
	return nil
}

// Redeem consumes an approved grant: it becomes redeemed. The caller must
// be the grant's agent (else ErrNotFound, wrapped) and present the same
// binding (else ErrTampered), before the grant's redeem deadline (else
// ErrState).
func (g *Grant) Redeem(agentID, binding string, now time.Time) error {
	if g.AgentID != agentID {
		return refuse(ErrNotFound, "grant %s belongs to another agent", g.ID)
	}
	if st := g.StateAt(now); st != StateApproved {
		return refuse(ErrState, "grant %s is %s, not approved", g.ID, st)
	}
	if g.Binding != binding {
		return refuse(ErrTampered, "grant %s was approved for a different request", g.ID)
	}
	g.State = StateRedeemed
	g.EndedAt = now
	return nil
}

// Unredeem gives a redeemed grant back after its mint failed, so the agent
// can try again before the deadline. ErrUnchanged once a lease was minted
// from it, or when it is not redeemed.
func (g *Grant) Unredeem() error {
	if g.State != StateRedeemed || g.LeaseID != "" {
		return ErrUnchanged
	}
	g.State = StateApproved
	g.EndedAt = time.Time{}
	return nil
}

// AddReview records an operator's after-the-fact review of a break-glass
// grant. It returns ErrState (wrapped) when the grant is not a break-glass
// grant or was reviewed already, and ErrSelfApproval (wrapped) when the
// operator is one of its requesters.
func (g *Grant) AddReview(d Decision) error {
	if g.Kind != KindBreakGlass {
		return refuse(ErrState, "grant %s is not a break-glass grant", g.ID)
	}
	if g.Review != nil {
		return refuse(ErrState, "grant %s was reviewed by %s already", g.ID, g.Review.Operator)
	}
	if g.IsRequester(d.Operator) {
		return refuse(ErrSelfApproval, "%s asked for this access and cannot review it", d.Operator)
	}
	g.Review = &d
	return nil
}

// Expire ends a pending or approved grant past its deadline at now: it
// becomes expired. ok is false (and g unchanged) when the grant has not
// expired at now; reason says which deadline passed, for the audit record.
func (g *Grant) Expire(now time.Time) (reason string, ok bool) {
	if g.StateAt(now) != StateExpired {
		return "", false
	}
	reason = "not approved in time"
	if g.State == StateApproved {
		reason = "approved but not redeemed in time"
	}
	g.State, g.EndedAt = StateExpired, now
	return reason, true
}

// Recorded fills the subject of an audit entry about g (its agent, role,
// lease and, in details, grant_id) where the entry leaves it empty.
func (g *Grant) Recorded(e audit.Entry) audit.Entry {
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
