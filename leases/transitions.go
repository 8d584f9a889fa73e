package leases

import (
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the lease's state changes as the domain defines them. A
// storage engine loads a lease, applies one of them and stores the result
// with its audit record in one transaction (compare-and-swap on the stored
// lease), so every engine enforces the same rules.

// ErrUnchanged, returned by a state change, means the lease is already
// past what the change would do: the engine stores nothing, writes no
// audit record, and returns the lease as it is, without an error.
var ErrUnchanged = errors.New("unchanged")

// Activate turns a pending lease active with its backend handle. It returns
// ErrState (wrapped) if the lease is no longer pending.
func (l *Lease) Activate(a Activation) error {
	if l.State != StatePending {
		return fmt.Errorf("%w: lease %s is %s, not pending", ErrState, l.ID, l.State)
	}
	l.State = StateActive
	l.Handle = a.Handle
	l.Details = a.Details
	l.CredentialExpires = a.CredentialExpires
	return nil
}

// Renew moves an active lease's expiry to expiresAt. It returns ErrState
// (wrapped) if the lease is not active at now.
func (l *Lease) Renew(now, expiresAt time.Time) error {
	if !l.ActiveAt(now) {
		return fmt.Errorf("%w: lease %s is %s", ErrState, l.ID, l.StateAt(now))
	}
	l.ExpiresAt = expiresAt
	l.RenewCount++
	return nil
}

// End ends a pending or active lease for reason at now: it becomes revoking
// and due for revocation at once. ErrUnchanged for a lease already ending
// or ended.
func (l *Lease) End(reason State, now time.Time) error {
	if l.State != StatePending && l.State != StateActive {
		return ErrUnchanged
	}
	l.State = StateRevoking
	l.EndReason = reason
	l.EndedAt = now
	l.NextAttempt = now
	return nil
}

// Abandon ends a pending lease whose mint failed: it becomes revoking
// (reason revoked) with the backend's handle, if there was one.
// ErrUnchanged for a lease that is no longer pending.
func (l *Lease) Abandon(handle string, now time.Time) error {
	if l.State != StatePending {
		return ErrUnchanged
	}
	l.State = StateRevoking
	l.EndReason = StateRevoked
	l.Handle = handle
	l.EndedAt = now
	l.NextAttempt = now
	return nil
}

// Recover ends a pending lease left by an interrupted mint (at start-up):
// it becomes revoking (reason revoked) so its credential, if any, is
// revoked by correlation id.
func (l *Lease) Recover(now time.Time) {
	l.State = StateRevoking
	l.EndReason = StateRevoked
	l.EndedAt = now
	l.NextAttempt = now
}

// Expire ends an active lease whose expiry has passed. It becomes expired,
// or revoking with end reason expired when its credential may outlive it:
// revokeAtExpiry (its holder can extend the credential at the backend), or
// a credential that lives a fixed time past its lease (CredentialExpires
// after now). It returns the reason for the audit record.
func (l *Lease) Expire(now time.Time, revokeAtExpiry bool) (reason string) {
	l.State = StateExpired
	l.EndedAt = now
	if revokeAtExpiry || l.CredentialExpires.After(now) {
		l.State, l.EndReason, l.NextAttempt = StateRevoking, StateExpired, now
		return "ttl elapsed; revoking at the backend"
	}
	return "ttl elapsed"
}

// RevocationDone records that the backend revoked the credential (or that
// it expired on its own, when final is StateExpired). ErrUnchanged for a
// lease that is not revoking or irrevocable.
func (l *Lease) RevocationDone(final State) error {
	if l.State != StateRevoking && l.State != StateIrrevocable {
		return ErrUnchanged
	}
	l.State = final
	l.EndReason = ""
	l.NextAttempt = time.Time{}
	l.LastError = ""
	return nil
}

// RevocationFailed records a failed attempt and when to try next; the
// lease becomes (or stays) irrevocable when irrevocable is true.
// ErrUnchanged for a lease that is not revoking or irrevocable.
func (l *Lease) RevocationFailed(cause string, next time.Time, irrevocable bool) error {
	if l.State != StateRevoking && l.State != StateIrrevocable {
		return ErrUnchanged
	}
	l.RevokeAttempts++
	l.LastError = cause
	l.NextAttempt = next
	if irrevocable {
		l.State = StateIrrevocable
	}
	return nil
}

// RevocationImpossible records that the backend cannot revoke the
// credential at all (cause says why): the lease stays revoking (or
// irrevocable), is marked Unrevocable, and will end expired, not released
// or revoked; its next attempt is at until, when the credential has
// expired at the backend (ValidUntil plus ExpiryGrace), and the queue then
// records it expired without calling the backend. ErrUnchanged for a lease
// that is not revoking or irrevocable.
func (l *Lease) RevocationImpossible(cause string, until time.Time) error {
	if l.State != StateRevoking && l.State != StateIrrevocable {
		return ErrUnchanged
	}
	l.RevokeAttempts++
	l.Unrevocable = true
	l.EndReason = StateExpired
	l.LastError = cause
	l.NextAttempt = until
	return nil
}

// ValidUntil is the latest time l's credential can still be valid at its
// backend if it is never revoked, whatever ended the lease: for a renewable
// lease whose holder can extend the credential itself (holderExtends: a
// renewable Vault token renews itself), the lease's maximum, where the
// backend caps extensions; for any other credential (a self-contained
// token's exp, an external credential's own TTL) the lease's expiry as last
// renewed; and in either case no earlier than the credential's own expiry
// when it outlives its lease (CredentialExpires). Every backend mints with
// its own expiry no later than these (invariant 2). The revocation queue
// keeps retrying an unconfirmed revocation until ValidUntil plus
// ExpiryGrace.
func (l *Lease) ValidUntil(holderExtends bool) time.Time {
	v := l.ExpiresAt
	if l.Renewable && l.MaxExpires.After(l.ExpiresAt) && holderExtends {
		v = l.MaxExpires
	}
	if l.CredentialExpires.After(v) {
		v = l.CredentialExpires
	}
	return v
}

// Recorded fills the subject of an audit entry about l (its lease, agent
// and role) where the entry leaves it empty.
func (l *Lease) Recorded(e audit.Entry) audit.Entry {
	if e.LeaseID == "" {
		e.LeaseID = l.ID
	}
	if e.AgentID == "" {
		e.AgentID = l.AgentID
	}
	if e.Role == "" {
		e.Role = l.Role
	}
	return e
}
