package broker

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Caller is who asks about a lease: the agent that owns it (proven by a
// fresh attestation) or an operator. Exactly one field is set.
type Caller struct {
	Agent    *Principal
	Operator *Operator
}

func (c Caller) actor() audit.Actor {
	if c.Operator != nil {
		return audit.Actor{Type: audit.ActorOperator, ID: c.Operator.Name}
	}
	return agentActor(c.Agent)
}

// AuthenticateAgent verifies an attestation presented from sourceIP for a
// lease or grant operation and applies the rate limit. Errors:
// EUNAUTHORIZED or ETOOLARGE (the attestation), ERATELIMIT (the agent is
// over its rate, or sourceIP over its failure budget: see
// RefuseCredential).
func (b *Broker) AuthenticateAgent(ctx context.Context, token, sourceIP, requestID string) (*Principal, error) {
	return b.authenticate(ctx, attestation{token: token, kind: audit.KindLeaseAccess, sourceIP: sourceIP, requestID: requestID})
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
		stored = append(stored, leases.StateActive)
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
			Context: AuthzContext{TTL: want.Sub(now), SourceIP: req.SourceIP, Now: now}})
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
	ref := backends.Ref{Handle: l.Handle, CorrelationID: l.ID, AgentID: l.AgentID, Role: l.Role, ExpiresAt: l.ExpiresAt, Details: l.Details}
	// The lease's scope is reapplied: a renewal never widens a credential.
	mreq := backends.MintRequest{CorrelationID: l.ID, AgentID: l.AgentID, Role: roleSpec(role), IssuedAt: now, ExpiresAt: want, MaxExpiresAt: l.MaxExpires, Scope: l.Scope}
	if p != nil {
		mreq.Attributes = p.Attributes
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.Limits.MintTimeout.D())
	rn, err := renewer.Renew(rctx, ref, mreq)
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
	if err != nil {
		return nil, storeError(err)
	}
	renewed.State = renewed.StateAt(b.clock.Now())
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

// EndLease ends a lease: released when its agent gives it back, revoked
// when an operator takes it. The first revocation attempt runs at once;
// the returned lease is released/revoked, or revoking if the backend did
// not confirm yet (it stays queued). Ending an ended lease changes nothing
// and returns it as it is; so does ending a lease past its expiry, which
// ended on its own (it is returned expired, and the expirer records it).
func (b *Broker) EndLease(ctx context.Context, c Caller, id, reason, requestID string) (*leases.Lease, error) {
	l, err := b.GetLease(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if l.State.Terminal() {
		return l, nil
	}
	to, kind := leases.StateReleased, audit.KindRelease
	if c.Operator != nil {
		to, kind = leases.StateRevoked, audit.KindRevoke
	}
	if reason == "" {
		reason = string(to) + " by " + c.actor().Type
	}
	ended, err := b.store.End(ctx, l.ID, to, b.clock.Now(), audit.Entry{
		Kind: kind, Actor: c.actor(), Reason: reason, RequestID: requestID,
	})
	if err != nil {
		return nil, storeError(err)
	}
	out, err := b.revoker.RevokeNow(ctx, ended)
	if err != nil {
		b.log.Error("revocation attempt failed to record", "lease", id, "err", err)
		return ended, nil
	}
	return out, nil
}

// RevokeMatching revokes every live lease matching f (by agent or
// lineage) for an operator, and returns how many it ended: those active or
// pending as of now (a lease past its expiry has ended on its own; the
// expirer records it). Leases are
// ended and revoked at their backends in parallel, at most
// leases.revoke_concurrency at a time; leases whose backend does not
// confirm stay queued for retries like any other. One lease that cannot be
// ended does not stop the others: a lease gone meanwhile is skipped, and
// any other failure is logged with the lease id and, once every other
// lease was ended, returned as EINTERNAL whose cause (logged) says how many
// were ended and how many were not (revoking again is harmless).
func (b *Broker) RevokeMatching(ctx context.Context, op *Operator, f leases.Filter, reason, requestID string) (int, error) {
	if f.AgentID == "" && f.Lineage == "" {
		return 0, Errorf(EINVALID, "give agent_id or lineage; revoking everything at once is not offered")
	}
	var ids []string
	now := b.clock.Now()
	for {
		f.Limit = 1000
		ls, err := b.store.List(ctx, f)
		if err != nil {
			return 0, storeError(err)
		}
		for _, l := range ls {
			if st := l.StateAt(now); st == leases.StateActive || st == leases.StatePending {
				ids = append(ids, l.ID)
			}
		}
		if len(ls) < f.Limit {
			break
		}
		f.Before = ls[len(ls)-1].ID
	}
	var (
		mu       sync.Mutex
		n        int
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, max(1, b.cfg.Leases.RevokeConcurrency))
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := b.EndLease(ctx, Caller{Operator: op}, id, reason, requestID)
			if err != nil && ErrorCode(err) != ENOTFOUND {
				b.log.Error("bulk revocation: a lease could not be ended; the others are", "lease", id, "request_id", requestID, "err", err)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				n++
			case ErrorCode(err) == ENOTFOUND:
				// Pruned since it was listed: nothing left to revoke.
			default:
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	if failed > 0 {
		return n, Wrap(EINTERNAL, firstErr, "ended %d of %d live leases; %d could not be ended (see the server log); revoking again is harmless", n, n+failed, failed)
	}
	return n, nil
}

// Introspection is an RFC 7662 answer.
type Introspection struct {
	Active bool
	Claims map[string]any
	Lease  *leases.Lease
}

// Introspect reports whether a valet-issued token is active: its signature
// and issuer verify and its lease is active and unexpired. Anything else,
// including malformed input, is simply inactive.
func (b *Broker) Introspect(ctx context.Context, token string) (*Introspection, error) {
	if token == "" || len(token) > b.cfg.Limits.MaxAttestationBytes {
		return &Introspection{}, nil
	}
	for _, be := range b.backends {
		in, ok := be.(backends.Introspector)
		if !ok {
			continue
		}
		info, err := in.Introspect(token)
		if err != nil {
			continue
		}
		if !leases.ValidID(info.LeaseID) {
			return &Introspection{}, nil
		}
		l, err := b.store.Get(ctx, info.LeaseID)
		if errors.Is(err, leases.ErrNotFound) {
			return &Introspection{}, nil
		}
		if err != nil {
			return nil, storeError(err)
		}
		now := b.clock.Now()
		exp, _ := info.Claims["exp"].(float64)
		if !l.ActiveAt(now) || float64(now.Unix()) >= exp {
			return &Introspection{Lease: l}, nil
		}
		return &Introspection{Active: true, Claims: info.Claims, Lease: l}, nil
	}
	return &Introspection{}, nil
}

// PublicJWKs returns the public keys of every signing backend.
func (b *Broker) PublicJWKs() []map[string]any {
	names := make([]string, 0, len(b.backends))
	for n := range b.backends {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []map[string]any{}
	for _, n := range names {
		if kp, ok := b.backends[n].(backends.KeyPublisher); ok {
			out = append(out, kp.PublicJWKs()...)
		}
	}
	return out
}
