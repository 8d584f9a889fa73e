// Package grants holds elevated-access requests: a grant binds one exact
// request (agent, role, scope, TTL, reason, attestation lineage) and
// collects operator approvals until it can be redeemed, once, by the agent
// that asked. Break-glass grants mint at once and wait for an operator's
// review after the fact. A storage engine keeps them (broker.GrantStore),
// writing every change with its audit record in one transaction.
package grants

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases"
)

// State is where a grant is.
//
//	pending ──► approved ──► redeemed
//	   │           │
//	   ├──► denied └──► expired (not redeemed in time)
//	   └──► expired (not approved in time)
//
// Break-glass grants start redeemed, with a review pending.
type State string

// Grant states.
const (
	StatePending  State = "pending"
	StateApproved State = "approved"
	StateDenied   State = "denied"
	StateExpired  State = "expired"
	StateRedeemed State = "redeemed"
)

// Terminal reports whether nothing more can happen to the grant (a
// break-glass review aside).
func (s State) Terminal() bool {
	return s == StateDenied || s == StateExpired || s == StateRedeemed
}

// Kinds of grant.
const (
	KindApproval   = "approval"
	KindBreakGlass = "break_glass"
)

// Decision is one operator's approval, denial or review.
type Decision struct {
	Operator string    `json:"operator"`
	At       time.Time `json:"at"`
	Comment  string    `json:"comment,omitempty"`
	// Method is how the operator authenticated ("token", "sso:<issuer>",
	// "console").
	Method string `json:"method,omitempty"`
}

// Grant is one elevated-access request.
type Grant struct {
	ID      string         `json:"id"`
	Kind    string         `json:"kind"`
	AgentID string         `json:"agent_id"`
	Role    string         `json:"role"`
	TTL     time.Duration  `json:"-"` // JSON: "ttl" (duration string) and "ttl_seconds"
	Scope   map[string]any `json:"scope,omitempty"`
	Reason  string         `json:"reason"`
	Lineage leases.Lineage `json:"lineage"`
	// Requester lists the identities behind the request (the agent id and
	// owner claims such as email or a CI actor); none of them may approve.
	Requester []string `json:"requester"`
	// Binding is the hash of the exact request, checked at redeem.
	Binding string `json:"binding"`

	State     State      `json:"state"`
	Required  int        `json:"required"`
	Approvals []Decision `json:"approvals,omitempty"`
	Denial    *Decision  `json:"denial,omitempty"`
	Review    *Decision  `json:"review,omitempty"`

	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"` // a pending grant expires then
	ApprovedAt time.Time `json:"approved_at,omitzero"`
	RedeemBy   time.Time `json:"redeem_by,omitzero"` // an approved grant expires then
	EndedAt    time.Time `json:"ended_at,omitzero"`
	LeaseID    string    `json:"lease_id,omitempty"`

	PolicyVersion string `json:"policy_version,omitempty"`
	RequestID     string `json:"request_id,omitempty"`
}

// MarshalJSON writes TTL readably ("ttl": "15m0s", "ttl_seconds": 900)
// instead of as nanoseconds.
func (g Grant) MarshalJSON() ([]byte, error) {
	type plain Grant
	return json.Marshal(struct {
		plain
		TTL        string  `json:"ttl"`
		TTLSeconds float64 `json:"ttl_seconds"`
	}{plain(g), g.TTL.String(), g.TTL.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (g *Grant) UnmarshalJSON(b []byte) error {
	type plain Grant
	var v struct {
		plain
		TTL string `json:"ttl"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*g = Grant(v.plain)
	if v.TTL != "" {
		d, err := time.ParseDuration(v.TTL)
		if err != nil {
			return fmt.Errorf("grant ttl: %w", err)
		}
		g.TTL = d
	}
	return nil
}

// Approvers returns the names of the operators who approved.
func (g *Grant) Approvers() []string {
	out := make([]string, 0, len(g.Approvals))
	for _, a := range g.Approvals {
		out = append(out, a.Operator)
	}
	return out
}

// StateAt is the grant's state as clients should see it at now: a pending
// or approved grant past its deadline is expired even before the sweeper
// records it.
func (g *Grant) StateAt(now time.Time) State {
	switch {
	case g.State == StatePending && !now.Before(g.ExpiresAt):
		return StateExpired
	case g.State == StateApproved && !now.Before(g.RedeemBy):
		return StateExpired
	}
	return g.State
}

// IsRequester reports whether name is one of the identities behind the
// request (compared as identity.Equal does), who must not approve or
// review it.
func (g *Grant) IsRequester(name string) bool {
	return identity.Contains(g.Requester, name)
}

// HasApproved reports whether name approved the grant already (compared
// as identity.Equal does).
func (g *Grant) HasApproved(name string) bool {
	return identity.Contains(g.Approvers(), name)
}

// Request is what a grant binds.
type Request struct {
	AgentID string
	Role    string
	TTL     time.Duration
	Scope   map[string]any
	Reason  string
	Lineage leases.Lineage
}

// Binding hashes a request canonically: any change to agent, role, scope,
// TTL (to the nanosecond: redeem mints for exactly that TTL), reason or
// lineage changes it.
func Binding(r Request) string {
	b, _ := json.Marshal(struct {
		AgentID string `json:"agent_id"`
		Role    string `json:"role"`
		TTL     int64  `json:"ttl_ms"`
		// The rest of the TTL below a millisecond; omitted when 0, so a
		// whole-millisecond TTL hashes as it did before this field.
		TTLSubMS int64          `json:"ttl_ns_below_ms,omitempty"`
		Scope    map[string]any `json:"scope"`
		Reason   string         `json:"reason"`
		Lineage  leases.Lineage `json:"lineage"`
	}{r.AgentID, r.Role, r.TTL.Milliseconds(), int64(r.TTL % time.Millisecond), r.Scope, r.Reason, r.Lineage})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Errors.
var (
	ErrNotFound = errors.New("grant not found")
	// ErrState: the grant is not in a state that allows this. Wrapped with
	// the reason.
	ErrState = errors.New("grant is not in a state that allows this")
)

// Refusal is a change the store refused because of the grant's state, its
// binding or who asked. errors.Is(err, Kind) holds; Kind is ErrState,
// ErrSelfApproval, ErrTampered or ErrNotFound.
type Refusal struct {
	Kind error
	// Reason says why, for the client: it names only the grant, its state
	// and the operators involved.
	Reason string
}

// Error is the kind and the reason.
func (r *Refusal) Error() string { return r.Kind.Error() + ": " + r.Reason }

// Unwrap returns the kind.
func (r *Refusal) Unwrap() error { return r.Kind }

func refuse(kind error, format string, args ...any) error {
	return &Refusal{Kind: kind, Reason: fmt.Sprintf(format, args...)}
}

// Filter selects grants.
type Filter struct {
	State   State
	AgentID string
	Role    string
	Kind    string
	// ReviewPending selects break-glass grants not yet reviewed.
	ReviewPending bool
	Before        string // grant id cursor; ids are time-ordered
	Limit         int    // default 100, at most 1000
}
