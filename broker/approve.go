package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/valet-broker/valet/broker/claimpath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the approval workflow: an elevated role's request becomes
// a grant bound to the exact request; operators approve or deny it (or
// review break-glass access after the fact); long polls wait for the
// decision; unanswered grants expire. The agent redeems an approved grant
// once (redeem.go).

// requestGrant records a grant for a policy-permitted request of a role
// that needs approval, and announces it.
func (b *Broker) requestGrant(ctx context.Context, op *mintOp) (*MintResult, error) {
	if b.grants == nil {
		return nil, Errorf(EFORBIDDEN, "role %s requires approval, and this server has no grant store", op.role.Name)
	}
	g := b.newGrant(op, grants.KindApproval)
	if err := b.grants.Create(ctx, g, op.now, op.dec.record(audit.Entry{
		Kind: audit.KindGrantRequest, Actor: agentActor(op.p), Decision: audit.Allow, Reason: op.req.Reason, RequestID: op.req.RequestID,
		Details: map[string]string{"ttl": op.ttl.String(), "approvals_required": fmt.Sprint(g.Required)},
	})); err != nil {
		return nil, grantError(err)
	}
	b.notify(EventGrantRequested, SeverityInfo, g)
	return &MintResult{Grant: g}, nil
}

// newGrant binds op's request in a grant of kind.
func (b *Broker) newGrant(op *mintOp, kind string) *grants.Grant {
	p, role, req, now := op.p, op.role, op.req, op.now
	r := grants.Request{AgentID: p.ID, Role: role.Name, TTL: op.ttl, Scope: req.Scope, Reason: req.Reason, Lineage: p.Lineage}
	return &grants.Grant{
		ID: leases.NewID(now), Kind: kind, AgentID: p.ID, Role: role.Name, TTL: op.ttl, Scope: req.Scope,
		Reason: req.Reason, Lineage: p.Lineage, Requester: requesterIdentities(p, role), Binding: grants.Binding(r),
		State: grants.StatePending, Required: role.Approval.Required, CreatedAt: now,
		ExpiresAt: now.Add(role.Approval.RequestTTL.D()), PolicyVersion: op.dec.Version, RequestID: req.RequestID,
	}
}

// requesterIdentities are the agent id, its subject and the values of the
// role's requester claims (e.g. email, CI actor): the people behind the
// request, none of whom may approve or review it. A claim (a top-level
// name or a dot-separated path into nested claims, as claimpath.Lookup
// reads it) names one person (a string) or several (an array: every
// string in it counts). Each
// identity is listed once (compared as identity.Equal does).
func requesterIdentities(p *Principal, role *Role) []string {
	var ids []string
	add := func(v string) {
		if v != "" && !identity.Contains(ids, v) {
			ids = append(ids, v)
		}
	}
	add(p.ID)
	add(p.Subject)
	for _, c := range role.Approval.RequesterClaims {
		v, _ := claimpath.Lookup(p.Claims, c)
		switch v := v.(type) {
		case string:
			add(v)
		case []any:
			for _, e := range v {
				if s, ok := e.(string); ok {
					add(s)
				}
			}
		}
		add(p.Attributes[c])
	}
	return ids
}

// GetGrant returns a grant to its agent or an operator; another agent gets
// ENOTFOUND. The state is as of now (a grant past its deadline shows
// expired).
func (b *Broker) GetGrant(ctx context.Context, c Caller, id string) (*grants.Grant, error) {
	if b.grants == nil || !leases.ValidID(id) {
		return nil, Errorf(ENOTFOUND, "grant %q not found", id)
	}
	g, err := b.grants.Get(ctx, id)
	if err != nil {
		return nil, grantError(err)
	}
	if c.Operator == nil && (c.Agent == nil || c.Agent.ID != g.AgentID) {
		return nil, Errorf(ENOTFOUND, "grant %q not found", id)
	}
	g.State = g.StateAt(b.clock.Now())
	return g, nil
}

// WaitGrant is GetGrant that, while the grant is pending, waits up to wait
// for it to change (long polling).
func (b *Broker) WaitGrant(ctx context.Context, c Caller, id string, wait time.Duration) (*grants.Grant, error) {
	deadline := b.clock.Now().Add(wait)
	for {
		ch := b.waiters.add(id)
		g, err := b.GetGrant(ctx, c, id)
		if err != nil || g.State != grants.StatePending || wait <= 0 {
			b.waiters.remove(id, ch)
			return g, err
		}
		left := deadline.Sub(b.clock.Now())
		if until := g.ExpiresAt.Sub(b.clock.Now()); until < left {
			left = until
		}
		if left <= 0 {
			b.waiters.remove(id, ch)
			return g, nil
		}
		t := b.clock.NewTimer(left)
		select {
		case <-ch:
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			b.waiters.remove(id, ch)
			return g, nil
		}
		t.Stop()
		b.waiters.remove(id, ch)
		if !b.clock.Now().Before(deadline) || b.waiters.isStopped() {
			return b.GetGrant(ctx, c, id)
		}
	}
}

// mayApprove reports whether op is among the role's approvers (names and
// groups compared as identity.Equal does).
func mayApprove(op *Operator, role *Role) bool {
	a := role.Approval.Approvers
	if len(a.Operators) == 0 && len(a.Groups) == 0 {
		return true
	}
	return identity.Contains(a.Operators, op.Name) || identity.Intersects(op.Groups, a.Groups)
}

// checkApprover returns the role of g when op is among its approvers. An
// operator outside them is refused with EFORBIDDEN, and the refusal is
// audited as kind; a grant whose role is no longer configured is ECONFLICT
// (its approvers are unknown).
func (b *Broker) checkApprover(ctx context.Context, op *Operator, g *grants.Grant, kind, requestID string) (*Role, error) {
	role, ok := b.roles[g.Role]
	if !ok {
		return nil, Errorf(ECONFLICT, "role %s of grant %s is no longer configured", g.Role, g.ID)
	}
	if !mayApprove(op, role) {
		b.auditRefusal(ctx, op, g, kind, "operator is not an approver of this role", requestID)
		return nil, Errorf(EFORBIDDEN, "operator %s is not among the approvers of role %s", op.Name, g.Role)
	}
	return role, nil
}

// auditRefusal records that op was refused a decision on g. The reason
// starts with "refused: ", which tells a refused denial (grant.deny)
// apart from a denial that ended a grant; both are decision deny.
func (b *Broker) auditRefusal(ctx context.Context, op *Operator, g *grants.Grant, kind, reason, requestID string) {
	b.audit(ctx, audit.Entry{Kind: kind, Actor: audit.Actor{Type: audit.ActorOperator, ID: op.Name}, Decision: audit.Deny,
		AgentID: g.AgentID, Role: g.Role, Reason: "refused: " + reason, RequestID: requestID, Details: map[string]string{"grant_id": g.ID}})
}

// ApproveGrant records op's approval. Errors: ENOTFOUND; EFORBIDDEN when op
// is not an approver of the role or is one of the requesters; ECONFLICT
// when the grant is not pending (or expired) or op already approved
// (operators compared as identity.Equal does). Refusals are audited.
func (b *Broker) ApproveGrant(ctx context.Context, op *Operator, id, comment, requestID string) (*grants.Grant, error) {
	g, err := b.GetGrant(ctx, Caller{Operator: op}, id)
	if err != nil {
		return nil, err
	}
	role, err := b.checkApprover(ctx, op, g, audit.KindGrantApprove, requestID)
	if err != nil {
		return nil, err
	}
	now := b.clock.Now()
	ng, err := b.grants.Approve(ctx, id, grants.Decision{Operator: op.Name, At: now, Comment: comment, Method: op.Method},
		role.Approval.RedeemWithin.D(), audit.Entry{
			Kind: audit.KindGrantApprove, Actor: audit.Actor{Type: audit.ActorOperator, ID: op.Name}, Decision: audit.Allow,
			Reason: comment, RequestID: requestID,
		})
	if err != nil {
		if errors.Is(err, grants.ErrSelfApproval) {
			b.auditRefusal(ctx, op, g, audit.KindGrantApprove, "self-approval refused", requestID)
		}
		return nil, grantError(err)
	}
	if ng.State == grants.StateApproved {
		b.notify(EventGrantApproved, SeverityInfo, ng)
	}
	b.waiters.wake(id)
	return ng, nil
}

// DenyGrant ends a pending (or approved, not yet redeemed) grant. Errors:
// ENOTFOUND; EFORBIDDEN (audited) when op is not an approver of the role;
// ECONFLICT when the grant has ended. Any operator may deny a grant whose
// role is no longer configured, which could not be redeemed anyway.
func (b *Broker) DenyGrant(ctx context.Context, op *Operator, id, comment, requestID string) (*grants.Grant, error) {
	g, err := b.GetGrant(ctx, Caller{Operator: op}, id)
	if err != nil {
		return nil, err
	}
	if _, ok := b.roles[g.Role]; ok {
		if _, err := b.checkApprover(ctx, op, g, audit.KindGrantDeny, requestID); err != nil {
			return nil, err
		}
	}
	ng, err := b.grants.Deny(ctx, id, grants.Decision{Operator: op.Name, At: b.clock.Now(), Comment: comment, Method: op.Method}, audit.Entry{
		Kind: audit.KindGrantDeny, Actor: audit.Actor{Type: audit.ActorOperator, ID: op.Name}, Decision: audit.Deny, Reason: comment, RequestID: requestID,
	})
	if err != nil {
		return nil, grantError(err)
	}
	b.notify(EventGrantDenied, SeverityInfo, ng)
	b.waiters.wake(id)
	return ng, nil
}

// ReviewGrant records an operator's after-the-fact review of break-glass
// access. A review is a decision: it obeys the rules of ApproveGrant. Errors:
// ENOTFOUND; EFORBIDDEN when op is not an approver of the role or is one
// of the identities behind the request (both audited); ECONFLICT when the
// grant is not a break-glass grant, was reviewed already, or its role is
// no longer configured; EINVALID without a comment.
func (b *Broker) ReviewGrant(ctx context.Context, op *Operator, id, comment, requestID string) (*grants.Grant, error) {
	og, err := b.GetGrant(ctx, Caller{Operator: op}, id)
	if err != nil {
		return nil, err
	}
	if _, err := b.checkApprover(ctx, op, og, audit.KindGrantReview, requestID); err != nil {
		return nil, err
	}
	if strings.TrimSpace(comment) == "" {
		return nil, Errorf(EINVALID, "a review needs a comment: what was found")
	}
	g, err := b.grants.Review(ctx, id, grants.Decision{Operator: op.Name, At: b.clock.Now(), Comment: comment, Method: op.Method}, audit.Entry{
		Kind: audit.KindGrantReview, Actor: audit.Actor{Type: audit.ActorOperator, ID: op.Name}, Decision: audit.Allow, Reason: comment, RequestID: requestID,
	})
	if err != nil {
		if errors.Is(err, grants.ErrSelfApproval) {
			b.auditRefusal(ctx, op, og, audit.KindGrantReview, "self-review refused", requestID)
		}
		return nil, grantError(err)
	}
	b.notify(EventBreakGlassReviewed, SeverityInfo, g)
	return g, nil
}

// ExpireGrants records the expiry of grants past their deadlines (the
// server calls it periodically) and announces each.
func (b *Broker) ExpireGrants(ctx context.Context) (int, error) {
	if b.grants == nil {
		return 0, nil
	}
	gs, err := b.grants.ExpireDue(ctx, b.clock.Now())
	for _, g := range gs {
		b.notify(EventGrantExpired, SeverityInfo, g)
		b.waiters.wake(g.ID)
	}
	return len(gs), err
}

func (b *Broker) notify(typ, severity string, g *grants.Grant) {
	if b.notifier == nil {
		return
	}
	cp := *g
	cp.Approvals = slices.Clone(g.Approvals)
	cp.Requester = slices.Clone(g.Requester)
	b.notifier.Notify(Event{Type: typ, Severity: severity, Time: b.clock.Now(), Grant: &cp,
		URL: b.cfg.PublicURL + "/ui/grants/" + g.ID})
}

// grantError turns a grant store error into a client error. A refusal is
// told by its grants.Refusal reason, which names only the grant, its state
// and the operators involved; the store's error text is for the log.
func grantError(err error) error {
	reason := func(otherwise string) string {
		var rf *grants.Refusal
		if errors.As(err, &rf) {
			return rf.Reason
		}
		return otherwise
	}
	switch {
	case errors.Is(err, grants.ErrNotFound):
		return Wrap(ENOTFOUND, err, "grant not found")
	case errors.Is(err, grants.ErrSelfApproval):
		return Wrap(EFORBIDDEN, err, "self-approval refused: %s", reason("an operator cannot decide on access they asked for"))
	case errors.Is(err, grants.ErrTampered):
		return Wrap(EFORBIDDEN, err, "%s", reason("the grant does not match the request that was approved"))
	case errors.Is(err, grants.ErrState):
		return Wrap(ECONFLICT, err, "%s", reason("the grant changed while this request was handled; read it again"))
	default:
		return storeError(err)
	}
}

// grantWaiters wakes long polls when a grant changes.
type grantWaiters struct {
	mu      sync.Mutex
	m       map[string]map[chan struct{}]bool
	stopped bool
}

// StopWaiting ends every long poll at once (and every later one
// immediately), so a shutting-down server does not wait for them.
func (b *Broker) StopWaiting() {
	w := &b.waiters
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	for id, set := range w.m {
		for ch := range set {
			close(ch)
		}
		delete(w.m, id)
	}
}

func (w *grantWaiters) add(id string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]map[chan struct{}]bool{}
	}
	ch := make(chan struct{})
	if w.stopped {
		close(ch)
		return ch
	}
	if w.m[id] == nil {
		w.m[id] = map[chan struct{}]bool{}
	}
	w.m[id][ch] = true
	return ch
}

// WaitingOn reports how many long polls wait on a grant.
func (b *Broker) WaitingOn(id string) int {
	b.waiters.mu.Lock()
	defer b.waiters.mu.Unlock()
	return len(b.waiters.m[id])
}

func (w *grantWaiters) isStopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}

func (w *grantWaiters) remove(id string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if set := w.m[id]; set != nil && set[ch] {
		delete(set, ch)
		if len(set) == 0 {
			delete(w.m, id)
		}
	}
}

func (w *grantWaiters) wake(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.m[id] {
		close(ch)
	}
	delete(w.m, id)
}
