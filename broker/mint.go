package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/failpoint"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// This file holds the mint flow: an attestation and a role become a
// credential. Mint authenticates, checks the role, the TTL and the policy,
// then either opens a grant (approve.go), mints at once for break-glass, or
// runs the shared tail, mint: a pending lease (invariant 3), the backend,
// and the lease made active with its audit record before the credential is
// returned (invariant 4). Redeeming a grant (redeem.go) ends in the same
// tail.

// MintRequest asks for a credential.
type MintRequest struct {
	// Attestation is the raw workload token. It is verified and dropped;
	// it is never stored or logged.
	Attestation string
	Role        string
	// TTL is the requested lease TTL; 0 means the role's default. It is
	// capped at the role's max_ttl.
	TTL       time.Duration
	Reason    string
	Scope     map[string]any
	SourceIP  string
	RequestID string
	// BreakGlass asks for emergency access to a role that allows it: it
	// mints at once (policy action break_glass, TTL capped by the role's
	// break-glass limit), needs a reason, and is flagged for review.
	BreakGlass bool
	// Immediate says the caller cannot wait for an approval (the RFC 8693
	// token endpoint answers at once): a role that needs approval is then
	// refused with EFORBIDDEN, after authentication and policy, instead of
	// opening a grant.
	Immediate bool
}

// MintResult is a minted credential, or a grant waiting for approval.
// Credential is shown to the agent once.
type MintResult struct {
	Lease      *leases.Lease
	Credential map[string]any
	// Grant is set when the role needs approval (no credential yet) and
	// for break-glass mints.
	Grant *grants.Grant
}

// Mint verifies the attestation, checks policy, records a pending lease,
// calls the backend and activates the lease, and only then returns the
// credential. Errors: EINVALID (a role name not of the configured names'
// syntax, refused unaudited; a bad TTL or scope), EUNAUTHORIZED
// (attestation), ETOOLARGE, ERATELIMIT, ENOTFOUND (role), EFORBIDDEN
// (policy, or approval required), EUNAVAILABLE (backend or store down),
// EBADGATEWAY (backend error).
func (b *Broker) Mint(ctx context.Context, req MintRequest) (res *MintResult, err error) {
	start := time.Now() // wall time: a latency measurement, not a decision
	op := &mintOp{req: req}
	defer func() {
		if b.obs != nil {
			outcome, roleName := "ok", ""
			if err != nil {
				outcome = ErrorCode(err)
			}
			if op.role != nil {
				roleName = op.role.Name
			}
			b.obs.Minted(roleName, outcome, time.Since(start))
		}
	}()
	if !ValidName(req.Role) {
		// A role no configuration can hold is refused before anything
		// records it: the value is the caller's, and unchecked it could
		// forge lines in the audit log or in an operator's terminal.
		return nil, Errorf(EINVALID, "role must be %s", NameRule)
	}
	if err := b.admit(ctx, op); err != nil {
		return nil, err
	}
	role := op.role
	switch {
	case req.BreakGlass:
		return b.breakGlass(ctx, op)
	case role.Approval.Required > 0 && req.Immediate:
		err := Errorf(EFORBIDDEN, "role %s requires operator approval: request it with POST /v1/credentials, then redeem the grant", role.Name)
		// The policy did not refuse: the record keeps its version and
		// any evaluation errors, not the permits.
		b.deny(ctx, op.p, audit.KindMint, role.Name, req.RequestID, err.Message, Decision{Version: op.dec.Version, Errors: op.dec.Errors})
		return nil, err
	case role.Approval.Required > 0:
		return b.requestGrant(ctx, op)
	}
	return b.mint(ctx, op)
}

// mintOp is a mint in progress: who asks for which role and TTL, what the
// policy decided and when, and the grant the lease comes from. admit fills
// it in; requestGrant, breakGlass and mint read it, and RedeemGrant builds
// one from the grant it redeems.
type mintOp struct {
	p    *Principal
	role *Role
	req  MintRequest
	// ttl is the lease's TTL: the request's (or the role's default),
	// capped by the role's max_ttl and, for break-glass, its cap.
	ttl time.Duration
	dec Decision
	// now is when the policy decided; the lease and the grant start then.
	now time.Time
	// grant is the grant the lease comes from (redeemed, or break-glass),
	// nil for a plain mint.
	grant *grants.Grant
}

// admit decides whether op.req may go ahead, filling in op: it
// authenticates the agent, resolves the role and the TTL, applies the
// break-glass rules, asks the policy and checks the scope with the
// backend. Refusals of an authenticated agent for its role or by the
// policy are audited; malformed requests (a bad TTL, reason or scope) are
// refused unaudited, and nothing else is recorded.
func (b *Broker) admit(ctx context.Context, op *mintOp) error {
	req := op.req
	p, err := b.authenticate(ctx, attestation{token: req.Attestation, kind: audit.KindMint, role: req.Role, sourceIP: req.SourceIP, requestID: req.RequestID})
	if err != nil {
		return err
	}
	op.p = p
	risk, err := b.admitAgent(ctx, Caller{Agent: p}, p.ID, audit.KindMint, req.Role, req.RequestID, b.clock.Now())
	if err != nil {
		return err
	}
	role, ok := b.roles[req.Role]
	if !ok {
		err := Errorf(ENOTFOUND, "role %q does not exist", req.Role)
		b.deny(ctx, p, audit.KindMint, req.Role, req.RequestID, err.Message, Decision{})
		return err
	}
	op.role = role
	ttl := req.TTL
	if ttl == 0 {
		ttl = role.TTL.D()
	}
	if ttl < time.Second {
		return Errorf(EINVALID, "ttl must be at least 1s")
	}
	ttl = min(ttl, role.MaxTTL.D())
	action := ActionMint
	if req.BreakGlass {
		if !role.Approval.BreakGlass.Allowed {
			err := Errorf(EFORBIDDEN, "role %s does not allow break-glass access", role.Name)
			b.deny(ctx, p, audit.KindBreakGlass, role.Name, req.RequestID, err.Message, Decision{})
			return err
		}
		if len(strings.TrimSpace(req.Reason)) < 10 {
			return Errorf(EINVALID, "break-glass access needs a justification: give a reason of at least 10 characters")
		}
		action = ActionBreakGlass
		ttl = min(ttl, role.Approval.BreakGlass.MaxTTL.D())
	}
	op.ttl = ttl

	op.now = b.clock.Now()
	dec, err := b.authz.Authorize(ctx, AuthzRequest{
		Principal: p, Action: action, Role: role, RequestID: req.RequestID,
		Context: AuthzContext{TTL: ttl, Reason: req.Reason, SourceIP: req.SourceIP, Now: op.now, Risk: risk},
	})
	if err != nil {
		return Wrap(EINTERNAL, err, "policy evaluation failed")
	}
	if !dec.Allowed {
		kind := audit.KindMint
		if req.BreakGlass {
			kind = audit.KindBreakGlass
		}
		b.deny(ctx, p, kind, role.Name, req.RequestID, dec.Reason(), dec)
		return Errorf(EFORBIDDEN, "%s: agent %s may not %s role %s", dec.Reason(), p.ID, strings.ReplaceAll(string(action), "_", "-"), role.Name)
	}
	op.dec = dec
	// Invariant 8: a scope the backend would refuse is refused before
	// anything is recorded, not after a pending lease exists.
	return b.checkScope(role, req.Scope)
}

// ErrScopeRefused is in the chain of every EINVALID error Mint returns
// because the role does not grant the requested scope, so that front ends
// can tell a refused scope (OAuth's invalid_scope, RFC 6749 section 5.2)
// from other bad requests with errors.Is.
var ErrScopeRefused = errors.New("scope refused")

// checkScope asks the role's backend whether it accepts the client's scope
// request. Backends that do not understand scopes refuse any. Refusals are
// EINVALID errors with ErrScopeRefused in their chain.
func (b *Broker) checkScope(role *Role, scope map[string]any) error {
	if len(scope) == 0 {
		return nil
	}
	sc, ok := b.backends[role.Backend].(backends.ScopeChecker)
	if !ok {
		return Wrap(EINVALID, ErrScopeRefused, "role %s (backend %s) does not accept a scope; leave scope out", role.Name, role.Backend)
	}
	err := fromBackend(sc.CheckScope(roleSpec(role), scope))
	switch ErrorCode(err) {
	case "":
		return nil
	case EINTERNAL:
		return Wrap(EINVALID, fmt.Errorf("%w: %w", ErrScopeRefused, err), "scope is not acceptable for role %s", role.Name)
	case EINVALID:
		return Wrap(EINVALID, fmt.Errorf("%w: %w", ErrScopeRefused, err), "%s", ErrorMessage(err))
	default:
		return err
	}
}

// breakGlass mints at once for a role that allows emergency access, records
// a break-glass grant awaiting review, and raises a high-severity event.
func (b *Broker) breakGlass(ctx context.Context, op *mintOp) (*MintResult, error) {
	if b.grants == nil {
		return nil, Errorf(EFORBIDDEN, "break-glass needs a grant store, and this server has none")
	}
	g := b.newGrant(op, grants.KindBreakGlass)
	g.State, g.EndedAt, g.Required = grants.StateRedeemed, op.now, 0
	if err := b.grants.Create(ctx, g, op.now, op.dec.record(audit.Entry{
		Kind: audit.KindBreakGlass, Actor: agentActor(op.p), Decision: audit.Allow, Reason: op.req.Reason, RequestID: op.req.RequestID,
		Details: map[string]string{"ttl": op.ttl.String(), "severity": SeverityHigh},
	})); err != nil {
		return nil, grantError(err)
	}
	op.grant = g
	res, err := b.mint(ctx, op)
	if err != nil {
		b.notify(EventBreakGlass, SeverityHigh, g) // the attempt itself is news
		return nil, err
	}
	return b.grantMinted(ctx, g, res, EventBreakGlass, SeverityHigh), nil
}

// mint runs the side-effecting part of a mint, the tail every mint ends
// in (plain, break-glass, redeemed): intent, backend, activation.
func (b *Broker) mint(ctx context.Context, op *mintOp) (*MintResult, error) {
	be := b.backends[op.role.Backend]
	l := op.pendingLease(be)
	if fl, ok := be.(backends.FixedLifetime); ok {
		// A credential that lives a fixed time valet cannot shorten must
		// expire at the backend no later than that time after the latest
		// moment the backend can issue it (invariant 2). The intent
		// records it, so that a crash leaves a lease that stays revoking
		// until the credential is dead.
		if t := op.now.Add(b.cfg.Limits.MintTimeout.D() + fl.CredentialLifetime(roleSpec(op.role), op.ttl)); t.After(l.ExpiresAt) {
			l.CredentialExpires = t
		}
	}
	_, selfContained := be.(backends.SelfContained)
	// Invariant 3: the intent is on disk before a backend with external
	// effects is called. A self-contained backend only computes the
	// credential, so there is nothing to find and revoke after a crash.
	if !selfContained {
		if err := b.store.CreatePending(ctx, l); err != nil {
			return nil, storeError(err)
		}
	}
	cred, err := b.issue(ctx, op, be, l)
	if err != nil {
		if selfContained {
			b.log.Warn("mint failed", "agent", op.p.ID, "role", l.Role, "backend", l.Backend, "request_id", op.req.RequestID, "err", err)
			b.audit(ctx, op.dec.record(audit.Entry{Kind: audit.KindMintFailed, Actor: agentActor(op.p), Decision: audit.Allow, Reason: ErrorMessage(err),
				AgentID: op.p.ID, Role: op.role.Name, RequestID: op.req.RequestID, Details: map[string]string{"backend": l.Backend}}))
			return nil, backendError(ctx, err, l.Backend, "issue the credential", b.cfg.Limits.MintTimeout)
		}
		return nil, b.abandon(ctx, op, l, err)
	}
	entry := op.mintRecord(l)
	var outlives time.Time
	if cred.ExpiresAt.After(l.ExpiresAt) {
		// The lease is revoked at the backend when it expires, and stays
		// revoking until this time if that cannot be confirmed.
		outlives = cred.ExpiresAt
	}
	var active *leases.Lease
	if selfContained {
		l.State, l.Handle, l.Details, l.CredentialExpires = leases.StateActive, cred.Handle, cred.Details, outlives
		err = b.store.CreateActive(ctx, l, b.clock.Now(), entry)
		active = l
	} else {
		active, err = b.store.Activate(ctx, l.ID, leases.Activation{Handle: cred.Handle, Details: cred.Details, CredentialExpires: outlives}, b.clock.Now(), entry)
	}
	if err != nil {
		// The credential exists but is not recorded as active: it must not
		// be returned (invariant 4). Revoke it; if even that cannot be
		// recorded, start-up recovery finds the pending lease.
		if !selfContained {
			l.Handle = cred.Handle
			b.abandon(ctx, op, l, err)
		}
		if errors.Is(err, leases.ErrState) {
			return nil, Wrap(ECONFLICT, err, "lease %s was ended before its credential could be recorded (it was revoked meanwhile); "+
				"the credential was not handed out and is being revoked", l.ID)
		}
		return nil, storeError(err)
	}
	if b.expiry != nil {
		b.expiry.Notify(active.ExpiresAt)
	}
	if b.agents != nil {
		b.sightings.add(op.p.ID, op.role.Name, active.CreatedAt)
	}
	if len(b.detectors) > 0 {
		b.observe(Observation{Kind: ObserveMint, Time: active.CreatedAt, AgentID: op.p.ID, Role: op.role.Name, LeaseID: active.ID,
			SourceIP: op.req.SourceIP, Lineage: active.Lineage, ExpiresAt: active.ExpiresAt})
	}
	return &MintResult{Lease: active, Credential: cred.Data}, nil
}

// pendingLease is the lease op records before its backend is called.
func (op *mintOp) pendingLease(be backends.Backend) *leases.Lease {
	p, role, now := op.p, op.role, op.now
	l := &leases.Lease{
		ID: leases.NewID(now), AgentID: p.ID, Role: role.Name, Backend: role.Backend,
		State: leases.StatePending, CreatedAt: now, ExpiresAt: now.Add(op.ttl),
		MaxExpires: now.Add(role.MaxTTL.D()), Lineage: p.Lineage, RequestID: op.req.RequestID, Scope: op.req.Scope,
	}
	if g := op.grant; g != nil {
		l.GrantID, l.Approvers = g.ID, g.Approvers()
		if g.Kind == grants.KindBreakGlass {
			// A break-glass lease never renews past its cap.
			l.MaxExpires = l.ExpiresAt
		}
	}
	_, canRenew := be.(backends.Renewer)
	l.Renewable = canRenew && role.IsRenewable() && l.MaxExpires.After(l.ExpiresAt)
	return l
}

// issue asks the backend for the credential of lease l, within the mint
// timeout. A credential that would outlive its lease is an EBADGATEWAY
// error (its handle, if any, is kept on l so that it is revoked).
func (b *Broker) issue(ctx context.Context, op *mintOp, be backends.Backend, l *leases.Lease) (*backends.Credential, error) {
	mctx, cancel := context.WithTimeout(ctx, b.cfg.Limits.MintTimeout.D())
	defer cancel()
	mreq := backends.MintRequest{
		CorrelationID: l.ID, AgentID: op.p.ID, Role: roleSpec(op.role), Attributes: op.p.Attributes,
		IssuedAt: op.now, ExpiresAt: l.ExpiresAt, Scope: op.req.Scope,
	}
	if l.Renewable {
		mreq.MaxExpiresAt = l.MaxExpires
	}
	cred, err := be.Mint(mctx, mreq)
	if err != nil {
		return nil, err
	}
	failpoint.Hit(failpoint.MintAfterBackend)
	latest, bound := l.ExpiresAt, "the lease's expiry"
	if !l.CredentialExpires.IsZero() {
		latest, bound = l.CredentialExpires, "the latest expiry its fixed lifetime allows,"
	}
	if cred.ExpiresAt.IsZero() || cred.ExpiresAt.After(latest) {
		// Invariant 2: never hand out a credential that outlives its lease
		// (or, for a fixed lifetime, the bound the intent recorded).
		if cred.Handle != "" {
			l.Handle = cred.Handle
		}
		return nil, Errorf(EBADGATEWAY, "backend %s issued a credential expiring at %s, after %s %s; it was revoked",
			l.Backend, cred.ExpiresAt.UTC().Format(time.RFC3339), bound, latest.UTC().Format(time.RFC3339))
	}
	return cred, nil
}

// mintRecord is the audit record of op's lease l becoming active.
func (op *mintOp) mintRecord(l *leases.Lease) audit.Entry {
	e := op.dec.record(audit.Entry{
		Kind: audit.KindMint, Actor: agentActor(op.p), Decision: audit.Allow, Reason: op.dec.Reason(),
		AgentID: op.p.ID, Role: op.role.Name, LeaseID: l.ID,
		RequestID: op.req.RequestID, Details: map[string]string{"ttl": op.ttl.String(), "backend": op.role.Backend},
	})
	if g := op.grant; g != nil {
		e.Details["grant_id"] = g.ID
		e.Details["approvers"] = strings.Join(g.Approvers(), ",")
	}
	return e
}

// grantMinted records the lease a grant minted on the grant, announces it,
// wakes its long polls and attaches it to the result.
func (b *Broker) grantMinted(ctx context.Context, g *grants.Grant, res *MintResult, event, severity string) *MintResult {
	if done, err := b.grants.Redeemed(ctx, g.ID, res.Lease.ID, b.clock.Now()); err == nil {
		g = done
	} else {
		b.log.Error("record the lease on its grant", "grant", g.ID, "err", err)
	}
	b.notify(event, severity, g)
	b.waiters.wake(g.ID)
	res.Grant = g
	return res
}

// abandon ends a pending lease whose mint failed and revokes whatever the
// backend may have issued, then returns the error for the client.
func (b *Broker) abandon(ctx context.Context, op *mintOp, l *leases.Lease, cause error) error {
	clientErr := backendError(ctx, cause, l.Backend, "issue the credential", b.cfg.Limits.MintTimeout)
	ctx = context.WithoutCancel(ctx)
	reason := ErrorMessage(cause)
	requestID := op.req.RequestID
	b.log.Warn("mint failed", "lease", l.ID, "agent", op.p.ID, "role", l.Role, "backend", l.Backend, "request_id", requestID, "err", cause)
	ended, err := b.store.Abandon(ctx, l.ID, l.Handle, b.clock.Now(), op.dec.record(audit.Entry{
		Kind: audit.KindMintFailed, Actor: agentActor(op.p), Decision: audit.Allow, Reason: reason, RequestID: requestID,
		Details: map[string]string{"backend": l.Backend},
	}))
	if err != nil {
		b.log.Error("could not end failed mint; recovery will revoke it at start-up", "lease", l.ID, "err", err)
	} else {
		if _, err := b.revoker.RevokeNow(ctx, ended); err != nil {
			b.log.Error("revoke after failed mint", "lease", l.ID, "err", err)
		}
	}
	return clientErr
}

// backendError turns a backend's failure to do what ("issue the
// credential", "renew the credential") into a client error that says what
// happened: the backend's own *backends.Error with its mapped code
// (fromBackend), an *Error as is; the request ending (ctx, the request's
// context) before the backend answered; unavailability; no answer within
// the mint timeout; anything else as EBADGATEWAY (the cause is logged, not
// shown).
func backendError(ctx context.Context, cause error, backend, what string, timeout config.Duration) error {
	cause = fromBackend(cause)
	var be *Error
	switch {
	case errors.As(cause, &be):
		return cause
	case ctx.Err() != nil:
		return Wrap(EUNAVAILABLE, cause, "the request ended before backend %s answered", backend)
	case errors.Is(cause, backends.ErrUnavailable):
		return Wrap(EUNAVAILABLE, cause, "backend %s is unavailable; retry later", backend)
	case errors.Is(cause, context.DeadlineExceeded):
		return Wrap(EUNAVAILABLE, cause, "backend %s did not answer within %s", backend, timeout)
	default:
		return Wrap(EBADGATEWAY, cause, "backend %s failed to %s", backend, what)
	}
}
