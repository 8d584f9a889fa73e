package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
)

const (
	permitAll = `@id("permit-all") permit(principal, action, resource);`
	forbidAll = `@id("forbid-all") forbid(principal, action, resource);`
)

// reloadRecorder collects OnReload calls, and announces each on reloaded.
type reloadRecorder struct {
	mu       sync.Mutex
	calls    []reloadCall
	reloaded chan struct{}
}

type reloadCall struct {
	version string
	err     error
}

func (r *reloadRecorder) record(version string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, reloadCall{version, err})
	select {
	case r.reloaded <- struct{}{}:
	default:
	}
}

// count is how many times OnReload was called.
func (r *reloadRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func (r *reloadRecorder) last(t *testing.T) reloadCall {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) == 0 {
		t.Fatal("OnReload was not called")
	}
	return r.calls[len(r.calls)-1]
}

// newTestEngine starts an engine on a temp dir holding files.
func newTestEngine(t *testing.T, files map[string]string, opts Options) (*Engine, string, *reloadRecorder) {
	t.Helper()
	dir := writePolicies(t, t.TempDir(), files)
	rec := &reloadRecorder{reloaded: make(chan struct{}, 1)}
	opts.Dir = dir
	opts.OnReload = rec.record
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e, err := NewEngine(opts)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	return e, dir, rec
}

// allowed asks e to authorize the base request.
func allowed(t *testing.T, e *Engine) bool {
	t.Helper()
	dec, err := e.Authorize(context.Background(), baseRequest())
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	if dec.Version != e.Version() {
		t.Errorf("decision version %q, engine version %q", dec.Version, e.Version())
	}
	return dec.Allowed
}

func TestNewEngineRefusesBadDirectories(t *testing.T) {
	tests := map[string]struct {
		dir  func(t *testing.T) string
		want string
	}{
		"no dir option": {func(t *testing.T) string { return "" }, "Options.Dir"},
		"missing dir":   {func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") }, "read policy directory"},
		"empty dir":     {func(t *testing.T) string { return t.TempDir() }, "no *.cedar files"},
		"broken policy": {func(t *testing.T) string {
			return writePolicies(t, t.TempDir(), map[string]string{"bad.cedar": "permit(principal, action resource);"})
		}, "bad.cedar:1:"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := NewEngine(Options{Dir: tt.dir(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewEngine = %v, %v; want an error mentioning %q", e, err, tt.want)
			}
		})
	}
	t.Run("unknown on_error", func(t *testing.T) {
		dir := writePolicies(t, t.TempDir(), map[string]string{"a.cedar": permitAll})
		e, err := NewEngine(Options{Dir: dir, OnError: "ignore", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err == nil || !strings.Contains(err.Error(), `"ignore"`) || !strings.Contains(err.Error(), "deny or skip") {
			t.Fatalf("NewEngine = %v, %v; want an error naming the mode and the choices", e, err)
		}
	})
}

// Every evaluation error is logged at WARN with the policy, the request id,
// the agent, the role and the error, and counted, whichever mode decides.
func TestEngineReportsEvaluationErrors(t *testing.T) {
	policies := map[string]string{"a.cedar": permitAll + `
		@id("typo") forbid(principal, action, resource) when { principal.namepsace == "web" };`}
	tests := []struct {
		mode    broker.PolicyOnError
		allowed bool
	}{
		{"", false},
		{broker.PolicyOnErrorDeny, false},
		{broker.PolicyOnErrorSkip, true},
	}
	for _, tt := range tests {
		t.Run("on_error "+string(tt.mode), func(t *testing.T) {
			var logs bytes.Buffer
			var counted []string
			e, _, _ := newTestEngine(t, policies, Options{
				OnError:     tt.mode,
				Logger:      slog.New(slog.NewJSONHandler(&logs, nil)),
				OnEvalError: func(id string) { counted = append(counted, id) },
			})
			req := baseRequest()
			req.RequestID = "req-42"
			dec, err := e.Authorize(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Allowed != tt.allowed || !slices.Equal(dec.ErroredPolicyIDs(), []string{"typo"}) {
				t.Errorf("decision %+v, want allowed=%v with typo errored", dec, tt.allowed)
			}
			if !slices.Equal(counted, []string{"typo"}) {
				t.Errorf("counted %v, want [typo]", counted)
			}
			var warned bool
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				if rec["msg"] != "policy evaluation error" {
					continue
				}
				warned = true
				want := map[string]any{"level": "WARN", "policy": "typo", "effect": "forbid", "request_id": "req-42",
					"agent": req.Principal.ID, "role": "pg-readonly", "action": "mint", "allowed": tt.allowed}
				for k, v := range want {
					if rec[k] != v {
						t.Errorf("log %s = %v, want %v", k, rec[k], v)
					}
				}
				if msg, _ := rec["err"].(string); !strings.Contains(msg, "namepsace") {
					t.Errorf("log err = %q, want the evaluator's error naming the attribute", msg)
				}
			}
			if !warned {
				t.Errorf("no policy evaluation error logged:\n%s", logs.String())
			}
		})
	}
}

func TestReload(t *testing.T) {
	t.Run("a valid change takes effect", func(t *testing.T) {
		e, dir, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{})
		v1 := e.Version()
		if !allowed(t, e) {
			t.Fatal("permit-all did not allow")
		}
		writePolicies(t, dir, map[string]string{"b.cedar": forbidAll})
		if err := e.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if allowed(t, e) {
			t.Error("still allowed after adding forbid-all")
		}
		if e.Version() == v1 {
			t.Error("version did not change")
		}
		if c := rec.last(t); c.version != e.Version() || c.err != nil {
			t.Errorf("OnReload(%q, %v), want (%q, nil)", c.version, c.err, e.Version())
		}
	})

	t.Run("an unchanged directory keeps its version", func(t *testing.T) {
		e, _, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{})
		v1 := e.Version()
		if err := e.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if e.Version() != v1 {
			t.Errorf("version changed from %q to %q without a change", v1, e.Version())
		}
		if c := rec.last(t); c.version != v1 || c.err != nil {
			t.Errorf("OnReload(%q, %v), want (%q, nil)", c.version, c.err, v1)
		}
	})

	t.Run("a broken file keeps the old set", func(t *testing.T) {
		e, dir, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{})
		v1 := e.Version()
		writePolicies(t, dir, map[string]string{"a.cedar": forbidAll, "b.cedar": "permit(principal, action, resource)\nwhen { context.risk < };"})
		err := e.Reload()
		if err == nil || !strings.Contains(err.Error(), "b.cedar:2:") {
			t.Fatalf("Reload = %v, want an error naming b.cedar line 2", err)
		}
		if e.Version() != v1 || !allowed(t, e) {
			t.Errorf("the broken reload replaced the set (version %q, was %q)", e.Version(), v1)
		}
		c := rec.last(t)
		if c.version != v1 || c.err == nil || !strings.Contains(c.err.Error(), "b.cedar:2:") {
			t.Errorf("OnReload(%q, %v), want (%q, an error naming b.cedar:2)", c.version, c.err, v1)
		}
	})

	t.Run("deleting every file keeps the old set", func(t *testing.T) {
		e, dir, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll, "b.cedar": `@id("x") forbid(principal, action, resource) when { context.risk > 90 };`}, Options{})
		v1 := e.Version()
		for _, name := range []string{"a.cedar", "b.cedar"} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		err := e.Reload()
		if err == nil || !strings.Contains(err.Error(), "no *.cedar files") {
			t.Fatalf("Reload = %v, want an error saying there are no policy files", err)
		}
		if e.Version() != v1 || !allowed(t, e) {
			t.Error("the empty reload replaced the set")
		}
		if c := rec.last(t); c.version != v1 || c.err == nil {
			t.Errorf("OnReload(%q, %v), want (%q, an error)", c.version, c.err, v1)
		}
	})
}

// Authorize must not race with Reload (run with -race).
func TestAuthorizeDuringReload(t *testing.T) {
	e, dir, _ := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := e.Authorize(ctx, baseRequest()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range 20 {
		src := permitAll
		if i%2 == 1 {
			src = forbidAll
		}
		writePolicies(t, dir, map[string]string{"a.cedar": src})
		if err := e.Reload(); err != nil {
			t.Error(err)
		}
	}
	cancel()
	wg.Wait()
}

func TestWatch(t *testing.T) {
	start := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	fake := clock.NewFake(start)
	e, dir, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{Clock: fake})
	v1 := e.Version()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v", err)
		}
	})

	// Watch may not have added its watch yet when the file changes: keep
	// rewriting until an event arms the debounce timer.
	want := mustLoadVersion(t, map[string]string{"a.cedar": forbidAll})
	deadline := time.Now().Add(10 * time.Second)
	for e.Version() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Watch did not reload within 10s: version %q, want %q", e.Version(), want)
		}
		if fake.Waiters() == 0 {
			// Replace atomically, as editors and ConfigMaps do, so a
			// reload never sees a half-written file.
			tmp := filepath.Join(dir, "a.cedar.tmp")
			if err := os.WriteFile(tmp, []byte(forbidAll), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(dir, "a.cedar")); err != nil {
				t.Fatal(err)
			}
		} else {
			fake.Advance(DefaultDebounce)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if allowed(t, e) {
		t.Error("the watched change did not take effect")
	}
	if c := rec.last(t); c.err != nil || c.version == v1 {
		t.Errorf("OnReload(%q, %v) after the watched change", c.version, c.err)
	}
}

func TestWatchDebounces(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	e, dir, rec := newTestEngine(t, map[string]string{"a.cedar": permitAll}, Options{Clock: fake})
	// The watcher's channels are the test's: unbuffered, so a send returns
	// only once the loop has taken the event, and a Chmod (which changes
	// nothing) proves the loop has finished with the events before it.
	events, errs := make(chan fsnotify.Event), make(chan error)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.reloadOnChange(ctx, events, errs) }()
	defer func() {
		cancel()
		<-done
	}()
	settled := func() { events <- fsnotify.Event{Name: dir, Op: fsnotify.Chmod} }

	// Until the debounce interval has passed, nothing is reloaded, however
	// many changes arrive; each restarts the interval.
	writePolicies(t, dir, map[string]string{"b.cedar": forbidAll})
	for range 5 {
		events <- fsnotify.Event{Name: filepath.Join(dir, "b.cedar"), Op: fsnotify.Write}
		settled() // the timer is armed at this time, not later
		fake.Advance(DefaultDebounce / 2)
	}
	if n := fake.Waiters(); n != 1 {
		t.Fatalf("%d timers armed after a burst of changes, want the one debounce timer", n)
	}
	fake.Advance(DefaultDebounce - DefaultDebounce/2 - time.Millisecond)
	settled()
	if n, armed := rec.count(), fake.Waiters(); n != 0 || armed != 1 {
		t.Fatalf("%d reloads and %d timers before the debounce interval passed after the last change, want 0 and 1", n, armed)
	}
	// Once it has passed, the burst causes exactly one reload.
	fake.Advance(time.Millisecond)
	select {
	case <-rec.reloaded:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s after the debounce interval")
	}
	settled()
	if n, armed := rec.count(), fake.Waiters(); n != 1 || armed != 0 {
		t.Errorf("a burst of changes caused %d reloads, with %d timers left, want 1 and none", n, armed)
	}
	if allowed(t, e) {
		t.Error("the reload did not load the changed policies")
	}
}

func mustLoadVersion(t *testing.T, files map[string]string) string {
	t.Helper()
	return mustLoad(t, files).Version()
}

var _ broker.Authorizer = (*Engine)(nil)
