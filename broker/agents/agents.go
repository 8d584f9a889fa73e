// Package agents holds what valet knows about the agents it serves and
// the signals that concern them. An agent is never registered: its record
// starts the first time valet sees it and keeps when it was first and
// last seen, the roles it minted, its risk score and whether it is
// quarantined, with the signals that moved them. A signal names a
// subject (an agent, a lease, a role or an attestation lineage), a
// severity and a reason; accepting one raises the risk of the agents it
// concerns and, by the action chosen for it, alerts, revokes their live
// leases or quarantines them.
//
// A storage engine keeps the records (broker.AgentStore), applying the
// state changes defined here and writing each with its audit record in
// one transaction, so every engine enforces the same rules.
package agents

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// Bounds on what one record keeps.
const (
	// MaxRoles bounds the roles an agent record lists; further roles are
	// not recorded (the mint records in the audit log still name them).
	MaxRoles = 64
	// MaxRecentSignals is how many of its latest signals an agent record
	// carries; older ones stay in the signal store.
	MaxRecentSignals = 20
)

// Agent is the record of one agent (a verified principal's id,
// "<issuer-name>/<subject>").
type Agent struct {
	ID string `json:"id"`
	// FirstSeen and LastSeen are its first and latest authentication; zero
	// for an agent quarantined or signalled before valet saw it.
	FirstSeen time.Time `json:"first_seen,omitzero"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// Roles are the roles the agent has minted, sorted, at most MaxRoles.
	Roles []string `json:"roles,omitempty"`
	// Risk is the agent's risk score as last raised; read it with
	// Risk.Value, which applies the decay.
	Risk Risk `json:"risk"`
	// Quarantine is set while the agent is quarantined (see
	// QuarantinedAt: a quarantine with a release time ends then).
	Quarantine *Quarantine `json:"quarantine,omitempty"`
	// LastRelease is the most recent end of a quarantine.
	LastRelease *Release `json:"last_release,omitempty"`
	// Signals are the latest signals that concerned the agent, newest
	// first, at most MaxRecentSignals.
	Signals []SignalRef `json:"signals,omitempty"`
}

// Quarantine is why and since when an agent is quarantined: every mint,
// renewal and redeem of the agent is refused until it is released.
type Quarantine struct {
	Since  time.Time   `json:"since"`
	Reason string      `json:"reason"`
	By     audit.Actor `json:"by"`
	// SignalID is the signal that quarantined the agent ("" when an
	// operator did).
	SignalID string `json:"signal_id,omitempty"`
	// ReleaseAt, when set, ends the quarantine on its own
	// (signals.auto_release); zero means until an operator releases it.
	ReleaseAt time.Time `json:"release_at,omitzero"`
}

// Release is the end of a quarantine: by an operator with a reason, or by
// valet at the quarantine's release time.
type Release struct {
	At     time.Time   `json:"at"`
	By     audit.Actor `json:"by"`
	Reason string      `json:"reason"`
}

// SignalRef is a signal as an agent record lists it.
type SignalRef struct {
	ID       string    `json:"id"`
	At       time.Time `json:"at"`
	Severity Severity  `json:"severity"`
	Reason   string    `json:"reason"`
	Source   Source    `json:"source"`
	Action   Action    `json:"action"`
	// Points is how much the signal raised the risk score; RiskAfter is
	// the score right after it.
	Points    int `json:"risk_points"`
	RiskAfter int `json:"risk_after"`
}

// QuarantinedAt reports whether the agent is quarantined at t: it has a
// quarantine whose release time, if any, is after t. Expiry is read from
// the record, so a quarantine ends at its release time whether or not the
// release has been recorded yet.
func (a *Agent) QuarantinedAt(t time.Time) bool { return a.Quarantine.ActiveAt(t) }

// ActiveAt reports whether q quarantines its agent at t (a nil q never
// does).
func (q *Quarantine) ActiveAt(t time.Time) bool {
	return q != nil && (q.ReleaseAt.IsZero() || t.Before(q.ReleaseAt))
}

// Errors of the state changes.
var (
	// ErrNotFound: valet has no record of this agent.
	ErrNotFound = errors.New("agent not found")
	// ErrState: the agent is not in a state that allows the change
	// (quarantining a quarantined agent, releasing one that is not).
	// Wrapped with the reason.
	ErrState = errors.New("agent is not in a state that allows this")
	// ErrUnchanged, returned by a state change, means there is nothing to
	// do: the engine stores nothing and writes no audit record.
	ErrUnchanged = errors.New("unchanged")
)

// Refusal is a change refused because of the agent's state.
// errors.Is(err, Kind) holds.
type Refusal struct {
	Kind error
	// Reason says why, for the client: it names the agent and its state.
	Reason string
}

// Error is the kind and the reason.
func (r *Refusal) Error() string { return r.Kind.Error() + ": " + r.Reason }

// Unwrap returns the kind.
func (r *Refusal) Unwrap() error { return r.Kind }

// Sighting is what valet saw of an agent between two writes of its
// record: when first and last, and the roles it minted. Sightings are
// gathered in memory and written in batches, so a mint pays no write of
// its own for them.
type Sighting struct {
	AgentID string
	First   time.Time
	Last    time.Time
	Roles   []string
}

// New returns the record of an agent first seen at t.
func New(id string, t time.Time) *Agent {
	return &Agent{ID: id, FirstSeen: t, LastSeen: t}
}

// Clone returns a copy of a that shares nothing with it, so a state
// change of the copy leaves a as it was.
func (a *Agent) Clone() *Agent {
	c := *a
	c.Roles = slices.Clone(a.Roles)
	c.Signals = slices.Clone(a.Signals)
	if a.Quarantine != nil {
		q := *a.Quarantine
		c.Quarantine = &q
	}
	if a.LastRelease != nil {
		r := *a.LastRelease
		c.LastRelease = &r
	}
	return &c
}

// See merges a sighting into the record: the earliest first sighting, the
// latest last one, the union of the roles (sorted, at most MaxRoles). It
// returns ErrUnchanged when the record already holds all of it.
func (a *Agent) See(s Sighting) error {
	changed := false
	if a.FirstSeen.IsZero() || s.First.Before(a.FirstSeen) {
		a.FirstSeen, changed = s.First, true
	}
	if s.Last.After(a.LastSeen) {
		a.LastSeen, changed = s.Last, true
	}
	for _, r := range s.Roles {
		if i, found := slices.BinarySearch(a.Roles, r); !found && len(a.Roles) < MaxRoles {
			a.Roles = slices.Insert(a.Roles, i, r)
			changed = true
		}
	}
	if !changed {
		return ErrUnchanged
	}
	return nil
}

// Apply records an accepted signal on the record: the risk score rises by
// points at the signal's time (decaying from its last value with
// halfLife), the signal heads the recent ones, and, when q is given and
// the agent is not quarantined already, the agent is quarantined. It
// returns whether it quarantined the agent.
func (a *Agent) Apply(s *Signal, points int, halfLife time.Duration, q *Quarantine) (quarantined bool) {
	at := s.ReceivedAt
	a.Risk = a.Risk.Raise(points, at, halfLife)
	ref := SignalRef{ID: s.ID, At: at, Severity: s.Severity, Reason: s.Reason, Source: s.Source, Action: s.Action,
		Points: points, RiskAfter: a.Risk.Value(at, halfLife)}
	a.Signals = slices.Insert(a.Signals, 0, ref)
	if len(a.Signals) > MaxRecentSignals {
		a.Signals = a.Signals[:MaxRecentSignals]
	}
	if q != nil && !a.QuarantinedAt(at) {
		cp := *q
		a.Quarantine = &cp
		return true
	}
	return false
}

// Isolate quarantines the agent (an operator's decision). It returns
// ErrState (wrapped) when the agent is quarantined at q.Since already.
func (a *Agent) Isolate(q Quarantine) error {
	if a.QuarantinedAt(q.Since) {
		return &Refusal{Kind: ErrState, Reason: fmt.Sprintf("agent %s is quarantined already, since %s (%s)", a.ID,
			a.Quarantine.Since.UTC().Format(time.RFC3339), a.Quarantine.Reason)}
	}
	a.Quarantine = &q
	return nil
}

// Release ends the agent's quarantine. It returns ErrState (wrapped) when
// the agent is not quarantined at r.At.
func (a *Agent) Release(r Release) error {
	if !a.QuarantinedAt(r.At) {
		return &Refusal{Kind: ErrState, Reason: fmt.Sprintf("agent %s is not quarantined", a.ID)}
	}
	a.Quarantine = nil
	a.LastRelease = &r
	return nil
}

// ReleaseDue records the end of a quarantine whose release time is at or
// before now, as released by valet at that time. It returns ErrUnchanged
// when there is no such quarantine.
func (a *Agent) ReleaseDue(now time.Time) error {
	q := a.Quarantine
	if q == nil || q.ReleaseAt.IsZero() || now.Before(q.ReleaseAt) {
		return ErrUnchanged
	}
	a.LastRelease = &Release{At: q.ReleaseAt, By: audit.SystemActor,
		Reason: fmt.Sprintf("released automatically %s after it was quarantined", q.ReleaseAt.Sub(q.Since))}
	a.Quarantine = nil
	return nil
}

// Recorded fills the agent of an audit entry about a where the entry
// leaves it empty.
func (a *Agent) Recorded(e audit.Entry) audit.Entry {
	if e.AgentID == "" {
		e.AgentID = a.ID
	}
	return e
}

// Gate is what a flow needs of an agent before it acts for it: its risk
// and its quarantine. The zero Gate (an agent never signalled) has risk 0
// and no quarantine.
type Gate struct {
	Risk       Risk
	Quarantine *Quarantine
}

// Gate returns the record's gate.
func (a *Agent) Gate() Gate {
	g := Gate{Risk: a.Risk}
	if a.Quarantine != nil {
		q := *a.Quarantine
		g.Quarantine = &q
	}
	return g
}

// Flagged reports whether the gate differs from the zero Gate's answers
// at now: a quarantine, or a risk score that rounds above 0.
func (g Gate) Flagged(now time.Time, halfLife time.Duration) bool {
	return g.Quarantine != nil || g.Risk.Value(now, halfLife) > 0
}

// Risk is a risk score from 0 to 100 at a moment. It decays
// exponentially, halving every half-life (signals.half_life), so a score
// s set at time t0 reads s·2^(−(t−t0)/half-life) at t.
type Risk struct {
	Score float64   `json:"score"`
	At    time.Time `json:"at,omitzero"`
}

// Exact is the decayed score at t, unrounded. A time before At reads the
// score as set.
func (r Risk) Exact(t time.Time, halfLife time.Duration) float64 {
	if r.Score <= 0 {
		return 0
	}
	if halfLife <= 0 || !t.After(r.At) {
		return r.Score
	}
	return r.Score * math.Exp2(-float64(t.Sub(r.At))/float64(halfLife))
}

// Value is the score at t rounded to the nearest integer, 0 to 100: what
// policies see as context.risk and operators are shown.
func (r Risk) Value(t time.Time, halfLife time.Duration) int {
	return int(math.Round(min(100, max(0, r.Exact(t, halfLife)))))
}

// Raise adds points to the score decayed to t, capped at 100.
func (r Risk) Raise(points int, t time.Time, halfLife time.Duration) Risk {
	return Risk{Score: min(100, r.Exact(t, halfLife)+float64(max(0, points))), At: t}
}

// Gates is an engine's in-memory copy of every flagged agent's gate (a
// risk score above 0 or a quarantine), read on the path of every mint
// without a transaction. Each engine keeps it in step with its commits.
// The zero value is empty and ready; it is safe for concurrent use.
type Gates struct {
	mu sync.RWMutex
	m  map[string]Gate
}

// Get returns the agent's gate (the zero Gate for an agent not flagged).
func (g *Gates) Get(id string) Gate {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.m[id]
}

// Set records the agent's gate; a gate with no quarantine and no risk is
// dropped.
func (g *Gates) Set(id string, gt Gate) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]Gate{}
	}
	if gt.Quarantine == nil && gt.Risk.Score <= 0 {
		delete(g.m, id)
		return
	}
	g.m[id] = gt
}

// Replace sets every gate at once from all, dropping the others (a full
// re-read after missed changes).
func (g *Gates) Replace(all map[string]Gate) {
	m := make(map[string]Gate, len(all))
	for id, gt := range all {
		if gt.Quarantine != nil || gt.Risk.Score > 0 {
			m[id] = gt
		}
	}
	g.mu.Lock()
	g.m = m
	g.mu.Unlock()
}
