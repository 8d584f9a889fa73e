package broker

import (
	"context"
	"time"
)

// Action is what a principal asks to do with a role.
type Action string

// Actions that policies can name as Action::"<name>".
const (
	ActionMint  Action = "mint"
	ActionRenew Action = "renew"
	// ActionRedeem is asked when an agent redeems an approved grant, with
	// context.approvals set to the number of distinct approvers.
	ActionRedeem Action = "redeem"
	// ActionBreakGlass is asked for emergency access without approval.
	ActionBreakGlass Action = "break_glass"
)

// AuthzRequest is one question to the policy engine.
type AuthzRequest struct {
	Principal *Principal
	Action    Action
	Role      *Role
	Context   AuthzContext
}

// AuthzContext is the request context policies see as context.*.
type AuthzContext struct {
	TTL       time.Duration // context.ttl_seconds
	Reason    string        // context.reason
	SourceIP  string        // context.source_ip (ipaddr)
	Now       time.Time     // context.now (datetime), context.now_unix, context.hour (0-23 UTC), context.weekday ("mon".."sun", UTC)
	Risk      int           // context.risk, 0..100
	Approvals int           // context.approvals, distinct approvers
}

// Decision is the policy engine's answer.
type Decision struct {
	Allowed bool
	// PolicyIDs are the policies that decided: the permits that allowed, or
	// the forbids that denied. Empty on a default deny.
	PolicyIDs []string
	// Errors lists policies that failed to evaluate (they are skipped, as
	// Cedar specifies).
	Errors []string
	// Version identifies the policy set that decided (a content hash).
	Version string
}

// Reason describes a decision for audit records and denial messages.
func (d Decision) Reason() string {
	switch {
	case d.Allowed:
		return "permitted by policy"
	case len(d.PolicyIDs) > 0:
		return "forbidden by policy"
	default:
		return "no policy permits this request (deny by default)"
	}
}

// Authorizer answers policy questions. Implementations must deny by default
// and let forbid win over permit.
type Authorizer interface {
	Authorize(ctx context.Context, req AuthzRequest) (Decision, error)
	// Version is the current policy-set version.
	Version() string
}
