// Package broker is valet's domain: the flows that turn a verified
// attestation into a short-lived credential (mint), put elevated roles
// behind operator approval (approve, redeem), extend a credential (renew)
// and end it (release, revoke), with the policy checks, lease records and
// audit records each step needs. Transport (HTTP), storage (leases) and the
// credential backends are plugged in through small interfaces.
//
// Each flow has its own file: mint.go, approve.go, redeem.go, renew.go,
// revoke.go and introspect.go; listing.go holds the reads. This file holds
// the Broker itself and what every flow shares: authentication of the
// caller, refusals and audit records.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// Revoker revokes ended leases at their backends (leases.RevocationQueue).
type Revoker interface {
	// RevokeNow makes the first attempt at once and returns the lease as it
	// is afterwards; failures stay queued for retries.
	RevokeNow(ctx context.Context, l *leases.Lease) (*leases.Lease, error)
	// Kick wakes the queue so that leases just ended are attempted now,
	// in parallel and bounded (leases.revoke_concurrency), rather than at
	// its next scheduled attempt.
	Kick()
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
	// Signaled is called once per accepted signal with its source's kind
	// (agents.SourceREST, SourceSET, SourceDetector, SourceOperator) and
	// the action taken.
	Signaled(sourceKind string, action agents.Action)
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
	// Replay is the attestation replay cache, which Run purges of
	// expired entries (optional).
	Replay ReplayPurger
	// Agents and Signals keep agent records and signals (broker/bolt's
	// Store is both). Without them every agent has risk 0, none is
	// quarantined, and signals are refused as unavailable.
	Agents  AgentStore
	Signals SignalStore
	// Detectors are valet's own detectors: each sees what the flows
	// observe and raises signals (optional).
	Detectors []Detector
	// KeyPublishers are the other keys valet signs with (the SSF
	// transmitter's), published beside the backends' in its JWKS.
	KeyPublishers []backends.KeyPublisher
	// SETs verifies the Security Event Tokens SSF transmitters push
	// (nil: every SET is refused).
	SETs SETVerifier
	// IssuerNames maps the iss of each trusted attestation issuer to its
	// configured name, so that an iss_sub subject identifier (RFC 9493)
	// names an agent.
	IssuerNames map[string]string
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
	replay   ReplayPurger

	agents      AgentStore
	signals     SignalStore
	detectors   []Detector
	detections  chan detection
	sightings   sightings
	publishers  []backends.KeyPublisher
	containMu   sync.Mutex
	containing  map[string]bool // signals whose containment runs in this process
	sets        SETVerifier
	issuerNames map[string]string
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
		roles: map[string]*Role{}, grants: o.Grants, notifier: o.Notifier, replay: o.Replay,
		agents: o.Agents, signals: o.Signals, detectors: o.Detectors, publishers: o.KeyPublishers, sets: o.SETs, issuerNames: o.IssuerNames,
		detections: make(chan detection, detectionQueue),
	}
	if (o.Agents == nil) != (o.Signals == nil) {
		return nil, errors.New("broker: Agents and Signals go together: give both or neither")
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
		var replay *ReplayedAttestation
		if len(b.detectors) > 0 && errors.As(err, &replay) {
			b.observe(Observation{Kind: ObserveReplay, Time: b.clock.Now(), AgentID: replay.AgentID, Lineage: replay.Lineage,
				SourceIP: a.sourceIP})
		}
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
	if b.agents != nil {
		b.sightings.add(p.ID, "", b.clock.Now())
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
	if len(b.detectors) > 0 {
		b.observe(Observation{Kind: ObserveDenied, Time: b.clock.Now(), AgentID: p.ID, Role: role, Lineage: p.Lineage, Reason: reason})
	}
}

func (b *Broker) audit(ctx context.Context, e audit.Entry) {
	if err := b.auditor.Audit(context.WithoutCancel(ctx), b.clock.Now(), e); err != nil {
		b.log.Error("audit write failed", "kind", e.Kind, "err", err)
	}
}

func agentActor(p *Principal) audit.Actor { return audit.Actor{Type: audit.ActorAgent, ID: p.ID} }

// storeError turns a store failure into a client error. The store's error
// text is for the log; where a flow knows more about a refusal (the
// lease it concerns, what changed), it says so itself.
func storeError(err error) error {
	var coded *Error
	switch {
	case errors.As(err, &coded):
		// The store refused with a client error of its own (a replicated
		// store finding the agent quarantined by another replica).
		return err
	case errors.Is(err, leases.ErrNotFound):
		return Wrap(ENOTFOUND, err, "lease not found")
	case errors.Is(err, leases.ErrState):
		return Wrap(ECONFLICT, err, "the lease changed state while this request was handled; read it again")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Wrap(EUNAVAILABLE, err, "the request was cancelled before the lease store answered")
	default:
		return Wrap(EINTERNAL, err, "lease store failure")
	}
}

// Now is the broker's clock reading.
func (b *Broker) Now() time.Time { return b.clock.Now() }
