package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// Audit record kinds of job runs.
const (
	KindStart = audit.KindJobStart
	KindEnd   = audit.KindJobEnd
)

// DefaultAlertAfter is how many consecutive failures raise an alert when
// Options.AlertAfter is not set.
const DefaultAlertAfter = 3

// Options are a Scheduler's dependencies.
type Options struct {
	Jobs  []Entry
	Store Store
	Clock clock.Clock
	// Leader says whether this process may run jobs (nil: Always).
	Leader   Leadership
	Logger   *slog.Logger
	Observer Observer // optional
	Alerter  Alerter  // optional
	// AlertAfter is how many consecutive failures raise an alert (0:
	// DefaultAlertAfter).
	AlertAfter int
	// Jitter returns a random fraction in [0, 1) for jitter (nil:
	// math/rand/v2).
	Jitter func() float64
}

// Scheduler runs jobs on their schedules and on demand.
type Scheduler struct {
	jobs   []*entry
	byName map[string]*entry
	store  Store
	clock  clock.Clock
	leader Leadership
	log    *slog.Logger
	obs    Observer
	alert  Alerter
	after  int
	jitter func() float64

	wg sync.WaitGroup // runs in progress

	// runCtx is the context of the Run under way (nil: none): manual
	// runs belong to it, so they end with it (a lost lead, a shutdown).
	mu     sync.Mutex
	runCtx context.Context
}

// entry is a job with what the scheduler keeps in memory about it.
type entry struct {
	Entry
	mu      sync.Mutex
	running bool
	done    chan struct{} // closed when the run in progress ends
	skips   uint64
	next    time.Time
}

// New returns a scheduler of opts.Jobs. Names must be unique.
func New(opts Options) (*Scheduler, error) {
	if opts.Store == nil {
		return nil, errors.New("jobs: Store is required")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Leader == nil {
		opts.Leader = Always{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.AlertAfter <= 0 {
		opts.AlertAfter = DefaultAlertAfter
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	s := &Scheduler{byName: map[string]*entry{}, store: opts.Store, clock: opts.Clock, leader: opts.Leader,
		log: opts.Logger, obs: opts.Observer, alert: opts.Alerter, after: opts.AlertAfter, jitter: opts.Jitter}
	for _, e := range opts.Jobs {
		if e.Job == nil || e.Parsed == nil || e.Timeout <= 0 {
			return nil, fmt.Errorf("jobs: job %q needs a Job, a parsed schedule and a positive timeout", e.Name)
		}
		if _, dup := s.byName[e.Name]; dup {
			return nil, fmt.Errorf("jobs: job %q is configured twice", e.Name)
		}
		en := &entry{Entry: e}
		s.jobs = append(s.jobs, en)
		s.byName[e.Name] = en
	}
	return s, nil
}

// Names lists the jobs' names in order: the closed set of the metrics'
// job label.
func (s *Scheduler) Names() []string {
	out := make([]string, 0, len(s.jobs))
	for _, e := range s.jobs {
		out = append(out, e.Name)
	}
	return out
}

// Run runs the jobs on their schedules until ctx ends, then waits for the
// runs in progress (each cancelled through its context), runs the jobs
// marked RunAtShutdown once more, and returns. At start it records runs
// that a crash interrupted and, for jobs with RunOnStart, runs those whose
// scheduled run passed while valet was down. Call Run once.
func (s *Scheduler) Run(ctx context.Context) {
	s.mu.Lock()
	s.runCtx = ctx
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.runCtx = nil
		s.mu.Unlock()
	}()
	now := s.clock.Now()
	for _, e := range s.jobs {
		st, err := s.recover(ctx, e, now)
		if err != nil {
			s.log.Error("job state cannot be read; the job runs on its schedule", "job", e.Name, "err", err)
			st = &State{}
		}
		missed := !st.NextRun.IsZero() && !st.NextRun.After(now)
		s.plan(ctx, e, now)
		if missed && e.RunOnStart {
			s.launch(ctx, e, Run{Trigger: TriggerStart}, nil)
		}
	}
	for {
		e, at := s.earliest()
		if e == nil {
			<-ctx.Done()
			break
		}
		t := s.clock.NewTimer(at.Sub(s.clock.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C():
		}
		if ctx.Err() != nil {
			break
		}
		now := s.clock.Now()
		for _, e := range s.jobs {
			if e.nextRun().After(now) {
				continue
			}
			s.launch(ctx, e, Run{Trigger: TriggerSchedule}, nil)
			s.plan(ctx, e, now)
		}
	}
	s.wg.Wait()
	for _, e := range s.jobs {
		if e.RunAtShutdown {
			if _, err := s.start(context.WithoutCancel(ctx), e, Run{Trigger: TriggerShutdown}); err != nil {
				s.log.Warn("job did not run at shutdown", "job", e.Name, "err", err)
			}
		}
	}
	s.wg.Wait()
}

// recover records as interrupted a run that the job's state says is in
// progress while this process runs none (it has just started, so the run
// was an earlier process's).
func (s *Scheduler) recover(ctx context.Context, e *entry, now time.Time) (*State, error) {
	// Read without claiming the job: a manual run asked for while the
	// state is read must not be refused as busy when nothing runs.
	st, err := s.store.JobState(ctx, e.Name)
	if err != nil || st.Current == nil || !s.leader.Leading() {
		return st, err
	}
	done, err := e.claim()
	if err != nil {
		// A run of this process started since the read: it ends the
		// recorded run itself (execute), which is not to be recovered.
		return s.store.JobState(ctx, e.Name)
	}
	defer e.release(done)
	return s.store.UpdateJob(ctx, e.Name, now, func(st *State) ([]audit.Entry, error) {
		if st.Current == nil {
			return nil, ErrUnchanged
		}
		r, err := st.Finish(st.Current.ID, now, OutcomeInterrupted, "valet stopped during the run", nil)
		if err != nil {
			return nil, err
		}
		return []audit.Entry{endEntry(e.Name, r)}, nil
	})
}

// plan computes the job's next run after now, jitter included, and
// records it.
func (s *Scheduler) plan(ctx context.Context, e *entry, now time.Time) {
	next := e.Parsed.Next(now)
	if e.Jitter > 0 && !next.IsZero() {
		next = next.Add(time.Duration(s.jitter() * float64(e.Jitter)))
	}
	e.mu.Lock()
	e.next = next
	e.mu.Unlock()
	if !s.leader.Leading() {
		return
	}
	if _, err := s.store.UpdateJob(ctx, e.Name, now, func(st *State) ([]audit.Entry, error) {
		return nil, st.Schedule(next)
	}); err != nil && ctx.Err() == nil {
		s.log.Error("record a job's next run", "job", e.Name, "err", err)
	}
}

func (e *entry) nextRun() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.next
}

// earliest returns the job that comes due first and when.
func (s *Scheduler) earliest() (*entry, time.Time) {
	var first *entry
	var at time.Time
	for _, e := range s.jobs {
		n := e.nextRun()
		if n.IsZero() {
			continue
		}
		if first == nil || n.Before(at) {
			first, at = e, n
		}
	}
	return first, at
}

// launch starts a run on its own goroutine unless one is in progress
// (then it is skipped and counted) or this process does not lead. started,
// if not nil, receives the started run, or the error that kept it from
// starting, and then the finished run on the same channel.
func (s *Scheduler) launch(ctx context.Context, e *entry, r Run, started chan<- runEvent) {
	done, err := e.claim()
	if err != nil {
		if started != nil {
			started <- runEvent{err: err} // a refused manual run is not a skip
		} else {
			s.skipped(e)
		}
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer e.release(done)
		run, err := s.execute(ctx, e, r, started)
		if err != nil && started == nil && !errors.Is(err, ErrNotLeader) {
			s.log.Error("job run did not start", "job", e.Name, "err", err)
		}
		_ = run
	}()
}

// runEvent is a started or finished run, or why it did not start.
type runEvent struct {
	run *Run
	err error
}

// claim marks the job running in this process, or returns ErrBusy.
func (e *entry) claim() (chan struct{}, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return nil, ErrBusy
	}
	e.running = true
	e.done = make(chan struct{})
	return e.done, nil
}

func (e *entry) release(done chan struct{}) {
	e.mu.Lock()
	e.running = false
	e.mu.Unlock()
	close(done)
}

func (s *Scheduler) skipped(e *entry) {
	e.mu.Lock()
	e.skips++
	e.mu.Unlock()
	s.log.Warn("job run skipped: the previous run is still in progress", "job", e.Name)
	if s.obs != nil {
		s.obs.JobSkipped(e.Name)
	}
}

// start runs the job in the calling goroutine (the shutdown run).
func (s *Scheduler) start(ctx context.Context, e *entry, r Run) (*Run, error) {
	done, err := e.claim()
	if err != nil {
		s.skipped(e)
		return nil, err
	}
	defer e.release(done)
	return s.execute(ctx, e, r, nil)
}

// execute is one run: the one leadership check, the job.start record,
// the job under its timeout, the job.end record, measurements and alerts.
func (s *Scheduler) execute(ctx context.Context, e *entry, r Run, events chan<- runEvent) (*Run, error) {
	report := func(ev runEvent) {
		if events != nil {
			events <- ev
		}
	}
	// The one check: only a process that leads runs jobs. The writes a
	// run makes go through storage interfaces that an engine shared by
	// replicas fences, so a run that outlives its leadership cannot land
	// them.
	if !s.leader.Leading() {
		report(runEvent{err: ErrNotLeader})
		return nil, ErrNotLeader
	}
	r.Started = s.clock.Now()
	var run *Run
	_, err := s.store.UpdateJob(context.WithoutCancel(ctx), e.Name, r.Started, func(st *State) ([]audit.Entry, error) {
		var entries []audit.Entry
		if st.Current != nil {
			// This process leads and runs none of this job (it claimed
			// it): the run in progress is an earlier leader's, which died
			// or lost the lead during it and can never record its end
			// (its writes are fenced). Without this, replicas that share
			// the state would skip the job as busy forever.
			ended, err := st.Finish(st.Current.ID, r.Started, OutcomeInterrupted, "the replica that ran it stopped leading during the run", nil)
			if err != nil {
				return nil, err
			}
			entries = append(entries, endEntry(e.Name, ended))
		}
		var err error
		if run, err = st.Start(r); err != nil {
			return nil, err
		}
		return append(entries, startEntry(e.Name, run)), nil
	})
	if err != nil {
		if errors.Is(err, ErrBusy) && events == nil {
			s.skipped(e) // another replica's run, or one a crash left behind
		}
		report(runEvent{err: err})
		return nil, err
	}
	started := *run
	report(runEvent{run: &started})

	res, outcome, runErr := s.invoke(ctx, e, r.Started)
	end := s.clock.Now()
	errText := ""
	if runErr != nil {
		errText = runErr.Error()
	}
	var finished *Run
	st, err := s.store.UpdateJob(context.WithoutCancel(ctx), e.Name, end, func(st *State) ([]audit.Entry, error) {
		var err error
		if finished, err = st.Finish(started.ID, end, outcome, errText, res.Changes); err != nil {
			return nil, err
		}
		return append([]audit.Entry{endEntry(e.Name, finished)}, res.Records...), nil
	})
	if err != nil {
		s.log.Error("record the end of a job run", "job", e.Name, "run", started.ID, "outcome", outcome, "err", err)
		report(runEvent{err: err})
		return nil, err
	}
	if s.obs != nil {
		s.obs.JobRun(e.Name, outcome, end.Sub(r.Started), end)
	}
	if outcome == OutcomeOK {
		s.log.Info("job run", "job", e.Name, "run", finished.ID, "trigger", r.Trigger, "changes", finished.Changes)
	} else {
		s.log.Error("job run failed", "job", e.Name, "run", finished.ID, "trigger", r.Trigger, "outcome", outcome, "err", errText)
		if s.alert != nil && st.ConsecutiveFailures >= s.after {
			s.alert.JobFailing(Alert{Job: e.Name, Failures: st.ConsecutiveFailures, Outcome: outcome, Error: errText, Time: end})
		}
	}
	out := *finished
	report(runEvent{run: &out})
	return &out, nil
}

// invoke calls the job with a context that ends at its timeout, measured
// on the scheduler's clock, and classifies the outcome.
func (s *Scheduler) invoke(ctx context.Context, e *entry, now time.Time) (res Result, outcome string, err error) {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := s.clock.NewTimer(e.Timeout)
	defer timer.Stop()
	errTimeout := fmt.Errorf("the run took longer than its timeout of %s and was cancelled", e.Timeout)
	go func() {
		select {
		case <-timer.C():
			cancel(errTimeout)
		case <-rctx.Done():
		}
	}()
	res, err = func() (res Result, err error) {
		defer func() {
			if v := recover(); v != nil {
				err = fmt.Errorf("the job panicked: %v", v)
			}
		}()
		return e.Job.Run(rctx, now)
	}()
	switch cause := context.Cause(rctx); {
	case errors.Is(cause, errTimeout):
		return res, OutcomeTimeout, errTimeout
	case err == nil:
		return res, OutcomeOK, nil
	case ctx.Err() != nil:
		return res, OutcomeInterrupted, fmt.Errorf("valet stopped during the run: %w", err)
	default:
		return res, OutcomeError, err
	}
}

func startEntry(name string, r *Run) audit.Entry {
	e := audit.Entry{Kind: KindStart, Actor: actor(name, r), Details: map[string]string{
		"job": name, "run": strconv.FormatUint(r.ID, 10), "trigger": r.Trigger,
	}}
	return e
}

func endEntry(name string, r *Run) audit.Entry {
	d := map[string]string{}
	for k, v := range r.Changes {
		d[k] = v
	}
	d["job"], d["run"], d["trigger"], d["outcome"] = name, strconv.FormatUint(r.ID, 10), r.Trigger, r.Outcome
	d["started"] = r.Started.UTC().Format(time.RFC3339Nano)
	d["duration_ms"] = strconv.FormatInt(r.Ended.Sub(r.Started).Milliseconds(), 10)
	decision := audit.Allow
	if r.Outcome != OutcomeOK {
		decision = audit.Deny
	}
	return audit.Entry{Kind: KindEnd, Actor: actor(name, r), Decision: decision, Reason: r.Error, Details: d}
}

// actor is the operator who asked for a manual run, or the job itself.
func actor(name string, r *Run) audit.Actor {
	if r.Operator != "" {
		return audit.Actor{Type: audit.ActorOperator, ID: r.Operator}
	}
	return audit.Actor{Type: audit.ActorJob, ID: name}
}

// RunNow starts a run of the named job for operator (trigger manual) and
// waits for it to end, or for ctx to end first. It returns the finished
// run; or, when ctx ends first, the started run (Ended zero) and ctx's
// error: the run goes on, and the job's state shows its outcome later.
// Errors: ErrNotFound (no such job), ErrBusy (a run is in progress),
// ErrNotLeader, or the store's error.
func (s *Scheduler) RunNow(ctx context.Context, name, operator string, wait time.Duration) (*Run, error) {
	e, ok := s.byName[name]
	if !ok {
		return nil, ErrNotFound
	}
	if !s.leader.Leading() {
		return nil, ErrNotLeader
	}
	events := make(chan runEvent, 2)
	// The run belongs to the scheduler, not to the request: a client
	// that goes away does not cancel it, the end of the scheduler's Run
	// (a lost lead, a shutdown) does, as it does the scheduled runs, so
	// a replica that lost the lead is not held out of the next election
	// by a run whose writes can no longer land.
	s.mu.Lock()
	rctx := s.runCtx
	s.mu.Unlock()
	if rctx == nil {
		rctx = context.WithoutCancel(ctx) // Run has not started yet
	}
	s.launch(rctx, e, Run{Trigger: TriggerManual, Operator: operator}, events)
	ev := <-events
	if ev.err != nil {
		return nil, ev.err
	}
	started := ev.run
	timer := s.clock.NewTimer(wait)
	defer timer.Stop()
	select {
	case ev := <-events:
		// The run holds the job until its goroutine ends, just after it
		// reported: wait for that, so a run asked for after this answer
		// is not refused as busy.
		e.mu.Lock()
		held := e.done
		e.mu.Unlock()
		<-held
		if ev.err != nil {
			return started, ev.err
		}
		return ev.run, nil
	case <-timer.C():
		return started, context.DeadlineExceeded
	case <-ctx.Done():
		return started, ctx.Err()
	}
}

// Status is a job as operators see it: its configuration, its stored
// state, and what this process counted since it started.
type Status struct {
	Name        string        `json:"name"`
	Type        string        `json:"type"`
	Description string        `json:"description,omitempty"`
	Schedule    string        `json:"schedule"`
	Jitter      time.Duration `json:"-"`
	Timeout     time.Duration `json:"-"`
	RunOnStart  bool          `json:"run_on_start"`
	// Running says whether a run is in progress in this process.
	Running bool `json:"running"`
	// Skips counts runs skipped since this process started.
	Skips uint64 `json:"skips"`
	State *State `json:"state"`
}

// List returns every job's status, in configuration order.
func (s *Scheduler) List(ctx context.Context) ([]Status, error) {
	out := make([]Status, 0, len(s.jobs))
	for _, e := range s.jobs {
		st, err := s.status(ctx, e)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Get returns one job's status, or ErrNotFound.
func (s *Scheduler) Get(ctx context.Context, name string) (Status, error) {
	e, ok := s.byName[name]
	if !ok {
		return Status{}, ErrNotFound
	}
	return s.status(ctx, e)
}

func (s *Scheduler) status(ctx context.Context, e *entry) (Status, error) {
	st, err := s.store.JobState(ctx, e.Name)
	if err != nil {
		return Status{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if st.NextRun.IsZero() {
		// Not recorded yet (the scheduler has not started, or this
		// process does not lead): the schedule says.
		st.NextRun = e.next
		if st.NextRun.IsZero() {
			st.NextRun = e.Parsed.Next(s.clock.Now())
		}
	}
	return Status{Name: e.Name, Type: e.Type, Description: e.Description, Schedule: e.Schedule, Jitter: e.Jitter,
		Timeout: e.Timeout, RunOnStart: e.RunOnStart, Running: e.running, Skips: e.skips, State: st}, nil
}

// Has reports whether a job of that name is configured.
func (s *Scheduler) Has(name string) bool {
	_, ok := s.byName[name]
	return ok
}
