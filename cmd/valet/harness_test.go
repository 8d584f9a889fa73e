package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/backendtest"
	"github.com/valet-broker/valet/backends/builtin"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// testOperatorToken is the operator token of alice, the first operator of
// every test server; opToken gives the others' (bob and owner@example.com
// are approvers, carol is not).
const testOperatorToken = "valet_op_test_token_0123456789"

func opToken(name string) string { return "valet_op_test_" + name }

// rsSecret is the client secret of the introspection client id: demo-api
// (client_secret_basic) and other-api (client_secret_post, role other
// only) are configured in every test server.
func rsSecret(id string) string { return "valet_rs_test_" + id }

// testEnv is a real valet server running in-process on a free loopback
// port, with a dev issuer to sign attestations.
type testEnv struct {
	t      testing.TB
	Dir    string
	URL    string
	Server *Server
	Issuer *attest.DevIssuer
	Config *Config
	Clock  clock.Clock
	// Registry replaces the built-in backends when set before start.
	Registry backends.Registry
	// Log, when set before start, receives the server's log at debug
	// level (it must be safe for concurrent writes); by default the log
	// is discarded.
	Log io.Writer
	// Events records the notifications the server sent.
	Events *eventLog
}

// eventLog is a broker.Notifier that remembers events.
type eventLog struct {
	mu     sync.Mutex
	events []broker.Event
}

func (l *eventLog) Notify(e broker.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// Types returns the event types so far, in order.
func (l *eventLog) Types() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.events {
		out = append(out, e.Type)
	}
	return out
}

// testPolicy permits the test roles to agents of the "test" issuer and
// forbids agents whose claims say blocked.
const testPolicy = `
@id("mint-demo")
permit(principal in Issuer::"test", action == Action::"mint", resource == Role::"demo")
when { context.ttl_seconds <= 3600 };

@id("renew-demo")
permit(principal in Issuer::"test", action == Action::"renew", resource == Role::"demo");

@id("mint-other")
permit(principal in Issuer::"test", action == Action::"mint", resource == Role::"other");

@id("mint-flaky")
permit(principal in Issuer::"test", action in [Action::"mint", Action::"renew"], resource == Role::"flaky");

@id("mint-elevated")
permit(principal in Issuer::"test", action == Action::"mint", resource == Role::"elevated");

@id("elevated-roles")
permit(principal in Issuer::"test", action in [Action::"mint", Action::"redeem", Action::"break_glass"], resource)
when { resource.approvals_required > 0 && context.reason != "" };

@id("mint-ledger")
permit(principal in Issuer::"test", action == Action::"mint", resource == Role::"ledger");

@id("deny-blocked")
forbid(principal, action, resource)
when { principal.claims has blocked && principal.claims.blocked == true };
`

// testConfig is the YAML of a test server; %s are the data dir and the
// hashes of the operator tokens and introspection client secrets.
const testConfig = `
listen: 127.0.0.1:0
data_dir: %[1]s
public_url: http://valet.test
issuers:
  - name: test
    issuer: https://issuer.test
    audiences: [valet]
    jwks_file: %[1]s/issuer-jwks.json
    algorithms: [ES256]
backends:
  - name: tokens
    type: jwt
  - name: ledger
    type: test-ledger
    dir: %[1]s/ledger
    delay: 2ms
roles:
  - name: demo
    backend: tokens
    ttl: 5m
    max_ttl: 1h
    audience: [demo-api]
    scopes: [read, write]
  - name: other
    backend: tokens
    ttl: 1m
    max_ttl: 2m
  - name: elevated
    backend: tokens
    approval: {required: 1}
  - name: ledger
    backend: ledger
    ttl: 1h
  - name: two-keys
    backend: tokens
    ttl: 2m
    approval:
      required: 2
      approvers: {groups: [approvers]}
      request_ttl: 10m
      redeem_within: 5m
  - name: glass
    backend: tokens
    ttl: 10m
    approval:
      required: 1
      break_glass: {allowed: true, max_ttl: 2m}
policy:
  dir: %[1]s/policies
operators:
  tokens:
    - name: alice
      sha256: %[2]s
      groups: [approvers]
    - name: bob
      sha256: %[3]s
      groups: [approvers]
    - name: carol
      sha256: %[4]s
    - name: owner@example.com
      sha256: %[5]s
      groups: [approvers]
introspection:
  clients:
    - client_id: demo-api
      client_secret_sha256: %[6]s
    - client_id: other-api
      auth_method: client_secret_post
      client_secret_sha256: %[7]s
      roles: [other]
limits:
  agent_rate: .inf # no per-agent limit
  max_body_bytes: 4096
  # Tests of hostile input send many bad credentials from one address;
  # the throttling tests lower this.
  auth_failures_per_minute: 100000
  auth_failure_records_per_minute: 100000
# The console refuses a plain-http public_url that is not loopback;
# console tests turn it on with a loopback public_url (startConsole).
console:
  disabled: true
`

// newTestEnv writes a config into a temp dir. Call Start (after adjusting
// Config or Registry if needed) to run the server.
func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	return newTestEnvYAML(t, nil)
}

// newTestEnvYAML is newTestEnv with edit (if not nil) applied to the
// config's YAML before it is loaded, for tests of how a key is read.
func newTestEnvYAML(t testing.TB, edit func(string) string) *testEnv {
	t.Helper()
	dir := t.TempDir()
	iss, err := attest.NewDevIssuer("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.WriteJWKS(filepath.Join(dir, "issuer-jwks.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policies", "test.cedar"), []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgText := fmt.Sprintf(testConfig, dir, broker.HashToken(testOperatorToken),
		broker.HashToken(opToken("bob")), broker.HashToken(opToken("carol")), broker.HashToken(opToken("owner@example.com")),
		broker.HashToken(rsSecret("demo-api")), broker.HashToken(rsSecret("other-api")))
	if edit != nil {
		cfgText = edit(cfgText)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{t: t, Dir: dir, Issuer: iss, Config: cfg}
}

// Start opens the server and registers its Close with the test.
func (e *testEnv) Start() *testEnv {
	e.t.Helper()
	kek := bytes.Repeat([]byte{7}, 32)
	reg := e.Registry
	if reg == nil {
		reg = builtin.Registry()
		reg[backendtest.LedgerType] = backendtest.NewLedger
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if e.Log != nil {
		logger = slog.New(slog.NewTextHandler(e.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.Events = &eventLog{}
	s := &Server{Config: e.Config, KEK: kek, Logger: logger, Clock: e.Clock, Registry: reg}
	if len(e.Config.Notifications.Webhooks) == 0 {
		// With webhooks configured, the server's own dispatcher sends them.
		s.Notifier = e.Events
	}
	if err := s.Open(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	e.Server = s
	e.URL = "http://" + s.Addr()
	return e
}

// Attest signs an attestation for sub with the test issuer; extra claims
// override the defaults (a nil value removes a claim).
func (e *testEnv) Attest(sub string, extra map[string]any) string {
	e.t.Helper()
	c := map[string]any{"sub": sub, "aud": "valet"}
	for k, v := range extra {
		c[k] = v
	}
	tok, err := e.Issuer.Sign(c)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// response is a decoded HTTP answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, r.Body)
	}
	return m
}

// Do sends a request. body is sent as is when it is a string or []byte,
// else JSON-encoded; bearer may be "".
func (e *testEnv) Do(method, path, bearer string, body any) response {
	e.t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(b), "application/json"
	case []byte:
		rd, ct = bytes.NewReader(b), "application/json"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd, ct = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return e.send(req)
}

func (e *testEnv) send(req *http.Request) response {
	e.t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// Mint asks for role with attestation tok and fails the test unless it
// gets a 201; it returns the decoded body.
func (e *testEnv) Mint(tok, role string) map[string]any {
	e.t.Helper()
	r := e.Do("POST", "/v1/credentials", tok, map[string]any{"role": role})
	if r.Status != http.StatusCreated {
		e.t.Fatalf("mint %s: status %d: %s", role, r.Status, r.Body)
	}
	return r.JSON(e.t)
}

// LeaseCount returns the number of leases in each state, from the store.
func (e *testEnv) LeaseCounts() map[string]int64 {
	e.t.Helper()
	c, err := e.Server.store.Counts()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	for k, v := range c {
		if v != 0 {
			out[string(k)] = v
		}
	}
	return out
}
