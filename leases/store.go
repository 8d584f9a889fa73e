package leases

import (
	"errors"
	"slices"
	"time"
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
	// CredentialExpires is the credential's own expiry at the backend when
	// it is after the lease's (see Lease.CredentialExpires); zero when the
	// credential expires with its lease.
	CredentialExpires time.Time
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

// Matches reports whether l has every field f sets (agent, role, backend,
// state, one of its lineage ids); Before and Limit are the caller's. The
// storage engines check it on each lease an index walk yields, so a
// listing or a mass revocation never trusts an index entry alone.
func (f Filter) Matches(l *Lease) bool {
	return (f.AgentID == "" || l.AgentID == f.AgentID) && (f.Role == "" || l.Role == f.Role) &&
		(f.Backend == "" || l.Backend == f.Backend) && (f.State == "" || l.State == f.State) &&
		(f.Lineage == "" || slices.Contains(l.Lineage.IDs(), f.Lineage))
}

// ExpiryGrace is how long after a lease's expiry valet treats its credential
// as dead at the backend even if revocation was never confirmed. It covers
// clock differences between valet and its backends.
const ExpiryGrace = time.Minute
