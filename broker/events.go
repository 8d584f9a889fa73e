package broker

import (
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

// Event types sent to notification receivers.
const (
	EventGrantRequested     = "grant.requested"
	EventGrantApproved      = "grant.approved"
	EventGrantDenied        = "grant.denied"
	EventGrantExpired       = "grant.expired"
	EventGrantRedeemed      = "grant.redeemed"
	EventBreakGlass         = "break_glass"
	EventBreakGlassReviewed = "break_glass.reviewed"
	// EventJobFailing: a scheduled job failed several runs in a row.
	EventJobFailing = "job.failing"

	// EventSignal is a signal valet accepted, whatever its action.
	EventSignal = "signal"
	// EventAgentQuarantined and EventAgentReleased are an agent's
	// quarantine and its end.
	EventAgentQuarantined = "agent.quarantined"
	EventAgentReleased    = "agent.released"
	// EventLeasesRevoked is a mass revocation: every live lease of an
	// agent (or of a lineage or role it held) ended at once, by a signal
	// or an operator's quarantine. valet's SSF receivers hear of it as a
	// CAEP session-revoked Security Event Token.
	EventLeasesRevoked = "agent.leases_revoked"
)

// Severities of events (a signal's event has the signal's severity).
const (
	SeverityInfo = "info"
	SeverityHigh = "high" // break-glass, quarantine, mass revocation
)

// Event is something operators want to hear about. It never carries a
// credential or an attestation.
type Event struct {
	Type     string        `json:"type"`
	Severity string        `json:"severity"`
	Time     time.Time     `json:"time"`
	Grant    *grants.Grant `json:"grant,omitempty"`
	// Job is the failing job of a job.failing event.
	Job *JobFailure `json:"job,omitempty"`
	// Agent is set for the agent events (quarantine, release, mass
	// revocation) and Signal for a signal's.
	Agent  *AgentEvent    `json:"agent,omitempty"`
	Signal *agents.Signal `json:"signal,omitempty"`
	// URL points operators to the grant or agent in the web console.
	URL string `json:"url,omitempty"`
}

// JobFailure is a scheduled job that keeps failing.
type JobFailure struct {
	Name string `json:"name"`
	// Failures counts the runs in a row that did not succeed.
	Failures int    `json:"consecutive_failures"`
	Outcome  string `json:"outcome"`
	Error    string `json:"error"`
}

// AgentEvent is what an agent event says about the agent.
type AgentEvent struct {
	ID string `json:"id"`
	// Reason is why it was quarantined, released or had its leases
	// revoked.
	Reason string      `json:"reason"`
	By     audit.Actor `json:"by"`
	// SignalID is the signal behind the event, if any.
	SignalID string `json:"signal_id,omitempty"`
	// Risk is the agent's risk score at the event.
	Risk int `json:"risk"`
	// Revoked counts the leases a mass revocation ended.
	Revoked int `json:"revoked,omitempty"`
}

// Notifier delivers events (webhooks in production). Notify must not block
// the caller: delivery, retries and failures happen elsewhere, and never
// hold up the workflow.
type Notifier interface {
	Notify(e Event)
}
