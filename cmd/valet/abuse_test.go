package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// This file tests what anyone who can reach the port can make valet do
// without a valid credential: failed credentials are throttled per client
// address while valid ones always pass, a flood of them leaves the audit
// log bounded, the client address comes from trusted proxies only, and no
// request can add a metric series.

// newThrottledEnv is a test server that allows perMinute failed
// credentials per address, on a fake clock, so budgets refill only when
// the test says.
func newThrottledEnv(t *testing.T, perMinute int) (*testEnv, *clock.Fake) {
	t.Helper()
	e := newTestEnv(t)
	fake := clock.NewFake(time.Now())
	e.Clock = fake
	e.Issuer.SetClock(fake)
	e.Config.Limits.AuthFailuresPerMinute = perMinute
	return e, fake
}

// credentialSurface is one way to present a credential to valet.
type credentialSurface struct {
	name string
	// bad presents a credential that does not verify.
	bad func(e *testEnv, h map[string]string) response
	// good presents a valid one and returns the answer.
	good       func(e *testEnv, h map[string]string) response
	goodStatus int
	badStatus  int  // the answer to a failure within the budget
	oauth      bool // answers are RFC 6749 JSON, not problem+json
}

func credentialSurfaces() []credentialSurface {
	jsonHeaders := func(h map[string]string, bearer string) map[string]string {
		out := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + bearer}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	form := func(h map[string]string) map[string]string {
		out := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	return []credentialSurface{
		{
			name: "operator endpoint",
			bad: func(e *testEnv, h map[string]string) response {
				return e.raw("GET", "/v1/leases", jsonHeaders(h, "valet_op_guess"), nil)
			},
			good: func(e *testEnv, h map[string]string) response {
				return e.raw("GET", "/v1/leases", jsonHeaders(h, testOperatorToken), nil)
			},
			goodStatus: http.StatusOK, badStatus: http.StatusUnauthorized,
		},
		{
			name: "agent attestation",
			bad: func(e *testEnv, h map[string]string) response {
				return e.raw("POST", "/v1/credentials", jsonHeaders(h, "x"), strings.NewReader(`{"role":"demo"}`))
			},
			good: func(e *testEnv, h map[string]string) response {
				return e.raw("POST", "/v1/credentials", jsonHeaders(h, e.Attest("agent-1", nil)), strings.NewReader(`{"role":"demo"}`))
			},
			goodStatus: http.StatusCreated, badStatus: http.StatusUnauthorized,
		},
		{
			name: "agent or operator (lease read)",
			bad: func(e *testEnv, h map[string]string) response {
				return e.raw("GET", "/v1/leases/01HZZZZZZZZZZZZZZZZZZZZZZZ", jsonHeaders(h, "x"), nil)
			},
			good: func(e *testEnv, h map[string]string) response {
				return e.raw("GET", "/v1/leases/01HZZZZZZZZZZZZZZZZZZZZZZZ", jsonHeaders(h, testOperatorToken), nil)
			},
			goodStatus: http.StatusNotFound, badStatus: http.StatusUnauthorized,
		},
		{
			name: "token exchange",
			bad: func(e *testEnv, h map[string]string) response {
				return e.raw("POST", "/v1/oauth/token", form(h), strings.NewReader(exchangeForm("not.a.jwt", "demo").Encode()))
			},
			good: func(e *testEnv, h map[string]string) response {
				return e.raw("POST", "/v1/oauth/token", form(h), strings.NewReader(exchangeForm(e.Attest("agent-1", nil), "demo").Encode()))
			},
			goodStatus: http.StatusOK, badStatus: http.StatusBadRequest, oauth: true,
		},
		{
			name: "introspection client",
			bad: func(e *testEnv, h map[string]string) response {
				f := url.Values{"token": {"x"}, "client_id": {"other-api"}, "client_secret": {"guess"}}
				return e.raw("POST", "/v1/introspect", form(h), strings.NewReader(f.Encode()))
			},
			good: func(e *testEnv, h map[string]string) response {
				f := url.Values{"token": {"x"}, "client_id": {"other-api"}, "client_secret": {rsSecret("other-api")}}
				return e.raw("POST", "/v1/introspect", form(h), strings.NewReader(f.Encode()))
			},
			goodStatus: http.StatusOK, badStatus: http.StatusUnauthorized, oauth: true,
		},
	}
}

// assertThrottled checks a 429 for a failed credential: Retry-After in
// whole seconds within the budget's refill time, and the body format of
// the endpoint.
func assertThrottled(t *testing.T, r response, oauth bool, maxWait time.Duration) {
	t.Helper()
	if oauth {
		if r.Status != http.StatusTooManyRequests || !strings.Contains(string(r.Body), `"temporarily_unavailable"`) {
			t.Errorf("throttled token exchange: %d %s, want 429 temporarily_unavailable", r.Status, r.Body)
		}
	} else {
		p := assertProblem(t, r, http.StatusTooManyRequests)
		if p.Code != "rate_limited" {
			t.Errorf("problem code %q, want rate_limited", p.Code)
		}
	}
	s, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || s < 1 || time.Duration(s)*time.Second > maxWait {
		t.Errorf("Retry-After = %q, want whole seconds from 1 to %s", r.Header.Get("Retry-After"), maxWait)
	}
}

// TestFailedCredentialsThrottledValidOnesPass: after its budget of failed
// credentials, an address gets 429 for further failures, and a valid
// credential from the same address still works — so one client behind a
// shared address cannot lock the others out.
func TestFailedCredentialsThrottledValidOnesPass(t *testing.T) {
	for _, s := range credentialSurfaces() {
		t.Run(s.name, func(t *testing.T) {
			e, _ := newThrottledEnv(t, 3)
			e.Start()
			for i := range 3 {
				if r := s.bad(e, nil); r.Status != s.badStatus {
					t.Fatalf("failure %d within the budget: %d %s, want %d", i+1, r.Status, r.Body, s.badStatus)
				}
			}
			for i := range 5 {
				r := s.bad(e, nil)
				assertThrottled(t, r, s.oauth, 20*time.Second)
				if r.Status != http.StatusTooManyRequests {
					t.Fatalf("failure %d over the budget: %d", i+4, r.Status)
				}
				if r := s.good(e, nil); r.Status != s.goodStatus {
					t.Fatalf("a valid credential from the throttled address: %d %s, want %d", r.Status, r.Body, s.goodStatus)
				}
			}
		})
	}
}

// TestOperatorSignInsUnderFlood: a client guessing operator tokens from
// the operators' shared address, at the same time as they work, never
// keeps them out.
func TestOperatorSignInsUnderFlood(t *testing.T) {
	e, _ := newThrottledEnv(t, 10)
	e.Start()
	var guesses map[int]int
	var wg sync.WaitGroup
	wg.Go(func() {
		guesses = map[int]int{}
		for range 200 {
			guesses[e.raw("GET", "/v1/grants", map[string]string{"Authorization": "Bearer valet_op_guess"}, nil).Status]++
		}
	})
	refused := 0
	for range 20 {
		if r := e.Do("GET", "/v1/grants", testOperatorToken, nil); r.Status != http.StatusOK {
			refused++
		}
	}
	wg.Wait()
	if refused != 0 {
		t.Errorf("%d of 20 operator requests refused while another client guessed tokens from the same address", refused)
	}
	if guesses[http.StatusUnauthorized] != 10 || guesses[http.StatusTooManyRequests] != 190 {
		t.Errorf("the guessing client got %v, want 10 × 401 and 190 × 429", guesses)
	}
}

// TestTrustedProxies: behind a trusted proxy the client address is the one
// the proxy forwards — for throttling, audit records and Cedar's
// context.source_ip — and a client cannot choose it by sending its own
// X-Forwarded-For; from anywhere else the header is ignored.
func TestTrustedProxies(t *testing.T) {
	const forbidRange = `
@id("forbid-documentation-range")
forbid(principal, action, resource) when { context.source_ip.isInRange(ip("203.0.113.0/24")) };
`
	start := func(t *testing.T, proxies []string) *testEnv {
		e, _ := newThrottledEnv(t, 2)
		if err := os.WriteFile(filepath.Join(e.Dir, "policies", "source.cedar"), []byte(forbidRange), 0o600); err != nil {
			t.Fatal(err)
		}
		e.Config.TrustedProxies = proxies
		return e.Start()
	}
	xff := func(v string) map[string]string { return map[string]string{"X-Forwarded-For": v} }
	s := credentialSurfaces()[0] // the operator endpoint

	t.Run("behind a trusted proxy", func(t *testing.T) {
		e := start(t, []string{"127.0.0.0/8", "::1"})
		// Client A fails its budget, then tries to pass for others by
		// sending its own header; the proxy appends A's address.
		for range 2 {
			if r := s.bad(e, xff("203.0.113.7")); r.Status != http.StatusUnauthorized {
				t.Fatalf("A within budget: %d", r.Status)
			}
		}
		for _, spoof := range []string{"203.0.113.7", "198.51.100.1, 203.0.113.7", "10.0.0.1, 203.0.113.7"} {
			if r := s.bad(e, xff(spoof)); r.Status != http.StatusTooManyRequests {
				t.Errorf("A as %q: %d, want 429", spoof, r.Status)
			}
		}
		// Client B, behind the same proxy, has its own budget.
		if r := s.bad(e, xff("198.51.100.9")); r.Status != http.StatusUnauthorized {
			t.Errorf("B: %d, want 401", r.Status)
		}
		// A malformed header falls back to the proxy's own address.
		if r := s.bad(e, xff("203.0.113.7, not-an-ip")); r.Status != http.StatusUnauthorized {
			t.Errorf("malformed X-Forwarded-For: %d, want 401 (the proxy's address, not A's)", r.Status)
		}
		var sources []string
		for _, rec := range e.auditRecords() {
			if rec.Kind == audit.KindOperatorAuth {
				sources = append(sources, rec.Details["source_ip"])
			}
		}
		if want := "203.0.113.7 203.0.113.7 198.51.100.9 127.0.0.1"; strings.Join(sources, " ") != want {
			t.Errorf("refusals recorded from %q, want %q", sources, want)
		}
		// Cedar sees the forwarded address.
		mint := func(h map[string]string) int {
			h["Authorization"], h["Content-Type"] = "Bearer "+e.Attest("agent-1", nil), "application/json"
			return e.raw("POST", "/v1/credentials", h, strings.NewReader(`{"role":"demo"}`)).Status
		}
		if st := mint(xff("203.0.113.7")); st != http.StatusForbidden {
			t.Errorf("mint from 203.0.113.7 via the proxy: %d, want 403 by policy", st)
		}
		if st := mint(xff("203.0.113.7, 198.51.100.9")); st != http.StatusCreated {
			t.Errorf("mint from 198.51.100.9 claiming 203.0.113.7: %d, want 201", st)
		}
	})
	t.Run("from an address that is not a trusted proxy", func(t *testing.T) {
		e := start(t, []string{"10.0.0.0/8"})
		for range 2 {
			s.bad(e, xff("203.0.113.7"))
		}
		// Another forwarded address does not reset the budget: the header
		// is ignored and the peer is the client.
		if r := s.bad(e, xff("198.51.100.9")); r.Status != http.StatusTooManyRequests {
			t.Errorf("a third failure with another X-Forwarded-For: %d, want 429", r.Status)
		}
		h := xff("203.0.113.7")
		h["Authorization"], h["Content-Type"] = "Bearer "+e.Attest("agent-1", nil), "application/json"
		if r := e.raw("POST", "/v1/credentials", h, strings.NewReader(`{"role":"demo"}`)); r.Status != http.StatusCreated {
			t.Errorf("mint with a forged X-Forwarded-For: %d %s, want 201 (source_ip is the peer)", r.Status, r.Body)
		}
	})
}

// TestUnauthenticatedFloodLeavesAuditBounded: thousands of requests with
// a bad bearer token add a handful of audit records and one summary that
// counts the rest, and the chain still verifies.
func TestUnauthenticatedFloodLeavesAuditBounded(t *testing.T) {
	e, fake := newThrottledEnv(t, 10)
	e.Start()
	before := len(e.auditRecords())
	dbBefore := fileSize(t, filepath.Join(e.Dir, "valet.db"))

	const n = 5000
	targets := []struct{ method, path, body string }{
		{"POST", "/v1/credentials", `{"role":"demo"}`},       // an attestation
		{"GET", "/v1/leases/01HZZZZZZZZZZZZZZZZZZZZZZZ", ""}, // an attestation or operator token
		{"GET", "/v1/audit", ""},                             // an operator token
		{"POST", "/v1/grants/g1/approve", ""},                // an operator token
	}
	statuses := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				tg := targets[i%len(targets)]
				h := map[string]string{"Authorization": "Bearer x", "Content-Type": "application/json"}
				var body io.Reader
				if tg.body != "" {
					body = strings.NewReader(tg.body)
				}
				r := e.raw(tg.method, tg.path, h, body)
				mu.Lock()
				statuses[r.Status]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if statuses[http.StatusUnauthorized] != 10 || statuses[http.StatusTooManyRequests] != n-10 {
		t.Errorf("answers %v, want 10 × 401 then 429", statuses)
	}

	fake.Advance(time.Minute)
	var summary *audit.Record
	eventually(t, 10*time.Second, "an auth.refused.summary record", func() bool {
		for _, rec := range e.auditRecords() {
			if rec.Kind == audit.KindAuthRefusedSummary {
				summary = &rec
				return true
			}
		}
		return false
	})
	recs := e.auditRecords()
	individual, added := 0, 0
	for _, rec := range recs[before:] {
		if rec.Decision == audit.Deny && rec.Actor.Type == audit.ActorAnonymous {
			individual++
		}
		if rec.Actor.Type != audit.ActorJob { // the scheduled jobs' runs, which the minute also brought
			added++
		}
	}
	if added > 12 {
		t.Errorf("%d requests with a bad token added %d audit records, want at most 12", n, added)
	}
	if individual != 10 {
		t.Errorf("%d refusals recorded one by one, want the 10 within the budget", individual)
	}
	d := summary.Details
	if d["refused"] != strconv.Itoa(n-10) || d["addresses"] != "1" || !strings.HasPrefix(d["top_addresses"], "127.0.0.1=") {
		t.Errorf("summary details %v: want refused=%d from 1 address, 127.0.0.1 first", d, n-10)
	}
	a, _ := strconv.Atoi(d["refused.attestation"])
	o, _ := strconv.Atoi(d["refused.operator_token"])
	if a+o != n-10 || a < 2000 || o < 2000 {
		t.Errorf("summary counts attestation=%s operator_token=%s, want about half each of %d", d["refused.attestation"], d["refused.operator_token"], n-10)
	}
	if summary.Actor.Type != audit.ActorSystem || summary.Decision != audit.Deny {
		t.Errorf("summary actor %+v decision %q", summary.Actor, summary.Decision)
	}

	v := decode[audit.VerifyResult](t, e.Do("GET", "/v1/audit/verify", testOperatorToken, nil))
	if !v.OK {
		t.Errorf("audit verify after the flood: %+v", v)
	}
	if grew := fileSize(t, filepath.Join(e.Dir, "valet.db")) - dbBefore; grew > 1<<20 {
		t.Errorf("valet.db grew by %d bytes, want under 1 MiB", grew)
	}
	m := string(e.Do("GET", "/metrics", "", nil).Body)
	for _, want := range []string{
		fmt.Sprintf(`valet_auth_refusals_total{credential="attestation",throttled="true"} %d`, a),
		fmt.Sprintf(`valet_auth_refusals_total{credential="operator_token",throttled="true"} %d`, o),
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Nothing more to summarize: the next minute writes no record (but
	// the runs of the scheduled jobs it brings).
	notJobs := func() int {
		n := 0
		for _, rec := range e.auditRecords() {
			if rec.Actor.Type != audit.ActorJob {
				n++
			}
		}
		return n
	}
	n0 := notJobs()
	fake.Advance(time.Minute)
	if r := e.Do("GET", "/v1/leases", testOperatorToken, nil); r.Status != http.StatusOK {
		t.Fatalf("operator after the flood: %d", r.Status)
	}
	if n1 := notJobs(); n1 != n0 {
		t.Errorf("%d records written in a quiet minute, want none", n1-n0)
	}
}

// TestRefusalSummaryWrittenAtShutdown: counts not yet summarized reach
// the audit log when valet stops.
func TestRefusalSummaryWrittenAtShutdown(t *testing.T) {
	e, _ := newThrottledEnv(t, 1)
	e.Start()
	for range 4 {
		e.raw("GET", "/v1/audit", map[string]string{"Authorization": "Bearer x"}, nil)
	}
	if err := e.Server.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readAuditFile(t, filepath.Join(e.Dir, "valet.db"))
	var got map[string]string
	for _, rec := range recs {
		if rec.Kind == audit.KindAuthRefusedSummary {
			got = rec.Details
		}
	}
	if got["refused"] != "3" || got["refused.operator_token"] != "3" {
		t.Errorf("summary at shutdown %v, want 3 operator_token refusals", got)
	}
}

// TestMetricLabelsClosed: methods, routes and roles a client makes up all
// land in one "other" (or "unmatched") series, so /metrics stays small.
func TestMetricLabelsClosed(t *testing.T) {
	e := newTestEnv(t).Start()
	att := e.Attest("agent-1", nil)
	for i := range 1000 {
		e.raw(fmt.Sprintf("M%04d", i), "/v1/leases", nil, nil)
		e.Do("POST", "/v1/credentials", att, map[string]any{"role": fmt.Sprintf("bogus-%d", i)})
		e.Do("GET", fmt.Sprintf("/v1/nothing-%d", i), "", nil)
	}
	r := e.Do("GET", "/metrics", "", nil)
	body := string(r.Body)
	if len(body) > 64<<10 {
		t.Errorf("/metrics is %d bytes after 1,000 bogus methods, roles and paths, want under 64 KiB", len(body))
	}
	for _, want := range []string{
		`valet_http_requests_total{method="other",route="unmatched",status="405"} 1000`,
		`valet_mints_total{outcome="not_found",role="other"} 1000`,
		`valet_http_requests_total{method="GET",route="unmatched",status="404"} 1000`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var series []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "valet_http_requests_total{") || strings.HasPrefix(line, "valet_mints_total{") {
			series = append(series, line)
		}
	}
	if len(series) > 20 {
		t.Errorf("%d request and mint series, want a handful:\n%s", len(series), strings.Join(series, "\n"))
	}
	for _, line := range series {
		if strings.Contains(line, "M0") || strings.Contains(line, "bogus") || strings.Contains(line, "nothing-") {
			t.Errorf("a client-chosen value became a label: %s", line)
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// readAuditFile lists the auth.refused.summary records of a stopped
// server's database.
func readAuditFile(t *testing.T, path string) []audit.Record {
	t.Helper()
	db, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := db.ListAudit(context.Background(), audit.Filter{Kind: audit.KindAuthRefusedSummary, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}
