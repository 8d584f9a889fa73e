package broker

import (
	"context"
	"errors"
	"time"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the redeem flow: the agent whose grant was approved mints
// its credential, once, for exactly the request that was approved
// (invariant 9).

// RedeemRequest redeems an approved grant.
type RedeemRequest struct {
	Attestation string
	GrantID     string
	SourceIP    string
	RequestID   string
}

// RedeemGrant mints the credential of an approved grant: once (the grant is
// consumed by compare-and-swap before the mint), by the agent that asked
// (proven by a fresh attestation), before the approval expires, for exactly
// the request that was approved (its binding is checked). The policy is
// asked again (action redeem, context.approvals = distinct approvers). If
// the mint fails the grant can be redeemed again.
func (b *Broker) RedeemGrant(ctx context.Context, req RedeemRequest) (*MintResult, error) {
	p, err := b.authenticate(ctx, attestation{token: req.Attestation, kind: audit.KindGrantRedeem, sourceIP: req.SourceIP, requestID: req.RequestID})
	if err != nil {
		return nil, err
	}
	g, err := b.GetGrant(ctx, Caller{Agent: p}, req.GrantID)
	if err != nil {
		return nil, err
	}
	risk, err := b.admitAgent(ctx, Caller{Agent: p}, p.ID, audit.KindGrantRedeem, g.Role, req.RequestID, b.clock.Now())
	if err != nil {
		return nil, err
	}
	role, ok := b.roles[g.Role]
	if !ok {
		return nil, Errorf(ECONFLICT, "role %s of grant %s is no longer configured", g.Role, g.ID)
	}
	if g.Kind != grants.KindApproval {
		return nil, Errorf(ECONFLICT, "grant %s is a %s grant and cannot be redeemed", g.ID, g.Kind)
	}
	now := b.clock.Now()
	// The binding is recomputed from the stored request: a grant whose
	// content was changed after approval does not match it.
	binding := grants.Binding(grants.Request{AgentID: g.AgentID, Role: g.Role, TTL: g.TTL, Scope: g.Scope, Reason: g.Reason, Lineage: g.Lineage})
	dec, err := b.authz.Authorize(ctx, AuthzRequest{Principal: p, Action: ActionRedeem, Role: role, RequestID: req.RequestID,
		Context: AuthzContext{TTL: g.TTL, Reason: g.Reason, SourceIP: req.SourceIP, Now: now, Approvals: len(g.Approvals), Risk: risk}})
	if err != nil {
		return nil, Wrap(EINTERNAL, err, "policy evaluation failed")
	}
	if !dec.Allowed {
		b.deny(ctx, p, audit.KindGrantRedeem, role.Name, req.RequestID, dec.Reason(), dec)
		return nil, Errorf(EFORBIDDEN, "%s: agent %s may not redeem role %s", dec.Reason(), p.ID, role.Name)
	}
	consumed, err := b.grants.Redeem(ctx, g.ID, p.ID, binding, now, dec.record(audit.Entry{
		Kind: audit.KindGrantRedeem, Actor: agentActor(p), Decision: audit.Allow, Reason: dec.Reason(), RequestID: req.RequestID,
	}))
	if err != nil {
		if errors.Is(err, grants.ErrTampered) {
			b.deny(ctx, p, audit.KindGrantRedeem, role.Name, req.RequestID, "grant content does not match its approved binding", dec)
		}
		return nil, grantError(err)
	}
	res, err := b.mint(ctx, &mintOp{
		p: p, role: role, ttl: g.TTL, dec: dec, now: now, grant: consumed,
		req: MintRequest{Role: g.Role, TTL: g.TTL, Reason: g.Reason, Scope: g.Scope, SourceIP: req.SourceIP, RequestID: req.RequestID},
	})
	if err != nil {
		// The grant is given back, but it can be redeemed again only
		// before its deadline, which may have passed during the mint.
		after := b.clock.Now()
		again := "the grant can be redeemed again until " + consumed.RedeemBy.UTC().Format(time.RFC3339)
		if !after.Before(consumed.RedeemBy) {
			again = "the grant's redeem deadline " + consumed.RedeemBy.UTC().Format(time.RFC3339) + " has passed; it cannot be redeemed again"
		}
		if _, uerr := b.grants.Unredeem(context.WithoutCancel(ctx), g.ID, after, audit.Entry{
			Kind: audit.KindGrantRedeem, Actor: agentActor(p), Decision: audit.Deny, Reason: "mint failed; " + again + ": " + ErrorMessage(err), RequestID: req.RequestID,
		}); uerr != nil {
			b.log.Error("give back a grant after a failed mint", "grant", g.ID, "err", uerr)
		}
		return nil, err
	}
	return b.grantMinted(ctx, consumed, res, EventGrantRedeemed, SeverityInfo), nil
}
