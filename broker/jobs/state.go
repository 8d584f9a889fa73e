package jobs

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// Errors of the scheduler and of a job's state changes.
var (
	// ErrNotFound: no job of that name is configured (or it is disabled).
	ErrNotFound = errors.New("no such job")
	// ErrBusy: a run of the job is in progress.
	ErrBusy = errors.New("a run of the job is in progress")
	// ErrNotLeader: this process does not lead, so it runs no job.
	ErrNotLeader = errors.New("this valet does not lead its replicas, so it runs no job")
	// ErrState: the state change does not apply to the job's state (the
	// run it names is not the one in progress).
	ErrState = errors.New("the job is not in the state this change needs")
	// ErrUnchanged: the change leaves the state as it is; nothing is
	// written.
	ErrUnchanged = errors.New("unchanged")
)

// RecentRuns is how many finished runs a job's state keeps.
const RecentRuns = 20

// State is a job's state as storage keeps it.
type State struct {
	Name string `json:"name"`
	// Runs is how many runs were started; the latest run's ID.
	Runs uint64 `json:"runs"`
	// Current is the run in progress, if any.
	Current   *Run      `json:"current,omitempty"`
	LastStart time.Time `json:"last_start,omitzero"`
	LastEnd   time.Time `json:"last_end,omitzero"`
	// LastOutcome is the outcome of the last finished run (Outcomes).
	LastOutcome string    `json:"last_outcome,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// ConsecutiveFailures counts the runs since the last success that did
	// not succeed.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// NextRun is when the schedule next comes due (jitter included).
	NextRun time.Time `json:"next_run,omitzero"`
	// Recent are the latest finished runs, newest first, at most
	// RecentRuns.
	Recent []Run `json:"recent,omitempty"`
}

// Run is one run of a job.
type Run struct {
	ID      uint64 `json:"id"`
	Trigger string `json:"trigger"`
	// Operator is who asked for a manual run.
	Operator string            `json:"operator,omitempty"`
	Started  time.Time         `json:"started"`
	Ended    time.Time         `json:"ended,omitzero"`
	Outcome  string            `json:"outcome,omitempty"`
	Error    string            `json:"error,omitempty"`
	Changes  map[string]string `json:"changes,omitempty"`
}

// Start begins run r (its ID is assigned here: the next number). It
// returns ErrBusy when a run is in progress.
func (s *State) Start(r Run) (*Run, error) {
	if s.Current != nil {
		return nil, ErrBusy
	}
	s.Runs++
	r.ID = s.Runs
	s.Current = &r
	s.LastStart = r.Started
	return s.Current, nil
}

// Finish ends run id with its outcome, error text and changes at end. It
// returns ErrState unless run id is in progress.
func (s *State) Finish(id uint64, end time.Time, outcome, errText string, changes map[string]string) (*Run, error) {
	if s.Current == nil || s.Current.ID != id {
		return nil, ErrState
	}
	r := *s.Current
	r.Ended, r.Outcome, r.Error, r.Changes = end, outcome, errText, maps.Clone(changes)
	s.Current = nil
	s.LastEnd, s.LastOutcome, s.LastError = end, outcome, errText
	if outcome == OutcomeOK {
		s.LastSuccess = end
		s.ConsecutiveFailures = 0
	} else {
		s.ConsecutiveFailures++
	}
	s.Recent = append([]Run{r}, s.Recent...)
	if len(s.Recent) > RecentRuns {
		s.Recent = s.Recent[:RecentRuns]
	}
	return &s.Recent[0], nil
}

// Schedule records the next run. It returns ErrUnchanged when it is the
// one recorded.
func (s *State) Schedule(next time.Time) error {
	if s.NextRun.Equal(next) {
		return ErrUnchanged
	}
	s.NextRun = next
	return nil
}

// Store keeps job state. A storage engine implements it with the promises
// of every state change (broker/storage.go): the change and the audit
// records it returns commit together in one transaction, durable on
// return; the change is compare-and-swap on the stored state; an engine
// shared by replicas fences the writes of a process that no longer leads.
type Store interface {
	// JobState returns the named job's state; a job that never ran has a
	// State with only its Name (no error).
	JobState(ctx context.Context, name string) (*State, error)
	// UpdateJob reads the job's state (as JobState), applies change and,
	// unless change returns an error, writes the state and appends the
	// audit records change returned, at now, in one transaction. An error
	// from change writes nothing and is returned (ErrUnchanged: nothing
	// to write, and UpdateJob returns the state and no error).
	UpdateJob(ctx context.Context, name string, now time.Time, change func(s *State) ([]audit.Entry, error)) (*State, error)
}
