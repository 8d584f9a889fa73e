package broker

import (
	"time"

	"github.com/valet-broker/valet/broker/grants"
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
)

// Severities.
const (
	SeverityInfo = "info"
	SeverityHigh = "high" // break-glass
)

// Event is something operators want to hear about. It never carries a
// credential or an attestation.
type Event struct {
	Type     string        `json:"type"`
	Severity string        `json:"severity"`
	Time     time.Time     `json:"time"`
	Grant    *grants.Grant `json:"grant"`
	// Job is the failing job of a job.failing event.
	Job *JobFailure `json:"job,omitempty"`
	// URL points operators to the grant in the web console.
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

// Notifier delivers events (webhooks in production). Notify must not block
// the caller: delivery, retries and failures happen elsewhere, and never
// hold up the workflow.
type Notifier interface {
	Notify(e Event)
}
