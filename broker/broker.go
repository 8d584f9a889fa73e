// Package broker is valet's domain: the flows that turn a verified
// attestation into a short-lived credential (mint), extend it (renew) and
// end it (release, revoke), with the policy checks, lease records and audit
// records each step needs. Transport (HTTP), storage (leases) and the
// credential backends are plugged in through small interfaces.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/failpoint"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Revoker revokes ended leases at their backends (leases.RevocationQueue).
type Revoker interface {
	// RevokeNow makes the first attempt at once and returns the lease as it
	// is afterwards; failures stay queued for retries.
	RevokeNow(ctx context.Context, l *leases.Lease) (*leases.Lease, error)
}

// ExpiryNotifier is told about new expiries so the scheduler can wake early
// (leases.Expirer).
type ExpiryNotifier interface {
	Notify(t time.Time)
}

// Observer receives measurements (Prometheus in production).
type Observer interface {
	// Minted is called once per mint request with the role (or "" when the
	// role is unknown), the outcome (the error code, or "ok"/"pending") and
	// how long it took.
	Minted(role, outcome string, d time.Duration)
	// CredentialRefused is called once per credential that did not verify,
	// with its type (one of CredentialTypes) and whether its address was
	// over its failure budget.
	CredentialRefused(credential string, throttled bool)
}

// Options are the Broker's dependencies.
type Options struct {
	Config     *Config
	Store      LeaseStore
	Auditor    Auditor
	Verifier   Verifier
	Authorizer Authorizer
	Backends   map[string]backends.Backend
	Revoker    Revoker
	Expiry     ExpiryNotifier
	Clock      clock.Clock
	Logger     *slog.Logger
	Observer   Observer
	// Grants stores approval requests; without it, roles that need
	// approval are refused.
	Grants GrantStore
	// Notifier hears about grants and break-glass use (optional).
	Notifier Notifier
}

// Broker runs the credential flows.
type Broker struct {
	cfg      *Config
	store    LeaseStore
	auditor  Auditor
	verifier Verifier
	authz    Authorizer
	backends map[string]backends.Backend
	revoker  Revoker
	expiry   ExpiryNotifier
	clock    clock.Clock
	log      *slog.Logger
	obs      Observer
	limiter  *agentLimiter
	refusals *refusals
	roles    map[string]*Role
	grants   GrantStore
	notifier Notifier
	waiters  grantWaiters
}

// New checks that every role's backend exists and accepts the role's
// parameters, and that limits.agent_rate and agent_burst are usable (it
// takes the configuration as given: Config.Validate has already run),
// and returns a Broker.
func New(o Options) (*Broker, error) {
	if o.Config == nil || o.Store == nil || o.Auditor == nil || o.Verifier == nil || o.Authorizer == nil || o.Revoker == nil {
		return nil, errors.New("broker: Config, Store, Auditor, Verifier, Authorizer and Revoker are required")
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	b := &Broker{
		cfg: o.Config, store: o.Store, auditor: o.Auditor, verifier: o.Verifier, authz: o.Authorizer,
		backends: o.Backends, revoker: o.Revoker, expiry: o.Expiry, clock: o.Clock, log: o.Logger, obs: o.Observer,
		roles: map[string]*Role{}, grants: o.Grants, notifier: o.Notifier,
	}
	var err error
	if b.limiter, err = newAgentLimiter(o.Config.Limits.AgentRate, o.Config.Limits.AgentBurst, o.Clock); err != nil {
		return nil, err
	}
	b.refusals = newRefusals(o.Config.Limits)
	for i := range o.Config.Roles {
		r := &o.Config.Roles[i]
		be, ok := o.Backends[r.Backend]
		if !ok {
			return nil, fmt.Errorf("roles[%d].backend %q is not configured", i, r.Backend)
		}
		if rc, ok := be.(backends.RoleChecker); ok {
			if err := rc.CheckRole(roleSpec(r)); err != nil {
				return nil, fmt.Errorf("roles[%d] (%s): %w", i, r.Name, err)
			}
		}
		b.roles[r.Name] = r
	}
	return b, nil
}

func roleSpec(r *Role) backends.RoleSpec {
	return backends.RoleSpec{Name: r.Name, Audience: r.Audience, Scopes: r.Scopes, Params: r.Params,
		TTL: r.TTL.D(), MaxTTL: r.MaxTTL.D(), Renewable: r.IsRenewable()}
}

// Role returns a configured role or ENOTFOUND.
func (b *Broker) Role(name string) (*Role, error) {
	r, ok := b.roles[name]
	if !ok {
		return nil, Errorf(ENOTFOUND, "role %q does not exist", name)
	}
	return r, nil
}

// Roles lists the configured roles.
func (b *Broker) Roles() []Role { return b.cfg.Roles }

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
	roleName := ""
	defer func() {
		if b.obs != nil {
			outcome := "ok"
			if err != nil {
				outcome = ErrorCode(err)
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
	p, err := b.authenticate(ctx, attestation{token: req.Attestation, kind: audit.KindMint, role: req.Role, sourceIP: req.SourceIP, requestID: req.RequestID})
	if err != nil {
		return nil, err
	}
	role, ok := b.roles[req.Role]
	if !ok {
		err := Errorf(ENOTFOUND, "role %q does not exist", req.Role)
		b.deny(ctx, p, audit.KindMint, req.Role, req.RequestID, err.Message, Decision{})
		return nil, err
	}
	roleName = role.Name
	ttl := req.TTL
	if ttl == 0 {
		ttl = role.TTL.D()
	}
	if ttl < time.Second {
		return nil, Errorf(EINVALID, "ttl must be at least 1s")
	}
	ttl = min(ttl, role.MaxTTL.D())
	action := ActionMint
	if req.BreakGlass {
		if !role.Approval.BreakGlass.Allowed {
			err := Errorf(EFORBIDDEN, "role %s does not allow break-glass access", role.Name)
			b.deny(ctx, p, audit.KindBreakGlass, role.Name, req.RequestID, err.Message, Decision{})
			return nil, err
		}
		if len(strings.TrimSpace(req.Reason)) < 10 {
			return nil, Errorf(EINVALID, "break-glass access needs a justification: give a reason of at least 10 characters")
		}
		action = ActionBreakGlass
		ttl = min(ttl, role.Approval.BreakGlass.MaxTTL.D())
	}

	now := b.clock.Now()
	dec, err := b.authz.Authorize(ctx, AuthzRequest{
		Principal: p, Action: action, Role: role, RequestID: req.RequestID,
		Context: AuthzContext{TTL: ttl, Reason: req.Reason, SourceIP: req.SourceIP, Now: now},
	})
	if err != nil {
		return nil, Wrap(EINTERNAL, err, "policy evaluation failed")
	}
	if !dec.Allowed {
		kind := audit.KindMint
		if req.BreakGlass {
			kind = audit.KindBreakGlass
		}
		b.deny(ctx, p, kind, role.Name, req.RequestID, dec.Reason(), dec)
		return nil, Errorf(EFORBIDDEN, "%s: agent %s may not %s role %s", dec.Reason(), p.ID, strings.ReplaceAll(string(action), "_", "-"), role.Name)
	}
	// Invariant 8: a scope the backend would refuse is refused before
	// anything is recorded, not after a pending lease exists.
	if err := b.checkScope(role, req.Scope); err != nil {
		return nil, err
	}
	switch {
	case req.BreakGlass:
		return b.breakGlass(ctx, p, role, ttl, req, dec, now)
	case role.Approval.Required > 0 && req.Immediate:
		err := Errorf(EFORBIDDEN, "role %s requires operator approval: request it with POST /v1/credentials, then redeem the grant", role.Name)
		// The policy did not refuse: the record keeps its version and
		// any evaluation errors, not the permits.
		b.deny(ctx, p, audit.KindMint, role.Name, req.RequestID, err.Message, Decision{Version: dec.Version, Errors: dec.Errors})
		return nil, err
	case role.Approval.Required > 0:
		return b.requestGrant(ctx, p, role, ttl, req, dec, now)
	}
	return b.mint(ctx, p, role, ttl, req, dec, now, nil)
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

// mint runs the side-effecting part of a mint: intent, backend, activation.
// g is the grant the lease comes from, if any.
func (b *Broker) mint(ctx context.Context, p *Principal, role *Role, ttl time.Duration, req MintRequest, dec Decision, now time.Time, g *grants.Grant) (*MintResult, error) {
	be := b.backends[role.Backend]
	l := &leases.Lease{
		ID: leases.NewID(now), AgentID: p.ID, Role: role.Name, Backend: role.Backend,
		State: leases.StatePending, CreatedAt: now, ExpiresAt: now.Add(ttl),
		MaxExpires: now.Add(role.MaxTTL.D()), Lineage: p.Lineage, RequestID: req.RequestID, Scope: req.Scope,
	}
	if g != nil {
		l.GrantID, l.Approvers = g.ID, g.Approvers()
		if g.Kind == grants.KindBreakGlass {
			// A break-glass lease never renews past its cap.
			l.MaxExpires = l.ExpiresAt
		}
	}
	_, canRenew := be.(backends.Renewer)
	l.Renewable = canRenew && role.IsRenewable() && l.MaxExpires.After(l.ExpiresAt)
	_, selfContained := be.(backends.SelfContained)
	// Invariant 3: the intent is on disk before a backend with external
	// effects is called. A self-contained backend only computes the
	// credential, so there is nothing to find and revoke after a crash.
	if !selfContained {
		if err := b.store.CreatePending(ctx, l); err != nil {
			return nil, storeError(err)
		}
	}
	mctx, cancel := context.WithTimeout(ctx, b.cfg.Limits.MintTimeout.D())
	mreq := backends.MintRequest{
		CorrelationID: l.ID, AgentID: p.ID, Role: roleSpec(role), Attributes: p.Attributes,
		IssuedAt: now, ExpiresAt: l.ExpiresAt, Scope: req.Scope,
	}
	if l.Renewable {
		mreq.MaxExpiresAt = l.MaxExpires
	}
	cred, err := be.Mint(mctx, mreq)
	cancel()
	if err == nil {
		failpoint.Hit(failpoint.MintAfterBackend)
	}
	if err == nil && (cred.ExpiresAt.IsZero() || cred.ExpiresAt.After(l.ExpiresAt)) {
		// Invariant 2: never hand out a credential that outlives its lease.
		err = Errorf(EBADGATEWAY, "backend %s issued a credential expiring at %s, after the lease's expiry %s; it was revoked",
			role.Backend, cred.ExpiresAt.UTC().Format(time.RFC3339), l.ExpiresAt.UTC().Format(time.RFC3339))
		if cred.Handle != "" {
			l.Handle = cred.Handle
		}
	}
	if err != nil {
		if selfContained {
			b.log.Warn("mint failed", "agent", p.ID, "role", l.Role, "backend", l.Backend, "request_id", req.RequestID, "err", err)
			b.audit(ctx, dec.record(audit.Entry{Kind: audit.KindMintFailed, Actor: agentActor(p), Decision: audit.Allow, Reason: ErrorMessage(err),
				AgentID: p.ID, Role: role.Name, RequestID: req.RequestID, Details: map[string]string{"backend": l.Backend}}))
			return nil, backendError(ctx, err, l.Backend, "issue the credential", b.cfg.Limits.MintTimeout)
		}
		return nil, b.abandon(ctx, l, p, req.RequestID, dec, err)
	}
	entry := dec.record(audit.Entry{
		Kind: audit.KindMint, Actor: agentActor(p), Decision: audit.Allow, Reason: dec.Reason(),
		AgentID: p.ID, Role: role.Name, LeaseID: l.ID,
		RequestID: req.RequestID, Details: map[string]string{"ttl": ttl.String(), "backend": role.Backend},
	})
	if g != nil {
		entry.Details["grant_id"] = g.ID
		entry.Details["approvers"] = strings.Join(g.Approvers(), ",")
	}
	var active *leases.Lease
	if selfContained {
		l.State, l.Handle, l.Details = leases.StateActive, cred.Handle, cred.Details
		err = b.store.CreateActive(ctx, l, b.clock.Now(), entry)
		active = l
	} else {
		active, err = b.store.Activate(ctx, l.ID, leases.Activation{Handle: cred.Handle, Details: cred.Details}, b.clock.Now(), entry)
	}
	if err != nil {
		// The credential exists but is not recorded as active: it must not
		// be returned (invariant 4). Revoke it; if even that cannot be
		// recorded, start-up recovery finds the pending lease.
		if !selfContained {
			l.Handle = cred.Handle
			b.abandon(ctx, l, p, req.RequestID, dec, err)
		}
		return nil, storeError(err)
	}
	if b.expiry != nil {
		b.expiry.Notify(active.ExpiresAt)
	}
	return &MintResult{Lease: active, Credential: cred.Data}, nil
}

// abandon ends a pending lease whose mint failed and revokes whatever the
// backend may have issued, then returns the error for the client.
func (b *Broker) abandon(ctx context.Context, l *leases.Lease, p *Principal, requestID string, dec Decision, cause error) error {
	clientErr := backendError(ctx, cause, l.Backend, "issue the credential", b.cfg.Limits.MintTimeout)
	ctx = context.WithoutCancel(ctx)
	reason := ErrorMessage(cause)
	b.log.Warn("mint failed", "lease", l.ID, "agent", p.ID, "role", l.Role, "backend", l.Backend, "request_id", requestID, "err", cause)
	ended, err := b.store.Abandon(ctx, l.ID, l.Handle, b.clock.Now(), dec.record(audit.Entry{
		Kind: audit.KindMintFailed, Actor: agentActor(p), Decision: audit.Allow, Reason: reason, RequestID: requestID,
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
// (fromBackend), an *Error as is; the request ending (ctx, the
// request's context) before the backend answered; unavailability; no answer
// within the mint timeout; anything else as EBADGATEWAY (the cause is
// logged, not shown).
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

// attestation is an attestation presented for a flow.
type attestation struct {
	token     string
	kind      string // audit kind of the flow
	role      string // the role asked for, if any
	sourceIP  string
	requestID string
}

// authenticate verifies an attestation and applies the per-agent rate
// limit. An attestation that does not verify is refused through
// RefuseCredential: audited (without the token) while its address is
// within its failure budget, ERATELIMIT once it is over.
func (b *Broker) authenticate(ctx context.Context, a attestation) (*Principal, error) {
	if a.token == "" {
		return nil, Errorf(EUNAUTHORIZED, "an attestation is required: send it as Authorization: Bearer <token>")
	}
	p, err := b.verifier.Verify(ctx, a.token)
	if err != nil {
		if code := ErrorCode(err); code == EUNAUTHORIZED || code == ETOOLARGE {
			if rerr := b.RefuseCredential(ctx, Refusal{Credential: CredentialAttestation, SourceIP: a.sourceIP, Kind: a.kind,
				Role: a.role, RequestID: a.requestID, Reason: ErrorMessage(err)}); rerr != nil {
				return nil, rerr
			}
		}
		return nil, err
	}
	if !b.limiter.allow(p.ID) {
		return nil, Errorf(ERATELIMIT, "agent %s is over its rate limit of %g requests per second; slow down", p.ID, b.cfg.Limits.AgentRate)
	}
	return p, nil
}

// deny audits a refusal. Refusals the policy did not decide (an unknown
// role) carry the policy version in force, as every decision does.
func (b *Broker) deny(ctx context.Context, p *Principal, kind, role, requestID, reason string, dec Decision) {
	if dec.Version == "" {
		dec.Version = b.authz.Version()
	}
	b.audit(ctx, dec.record(audit.Entry{Kind: kind, Actor: agentActor(p), Decision: audit.Deny, Reason: reason,
		AgentID: p.ID, Role: role, RequestID: requestID}))
}

func (b *Broker) audit(ctx context.Context, e audit.Entry) {
	if err := b.auditor.Audit(context.WithoutCancel(ctx), b.clock.Now(), e); err != nil {
		b.log.Error("audit write failed", "kind", e.Kind, "err", err)
	}
}

func agentActor(p *Principal) audit.Actor { return audit.Actor{Type: audit.ActorAgent, ID: p.ID} }

// storeError turns a store failure into a client error.
func storeError(err error) error {
	switch {
	case errors.Is(err, leases.ErrNotFound):
		return Wrap(ENOTFOUND, err, "lease not found")
	case errors.Is(err, leases.ErrState):
		return Wrap(ECONFLICT, err, "%s", err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Wrap(EUNAVAILABLE, err, "the request was cancelled before the lease store answered")
	default:
		return Wrap(EINTERNAL, err, "lease store failure")
	}
}

// Now is the broker's clock reading.
func (b *Broker) Now() time.Time { return b.clock.Now() }
