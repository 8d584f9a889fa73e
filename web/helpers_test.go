package web

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Operator tokens of the test console. alice and bob are approvers,
// carol is not; owner@example.com is an approver who owns some agents.
var testTokens = map[string]string{
	"alice":             "valet_op_web_alice_0123456789",
	"bob":               "valet_op_web_bob_0123456789",
	"carol":             "valet_op_web_carol_0123456789",
	"owner@example.com": "valet_op_web_owner_0123456789",
}

// memBackend is a credential backend that remembers what it issued; its
// credentials carry a secret that must never reach a console page.
type memBackend struct {
	mu         sync.Mutex
	live       map[string]bool
	failRevoke bool
}

func (m *memBackend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.live[req.CorrelationID] = true
	return &backends.Credential{Handle: "h-" + req.CorrelationID[:8], ExpiresAt: req.ExpiresAt,
		Data: map[string]any{"secret": "s3cret-" + req.CorrelationID}}, nil
}

func (m *memBackend) Revoke(ctx context.Context, ref backends.Ref) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failRevoke {
		return io.ErrUnexpectedEOF
	}
	delete(m.live, ref.CorrelationID)
	return nil
}

const testPolicy = `
permit(principal, action, resource);
forbid(principal, action, resource) when { principal.claims has blocked && principal.claims.blocked == true };
`

// fixture is a broker with a console mounted by the real API server on a
// loopback httptest server, under a fake clock.
type fixture struct {
	t       *testing.T
	dir     string
	clock   *clock.Fake
	issuer  *attest.DevIssuer
	b       *broker.Broker
	store   *bolt.Store
	be      *memBackend
	console *Console
	srv     *httptest.Server
	URL     string
	log     *logBuffer
}

// logBuffer collects the server log so tests can check what it says.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newFixture starts a console; edit may change its configuration (built
// from broker.DefaultConfig, with PublicURL set already).
// fixtureConfig is the configuration a console test may change before
// its fixture starts: the broker's, the console section and the operators.
type fixtureConfig struct {
	*broker.Config
	Console   ConsoleConfig
	Operators struct {
		Tokens  []broker.OperatorToken
		Issuers []attest.OperatorIssuerConfig
	}
}

func newFixture(t *testing.T, edit func(*fixtureConfig, *Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	iss, err := attest.NewDevIssuer("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	iss.SetClock(clk)
	jwks := filepath.Join(dir, "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policies", "p.cedar"), []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	publicURL := "http://" + srv.Listener.Addr().String()
	var toks []broker.OperatorToken
	for name, tok := range testTokens {
		ot := broker.OperatorToken{Name: name, SHA256: broker.HashToken(tok)}
		if name != "carol" {
			ot.Groups = []string{"approvers"}
		}
		toks = append(toks, ot)
	}
	role := func(name, backend string, ttl time.Duration, approval func(*broker.ApprovalConfig)) broker.Role {
		return config.Defaulted(func(r *broker.Role) {
			r.Name, r.Backend, r.TTL = name, backend, config.Duration(ttl)
			if approval != nil {
				approval(&r.Approval)
			}
		})
	}
	cfg := &fixtureConfig{Config: broker.DefaultConfig(), Console: config.Defaulted[ConsoleConfig](nil)}
	cfg.PublicURL = publicURL
	issuers := []attest.IssuerConfig{config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "test", "https://issuer.test", []string{"valet"}, jwks, []string{"ES256"}
	})}
	cfg.Roles = []broker.Role{
		role("demo", "mem", 5*time.Minute, nil),
		role("elevated", "mem", 5*time.Minute, func(a *broker.ApprovalConfig) { a.Required = 1 }),
		role("two-keys", "mem", 5*time.Minute, func(a *broker.ApprovalConfig) {
			a.Required, a.Approvers = 2, broker.ApproversConfig{Groups: []string{"approvers"}}
		}),
		role("glass", "mem", 5*time.Minute, func(a *broker.ApprovalConfig) { a.Required, a.BreakGlass.Allowed = 1, true }),
		role("stubborn", "stubborn", time.Hour, nil),
	}
	policyDir := filepath.Join(dir, "policies")
	cfg.Operators.Tokens = toks
	cfg.Leases.RevokeAttempts = 1
	cfg.Limits.AgentRate = math.Inf(1)
	wcfg := &Config{Clock: clk}
	if edit != nil {
		edit(cfg, wcfg)
	}
	var opIssuers []attest.IssuerConfig
	var operatorIssuers []broker.OperatorIssuer
	for i := range cfg.Operators.Issuers {
		opIssuers = append(opIssuers, cfg.Operators.Issuers[i].IssuerConfig)
		operatorIssuers = append(operatorIssuers, cfg.Operators.Issuers[i].OperatorIssuer())
	}
	if err := errors.Join(attest.ValidateIssuers("issuers", issuers), attest.ValidateIssuers("operators.issuers", opIssuers),
		broker.ValidateOperatorTokens(cfg.Operators.Tokens), cfg.Console.Validate(),
		cfg.Validate(map[string]bool{"mem": true, "stubborn": true})); err != nil {
		t.Fatal(err)
	}
	store, err := bolt.Open(filepath.Join(dir, "valet.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	v, err := attest.New(context.Background(), attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: issuers, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pe, err := policy.NewEngine(policy.Options{Dir: policyDir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	be := &memBackend{live: map[string]bool{}}
	stubborn := &memBackend{live: map[string]bool{}, failRevoke: true}
	bes := map[string]backends.Backend{"mem": be, "stubborn": stubborn}
	q, err := leases.NewRevocationQueue(leases.RevocationQueueConfig{Store: store, Clock: clk, Logger: log, Attempts: cfg.Leases.RevokeAttempts,
		Backoff: time.Minute, MaxBackoff: time.Hour, Concurrency: cfg.Leases.RevokeConcurrency, Timeout: leases.DefaultRevokeTimeout,
		Revoke: broker.RevokeAtBackend(bes, store.ValidUntil)})
	if err != nil {
		t.Fatal(err)
	}
	gs := store.Grants()
	b, err := broker.New(broker.Options{Config: cfg.Config, Store: store, Auditor: store, Verifier: v, Authorizer: pe,
		Backends: bes, Revoker: q, Clock: clk, Logger: log, Grants: gs, Agents: store, Signals: store})
	if err != nil {
		t.Fatal(err)
	}
	var opVerifier broker.Verifier
	if len(cfg.Operators.Issuers) > 0 {
		if opVerifier, err = attest.New(context.Background(), attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: opIssuers, Clock: clk, Logger: log}); err != nil {
			t.Fatal(err)
		}
	}
	ops := broker.NewOperators(cfg.Operators.Tokens, operatorIssuers, opVerifier)
	wcfg.Broker, wcfg.Operators, wcfg.Audit, wcfg.Console, wcfg.PublicURL, wcfg.Clock, wcfg.Logger =
		b, ops, store, cfg.Console, cfg.PublicURL, clk, log
	con, err := New(context.Background(), *wcfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = api.New(api.Config{Broker: b, Operators: ops, Audit: store, Limits: cfg.Limits, PublicURL: cfg.PublicURL, Logger: log, UI: con})
	srv.Start()
	t.Cleanup(srv.Close)
	return &fixture{t: t, dir: dir, clock: clk, issuer: iss, b: b, store: store, be: be, console: con, srv: srv, URL: srv.URL, log: logs}
}

// attest signs an attestation for sub.
func (f *fixture) attest(sub string, extra map[string]any) string {
	f.t.Helper()
	c := map[string]any{"sub": sub, "aud": "valet"}
	for k, v := range extra {
		c[k] = v
	}
	tok, err := f.issuer.Sign(c)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// mint mints role for agent sub and returns the result.
func (f *fixture) mint(sub, role string, extra map[string]any) *broker.MintResult {
	f.t.Helper()
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(sub, extra), Role: role, Reason: "test " + role})
	if err != nil {
		f.t.Fatalf("mint %s for %s: %v", role, sub, err)
	}
	return res
}

// request asks for an elevated role and returns the pending grant's id.
func (f *fixture) request(sub, role, reason string, extra map[string]any) string {
	f.t.Helper()
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(sub, extra), Role: role, Reason: reason, TTL: 90 * time.Second})
	if err != nil {
		f.t.Fatalf("request %s for %s: %v", role, sub, err)
	}
	if res.Grant == nil || res.Grant.State != grants.StatePending {
		f.t.Fatalf("request %s: no pending grant: %+v", role, res)
	}
	return res.Grant.ID
}

// grant reads a grant as an operator.
func (f *fixture) grant(id string) *grants.Grant {
	f.t.Helper()
	g, err := f.b.GetGrant(context.Background(), broker.Caller{Operator: &broker.Operator{Name: "test"}}, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return g
}

// lease reads a lease as an operator.
func (f *fixture) lease(id string) *leases.Lease {
	f.t.Helper()
	l, err := f.b.GetLease(context.Background(), broker.Caller{Operator: &broker.Operator{Name: "test"}}, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

// browser is a minimal browser: it keeps cookies per host (ignoring
// Secure, as browsers do for loopback), sends the headers a browser sends
// on same-origin form posts, and never follows redirects.
type browser struct {
	t       *testing.T
	f       *fixture
	client  *http.Client
	cookies map[string]map[string]*http.Cookie // host -> name -> cookie
	// Origin and Site are sent on POSTs; by default the console's origin
	// and same-origin.
	Origin, Site string
}

func (f *fixture) browser() *browser {
	return &browser{t: f.t, f: f, cookies: map[string]map[string]*http.Cookie{}, Origin: f.URL, Site: "same-origin",
		client: &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// resp is an answer.
type resp struct {
	Status  int
	Header  http.Header
	Body    string
	Cookies []*http.Cookie
}

// Location returns the redirect target.
func (r *resp) Location() string { return r.Header.Get("Location") }

func (b *browser) do(req *http.Request) *resp {
	b.t.Helper()
	for _, c := range b.cookies[req.URL.Host] {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	res, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	out := &resp{Status: res.StatusCode, Header: res.Header, Body: string(body), Cookies: res.Cookies()}
	for _, c := range out.Cookies {
		jar := b.cookies[req.URL.Host]
		if jar == nil {
			jar = map[string]*http.Cookie{}
			b.cookies[req.URL.Host] = jar
		}
		if c.MaxAge < 0 || c.Value == "" {
			delete(jar, c.Name)
		} else {
			jar[c.Name] = c
		}
	}
	return out
}

// get fetches a console path (or an absolute URL).
func (b *browser) get(path string) *resp {
	b.t.Helper()
	u := path
	if strings.HasPrefix(path, "/") {
		u = b.f.URL + path
	}
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

// post submits a form to a console path as a same-origin page would.
func (b *browser) post(path string, form url.Values) *resp {
	b.t.Helper()
	req, err := http.NewRequest("POST", b.f.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if b.Origin != "" {
		req.Header.Set("Origin", b.Origin)
	}
	if b.Site != "" {
		req.Header.Set("Sec-Fetch-Site", b.Site)
	}
	return b.do(req)
}

// cookie returns the browser's cookie for the console.
func (b *browser) cookie(name string) *http.Cookie {
	u, _ := url.Parse(b.f.URL)
	return b.cookies[u.Host][name]
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of the page at path.
func (b *browser) csrf(path string) string {
	b.t.Helper()
	r := b.get(path)
	m := csrfField.FindStringSubmatch(r.Body)
	if r.Status != 200 || m == nil {
		b.t.Fatalf("GET %s: %d, no csrf field:\n%s", path, r.Status, r.Body)
	}
	return m[1]
}

// login signs in with an operator's token and expects to land at want
// (default /ui/grants).
func (b *browser) login(name string, next ...string) *resp {
	b.t.Helper()
	path := "/ui/login"
	form := url.Values{"token": {testTokens[name]}}
	if len(next) > 0 {
		form.Set("next", next[0])
	}
	form.Set("csrf", b.csrf(path))
	r := b.post("/ui/login", form)
	want := "/ui/grants"
	if len(next) > 0 {
		want = next[0]
	}
	if r.Status != http.StatusSeeOther || r.Location() != want {
		b.t.Fatalf("login as %s: %d to %q, want 303 to %s\n%s", name, r.Status, r.Location(), want, r.Body)
	}
	return r
}

// mustContain fails unless body holds every string.
func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Fatalf("page lacks %q:\n%s", w, body)
		}
	}
}

// tamper changes the stored audit record seq behind the log's back.
func tamper(f *fixture, seq uint64) error {
	return f.store.Tamper("audit", audit.SeqKey(seq), func(v []byte) []byte {
		return bytes.Replace(v, []byte(`"kind":"`), []byte(`"kind":"x`), 1)
	})
}
