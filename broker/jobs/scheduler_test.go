package jobs_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 30, 0, time.UTC)

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// harness is a scheduler on a real bbolt file and a fake clock.
type harness struct {
	t      *testing.T
	path   string
	store  *bolt.Store
	clock  *clock.Fake
	s      *jobs.Scheduler
	obs    *observer
	alerts *alerter
	cancel context.CancelFunc
	done   chan struct{}
}

type observer struct {
	mu    sync.Mutex
	runs  map[string][]string // job -> outcomes
	skips map[string]int
}

func (o *observer) JobRun(name, outcome string, d time.Duration, end time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.runs[name] = append(o.runs[name], outcome)
}

func (o *observer) JobSkipped(name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.skips[name]++
}

func (o *observer) outcomes(name string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.runs[name]...)
}

func (o *observer) skipped(name string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.skips[name]
}

type alerter struct {
	mu     sync.Mutex
	alerts []jobs.Alert
}

func (a *alerter) JobFailing(al jobs.Alert) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.alerts = append(a.alerts, al)
}

func (a *alerter) list() []jobs.Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]jobs.Alert(nil), a.alerts...)
}

type leader struct {
	mu      sync.Mutex
	leading bool
}

func (l *leader) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading
}

func (l *leader) set(v bool) {
	l.mu.Lock()
	l.leading = v
	l.mu.Unlock()
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "valet.db"), clock: clock.NewFake(t0)}
	h.open()
	t.Cleanup(func() {
		h.stop()
		h.store.Close()
	})
	return h
}

func (h *harness) open() {
	s, err := bolt.Open(h.path, bolt.Options{})
	if err != nil {
		h.t.Fatal(err)
	}
	h.store = s
}

// start builds a scheduler of entries and starts Run; it returns once the
// scheduler waits for its first timer (want timers armed on the clock).
func (h *harness) start(l jobs.Leadership, entries ...jobs.Entry) {
	h.t.Helper()
	h.obs = &observer{runs: map[string][]string{}, skips: map[string]int{}}
	h.alerts = &alerter{}
	s, err := jobs.New(jobs.Options{Jobs: entries, Store: h.store, Clock: h.clock, Leader: l, Observer: h.obs,
		Alerter: h.alerts, Jitter: func() float64 { return 0.5 }})
	if err != nil {
		h.t.Fatal(err)
	}
	h.s = s
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		s.Run(ctx)
	}()
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func (h *harness) state(name string) *jobs.State {
	h.t.Helper()
	st, err := h.store.JobState(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// waitRuns waits until the job has finished n runs and the scheduler
// holds no run of it.
func (h *harness) waitRuns(name string, n int) *jobs.State {
	h.t.Helper()
	var st *jobs.State
	waitUntil(h.t, "job "+name+" finished its runs", func() bool {
		st = h.state(name)
		status, err := h.s.Get(context.Background(), name)
		return len(st.Recent) >= n && st.Current == nil && err == nil && !status.Running
	})
	return st
}

// waitArmed waits until n timers are armed on the fake clock.
func (h *harness) waitArmed(n int) {
	h.t.Helper()
	waitUntil(h.t, "timers armed", func() bool { return h.clock.Waiters() == n })
}

func (h *harness) records(kind string) []audit.Record {
	h.t.Helper()
	recs, err := h.store.ListAudit(context.Background(), audit.Filter{Kind: kind, Limit: 1000})
	if err != nil {
		h.t.Fatal(err)
	}
	return recs
}

func entry(name, schedule string, timeout time.Duration, job jobs.Job) jobs.Entry {
	p, err := jobs.ParseSchedule(schedule)
	if err != nil {
		panic(err)
	}
	return jobs.Entry{Name: name, Type: name, Schedule: schedule, Parsed: p, Timeout: timeout, Job: job}
}

// counting is a job that counts its runs and returns what fail says.
type counting struct {
	mu   sync.Mutex
	at   []time.Time
	fail error
}

func (c *counting) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = append(c.at, now)
	return jobs.Result{Changes: map[string]string{"pass": time.Duration(len(c.at)).String()}}, c.fail
}

func (c *counting) setFail(err error) {
	c.mu.Lock()
	c.fail = err
	c.mu.Unlock()
}

func (c *counting) runs() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.at...)
}

// A schedule drives runs on the fake clock; each run is recorded in the
// job's state and audited with its start and its end.
func TestSchedulerRunsOnSchedule(t *testing.T) {
	cases := []struct {
		name     string
		schedule string
		advance  []time.Duration
		want     []time.Time
	}{
		{"descriptor @every", "@every 1m", []time.Duration{time.Minute, time.Minute},
			[]time.Time{t0.Add(time.Minute), t0.Add(2 * time.Minute)}},
		{"cron with seconds", "15 * * * * *", []time.Duration{45 * time.Second, time.Minute},
			[]time.Time{t0.Add(45 * time.Second), t0.Add(105 * time.Second)}},
		{"five-field cron", "*/2 * * * *", []time.Duration{90 * time.Second, 2 * time.Minute},
			[]time.Time{t0.Add(90 * time.Second), t0.Add(210 * time.Second)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			job := &counting{}
			h.start(nil, entry("tick", tc.schedule, time.Minute, job))
			h.waitArmed(1)
			for i, d := range tc.advance {
				h.clock.Advance(d)
				h.waitRuns("tick", i+1)
				h.waitArmed(1)
			}
			got := job.runs()
			if len(got) != len(tc.want) {
				t.Fatalf("runs at %v, want %v", got, tc.want)
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("run %d at %v, want %v", i+1, got[i], tc.want[i])
				}
			}
			st := h.state("tick")
			if st.Runs != 2 || st.LastOutcome != jobs.OutcomeOK || !st.LastSuccess.Equal(tc.want[1]) || st.Recent[0].Changes["pass"] != "2ns" {
				t.Errorf("state %+v", st)
			}
			if st.NextRun.IsZero() || !st.NextRun.After(tc.want[1]) {
				t.Errorf("next run %v, want after the last run", st.NextRun)
			}
			starts, ends := h.records(audit.KindJobStart), h.records(audit.KindJobEnd)
			if len(starts) != 2 || len(ends) != 2 {
				t.Fatalf("%d job.start and %d job.end records, want 2 each", len(starts), len(ends))
			}
			e := ends[1]
			if e.Actor != (audit.Actor{Type: audit.ActorJob, ID: "tick"}) || e.Details["outcome"] != "ok" || e.Details["run"] != "2" ||
				e.Details["trigger"] != jobs.TriggerSchedule || e.Details["pass"] != "2ns" || e.Decision != audit.Allow {
				t.Errorf("job.end record %+v", e)
			}
			if got := h.obs.outcomes("tick"); len(got) != 2 || got[0] != "ok" {
				t.Errorf("observed outcomes %v", got)
			}
		})
	}
}

// blocking is a job that holds its run until released (or its context
// ends) and says whether its context ended.
type blocking struct {
	started chan struct{}
	release chan struct{}
	ctxErr  chan error
}

func newBlocking() *blocking {
	return &blocking{started: make(chan struct{}, 10), release: make(chan struct{}), ctxErr: make(chan error, 10)}
}

func (b *blocking) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return jobs.Result{}, nil
	case <-ctx.Done():
		b.ctxErr <- ctx.Err()
		return jobs.Result{}, ctx.Err()
	}
}

// A run that would overlap the one in progress is skipped and counted;
// a run that outlives its timeout is cancelled through its context.
func TestSchedulerOverlapAndTimeout(t *testing.T) {
	h := newHarness(t)
	job := newBlocking()
	h.start(nil, entry("slow", "@every 1m", 90*time.Second, job))
	h.waitArmed(1)
	h.clock.Advance(time.Minute) // run 1 starts
	<-job.started
	h.waitArmed(2)               // the schedule and the run's timeout
	h.clock.Advance(time.Minute) // run 2 is due: skipped
	waitUntil(t, "the overlapping run is counted as skipped", func() bool { return h.obs.skipped("slow") == 1 })
	if st := h.state("slow"); st.Runs != 1 || st.Current == nil {
		t.Fatalf("state %+v: want run 1 in progress and no other", st)
	}
	h.waitArmed(2)
	h.clock.Advance(30 * time.Second) // run 1 reaches its 90s timeout
	if err := <-job.ctxErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the job's context ended with %v, want it cancelled", err)
	}
	st := h.waitRuns("slow", 1)
	if st.LastOutcome != jobs.OutcomeTimeout || !strings.Contains(st.LastError, "timeout of 1m30s") || st.ConsecutiveFailures != 1 {
		t.Errorf("state %+v: want a timeout", st)
	}
	status, err := h.s.Get(context.Background(), "slow")
	if err != nil || status.Skips != 1 || status.Running {
		t.Errorf("status %+v, %v: want 1 skip, not running", status, err)
	}
	if got := h.obs.outcomes("slow"); len(got) != 1 || got[0] != jobs.OutcomeTimeout {
		t.Errorf("observed %v", got)
	}
}

// A failing run is recorded with its error and retried at the next
// scheduled time; after AlertAfter failures in a row an alert is raised;
// a success clears the count.
func TestSchedulerFailuresAlertAndRecover(t *testing.T) {
	h := newHarness(t)
	job := &counting{fail: errors.New("backend unreachable")}
	h.start(nil, entry("flaky", "@every 1m", time.Minute, job))
	for i := 1; i <= 4; i++ {
		h.waitArmed(1)
		h.clock.Advance(time.Minute)
		h.waitRuns("flaky", i)
	}
	st := h.state("flaky")
	if st.ConsecutiveFailures != 4 || st.LastOutcome != jobs.OutcomeError || st.LastError != "backend unreachable" || !st.LastSuccess.IsZero() {
		t.Fatalf("state %+v", st)
	}
	alerts := h.alerts.list()
	if len(alerts) != 2 || alerts[0].Failures != 3 || alerts[1].Failures != 4 || alerts[0].Job != "flaky" || alerts[0].Error != "backend unreachable" {
		t.Fatalf("alerts %+v, want one at 3 failures and one at 4", alerts)
	}
	end := h.records(audit.KindJobEnd)[3]
	if end.Decision != audit.Deny || end.Reason != "backend unreachable" || end.Details["outcome"] != "error" {
		t.Errorf("job.end of a failure %+v", end)
	}
	job.setFail(nil)
	h.waitArmed(1)
	h.clock.Advance(time.Minute)
	if st := h.waitRuns("flaky", 5); st.ConsecutiveFailures != 0 || st.LastOutcome != jobs.OutcomeOK {
		t.Errorf("after a success: %+v", st)
	}
}

// Job state survives a restart; a run missed while valet was down runs
// once at start for a job with run_on_start, and not for one without; a
// run a crash interrupted is recorded as interrupted.
func TestSchedulerRestart(t *testing.T) {
	cases := []struct {
		name        string
		runOnStart  bool
		down        time.Duration
		wantCatchUp bool
	}{
		{"missed, run_on_start", true, 2 * time.Hour, true},
		{"missed, no run_on_start", false, 2 * time.Hour, false},
		{"nothing missed", true, 10 * time.Minute, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			job := &counting{}
			e := entry("hourly", "@every 1h", time.Minute, job)
			e.RunOnStart = tc.runOnStart
			h.start(nil, e)
			h.waitArmed(1)
			h.clock.Advance(time.Hour)
			h.waitRuns("hourly", 1)
			h.waitArmed(1)
			h.stop()
			h.store.Close()

			h.clock.Advance(tc.down)
			h.open()
			if st := h.state("hourly"); st.Runs != 1 || st.LastOutcome != jobs.OutcomeOK || !st.NextRun.Equal(t0.Add(2*time.Hour)) {
				t.Fatalf("state after restart %+v: want the run and the next run kept", st)
			}
			h.start(nil, e)
			h.waitArmed(1)
			want := 1
			if tc.wantCatchUp {
				want = 2
				st := h.waitRuns("hourly", 2)
				if st.Recent[0].Trigger != jobs.TriggerStart {
					t.Errorf("catch-up run trigger %q", st.Recent[0].Trigger)
				}
			}
			if got := len(job.runs()); got != want {
				t.Errorf("%d runs, want %d", got, want)
			}
		})
	}
}

func TestSchedulerRecordsInterruptedRun(t *testing.T) {
	h := newHarness(t)
	// A run left in progress by a crash.
	if _, err := h.store.UpdateJob(context.Background(), "crashy", t0, func(st *jobs.State) ([]audit.Entry, error) {
		_, err := st.Start(jobs.Run{Trigger: jobs.TriggerSchedule, Started: t0})
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	h.start(nil, entry("crashy", "@daily", time.Minute, &counting{}))
	h.waitArmed(1)
	st := h.state("crashy")
	if st.Current != nil || st.LastOutcome != jobs.OutcomeInterrupted || st.ConsecutiveFailures != 1 {
		t.Fatalf("state %+v: want the crashed run recorded interrupted", st)
	}
	if ends := h.records(audit.KindJobEnd); len(ends) != 1 || ends[0].Details["outcome"] != jobs.OutcomeInterrupted {
		t.Errorf("job.end records %+v", ends)
	}
}

// TestSchedulerTakesOverTheRunOfAnEarlierLeader: replicas share the job
// state; a leader that died (or lost the lead) during a run leaves it in
// progress, and its end can never be recorded (its writes are fenced).
// The replica that leads next records that run interrupted and runs the
// job on its schedule, instead of skipping it forever as busy.
func TestSchedulerTakesOverTheRunOfAnEarlierLeader(t *testing.T) {
	h := newHarness(t)
	// The earlier leader's run, in progress when it died.
	if _, err := h.store.UpdateJob(context.Background(), "grants", t0, func(st *jobs.State) ([]audit.Entry, error) {
		_, err := st.Start(jobs.Run{Trigger: jobs.TriggerSchedule, Started: t0})
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	l := &leader{}
	job := &counting{}
	h.start(l, entry("grants", "@every 30s", time.Minute, job))
	h.waitArmed(1)
	l.set(true) // this replica leads from now on
	h.clock.Advance(30 * time.Second)
	st := h.waitRuns("grants", 2)
	if got := len(job.runs()); got != 1 {
		t.Fatalf("%d runs of this replica, want 1", got)
	}
	if st.Recent[0].Outcome != jobs.OutcomeOK || st.Recent[1].Outcome != jobs.OutcomeInterrupted {
		t.Fatalf("recent runs %+v: want the earlier leader's interrupted, then this one's", st.Recent)
	}
	if h.obs.skipped("grants") != 0 {
		t.Errorf("the run was skipped %d times as busy", h.obs.skipped("grants"))
	}
}

// RunNow runs a job at once for an operator and answers with its outcome;
// it refuses an unknown job, a job with a run in progress, and any run
// when this process does not lead (scheduled runs do not happen then
// either).
func TestSchedulerRunNow(t *testing.T) {
	h := newHarness(t)
	l := &leader{leading: true}
	job := &counting{}
	slow := newBlocking()
	h.start(l, entry("tick", "@daily", time.Minute, job), entry("slow", "@daily", time.Hour, slow))
	h.waitArmed(1)
	ctx := context.Background()

	r, err := h.s.RunNow(ctx, "tick", "alice", time.Minute)
	if err != nil || r.Outcome != jobs.OutcomeOK || r.Operator != "alice" || r.Trigger != jobs.TriggerManual || r.ID != 1 {
		t.Fatalf("RunNow = %+v, %v", r, err)
	}
	if ends := h.records(audit.KindJobEnd); len(ends) != 1 || ends[0].Actor != (audit.Actor{Type: audit.ActorOperator, ID: "alice"}) {
		t.Errorf("job.end %+v: want the operator as actor", ends)
	}

	// Once RunNow has answered, the job is free: runs asked for one after
	// the other are never refused as busy.
	for i := range 200 {
		if _, err := h.s.RunNow(ctx, "tick", "alice", time.Minute); err != nil {
			t.Fatalf("run %d right after the previous one answered: %v", i+2, err)
		}
	}

	if _, err := h.s.RunNow(ctx, "nope", "alice", time.Minute); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}

	// A manual run that outlasts the wait answers with the started run.
	res := make(chan error, 1)
	go func() {
		r, err := h.s.RunNow(ctx, "slow", "alice", time.Second)
		if err == nil || r == nil || r.ID != 1 || !r.Ended.IsZero() {
			t.Errorf("RunNow of a run outlasting the wait = %+v, %v; want the started run", r, err)
		}
		res <- err
	}()
	<-slow.started
	h.waitArmed(3) // the schedule, the run's timeout, the wait
	h.clock.Advance(time.Second)
	if err := <-res; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("RunNow past its wait: %v", err)
	}
	if _, err := h.s.RunNow(ctx, "slow", "bob", time.Minute); !errors.Is(err, jobs.ErrBusy) {
		t.Errorf("second run while one is in progress: %v, want ErrBusy", err)
	}
	close(slow.release)
	h.waitRuns("slow", 1)

	l.set(false)
	if _, err := h.s.RunNow(ctx, "tick", "alice", time.Minute); !errors.Is(err, jobs.ErrNotLeader) {
		t.Errorf("not leading: %v, want ErrNotLeader", err)
	}
	h.waitArmed(1)
	h.clock.Advance(24 * time.Hour)
	h.waitArmed(1)
	if n := len(job.runs()); n != 201 {
		t.Errorf("%d runs of tick, want only the 201 manual ones while not leading", n)
	}
}

// Jitter moves each scheduled run later by a random fraction of it.
func TestSchedulerJitter(t *testing.T) {
	h := newHarness(t)
	job := &counting{}
	e := entry("spread", "@hourly", time.Minute, job)
	e.Jitter = 10 * time.Minute
	h.start(nil, e)
	h.waitArmed(1)
	top := t0.Truncate(time.Hour).Add(time.Hour)
	h.clock.Set(top.Add(4 * time.Minute))
	h.waitArmed(1)
	if len(job.runs()) != 0 {
		t.Fatal("ran before its jitter passed")
	}
	h.clock.Set(top.Add(5 * time.Minute)) // the fake jitter is half of 10m
	h.waitRuns("spread", 1)
	if got := job.runs(); !got[0].Equal(top.Add(5 * time.Minute)) {
		t.Errorf("ran at %v, want %v", got[0], top.Add(5*time.Minute))
	}
}

// slowFirstRead holds the first JobState read (the scheduler's start-up
// recovery) until released.
type slowFirstRead struct {
	jobs.Store
	once             sync.Once
	entered, release chan struct{}
}

func (s *slowFirstRead) JobState(ctx context.Context, name string) (*jobs.State, error) {
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.entered)
		<-s.release
	}
	return s.Store.JobState(ctx, name)
}

// TestRunNowDuringStartupRecovery: a manual run asked for while the
// scheduler reads the job's state at start is run, not refused as busy
// (no run was in progress), and the recovery leaves it alone.
func TestRunNowDuringStartupRecovery(t *testing.T) {
	h := newHarness(t)
	store := &slowFirstRead{Store: h.store, entered: make(chan struct{}), release: make(chan struct{})}
	s, err := jobs.New(jobs.Options{Jobs: []jobs.Entry{entry("tick", "@daily", time.Minute, &counting{})}, Store: store,
		Clock: h.clock, Leader: &leader{leading: true}, Jitter: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var released sync.Once
	release := func() { released.Do(func() { close(store.release) }) }
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { release(); cancel(); <-done })
	<-store.entered
	r, err := s.RunNow(context.Background(), "tick", "alice", time.Minute)
	if err != nil || r.Outcome != jobs.OutcomeOK {
		t.Fatalf("RunNow during the start-up recovery = %+v, %v; want a run", r, err)
	}
	release()
	waitUntil(t, "recovered and planned: the daily timer is armed", func() bool { return h.clock.Waiters() == 1 })
	st, err := h.store.JobState(context.Background(), "tick")
	if err != nil || st.Current != nil || len(st.Recent) != 1 || st.Recent[0].Outcome != jobs.OutcomeOK {
		t.Fatalf("state after the recovery: %+v, %v; want the manual run, ok", st, err)
	}
}

// TestManualRunEndsWithTheScheduler: a manual run in progress when the
// scheduler's Run ends (the lead lost, a shutdown) is cancelled like a
// scheduled one, and Run returns without waiting for the run's timeout.
func TestManualRunEndsWithTheScheduler(t *testing.T) {
	h := newHarness(t)
	slow := newBlocking()
	h.start(&leader{leading: true}, entry("slow", "@daily", time.Hour, slow))
	h.waitArmed(1)
	// Runs before the harness's cleanup: a run left running would hold
	// the scheduler's stop forever.
	t.Cleanup(func() { close(slow.release) })
	type answer struct {
		r   *jobs.Run
		err error
	}
	res := make(chan answer, 1)
	go func() {
		r, err := h.s.RunNow(context.Background(), "slow", "alice", time.Hour)
		res <- answer{r, err}
	}()
	<-slow.started
	h.cancel()
	select {
	case err := <-slow.ctxErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the manual run ended with %v, want its context cancelled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the manual run was not cancelled when the scheduler stopped")
	}
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if a := <-res; a.err != nil || a.r == nil || a.r.Outcome == jobs.OutcomeOK || a.r.Ended.IsZero() {
		t.Fatalf("RunNow of the cancelled run = %+v, %v; want the ended run, not ok", a.r, a.err)
	}
}
