package broker

import (
	"context"
	"errors"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the renew flow: an active lease gets a later expiry,
// never past its maximum, after the policy allows it (action renew) and the
// backend extends the credential.

// RenewRequest extends a lease.
type RenewRequest struct {
	ID string
	// TTL is the requested time from now; 0 means the role's TTL. The new
	// expiry never passes the lease's max (creation + role max_ttl).
	TTL       time.Duration
	SourceIP  string
	RequestID string
}

// RenewResult is a renewed lease, with a reissued credential when the
// backend had to issue a new one.
type RenewResult struct {
	Lease      *leases.Lease
	Credential map[string]any
}

// RenewLease extends an active lease after asking the policy (action
// renew). Errors: ENOTFOUND; EINVALID (ttl under 1s); ECONFLICT when the
// lease is not active, its role is gone or not renewable, its backend does
// not renew, it already expires at its maximum, or the ttl would not extend
// it (each message names which); EFORBIDDEN (policy); EUNAVAILABLE /
// EBADGATEWAY (backend).
func (b *Broker) RenewLease(ctx context.Context, c Caller, req RenewRequest) (*RenewResult, error) {
	l, err := b.GetLease(ctx, c, req.ID)
	if err != nil {
		return nil, err
	}
	now := b.clock.Now()
	if !l.ActiveAt(now) {
		return nil, Errorf(ECONFLICT, "lease %s is %s; only active leases can be renewed", l.ID, l.StateAt(now))
	}
	// A quarantined agent's leases are renewed for nobody, an operator
	// included: the quarantine holds until a release.
	risk, err := b.admitAgent(ctx, c, l.AgentID, audit.KindRenew, l.Role, req.RequestID, now)
	if err != nil {
		return nil, err
	}
	role, ok := b.roles[l.Role]
	if !ok {
		return nil, Errorf(ECONFLICT, "role %s of lease %s is no longer configured", l.Role, l.ID)
	}
	renewer, ok := b.backends[l.Backend].(backends.Renewer)
	ttl := req.TTL
	if ttl == 0 {
		ttl = role.TTL.D()
	}
	if ttl < time.Second {
		return nil, Errorf(EINVALID, "ttl must be at least 1s")
	}
	want := now.Add(ttl)
	if want.After(l.MaxExpires) {
		want = l.MaxExpires
	}
	if err := renewRefusal(l, role, ok, req.TTL == 0, ttl, want, now); err != nil {
		return nil, err
	}
	var p *Principal
	dec := Decision{Allowed: true}
	if c.Agent != nil {
		p = c.Agent
		dec, err = b.authz.Authorize(ctx, AuthzRequest{Principal: p, Action: ActionRenew, Role: role, RequestID: req.RequestID,
			Context: AuthzContext{TTL: want.Sub(now), SourceIP: req.SourceIP, Now: now, Risk: risk}})
		if err != nil {
			return nil, Wrap(EINTERNAL, err, "policy evaluation failed")
		}
		if !dec.Allowed {
			b.deny(ctx, p, audit.KindRenew, role.Name, req.RequestID, dec.Reason(), dec)
			return nil, Errorf(EFORBIDDEN, "%s: agent %s may not renew role %s", dec.Reason(), p.ID, role.Name)
		}
	} else {
		dec.Version = b.authz.Version()
	}
	// The lease's scope is reapplied: a renewal never widens a credential.
	mreq := backends.MintRequest{CorrelationID: l.ID, AgentID: l.AgentID, Role: roleSpec(role), IssuedAt: now, ExpiresAt: want, MaxExpiresAt: l.MaxExpires, Scope: l.Scope}
	if p != nil {
		mreq.Attributes = p.Attributes
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.Limits.MintTimeout.D())
	rn, err := renewer.Renew(rctx, leaseRef(l), mreq)
	cancel()
	if err != nil {
		return nil, backendError(ctx, err, l.Backend, "renew the credential", b.cfg.Limits.MintTimeout)
	}
	newExp := rn.ExpiresAt
	if newExp.After(want) {
		newExp = want // never record more than was asked; invariant 2 holds at the backend side
	}
	renewed, err := b.store.Renew(ctx, l.ID, b.clock.Now(), newExp, dec.record(audit.Entry{
		Kind: audit.KindRenew, Actor: c.actor(), Decision: audit.Allow, Reason: dec.Reason(), RequestID: req.RequestID,
		Details: map[string]string{"expires_at": newExp.UTC().Format(time.RFC3339)},
	}))
	if errors.Is(err, leases.ErrState) {
		return nil, Wrap(ECONFLICT, err, "lease %s ended while it was being renewed (it expired or was revoked); mint a new credential", l.ID)
	}
	if err != nil {
		return nil, storeError(err)
	}
	renewed.State = renewed.StateAt(b.clock.Now())
	if len(b.detectors) > 0 {
		o := Observation{Kind: ObserveRenew, Time: now, AgentID: l.AgentID, Role: l.Role, LeaseID: l.ID,
			ExpiresAt: renewed.ExpiresAt, RenewedFrom: l.ExpiresAt}
		if p != nil {
			// The agent's own request: where it came from and with which
			// attestation (an operator's renewal says nothing of either).
			o.SourceIP, o.Lineage = req.SourceIP, p.Lineage
		}
		b.observe(o)
	}
	return &RenewResult{Lease: renewed, Credential: rn.Data}, nil
}

// renewRefusal returns why lease l cannot be renewed to want (its new expiry
// at now, for a ttl that defaulted to the role's when roleTTL), or nil if it
// can. Each refusal names the actual cause. l is active; canRenew says
// whether its backend is a backends.Renewer.
func renewRefusal(l *leases.Lease, role *Role, canRenew, roleTTL bool, ttl time.Duration, want, now time.Time) error {
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	switch {
	case !canRenew:
		return Errorf(ECONFLICT, "lease %s cannot be renewed: its backend %s does not renew credentials; mint a new credential instead", l.ID, l.Backend)
	case !role.IsRenewable():
		return Errorf(ECONFLICT, "lease %s cannot be renewed: role %s is not renewable; mint a new credential instead", l.ID, role.Name)
	case !l.ExpiresAt.Before(l.MaxExpires):
		return Errorf(ECONFLICT, "lease %s already expires at its maximum, %s; mint a new credential instead", l.ID, at(l.MaxExpires))
	case !l.Renewable:
		return Errorf(ECONFLICT, "lease %s was minted not renewable (its role was not renewable then); mint a new credential instead", l.ID)
	case !want.After(l.ExpiresAt):
		asked := "a ttl of " + ttl.String()
		if roleTTL {
			asked = "the role's default ttl of " + ttl.String()
		}
		left := (l.ExpiresAt.Sub(now) + time.Second - 1).Truncate(time.Second)
		return Errorf(ECONFLICT, "%s from now ends at %s, which does not extend lease %s: it expires at %s; ask for a ttl longer than %s",
			asked, at(want), l.ID, at(l.ExpiresAt), left)
	}
	return nil
}
