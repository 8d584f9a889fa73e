package leases

import (
	"context"
	"errors"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// Errors returned by stores.
var (
	// ErrNotFound: no lease has this id.
	ErrNotFound = errors.New("lease not found")
	// ErrState: the lease is not in a state that allows the operation (for
	// example renewing a released lease). Wrapped with details.
	ErrState = errors.New("lease is not in a state that allows this")
)

// Activation is what a backend returned for a pending lease: everything
// valet keeps about the credential, never the credential itself.
type Activation struct {
	Handle  string
	Details map[string]string
}

// Filter selects leases for List. Empty fields match everything.
type Filter struct {
	AgentID string
	Role    string
	Backend string
	State   State
	// Lineage is one of Lineage.IDs(), e.g. "pod:<uid>".
	Lineage string
	// Before is a lease id cursor: only leases created before it (ids are
	// time-ordered). Use the last id of a page to get the next page.
	Before string
	// Limit caps the result (default 100, at most 1000).
	Limit int
}

// Store is durable lease storage as the broker uses it. Every method that
// changes a lease writes the given audit entry in the same transaction.
type Store interface {
	// CreatePending durably records the intent to mint l (its State must be
	// StatePending) before the backend is called. It returns only after the
	// record is on disk.
	CreatePending(ctx context.Context, l *Lease) error
	// CreateActive records a lease minted without side effects outside
	// valet directly as active, with its audit record, in one transaction.
	CreateActive(ctx context.Context, l *Lease, now time.Time, e audit.Entry) error
	// Activate turns a pending lease active with its backend handle. It
	// returns ErrNotFound, or ErrState if the lease is no longer pending
	// (for example recovery revoked it meanwhile).
	Activate(ctx context.Context, id string, a Activation, now time.Time, e audit.Entry) (*Lease, error)
	// Get returns a lease or ErrNotFound.
	Get(ctx context.Context, id string) (*Lease, error)
	// List returns leases matching f, newest first.
	List(ctx context.Context, f Filter) ([]*Lease, error)
	// Renew moves an active lease's expiry. It returns ErrState if the lease
	// is not active or already past its expiry at now.
	Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*Lease, error)
	// Abandon ends a pending lease whose mint failed: it becomes revoking
	// (reason revoked), keeps the backend's handle if there was one, and is
	// queued for revocation. A lease that is no longer pending is returned
	// unchanged.
	Abandon(ctx context.Context, id, handle string, now time.Time, e audit.Entry) (*Lease, error)
	// End ends a pending or active lease for reason (StateReleased,
	// StateRevoked or StateExpired): the lease becomes revoking and is queued
	// for revocation at its backend at once. Ending a lease that is already
	// ending or ended returns it unchanged (revoking twice is harmless).
	End(ctx context.Context, id string, reason State, now time.Time, e audit.Entry) (*Lease, error)
}

// Auditor appends audit records that are not part of a lease change (a
// denied mint, a policy reload).
type Auditor interface {
	Audit(ctx context.Context, now time.Time, e ...audit.Entry) error
}

// ExpiryGrace is how long after a lease's expiry valet treats its credential
// as dead at the backend even if revocation was never confirmed. It covers
// clock differences between valet and its backends.
const ExpiryGrace = time.Minute
