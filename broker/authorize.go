package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/valet-broker/valet/leases/audit"
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
	// RequestID names the request in the engine's log lines (policy
	// evaluation errors); policies do not see it.
	RequestID string
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

// PolicyOnError says what a policy that fails to evaluate (Cedar skips it
// and reports the error, for example when it reads a missing attribute or
// calls a set method on a String claim) does to a decision: the setting
// policy.on_error.
type PolicyOnError string

const (
	// PolicyOnErrorDeny, the default, fails closed: a forbid policy that
	// fails to evaluate denies the request, as it might have had it
	// evaluated. A permit that fails to evaluate never allows, as in Cedar.
	PolicyOnErrorDeny PolicyOnError = "deny"
	// PolicyOnErrorSkip is Cedar's semantics: a policy that fails to
	// evaluate is ignored, so a forbid that errors forbids nothing.
	PolicyOnErrorSkip PolicyOnError = "skip"
)

// PolicyError is one policy that failed to evaluate for a request.
type PolicyError struct {
	PolicyID string
	// Forbid is true for a forbid policy, false for a permit.
	Forbid bool
	// Message is the evaluator's error; it names the expression, not the
	// token.
	Message string
}

// Decision is the policy engine's answer.
type Decision struct {
	Allowed bool
	// PolicyIDs are the policies that decided: the permits that allowed,
	// or the forbids that denied (those that failed to evaluate, when the
	// decision failed closed). Empty on a default deny.
	PolicyIDs []string
	// Errors lists the policies that failed to evaluate, in load order,
	// whatever the decision. Every one is logged, counted and recorded in
	// the decision's audit record.
	Errors []PolicyError
	// FailedClosed is true when the request was denied because forbid
	// policies failed to evaluate (policy.on_error deny) and no forbid
	// denied it on its own; PolicyIDs are those forbids.
	FailedClosed bool
	// Version identifies the policy set that decided (a content hash).
	Version string
}

// ErroredPolicyIDs returns the ids of the policies that failed to evaluate,
// nil if none did.
func (d Decision) ErroredPolicyIDs() []string {
	if len(d.Errors) == 0 {
		return nil
	}
	ids := make([]string, len(d.Errors))
	for i, e := range d.Errors {
		ids[i] = e.PolicyID
	}
	return ids
}

// Reason describes a decision for audit records and denial messages.
func (d Decision) Reason() string {
	switch {
	case d.Allowed:
		return "permitted by policy"
	case d.FailedClosed:
		noun := "policy"
		if len(d.PolicyIDs) > 1 {
			noun = "policies"
		}
		return fmt.Sprintf("policy evaluation error in forbid %s %s (fail closed)", noun, strings.Join(d.PolicyIDs, ", "))
	case len(d.PolicyIDs) > 0:
		return "forbidden by policy"
	case len(d.Errors) > 0:
		return fmt.Sprintf("no policy permits this request (deny by default; policy evaluation error in %s)", strings.Join(d.ErroredPolicyIDs(), ", "))
	default:
		return "no policy permits this request (deny by default)"
	}
}

// record fills the policy fields of the audit entry of a request this
// decision decided: the version, the deciding policies and those that
// failed to evaluate.
func (d Decision) record(e audit.Entry) audit.Entry {
	e.PolicyVersion, e.PolicyIDs, e.PolicyErrors = d.Version, d.PolicyIDs, d.ErroredPolicyIDs()
	return e
}

// Authorizer answers policy questions. Implementations must deny by default
// and let forbid win over permit.
type Authorizer interface {
	Authorize(ctx context.Context, req AuthzRequest) (Decision, error)
	// Version is the current policy-set version.
	Version() string
}
