// Package backends defines what valet needs from a credential backend: mint
// a credential that expires on its own, and revoke it by handle. Optional
// capabilities (renewal, keys for resource servers) are separate one-method
// interfaces that a backend implements only if it can.
package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/valet-broker/valet/leases/clock"
)

// Backend mints and revokes credentials.
type Backend interface {
	// Mint issues a credential for req. The credential must expire on its own
	// no later than req.ExpiresAt (invariant 2; for a FixedLifetime backend,
	// no later than its fixed lifetime from now) and must carry
	// req.CorrelationID wherever the backend can store it, so an orphan left
	// by a crash can be found. Errors wrap ErrUnavailable when the backend
	// cannot be reached (the broker answers 503); an *Error says what the
	// client must change (see the error kinds in errors.go).
	Mint(ctx context.Context, req MintRequest) (*Credential, error)
	// Revoke ends a credential. ref.Handle is empty when the lease was
	// recovered from a crash before the backend answered; the backend then
	// revokes by ref.CorrelationID if it can, or returns nil if nothing can
	// have been issued. Revoking an already revoked or expired credential
	// returns nil. A backend whose service cannot revoke the credential at
	// all returns an error wrapping ErrUnrevocable.
	Revoke(ctx context.Context, ref Ref) error
}

// ErrUnrevocable, wrapped in Revoke's error with the reason, says that the
// service offers no way to end the credential before its own expiry (a
// Google service-account access token lives until its expireTime): it
// stays valid until then (Ref.ValidUntil), whatever valet does. valet does
// not retry such a revocation. It records that the revocation is
// impossible, and the lease reads revoking, to end expired, until the
// credential's expiry has passed: never released or revoked (see
// leases.ErrUnrevocable).
var ErrUnrevocable = errors.New("the backend cannot revoke the credential")

// Renewer is implemented by backends whose credentials can be extended.
type Renewer interface {
	// Renew extends the credential to expire no later than expiresAt.
	Renew(ctx context.Context, ref Ref, req MintRequest) (*Renewal, error)
}

// Renewal is the outcome of a renewal.
type Renewal struct {
	// ExpiresAt is the credential's new expiry, at most the requested one.
	ExpiresAt time.Time
	// Data, when set, is a reissued credential that replaces the old one
	// (self-contained tokens cannot be extended in place).
	Data map[string]any
}

// SelfContained is implemented by backends whose Mint has no effect outside
// valet: it only computes a credential (a locally signed token). A crash
// between such a mint and the lease commit loses a credential nobody
// received, so valet records the lease once, as active, instead of writing
// a pending intent first. Backends that create anything elsewhere must not
// implement it.
type SelfContained interface {
	SelfContained()
}

// ExpiryRevoker is implemented by backends whose credentials their holders
// can extend (a renewable Vault token renews itself), up to the lease's
// maximum: valet revokes such a credential when its lease expires instead
// of assuming it died on its own, and, whatever ended the lease, keeps
// retrying an unconfirmed revocation until the lease's maximum has passed.
type ExpiryRevoker interface {
	RevokeAtExpiry()
}

// FixedLifetime is implemented by backends whose credentials live a fixed
// time at the backend that valet cannot shorten to the lease's (a GitHub
// installation token lives one hour). Such a credential can outlive its
// lease, so valet keeps invariant 2 by revoking it: it records with the
// pending lease the latest time the credential can be valid (the mint
// timeout plus CredentialLifetime after the intent), accepts a credential
// that expires after its lease but not after that time, revokes it when
// the lease ends however it ends (its expiry too), and keeps the lease
// revoking or irrevocable, never ended, until the backend has confirmed
// the revocation or that time has passed (leases.BoltStore.ValidUntil).
// A credential that cannot be revoked at all (ErrUnrevocable: a Google ID
// token's hour) is bounded the same way: its lease reads revoking until
// that time.
type FixedLifetime interface {
	// CredentialLifetime is the longest a credential of role minted for a
	// lease of ttl lives at the backend unless it is revoked, counted from
	// when the backend issues it.
	CredentialLifetime(role RoleSpec, ttl time.Duration) time.Duration
}

// RevokeNoter is implemented by backends whose revocation may have to do
// more than end the one credential, and say so: valet puts the note in the
// audit record of the revocation.
type RevokeNoter interface {
	// RevokeNoted is Revoke that also returns a note for the revocation's
	// audit record ("" when there is nothing to add), e.g. that other
	// credentials were ended with this one.
	RevokeNoted(ctx context.Context, ref Ref) (note string, err error)
}

// RoleChecker is implemented by backends with role parameters; valet calls
// it at start-up so a bad role fails the config, not a mint.
type RoleChecker interface {
	CheckRole(role RoleSpec) error
}

// ScopeChecker is implemented by backends that understand a client's scope
// request (a narrowing of the role, e.g. fewer scopes or audiences). The
// broker asks before it records a lease, so a scope the backend would refuse
// leaves nothing behind; a scope for a backend without it is refused.
type ScopeChecker interface {
	// CheckScope returns an error whose message says what is wrong with
	// scope (an *Error of kind ErrInvalid) if Mint would refuse it.
	CheckScope(role RoleSpec, scope map[string]any) error
}

// ScopeStrings reads a list of strings from a scope value (decoded JSON: a
// []any of strings); ok is false for anything else.
func ScopeStrings(v any) (list []string, ok bool) {
	arr, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(arr))
	for _, x := range arr {
		s, ok := x.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// MintRequest is everything a backend may use to mint.
type MintRequest struct {
	// CorrelationID is the lease id; it is also the JWT id for the jwt
	// backend.
	CorrelationID string
	AgentID       string
	Role          RoleSpec
	// Attributes are the principal's mapped attributes, for templating.
	Attributes map[string]string
	IssuedAt   time.Time
	ExpiresAt  time.Time
	// MaxExpiresAt is how far renewals may take the credential (the lease's
	// max); zero when the lease is not renewable. A backend may let the
	// credential's own maximum reach it, never pass it.
	MaxExpiresAt time.Time
	// Scope is the client's requested narrowing (optional, backend-defined).
	Scope map[string]any
}

// RoleSpec is the part of a role a backend sees.
type RoleSpec struct {
	Name     string
	Audience []string
	Scopes   []string
	Params   map[string]any
	// TTL and MaxTTL are the role's; Renewable says whether its leases
	// may be renewed.
	TTL, MaxTTL time.Duration
	Renewable   bool
}

// Credential is what a backend issued.
type Credential struct {
	// Handle revokes the credential later; it is stored, so it must not be
	// the secret (an accessor, a lease id, a JWT id).
	Handle string
	// Data is returned to the agent once and never stored or logged.
	Data map[string]any
	// ExpiresAt is the credential's own expiry at the backend.
	ExpiresAt time.Time
	// Details are non-secret facts operators may see (e.g. a Vault TTL).
	Details map[string]string
}

// Ref identifies an issued credential.
type Ref struct {
	Handle        string
	CorrelationID string
	AgentID       string
	Role          string
	ExpiresAt     time.Time
	// ValidUntil is the latest time the credential can be valid at the
	// backend if it is never revoked (leases.BoltStore.ValidUntil): the
	// lease's expiry, its maximum for a credential its holder can extend,
	// or the credential's own later expiry (FixedLifetime).
	ValidUntil time.Time
	// EndedAt is when the lease ended. A backend that searches for the
	// credential of an interrupted mint by CorrelationID must search state
	// read after this moment, so that it sees whatever the mint created.
	EndedAt time.Time
	// Details are the non-secret facts the backend returned at mint.
	Details map[string]string
}

// Deps are the shared services a backend constructor may use.
type Deps struct {
	// DataDir is valet's data directory; a backend may keep files under
	// DataDir/<backend name>/.
	DataDir string
	// ConfigDir is the directory of the config file; relative paths in
	// backend options are relative to it.
	ConfigDir string
	// KEK encrypts keys at rest (AES-256).
	KEK []byte
	// PreviousKEK, set only while valet switches to a new KEK, still
	// opens what it sealed; nothing is sealed under it (see
	// KEKRewrapper and kek.Ring).
	PreviousKEK []byte
	// PublicURL is valet's public URL, the iss of valet-minted tokens.
	PublicURL string
	Clock     clock.Clock
	Logger    *slog.Logger
}

// Factory builds a backend from its name, its options (decoded strictly by
// the backend) and the shared dependencies.
type Factory func(name string, options map[string]any, deps Deps) (Backend, error)

// Registry maps backend types to factories. It is built explicitly in one
// place (backends/builtin); nothing registers itself.
type Registry map[string]Factory

// New builds a backend of the given type.
func (r Registry) New(typ, name string, options map[string]any, deps Deps) (Backend, error) {
	f, ok := r[typ]
	if !ok {
		return nil, fmt.Errorf("unknown backend type %q (known: %v)", typ, r.Types())
	}
	return f(name, options, deps)
}

// Types lists the registered types in order.
func (r Registry) Types() []string {
	var out []string
	for t := range r {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// KeyPublisher is implemented by backends that sign tokens; valet serves
// their public keys at /.well-known/jwks.json.
type KeyPublisher interface {
	// PublicJWKs returns the public keys (current and still-valid previous
	// ones) as JSON Web Keys.
	PublicJWKs() []map[string]any
}

// Introspector is implemented by backends that issue self-contained tokens,
// so /v1/introspect can tell whether a token is theirs.
type Introspector interface {
	// Introspect verifies the token's signature and issuer and returns its
	// claims; the lease id is Claims["jti"]. It returns an error for a token
	// it did not issue or cannot verify.
	Introspect(token string) (*TokenInfo, error)
}

// TokenInfo is a verified token's content.
type TokenInfo struct {
	LeaseID string
	Claims  map[string]any
}

// KeyRotator is implemented by backends that sign with keys of their own
// (the jwt backend); the signing-key rotation job calls it.
type KeyRotator interface {
	// RotateKey generates a new signing key at now and publishes it at
	// once (KeyPublisher), but signs with it only from activateAt (and
	// not before a key published earlier starts signing), so that a
	// resource server caching the published keys for less than
	// activateAt-now holds the new key before it sees a token signed with
	// it. A key that stopped signing stays published for the backend's
	// retention, then a rotation drops it. It returns what changed, never
	// key material.
	RotateKey(now, activateAt time.Time) (KeyRotation, error)
}

// KeyRotation is what a key rotation changed.
type KeyRotation struct {
	// KeyID is the new key's id (kid); it signs from ActiveFrom.
	KeyID      string
	ActiveFrom time.Time
	// Dropped are the ids of keys no longer published.
	Dropped []string
	// Published are the ids of the published keys, newest first.
	Published []string
}
