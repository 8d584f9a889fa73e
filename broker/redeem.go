package broker

import (
	"context"
	"errors"
	"time"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
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

// MintGrace is how long after a mint began it may still be under way on
// some replica: twice limits.mint_timeout plus a minute. Intents older
// than that (a pending lease, a grant redeemed without its lease) were
// left by a replica that stopped mid-mint.
func (l LimitsConfig) MintGrace() time.Duration { return 2*l.MintTimeout.D() + time.Minute }

// RecoverRedeemedGrants finds the grants that a stopped replica left
// redeemed without recording their lease (it stopped between the
// redeem's compare-and-swap and the mint's end) once no mint of theirs
// can still be under way (LimitsConfig.MintGrace), and makes them tell
// the truth: a grant whose lease was minted names it; one whose mint
// never completed is given back, with an audit record, to be redeemed
// again until its deadline (then it expires as any approved grant). It
// looks at grants young enough to have been redeemed lately (the
// longest request_ttl plus redeem_within of the roles, plus the grace)
// and returns how many it changed. The leader's grant-expiry job runs it.
func (b *Broker) RecoverRedeemedGrants(ctx context.Context) (int, error) {
	if b.grants == nil {
		return 0, nil
	}
	now := b.clock.Now()
	grace := b.cfg.Limits.MintGrace()
	var window time.Duration
	for _, r := range b.roles {
		window = max(window, r.Approval.RequestTTL.D()+r.Approval.RedeemWithin.D())
	}
	oldest := now.Add(-window - grace)
	n := 0
	f := grants.Filter{State: grants.StateRedeemed, Kind: grants.KindApproval, Limit: 100}
	for {
		page, err := b.grants.List(ctx, f)
		if err != nil {
			return n, storeError(err)
		}
		for _, g := range page {
			if g.CreatedAt.Before(oldest) {
				return n, nil
			}
			if g.LeaseID != "" || g.State != grants.StateRedeemed || now.Sub(g.EndedAt) < grace {
				continue
			}
			changed, err := b.recoverRedeemed(ctx, g, now)
			if err != nil {
				return n, err
			}
			if changed {
				n++
			}
		}
		if len(page) < f.Limit {
			return n, nil
		}
		f.Before = page[len(page)-1].ID
	}
}

// recoverRedeemed records on g the lease its redeem minted, or gives g
// back when there is none. The lease was created at the redeem's time
// (g.EndedAt), so the agent's leases are read newest first down to it.
func (b *Broker) recoverRedeemed(ctx context.Context, g *grants.Grant, now time.Time) (bool, error) {
	lf := leases.Filter{AgentID: g.AgentID, Limit: 100}
	for {
		page, err := b.store.List(ctx, lf)
		if err != nil {
			return false, storeError(err)
		}
		for _, l := range page {
			if l.GrantID == g.ID {
				if _, err := b.grants.Redeemed(ctx, g.ID, l.ID, now); err != nil {
					return false, storeError(err)
				}
				b.log.Warn("a grant's lease was not recorded on it (the replica stopped); recorded now", "grant", g.ID, "lease", l.ID)
				return true, nil
			}
			if l.CreatedAt.Before(g.EndedAt) {
				return b.giveBack(ctx, g, now)
			}
		}
		if len(page) < lf.Limit {
			return b.giveBack(ctx, g, now)
		}
		lf.Before = page[len(page)-1].ID
	}
}

func (b *Broker) giveBack(ctx context.Context, g *grants.Grant, now time.Time) (bool, error) {
	again := "it can be redeemed again until " + g.RedeemBy.UTC().Format(time.RFC3339)
	if !now.Before(g.RedeemBy) {
		again = "its redeem deadline " + g.RedeemBy.UTC().Format(time.RFC3339) + " has passed; it expires"
	}
	back, err := b.grants.Unredeem(ctx, g.ID, now, audit.Entry{
		Kind: audit.KindGrantRedeem, Actor: systemActor, Decision: audit.Deny,
		Reason: "the mint after this redeem did not complete (the replica stopped); the grant was given back: " + again,
	})
	if err != nil {
		return false, storeError(err)
	}
	b.log.Warn("gave back a grant whose mint did not complete (the replica stopped)", "grant", g.ID, "agent", g.AgentID)
	b.waiters.wake(g.ID)
	return back.State == grants.StateApproved, nil
}
