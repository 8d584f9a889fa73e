package web

import (
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/jobs"
)

// countingJob counts its runs.
type countingJob struct {
	mu   sync.Mutex
	runs int
}

func (j *countingJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.runs++
	return jobs.Result{Changes: map[string]string{"n": "1"}}, nil
}

func (j *countingJob) count() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.runs
}

// The jobs page lists the jobs with their next and last runs; its run-now
// button needs a fresh sign-in, runs the job as the operator, and says
// how the run ended.
func TestConsoleJobs(t *testing.T) {
	job := &countingJob{}
	var sched *jobs.Scheduler
	f := newFixture(t, func(_ *fixtureConfig, wc *Config) {
		store, err := bolt.Open(filepath.Join(t.TempDir(), "jobs.db"), bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		p, err := jobs.ParseSchedule("@daily")
		if err != nil {
			t.Fatal(err)
		}
		sched, err = jobs.New(jobs.Options{Store: store, Clock: wc.Clock, Jobs: []jobs.Entry{{
			Name: "tick", Type: "tick", Description: "Counts", Schedule: "@daily", Parsed: p, Timeout: time.Minute, Job: job,
		}}})
		if err != nil {
			t.Fatal(err)
		}
		wc.Jobs = sched
	})
	b := f.browser()
	b.login("alice")
	page := b.get("/ui/jobs")
	mustContain(t, page.Body, "<strong>tick</strong>", "<code>@daily</code>", "never ran", `action="/ui/jobs/tick/run"`)
	csrf := csrfField.FindStringSubmatch(page.Body)[1]

	f.clock.Advance(11 * time.Minute) // past fresh_login (10m), within session_idle (15m)
	r := b.post("/ui/jobs/tick/run", url.Values{"csrf": {csrf}})
	if loc, _ := url.Parse(r.Location()); r.Status != http.StatusSeeOther || loc.Query().Get("reason") != "fresh" || loc.Query().Get("next") != "/ui/jobs" {
		t.Fatalf("run with a stale sign-in: %d %q", r.Status, r.Location())
	}
	if job.count() != 0 {
		t.Fatal("the job ran without a fresh sign-in")
	}

	b.login("alice", "/ui/jobs")
	csrf = csrfField.FindStringSubmatch(b.get("/ui/jobs").Body)[1]
	r = b.post("/ui/jobs/tick/run", url.Values{"csrf": {csrf}})
	if r.Status != http.StatusSeeOther || r.Location() != "/ui/jobs" || job.count() != 1 {
		t.Fatalf("run: %d %q, %d runs", r.Status, r.Location(), job.count())
	}
	mustContain(t, b.get("/ui/jobs").Body, "Job tick run 1 succeeded.", "decision-allow")
	st, err := sched.Get(context.Background(), "tick")
	if err != nil || st.State.Recent[0].Operator != "alice" {
		t.Fatalf("status %+v, %v: want the run recorded as alice's", st, err)
	}

	r = b.post("/ui/jobs/nope/run", url.Values{"csrf": {csrf}})
	if r.Status != http.StatusSeeOther || job.count() != 1 {
		t.Fatalf("unknown job: %d", r.Status)
	}
	if body := b.get("/ui/jobs").Body; !strings.Contains(body, "job nope is not configured") {
		t.Errorf("no error shown for an unknown job:\n%s", body)
	}
}
