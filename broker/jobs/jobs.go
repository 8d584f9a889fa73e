// Package jobs is valet's scheduler: it runs the jobs that keep valet's
// own secrets short-lived and its storage tidy (signing-key rotation,
// audit checkpoints, housekeeping, ...) on cron schedules read from the
// jobs section of the configuration, with the broker's injected clock.
//
// The scheduler promises:
//
//   - At most one run of a job at a time. A run that would overlap one in
//     progress is skipped and counted (Observer.JobSkipped, State.Skips).
//   - A run that outlives its timeout is cancelled through its context
//     and ends with outcome "timeout".
//   - Jitter spreads runs: each scheduled time is moved later by a random
//     fraction of the job's jitter.
//   - A run missed while valet was down (the next run recorded in storage
//     has passed) runs once at start when the job says run_on_start.
//   - Job state (last start and end, outcome, next run, consecutive
//     failures, recent runs) lives in storage, through Store, and every
//     run is audited: a job.start record when it starts and a job.end
//     record (outcome, what changed: key ids and counts, never key
//     material) when it ends, each in the transaction of its state change.
//   - Only a process that leads runs jobs: Leadership is asked once, in
//     one place, before every run (see Scheduler.Run).
//   - A job that keeps failing raises an alert (Alerter) after
//     Options.AlertAfter consecutive failures, and again on every further
//     failure.
//
// A job is a Job value built by its definition (package
// broker/jobs/builtin holds the registry of valet's jobs); the scheduler
// knows nothing of what a job does.
package jobs

import (
	"context"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// Job is one kind of scheduled work.
type Job interface {
	// Run does one run and says what changed. ctx ends when the run's
	// timeout passes or valet stops: a job must return soon after. now is
	// the run's start on the scheduler's clock. The error's text goes to
	// the audit record and the job's state, so it must never carry a
	// secret (a token, a password, key material).
	Run(ctx context.Context, now time.Time) (Result, error)
}

// JobFunc adapts a function to Job.
type JobFunc func(ctx context.Context, now time.Time) (Result, error)

// Run calls f.
func (f JobFunc) Run(ctx context.Context, now time.Time) (Result, error) { return f(ctx, now) }

// Result is what a run changed.
type Result struct {
	// Changes are the facts of the run for the audit record and the run's
	// history: key ids, counts, a checkpoint's sequence. Never a secret.
	Changes map[string]string
	// Records are further audit records the run produced (a signed
	// checkpoint), committed with the job.end record.
	Records []audit.Entry
}

// Triggers of a run.
const (
	TriggerSchedule = "schedule" // its schedule came due
	TriggerStart    = "start"    // run_on_start: a run was missed while valet was down
	TriggerManual   = "manual"   // an operator asked (POST /v1/jobs/{name}/run)
	TriggerShutdown = "shutdown" // valet is stopping and the job runs at shutdown
)

// Outcomes of a run.
const (
	OutcomeOK          = "ok"
	OutcomeError       = "error"
	OutcomeTimeout     = "timeout"
	OutcomeInterrupted = "interrupted" // valet stopped (or crashed) during the run
)

// Outcomes lists every outcome, the closed set of the metrics' label.
var Outcomes = []string{OutcomeOK, OutcomeError, OutcomeTimeout, OutcomeInterrupted}

// Entry is one configured job as the scheduler runs it: its name, its
// schedule and limits (resolved from the configuration) and the Job.
type Entry struct {
	Name string
	// Type is the job's definition (the registry's name for it).
	Type        string
	Description string
	// Schedule is the cron expression or descriptor as configured;
	// Parsed is it parsed (ParseSchedule).
	Schedule string
	Parsed   Schedule
	Jitter   time.Duration
	Timeout  time.Duration
	// RunOnStart runs the job once at start when a scheduled run was
	// missed while valet was down.
	RunOnStart bool
	// RunAtShutdown runs the job once more when the scheduler stops (the
	// audit checkpoint: the last head is signed on a clean shutdown).
	RunAtShutdown bool
	Job           Job
}

// Observer receives measurements (Prometheus in production). name is a
// configured job's name: a closed set.
type Observer interface {
	// JobRun is called once per finished run with its outcome (one of
	// Outcomes), its duration and its end.
	JobRun(name, outcome string, d time.Duration, end time.Time)
	// JobSkipped is called once per run skipped because one was in
	// progress.
	JobSkipped(name string)
}

// Alerter hears of a job that keeps failing. JobFailing must not block.
type Alerter interface {
	JobFailing(a Alert)
}

// Alert says that a job failed Failures times in a row.
type Alert struct {
	Job      string    `json:"job"`
	Failures int       `json:"consecutive_failures"`
	Outcome  string    `json:"outcome"`
	Error    string    `json:"error"`
	Time     time.Time `json:"time"`
}

// Leadership says whether this process may run jobs now. One process on a
// bbolt file always may (Always); an engine shared by several replicas
// answers from its election, and fences the writes a deposed leader's
// run still makes.
type Leadership interface {
	Leading() bool
}

// Always is the Leadership of a single process.
type Always struct{}

// Leading returns true.
func (Always) Leading() bool { return true }
