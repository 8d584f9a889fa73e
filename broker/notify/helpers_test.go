package notify_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// waitLimit bounds every wait for something another goroutine does; it is
// a failure deadline, never a way to let time pass.
const waitLimit = 10 * time.Second

var start = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// hang is an answer that blocks until the request is abandoned or the
// receiver is released.
const hang = -1

// request is one request a receiver got.
type request struct {
	n      int // 1-based
	header http.Header
	body   []byte
}

// receiver is a local webhook endpoint. Every request is sent to reqs
// before it is answered.
type receiver struct {
	url         string
	reqs        chan request
	releaseOnce sync.Once
	released    chan struct{}
}

// newReceiver starts a receiver answering the n-th request (from 1) with
// answer(n) (hang: block until the client gives up or release is called).
func newReceiver(tb testing.TB, answer func(n int, w http.ResponseWriter) int) *receiver {
	tb.Helper()
	rc := &receiver{reqs: make(chan request, 8192), released: make(chan struct{})}
	var count atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			tb.Errorf("receiver: read body: %v", err)
		}
		n := int(count.Add(1))
		rc.reqs <- request{n: n, header: r.Header.Clone(), body: body}
		status := answer(n, w)
		if status == hang {
			select {
			case <-r.Context().Done():
				return
			case <-rc.released:
				status = http.StatusOK
			}
		}
		w.WriteHeader(status)
	}))
	rc.url = srv.URL + "/hooks/valet"
	tb.Cleanup(func() {
		rc.release()
		srv.Close()
	})
	return rc
}

// statuses answers the n-th request with s[n-1], repeating the last.
func statuses(s ...int) func(int, http.ResponseWriter) int {
	return func(n int, _ http.ResponseWriter) int { return s[min(n, len(s))-1] }
}

// release lets hanging requests answer 200.
func (rc *receiver) release() { rc.releaseOnce.Do(func() { close(rc.released) }) }

// next returns the next request.
func (rc *receiver) next(tb testing.TB) request {
	tb.Helper()
	select {
	case r := <-rc.reqs:
		return r
	case <-time.After(waitLimit):
		tb.Fatalf("the receiver got no request within %s", waitLimit)
		return request{}
	}
}

// none fails if the receiver has a request waiting.
func (rc *receiver) none(tb testing.TB) {
	tb.Helper()
	select {
	case r := <-rc.reqs:
		tb.Errorf("unexpected request %d: %s %s", r.n, r.header.Get(notify.HeaderEvent), r.body)
	default:
	}
}

// result is one OnResult call.
type result struct{ webhook, event, outcome string }

// results records OnResult calls.
type results struct{ ch chan result }

func newResults() *results { return &results{ch: make(chan result, 1<<14)} }

func (r *results) on(webhook, event, outcome string) { r.ch <- result{webhook, event, outcome} }

func (r *results) next(tb testing.TB) result {
	tb.Helper()
	select {
	case x := <-r.ch:
		return x
	case <-time.After(waitLimit):
		tb.Fatalf("no delivery outcome within %s", waitLimit)
		return result{}
	}
}

// timerClock is a fake clock that reports every timer it arms, so a test
// can check the wait and advance the clock by exactly that much.
type timerClock struct {
	*clock.Fake
	armed chan time.Duration
}

func newTimerClock() *timerClock {
	return &timerClock{Fake: clock.NewFake(start), armed: make(chan time.Duration, 64)}
}

func (c *timerClock) NewTimer(d time.Duration) clock.Timer {
	t := c.Fake.NewTimer(d)
	c.armed <- d
	return t
}

func (c *timerClock) nextTimer(tb testing.TB) time.Duration {
	tb.Helper()
	select {
	case d := <-c.armed:
		return d
	case <-time.After(waitLimit):
		tb.Fatalf("no retry timer armed within %s", waitLimit)
		return 0
	}
}

// logBuffer collects log output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// running is a Dispatcher whose Run is going.
type running struct {
	*notify.Dispatcher
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returns
}

// mustRun creates a Dispatcher and runs it until the test ends.
func mustRun(tb testing.TB, opts notify.Options) *running {
	tb.Helper()
	d, err := notify.New(opts)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Dispatcher: d, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		d.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		r.waitStopped(tb)
	})
	return r
}

func (r *running) waitStopped(tb testing.TB) {
	tb.Helper()
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		tb.Fatalf("Run did not return within %s of being stopped", waitLimit)
	}
}

func writeSecret(tb testing.TB, content string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// testGrant is an approval request waiting for its second approval.
func testGrant() *grants.Grant {
	return &grants.Grant{
		ID:        "01JNQ8GRANT",
		Kind:      grants.KindApproval,
		AgentID:   "k8s/prod/deployer",
		Role:      "prod-admin",
		TTL:       15 * time.Minute,
		Reason:    "rotate the db password",
		Lineage:   leases.Lineage{Issuer: "https://kubernetes.default.svc", PodUID: "pod-1"},
		Requester: []string{"k8s/prod/deployer", "dev@example.com"},
		Binding:   "b1nd",
		State:     grants.StatePending,
		Required:  2,
		Approvals: []grants.Decision{{Operator: "alice", At: start.Add(-time.Minute), Method: "token"}},
		CreatedAt: start.Add(-5 * time.Minute),
		ExpiresAt: start.Add(time.Hour),
	}
}

func testEvent(typ string) broker.Event {
	g := testGrant()
	sev := broker.SeverityInfo
	if typ == broker.EventBreakGlass {
		g.Kind, g.State, g.Required, g.Approvals = grants.KindBreakGlass, grants.StateRedeemed, 0, nil
		g.Reason = "db down"
		sev = broker.SeverityHigh
	}
	return broker.Event{Type: typ, Severity: sev, Time: start, Grant: g, URL: "https://valet.example.com/ui/grants/" + g.ID}
}

var allEvents = []string{
	broker.EventGrantRequested, broker.EventGrantApproved, broker.EventGrantDenied, broker.EventGrantExpired,
	broker.EventGrantRedeemed, broker.EventBreakGlass, broker.EventBreakGlassReviewed,
}

// verifySignature is the receiver's recipe from doc.go, with the
// receiver's clock passed in.
func verifySignature(secret []byte, h http.Header, body []byte, now time.Time) bool {
	ts := h.Get("X-Valet-Timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(h.Get("X-Valet-Signature")))
}

// webhook returns a webhook with valet's defaults, named name and sending
// to url, then edit (if not nil) applied.
func webhook(name, url string, edit func(*notify.WebhookConfig)) notify.WebhookConfig {
	return config.Defaulted(func(w *notify.WebhookConfig) {
		w.Name, w.URL = name, url
		if edit != nil {
			edit(w)
		}
	})
}
