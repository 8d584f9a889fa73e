package notify_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases/config"
)

func TestJSONPayloadAndHeaders(t *testing.T) {
	const secret = "s3cret-hmac-key"
	for _, tc := range []struct {
		name       string
		secretFile string // file content; "" for no secret_file
	}{
		{"signed", secret + "\n"},
		{"unsigned", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, statuses(http.StatusNoContent))
			clk := newTimerClock()
			hook := webhook("security", rc.url, nil)
			if tc.secretFile != "" {
				hook.SecretFile = writeSecret(t, tc.secretFile)
			}
			res := newResults()
			d := mustRun(t, notify.Options{Webhooks: []notify.WebhookConfig{hook}, Clock: clk, OnResult: res.on})

			ev := testEvent(broker.EventBreakGlass)
			d.Notify(ev)
			req := rc.next(t)
			if r := res.next(t); r != (result{"security", broker.EventBreakGlass, notify.OutcomeOK}) {
				t.Errorf("OnResult(%v), want ok", r)
			}

			h := req.header
			for k, want := range map[string]string{
				"Content-Type":         "application/json",
				"User-Agent":           "valet/notify",
				notify.HeaderEvent:     broker.EventBreakGlass,
				notify.HeaderTimestamp: strconv.FormatInt(start.Unix(), 10),
			} {
				if got := h.Get(k); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}

			var fields map[string]json.RawMessage
			if err := json.Unmarshal(req.body, &fields); err != nil {
				t.Fatalf("body is not a JSON object: %v\n%s", err, req.body)
			}
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range fields {
					if !yield(k) {
						return
					}
				}
			})
			if want := []string{"grant", "id", "severity", "time", "type", "url", "webhook"}; !slices.Equal(keys, want) {
				t.Errorf("body fields %v, want %v", keys, want)
			}
			var got struct {
				ID       string        `json:"id"`
				Webhook  string        `json:"webhook"`
				Type     string        `json:"type"`
				Severity string        `json:"severity"`
				Time     time.Time     `json:"time"`
				Grant    *grants.Grant `json:"grant"`
				URL      string        `json:"url"`
			}
			if err := json.Unmarshal(req.body, &got); err != nil {
				t.Fatal(err)
			}
			if got.ID == "" || got.ID != h.Get(notify.HeaderDelivery) {
				t.Errorf("body id %q, %s %q: want the same non-empty id", got.ID, notify.HeaderDelivery, h.Get(notify.HeaderDelivery))
			}
			if got.Webhook != "security" || got.Type != ev.Type || got.Severity != broker.SeverityHigh ||
				!got.Time.Equal(ev.Time) || got.URL != ev.URL {
				t.Errorf("body %+v does not match event %+v", got, ev)
			}
			if !reflect.DeepEqual(got.Grant, ev.Grant) {
				t.Errorf("grant round-trip:\n got %+v\nwant %+v", got.Grant, ev.Grant)
			}

			sig := h.Get(notify.HeaderSignature)
			if tc.secretFile == "" {
				if sig != "" {
					t.Errorf("unsigned webhook sent %s %q", notify.HeaderSignature, sig)
				}
				return
			}
			if bytes.Contains(req.body, []byte(secret)) {
				t.Error("the body contains the secret")
			}
			if !verifySignature([]byte(secret), h, req.body, start) {
				t.Errorf("signature %q does not verify with the documented recipe", sig)
			}
			if verifySignature([]byte("wrong-secret"), h, req.body, start) {
				t.Error("signature verifies with a wrong secret")
			}
			tampered := bytes.Replace(req.body, []byte("prod-admin"), []byte("prod-admix"), 1)
			if verifySignature([]byte(secret), h, tampered, start) {
				t.Error("signature verifies over a changed body")
			}
			if verifySignature([]byte(secret), h, req.body, start.Add(10*time.Minute)) {
				t.Error("a 10-minute-old request verifies (replay window)")
			}
			moved := h.Clone()
			moved.Set(notify.HeaderTimestamp, strconv.FormatInt(start.Unix()+1, 10))
			if verifySignature([]byte(secret), moved, req.body, start) {
				t.Error("signature verifies with a changed timestamp")
			}
			checkShellRecipe(t, secret, h, req.body)
		})
	}
}

// checkShellRecipe runs the openssl recipe from doc.go.
func checkShellRecipe(t *testing.T, secret string, h http.Header, body []byte) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not installed; shell recipe not checked")
		return
	}
	dir := t.TempDir()
	bodyFile, secretFile := dir+"/body.json", writeSecret(t, secret+"\n")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	script := `{ printf '%s.' "$TIMESTAMP"; cat body.json; } |
  openssl dgst -sha256 -hmac "$(cat "$SECRET_FILE")" -r | cut -d' ' -f1`
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), "TIMESTAMP="+h.Get(notify.HeaderTimestamp), "SECRET_FILE="+secretFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("shell recipe: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), strings.TrimPrefix(h.Get(notify.HeaderSignature), "sha256="); got != want {
		t.Errorf("shell recipe computed %q, header has %q", got, want)
	}
}

func TestEventFilter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []string
		notify []string
		want   []string // in order
	}{
		{"all when empty", nil, allEvents, allEvents},
		{
			"break-glass only",
			[]string{broker.EventBreakGlass, broker.EventBreakGlassReviewed},
			allEvents,
			[]string{broker.EventBreakGlass, broker.EventBreakGlassReviewed},
		},
		{
			"requests only",
			[]string{broker.EventGrantRequested},
			[]string{broker.EventGrantApproved, broker.EventGrantRequested, broker.EventBreakGlass, broker.EventGrantDenied, broker.EventGrantRequested},
			[]string{broker.EventGrantRequested, broker.EventGrantRequested},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The last notified event is always wanted, and deliveries to a
			// receiver are in order, so an unwanted event that slipped
			// through would arrive before it.
			if tc.notify[len(tc.notify)-1] != tc.want[len(tc.want)-1] {
				t.Fatal("bad case: the last notified event must be wanted")
			}
			rc := newReceiver(t, statuses(http.StatusOK))
			res := newResults()
			d := mustRun(t, notify.Options{
				Webhooks: []notify.WebhookConfig{webhook("ops", rc.url, func(w *notify.WebhookConfig) { w.Events = tc.events })},
				Clock:    newTimerClock(), OnResult: res.on,
			})
			for _, typ := range tc.notify {
				d.Notify(testEvent(typ))
			}
			var got []string
			ids := map[string]bool{}
			for range tc.want {
				h := rc.next(t).header
				got = append(got, h.Get(notify.HeaderEvent))
				ids[h.Get(notify.HeaderDelivery)] = true
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("delivered %v, want %v", got, tc.want)
			}
			if len(ids) != len(tc.want) {
				t.Errorf("%d distinct delivery ids for %d events", len(ids), len(tc.want))
			}
			for range tc.want {
				res.next(t)
			}
			rc.none(t)
			if s := d.Stats()[0]; s.Delivered != uint64(len(tc.want)) || s.Dropped != 0 || s.Failed != 0 || s.Pending != 0 {
				t.Errorf("Stats %+v, want %d delivered and nothing else", s, len(tc.want))
			}
		})
	}
}

func TestRetries(t *testing.T) {
	const secret = "k"
	closed := httptest.NewServer(http.NotFoundHandler())
	// A Slack-style URL whose path is a credential; it must never be shown.
	refusedURL := closed.URL + "/services/T000/B000/SECRETTOKEN"
	closed.Close()

	retryAfter := func(n int, w http.ResponseWriter) int {
		if n == 1 {
			w.Header().Set("Retry-After", "30")
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	}
	hangOnce := func(n int, _ http.ResponseWriter) int {
		if n == 1 {
			return hang
		}
		return http.StatusOK
	}
	s := time.Second
	for _, tc := range []struct {
		name        string
		answer      func(int, http.ResponseWriter) int // nil: nothing listens
		maxAttempts int
		timeout     time.Duration
		waits       []time.Duration // nominal backoff before each retry
		outcome     string
		lastError   string // substring of Stats().LastError
	}{
		{"500 twice then 200", statuses(500, 500, 200), 8, 5 * s, []time.Duration{1 * s, 2 * s}, notify.OutcomeOK, "500 Internal Server Error"},
		{"400 is permanent", statuses(400), 8, 5 * s, nil, notify.OutcomeFailed, "400 Bad Request"},
		{"redirect is permanent", statuses(http.StatusFound), 8, 5 * s, nil, notify.OutcomeFailed, "redirects are not followed"},
		{"always 500 gives up after max_attempts 8", statuses(500), 8, 5 * s,
			[]time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 64 * s}, notify.OutcomeFailed, "500 Internal Server Error"},
		{"max_attempts 1 sends once, without retries", statuses(500), 1, 5 * s, nil, notify.OutcomeFailed, "500 Internal Server Error"},
		{"backoff is capped at 5m", statuses(503), 12, 5 * s,
			[]time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 64 * s, 128 * s, 256 * s, 5 * time.Minute, 5 * time.Minute},
			notify.OutcomeFailed, "503 Service Unavailable"},
		{"429 waits as Retry-After asks", retryAfter, 8, 5 * s, []time.Duration{30 * s}, notify.OutcomeOK, "429 Too Many Requests"},
		{"no answer within the timeout is retried", hangOnce, 8, 100 * time.Millisecond, []time.Duration{1 * s}, notify.OutcomeOK, "no answer within 100ms"},
		{"connection refused is retried", nil, 3, 5 * s, []time.Duration{1 * s, 2 * s}, notify.OutcomeFailed, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := refusedURL
			var rc *receiver
			if tc.answer != nil {
				rc = newReceiver(t, tc.answer)
				url = rc.url
			}
			clk := newTimerClock()
			res := newResults()
			log, logs := newLogger()
			d := mustRun(t, notify.Options{
				Webhooks: []notify.WebhookConfig{webhook("ops", url, func(w *notify.WebhookConfig) {
					w.SecretFile, w.MaxAttempts, w.Timeout = writeSecret(t, secret), tc.maxAttempts, config.Duration(tc.timeout)
				})},
				Clock: clk, OnResult: res.on, Logger: log,
			})
			d.Notify(testEvent(broker.EventGrantRequested))

			attempts := len(tc.waits) + 1
			var reqs []request
			for i := range attempts {
				if rc != nil {
					reqs = append(reqs, rc.next(t))
				}
				r := res.next(t)
				if i == attempts-1 {
					if r.outcome != tc.outcome {
						t.Fatalf("attempt %d: outcome %q, want %q", i+1, r.outcome, tc.outcome)
					}
					break
				}
				if r.outcome != notify.OutcomeRetry {
					t.Fatalf("attempt %d: outcome %q, want retry", i+1, r.outcome)
				}
				wait, nominal := clk.nextTimer(t), tc.waits[i]
				if wait > nominal || wait < nominal*4/5 {
					t.Errorf("wait after attempt %d: %s, want %s less at most a fifth", i+1, wait, nominal)
				}
				// Just short of the wait nothing is due; at it, the retry is.
				clk.Advance(wait - time.Millisecond)
				if clk.Waiters() != 1 {
					t.Errorf("the retry timer fired %s early", time.Millisecond)
				}
				clk.Advance(time.Millisecond)
			}
			if rc != nil {
				rc.none(t)
			}
			if clk.Waiters() != 0 {
				t.Error("a retry timer is still armed after the final outcome")
			}

			// One delivery id and one body for all attempts; each attempt is
			// signed at its own time.
			for i, r := range reqs {
				if r.header.Get(notify.HeaderDelivery) != reqs[0].header.Get(notify.HeaderDelivery) || !bytes.Equal(r.body, reqs[0].body) {
					t.Errorf("attempt %d: delivery %q, body %s; attempt 1: %q, %s", i+1,
						r.header.Get(notify.HeaderDelivery), r.body, reqs[0].header.Get(notify.HeaderDelivery), reqs[0].body)
				}
				sec, _ := strconv.ParseInt(r.header.Get(notify.HeaderTimestamp), 10, 64)
				if !verifySignature([]byte(secret), r.header, r.body, time.Unix(sec, 0)) {
					t.Errorf("attempt %d: signature does not verify", i+1)
				}
			}

			st := d.Stats()[0]
			want := notify.WebhookStats{Name: "ops", Retries: uint64(len(tc.waits))}
			if tc.outcome == notify.OutcomeOK {
				want.Delivered = 1
			} else {
				want.Failed = 1
			}
			got := st
			got.LastError, got.LastErrorAt, got.LastDeliveredAt = "", time.Time{}, time.Time{}
			if got != want {
				t.Errorf("Stats %+v, want %+v", st, want)
			}
			if !strings.Contains(st.LastError, tc.lastError) || st.LastErrorAt.IsZero() {
				t.Errorf("LastError %q at %v, want it to contain %q", st.LastError, st.LastErrorAt, tc.lastError)
			}
			if tc.outcome == notify.OutcomeOK && !st.LastDeliveredAt.Equal(clk.Now()) {
				t.Errorf("LastDeliveredAt %v, want %v", st.LastDeliveredAt, clk.Now())
			}
			if tc.outcome == notify.OutcomeFailed && !strings.Contains(logs.String(), "giving up") {
				t.Errorf("the failure was not logged:\n%s", logs)
			}
			for _, leak := range []string{"SECRETTOKEN", "/hooks/valet", "rotate the db password"} {
				if strings.Contains(st.LastError, leak) || strings.Contains(logs.String(), leak) {
					t.Errorf("%q (URL or body) appears in LastError %q or the log:\n%s", leak, st.LastError, logs)
				}
			}
		})
	}
}

func TestNotifyNeverBlocks(t *testing.T) {
	for _, stop := range []string{"Close", "context cancel"} {
		t.Run(stop, func(t *testing.T) {
			hung := newReceiver(t, statuses(hang))
			healthy := newReceiver(t, statuses(http.StatusOK))
			res := newResults()
			log, logs := newLogger()
			d := mustRun(t, notify.Options{
				Webhooks: []notify.WebhookConfig{
					webhook("hung", hung.url, nil),
					webhook("healthy", healthy.url, func(w *notify.WebhookConfig) { w.Events = []string{broker.EventBreakGlass} }),
				},
				Clock: newTimerClock(), OnResult: res.on, Logger: log,
			})

			event := func(i int) broker.Event {
				e := testEvent(broker.EventGrantRequested)
				e.Grant.ID = fmt.Sprint(i)
				return e
			}
			d.Notify(event(0))
			hung.next(t) // event 0 is in flight and will not be answered

			const n = 3 * notify.QueueSize
			flooded := make(chan struct{})
			go func() {
				defer close(flooded)
				for i := 1; i <= n; i++ {
					d.Notify(event(i))
				}
				d.Notify(testEvent(broker.EventBreakGlass))
			}()
			select {
			case <-flooded:
			case <-time.After(waitLimit):
				t.Fatalf("Notify blocked: %d events not queued within %s", n+1, waitLimit)
			}

			// A hung receiver delays no other.
			if got := healthy.next(t).header.Get(notify.HeaderEvent); got != broker.EventBreakGlass {
				t.Errorf("healthy receiver got %q, want break_glass", got)
			}
			wantDropped := n + 1 - notify.QueueSize
			st := d.Stats()
			if st[0].Dropped != uint64(wantDropped) || st[0].Pending != notify.QueueSize+1 || st[0].Delivered != 0 {
				t.Errorf("hung webhook Stats %+v, want %d dropped and %d pending", st[0], wantDropped, notify.QueueSize+1)
			}
			dropped := 0
		drain:
			for {
				select {
				case r := <-res.ch:
					if r.webhook == "hung" && r.outcome == notify.OutcomeDropped {
						dropped++
					}
				default:
					break drain
				}
			}
			if dropped != wantDropped {
				t.Errorf("OnResult reported %d drops, want %d", dropped, wantDropped)
			}
			if c := strings.Count(logs.String(), "queue is full"); c != 1 {
				t.Errorf("the overflow was logged %d times, want once:\n%.2000s", c, logs)
			}

			// The oldest were dropped: once the receiver answers, the next
			// delivery is the oldest event kept.
			hung.release()
			var body struct{ Grant grants.Grant }
			if err := json.Unmarshal(hung.next(t).body, &body); err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprint(wantDropped + 1); body.Grant.ID != want {
				t.Errorf("after the overflow, delivered grant %q first, want %q (the oldest kept)", body.Grant.ID, want)
			}

			// Stopping drops what is pending, and later events too.
			if stop == "Close" {
				if err := d.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			} else {
				d.cancel()
			}
			d.waitStopped(t)
			d.Notify(event(-1))
			st = d.Stats()
			total := uint64(1 + n + 1 + 1)
			if s := st[0]; s.Pending != 0 || s.Delivered == 0 || s.Delivered+s.Dropped != total || s.Failed != 0 {
				t.Errorf("after stopping, Stats %+v: want nothing pending and delivered+dropped = %d", s, total)
			}
		})
	}
}

func TestNewSecretFileErrors(t *testing.T) {
	dir := t.TempDir()
	good := webhook("good", "https://example.com/hook", func(w *notify.WebhookConfig) { w.SecretFile = writeSecret(t, "key") })
	for _, tc := range []struct {
		name    string
		edit    func(*notify.WebhookConfig)
		wantErr string // "" for success
	}{
		{"readable secret", func(w *notify.WebhookConfig) { w.SecretFile = writeSecret(t, "  key\n") }, ""},
		{"no secret", func(w *notify.WebhookConfig) {}, ""},
		{"missing file", func(w *notify.WebhookConfig) { w.SecretFile = dir + "/nope" }, "no such file"},
		{"empty file", func(w *notify.WebhookConfig) { w.SecretFile = writeSecret(t, "") }, "is empty"},
		{"whitespace only", func(w *notify.WebhookConfig) { w.SecretFile = writeSecret(t, " \n\t\n") }, "is empty"},
		{"a directory", func(w *notify.WebhookConfig) { w.SecretFile = dir }, "is a directory"},
		{"unknown format", func(w *notify.WebhookConfig) { w.Format = "teams" }, `format "teams"`},
		{"empty format", func(w *notify.WebhookConfig) { w.Format = "" }, `format "" must be json, slack or set`},
		// Settings are used as given, never replaced by defaults.
		{"zero timeout", func(w *notify.WebhookConfig) { w.Timeout = 0 }, "timeout must be positive; it is 0s"},
		{"zero max_attempts", func(w *notify.WebhookConfig) { w.MaxAttempts = 0 }, "max_attempts must be at least 1; it is 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook := webhook("pager", "https://example.com/pager", tc.edit)
			d, err := notify.New(notify.Options{Webhooks: []notify.WebhookConfig{good, hook}})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if s := d.Stats(); len(s) != 2 || s[1].Name != "pager" {
					t.Errorf("Stats %+v, want two webhooks", s)
				}
				return
			}
			if err == nil {
				t.Fatalf("New succeeded, want an error containing %q", tc.wantErr)
			}
			for _, want := range []string{`notifications.webhooks[1] "pager"`, tc.wantErr} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}
