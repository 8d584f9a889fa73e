package agents

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// Severity is how bad a signal says things are.
type Severity string

// Severities, from least to most severe.
const (
	SeverityInfo     Severity = "info"
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// Severities lists every severity, least severe first.
var Severities = []Severity{SeverityInfo, SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// Valid reports whether s is one of Severities.
func (s Severity) Valid() bool { return slices.Contains(Severities, s) }

// Action is what valet does about a signal.
type Action string

// Actions, each doing what the one before does and more.
const (
	// ActionAlert records the signal, raises the risk of the agents it
	// concerns and notifies operators.
	ActionAlert Action = "alert"
	// ActionRevoke does what alert does and revokes the subject's live
	// leases (for a lineage, everything derived from that attestation,
	// across backends).
	ActionRevoke Action = "revoke"
	// ActionQuarantine does what revoke does and quarantines the agents
	// the signal concerns.
	ActionQuarantine Action = "quarantine"
)

// Actions lists every action, the mildest first.
var Actions = []Action{ActionAlert, ActionRevoke, ActionQuarantine}

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool { return slices.Contains(Actions, a) }

// Revokes reports whether the action revokes the subject's leases.
func (a Action) Revokes() bool { return a == ActionRevoke || a == ActionQuarantine }

// SubjectKind is what a signal is about.
type SubjectKind string

// Subject kinds.
const (
	SubjectAgent   SubjectKind = "agent"   // an agent id
	SubjectLease   SubjectKind = "lease"   // a lease id
	SubjectRole    SubjectKind = "role"    // a configured role
	SubjectLineage SubjectKind = "lineage" // a lineage id (leases.Lineage.IDs)
)

// Subject names what a signal is about.
type Subject struct {
	Kind SubjectKind `json:"kind"`
	ID   string      `json:"id"`
}

// String is "<kind>:<id>" for log lines and messages.
func (s Subject) String() string { return string(s.Kind) + ":" + s.ID }

// Source kinds: where a signal came from.
const (
	SourceREST     = "source"   // a signal source of signals.sources (POST /v1/signals)
	SourceSET      = "ssf"      // a Security Event Token from a transmitter of signals.transmitters
	SourceDetector = "detector" // one of valet's own detectors
	SourceOperator = "operator" // an operator (POST /v1/signals with an operator credential)
)

// Source is who raised a signal: a kind and the configured name (of the
// source, transmitter or detector) or the operator's name.
type Source struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// String is "<kind>:<name>".
func (s Source) String() string { return s.Kind + ":" + s.Name }

// Signal is one accepted signal.
type Signal struct {
	// ID is time-ordered (leases.NewID), so listings are newest first.
	ID       string   `json:"id"`
	Subject  Subject  `json:"subject"`
	Severity Severity `json:"severity"`
	Reason   string   `json:"reason"`
	Source   Source   `json:"source"`
	// Requested is the action the source asked for, if any; Action is the
	// action valet took.
	Requested Action `json:"requested_action,omitempty"`
	Action    Action `json:"action"`
	// EventTime is when the source says the event happened, if it says.
	EventTime  time.Time `json:"event_time,omitzero"`
	ReceivedAt time.Time `json:"received_at"`
	// Agents are the agents the signal concerns (none for a role).
	Agents []string `json:"agents,omitempty"`
	// Points is how much it raised each agent's risk score.
	Points int `json:"risk_points"`
	// Event is the Security Event Token the signal came from, if any.
	Event *SET `json:"set,omitempty"`
	// Evidence is what the detector that raised the signal saw and the
	// thresholds it applied (one of valet's detectors; never a
	// credential).
	Evidence map[string]string `json:"evidence,omitempty"`
	// Containment is the revocation of the subject's leases, for the
	// actions that revoke.
	Containment *Containment `json:"containment,omitempty"`
}

// SET identifies the Security Event Token (RFC 8417) a signal came from.
type SET struct {
	Transmitter string `json:"transmitter"`
	JTI         string `json:"jti"`
	// EventType is the event's URI (e.g. CAEP's session-revoked).
	EventType string `json:"event_type"`
}

// Containment states.
const (
	// ContainmentPending: the subject's live leases are being ended. A
	// restart resumes it (signals of this state are listed by the
	// store's pending index).
	ContainmentPending = "pending"
	// ContainmentDone: every lease live when the signal was accepted has
	// ended (revoking; the revocation queue confirms each at its backend).
	ContainmentDone = "done"
)

// Containment is the progress of a signal's revocation.
type Containment struct {
	State string `json:"state"`
	// Ended counts the leases the signal ended.
	Ended  int       `json:"ended"`
	DoneAt time.Time `json:"done_at,omitzero"`
}

// Contained records that the containment finished at now, having ended
// ended leases (in all; a resumed containment adds to what it had
// counted). It returns ErrUnchanged when the signal has no containment
// pending.
func (s *Signal) Contained(ended int, now time.Time) error {
	if s.Containment == nil || s.Containment.State != ContainmentPending {
		return ErrUnchanged
	}
	s.Containment.State = ContainmentDone
	s.Containment.Ended += ended
	s.Containment.DoneAt = now
	return nil
}

// Recorded completes the audit entry of the signal's containment: the
// signal's id and how many leases it ended in its details, and its agent
// when it concerns exactly one.
func (s *Signal) Recorded(e audit.Entry) audit.Entry {
	d := make(map[string]string, len(e.Details)+2)
	maps.Copy(d, e.Details)
	d["signal_id"] = s.ID
	if s.Containment != nil {
		d["ended"] = strconv.Itoa(s.Containment.Ended)
	}
	e.Details = d
	if e.AgentID == "" && len(s.Agents) == 1 {
		e.AgentID = s.Agents[0]
	}
	return e
}

// Pending reports whether the signal's containment is still under way.
func (s *Signal) Pending() bool {
	return s.Containment != nil && s.Containment.State == ContainmentPending
}

// SignalFilter selects signals for a listing.
type SignalFilter struct {
	// AgentID selects the signals that concerned one agent (an index
	// scan).
	AgentID string
	// Source selects by source, "<kind>:<name>"; empty for any.
	Source string
	// Before is a signal id cursor (ids are time-ordered).
	Before string
	Limit  int // default 100, at most 1000
}

// Match reports whether s passes the filter's agent and source.
func (f SignalFilter) Match(s *Signal) bool {
	return (f.AgentID == "" || slices.Contains(s.Agents, f.AgentID)) && (f.Source == "" || s.Source.String() == f.Source)
}

// Filter selects agents for a listing, most recently seen first.
type Filter struct {
	// Quarantined selects the agents with a quarantine recorded (an index
	// scan); those whose release time has passed are among them until
	// valet records the release.
	Quarantined bool
	// Before is a cursor: the Cursor of the last agent of the previous
	// page.
	Before string
	Limit  int // default 100, at most 1000
}

// Cursor is the paging position of an agent in a listing by last seen:
// its last-seen time in Unix nanoseconds, a '.', and its id.
func (a *Agent) Cursor() string {
	return strconv.FormatInt(a.LastSeen.UnixNano(), 10) + "." + a.ID
}

// ParseCursor reads a Cursor. ok is false when c is not one.
func ParseCursor(c string) (lastSeen time.Time, id string, ok bool) {
	n, id, found := strings.Cut(c, ".")
	if !found || id == "" || n == "" || n[0] == '-' || n[0] == '+' {
		return time.Time{}, "", false
	}
	v, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return time.Time{}, "", false
	}
	return time.Unix(0, v), id, true
}
