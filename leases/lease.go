// Package leases tracks every credential valet hands out as a lease: a durable
// record of who holds what until when, expired by a scheduler (Expirer) and
// revoked through a durable queue (RevocationQueue). It holds the lease
// domain (the Lease, its states and their changes) and states what the
// background duties need from storage (RevocationStore, ExpiryStore); a
// storage engine (broker/bolt) implements it.
package leases

import (
	"time"
)

// State is where a lease is in its life.
//
//	pending ──► active ──► revoking ──► released | revoked
//	   │           │          │
//	   │           └──────────┴──────► expired   (its expiry passed: the
//	   │                      │                   credential died on its own,
//	   │                      │                   or could not be revoked)
//	   └──► revoking          └──► irrevocable ──► revoked | expired
type State string

// Lease states.
const (
	// StatePending: valet intends to mint; the backend may or may not have
	// issued a credential yet. Recovered (revoked by correlation id) on start.
	StatePending State = "pending"
	// StateActive: the credential was handed out and is valid.
	StateActive State = "active"
	// StateRevoking: the lease has ended (see EndReason) and revocation at
	// the backend is queued or being retried; or, for a credential its
	// backend cannot revoke (Lease.Unrevocable), the credential is still
	// valid and the lease waits for its expiry, to end expired.
	StateRevoking State = "revoking"
	// StateIrrevocable: revocation failed after the configured attempts; it
	// is still retried until the latest time the credential can be valid
	// at its backend has passed (Lease.ValidUntil plus ExpiryGrace),
	// for whatever reason the lease ended.
	StateIrrevocable State = "irrevocable"
	// Terminal states.
	StateReleased State = "released" // the agent gave it back
	StateRevoked  State = "revoked"  // an operator, a signal or recovery revoked it
	StateExpired  State = "expired"  // its TTL ran out
)

// Terminal reports whether the lease's life is over.
func (s State) Terminal() bool {
	return s == StateReleased || s == StateRevoked || s == StateExpired
}

// Live reports whether the credential may still be usable at its backend.
func (s State) Live() bool { return !s.Terminal() }

// Lineage identifies the attestation a lease was derived from.
type Lineage struct {
	Issuer   string `json:"issuer,omitempty"`    // the attestation's iss
	JTI      string `json:"jti,omitempty"`       // the attestation's jti
	PodUID   string `json:"pod_uid,omitempty"`   // Kubernetes pod UID
	RunID    string `json:"run_id,omitempty"`    // GitHub Actions run_id
	SPIFFEID string `json:"spiffe_id,omitempty"` // SPIFFE ID
}

// IDs returns the lineage ids that index the lease, each prefixed with its
// kind ("jti:", "pod:", "run:", "spiffe:"), so "revoke everything derived from
// this attestation / pod / run" is one index scan.
func (l Lineage) IDs() []string {
	var ids []string
	if l.JTI != "" {
		ids = append(ids, "jti:"+l.Issuer+"#"+l.JTI)
	}
	if l.PodUID != "" {
		ids = append(ids, "pod:"+l.PodUID)
	}
	if l.RunID != "" {
		ids = append(ids, "run:"+l.Issuer+"#"+l.RunID)
	}
	if l.SPIFFEID != "" {
		ids = append(ids, "spiffe:"+l.SPIFFEID)
	}
	return ids
}

// Lease is one credential's record. It never holds the credential itself:
// Handle is what the backend needs to revoke it (an accessor, a lease id, a
// session name, a JWT id).
type Lease struct {
	ID         string            `json:"id"`
	AgentID    string            `json:"agent_id"`
	Role       string            `json:"role"`
	Backend    string            `json:"backend"`
	Handle     string            `json:"handle,omitempty"`
	Details    map[string]string `json:"details,omitempty"` // non-secret backend facts for operators
	State      State             `json:"state"`
	EndReason  State             `json:"end_reason,omitempty"` // while revoking: the terminal state it will reach
	CreatedAt  time.Time         `json:"created_at"`
	ExpiresAt  time.Time         `json:"expires_at"`
	EndedAt    time.Time         `json:"ended_at,omitzero"`
	RenewCount int               `json:"renew_count"`
	Renewable  bool              `json:"renewable"`
	MaxExpires time.Time         `json:"max_expires_at,omitzero"` // renewals stop here
	GrantID    string            `json:"grant_id,omitempty"`
	Approvers  []string          `json:"approvers,omitempty"`
	Lineage    Lineage           `json:"lineage"`
	RequestID  string            `json:"request_id,omitempty"`
	// Scope is the client's narrowing of the role (never a secret); it is
	// applied again when the lease is renewed.
	Scope map[string]any `json:"scope,omitempty"`
	// CredentialExpires is the latest time the credential can be valid at
	// its backend when that is after ExpiresAt (a backend whose credentials
	// live a fixed time, such as GitHub's one-hour installation tokens);
	// zero otherwise. A pending lease holds a bound set before the backend
	// was called, an active one the credential's own expiry. Such a lease
	// is revoked at its backend when it expires, and ValidUntil counts
	// this time.
	CredentialExpires time.Time `json:"credential_expires_at,omitzero"`

	// Unrevocable is set when the backend answered that it cannot revoke
	// the credential at all (ErrUnrevocable): the lease stays revoking, with
	// end reason expired, until the latest time the credential can be valid
	// (ValidUntil) plus ExpiryGrace, and is not retried meanwhile.
	Unrevocable bool `json:"unrevocable,omitempty"`

	// Revocation bookkeeping.
	RevokeAttempts int       `json:"revoke_attempts,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	NextAttempt    time.Time `json:"next_attempt,omitzero"`
}

// StateAt is the lease's state as clients should see it at t: an active
// lease at or past its expiry is expired even before the expirer records it,
// or revoking when its credential outlives it (CredentialExpires after t):
// the expirer queues its revocation, and until that is confirmed the
// credential may still work. Lists filter on this state and show it, at
// the same t.
func (l *Lease) StateAt(t time.Time) State {
	if l.State == StateActive && !t.Before(l.ExpiresAt) {
		if l.CredentialExpires.After(t) {
			return StateRevoking
		}
		return StateExpired
	}
	return l.State
}

// ActiveAt reports whether the lease's credential is valid at t: the lease is
// active and not past its expiry. Introspection answers with this.
func (l *Lease) ActiveAt(t time.Time) bool {
	return l.State == StateActive && t.Before(l.ExpiresAt)
}
