package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// siemToken is the token of the signal source "siem" that signalsEnv
// configures; it may ask for any action.
const siemToken = "valet_sig_test_siem"

// withSignalSource adds the signal source "siem" to e's configuration,
// and edit's changes to it.
func withSignalSource(e *testEnv, edit func(*broker.SignalSourceConfig)) {
	e.Config.Signals.Sources = append(e.Config.Signals.Sources, config.Defaulted(func(c *broker.SignalSourceConfig) {
		c.Name, c.TokenSHA256 = "siem", broker.HashToken(siemToken)
		if edit != nil {
			edit(c)
		}
	}))
}

// agentPath is the API path of an agent.
func agentPath(id string) string { return "/v1/agents/" + url.PathEscape(id) }

// setReceiver is an SSF receiver (RFC 8935 push endpoint) run by the test:
// it verifies each SET against the keys valet publishes in its JWKS, as a
// resource server would, and keeps the claims of those that verify.
type setReceiver struct {
	t     *testing.T
	valet func() string // valet's URL, known once it runs
	srv   *httptest.Server
	mu    sync.Mutex
	got   []map[string]any
	bad   int
}

func newSETReceiver(t *testing.T, valet func() string) *setReceiver {
	r := &setReceiver{t: t, valet: valet}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *setReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	fail := func(code string) {
		r.mu.Lock()
		r.bad++
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"err":%q}`, code)
	}
	if req.Header.Get("Content-Type") != "application/secevent+jwt" {
		fail("invalid_request")
		return
	}
	keys, err := jwk.Fetch(req.Context(), r.valet()+"/.well-known/jwks.json")
	if err != nil {
		fail("invalid_key")
		return
	}
	msg, err := jws.Parse(body)
	if err != nil || msg.Signatures()[0].ProtectedHeaders().Type() != "secevent+jwt" {
		fail("invalid_request")
		return
	}
	payload, err := jws.Verify(body, jws.WithKeySet(keys, jws.WithRequireKid(true)))
	if err != nil {
		fail("invalid_key")
		return
	}
	var c map[string]any
	_ = json.Unmarshal(payload, &c)
	r.mu.Lock()
	r.got = append(r.got, c)
	r.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (r *setReceiver) sets() ([]map[string]any, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...), r.bad
}

// mintMany mints n leases of role for agent sub over HTTP, with workers in
// parallel, and returns the credentials.
func mintMany(t *testing.T, e *testEnv, sub, role string, n int) []map[string]any {
	t.Helper()
	tok := e.Attest(sub, nil)
	out := make([]map[string]any, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				r := e.Do("POST", "/v1/credentials", tok, map[string]any{"role": role})
				if r.Status != http.StatusCreated {
					failed.Store(fmt.Sprintf("mint %d of %s: %d %s", i, role, r.Status, r.Body))
					return
				}
				out[i] = r.JSON(t)
			}
		}()
	}
	wg.Wait()
	if msg := failed.Load(); msg != nil {
		t.Fatal(msg)
	}
	return out
}

// stateCounts counts an agent's leases by state, as an operator lists
// them.
func stateCounts(t *testing.T, e *testEnv, agent string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	before := ""
	for {
		r := e.Do("GET", "/v1/leases?limit=1000&agent_id="+url.QueryEscape(agent)+before, testOperatorToken, nil)
		var l struct {
			Leases []map[string]any `json:"leases"`
			Next   string           `json:"next"`
		}
		if err := json.Unmarshal(r.Body, &l); err != nil || r.Status != http.StatusOK {
			t.Fatalf("list leases: %d %s", r.Status, r.Body)
		}
		for _, x := range l.Leases {
			counts[x["state"].(string)]++
		}
		if l.Next == "" {
			return counts
		}
		before = "&before=" + l.Next
	}
}

// auditCounts counts the whole audit log's records by kind/decision.
func auditCounts(t *testing.T, e *testEnv) map[string]int {
	t.Helper()
	kinds := map[string]int{}
	for after := ""; ; {
		r := e.Do("GET", "/v1/audit?limit=1000"+after, testOperatorToken, nil)
		recs := r.JSON(t)["records"].([]any)
		for _, rec := range recs {
			m := rec.(map[string]any)
			d, _ := m["decision"].(string)
			kinds[m["kind"].(string)+"/"+d]++
		}
		if len(recs) < 1000 {
			return kinds
		}
		after = fmt.Sprintf("&after=%v", recs[len(recs)-1].(map[string]any)["seq"])
	}
}

// TestSignalContainsAnAgent: a high-severity signal for an agent holding
// 1,000 live JWT leases and 200 Vault leases revokes them all (its tokens
// introspect inactive, the real Vault refuses its Vault tokens),
// quarantines it (mints 403 quarantined), tells an SSF receiver with a
// CAEP session-revoked SET that verifies against valet's JWKS, and
// records every step; an operator's release restores minting.
func TestSignalContainsAnAgent(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	e := newVaultEnv(t, v, kvRole, nil)
	rcv := newSETReceiver(t, func() string { return e.URL })
	withSignalSource(e, nil)
	e.Config.Notifications.Webhooks = []notify.WebhookConfig{config.Defaulted(func(w *notify.WebhookConfig) {
		w.Name, w.URL, w.Format, w.Audience = "gateway", rcv.srv.URL, "set", "https://gateway.test"
	})}
	// The set-up mints 1,200 credentials in seconds, over the mint-rate
	// detector's ceiling; only the SIEM's signal is under test.
	e.Config.Signals.Detectors.MintRate.Enabled = false
	e.Start()
	const agent = "test/contained"
	jwts := mintMany(t, e, "contained", "demo", 1000)
	vaults := mintMany(t, e, "contained", "kv", 200)
	bystander := e.Mint(e.Attest("bystander", nil), "demo")
	access := jwts[0]["credential"].(map[string]any)["access_token"].(string)
	if in := introspect(t, e, access); in["active"] != true {
		t.Fatalf("introspection before the signal: %v", in)
	}

	start := time.Now()
	r := e.Do("POST", "/v1/signals", siemToken, map[string]any{"agent_id": agent, "severity": "high", "reason": "credential exfiltration seen by the SIEM"})
	if r.Status != http.StatusCreated {
		t.Fatalf("signal: %d %s", r.Status, r.Body)
	}
	res := r.JSON(t)
	if res["leases_ended"] != float64(1200) || fmt.Sprint(res["quarantined"]) != "["+agent+"]" {
		t.Fatalf("signal answer: %s", r.Body)
	}
	eventually(t, 60*time.Second, "every lease of the agent is revoked at its backend", func() bool {
		c := stateCounts(t, e, agent)
		return c["revoked"] == 1200 && len(c) == 1
	})
	t.Logf("1,200 leases (1,000 jwt, 200 vault) revoked %s after the signal", time.Since(start).Round(time.Millisecond))
	if in := introspect(t, e, access); in["active"] != false {
		t.Fatalf("introspection after the signal: %v", in)
	}
	for _, c := range vaults {
		tok := c["credential"].(map[string]any)["vault_token"].(string)
		if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err == nil {
			t.Fatal("Vault still accepts a token of the contained agent")
		}
	}
	if got := e.Do("GET", "/v1/leases/"+bystander["lease_id"].(string), testOperatorToken, nil).JSON(t)["state"]; got != "active" {
		t.Fatalf("another agent's lease is %v", got)
	}

	// Quarantined: every new mint is refused with the quarantined problem.
	r = e.Do("POST", "/v1/credentials", e.Attest("contained", nil), map[string]any{"role": "demo"})
	p := r.JSON(t)
	if r.Status != http.StatusForbidden || p["type"] != "urn:valet:problem:quarantined" || !strings.Contains(p["detail"].(string), "quarantined") ||
		r.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("mint of a quarantined agent: %d %s", r.Status, r.Body)
	}
	a := e.Do("GET", agentPath(agent), testOperatorToken, nil).JSON(t)
	if a["quarantined"] != true || a["risk"] != float64(60) || len(a["signals"].([]any)) != 1 {
		t.Fatalf("agent view: %v", a)
	}

	// The SSF receiver heard of it, with a SET valet's JWKS verifies.
	eventually(t, 10*time.Second, "the receiver got the SET", func() bool { s, _ := rcv.sets(); return len(s) == 1 })
	sets, bad := rcv.sets()
	sub := sets[0]["sub_id"].(map[string]any)
	events := sets[0]["events"].(map[string]any)
	if bad != 0 || sub["sub"] != agent || sub["iss"] != "http://valet.test" || sets[0]["aud"] != "https://gateway.test" ||
		events["https://schemas.openid.net/secevent/caep/event-type/session-revoked"] == nil {
		t.Fatalf("SET %v (%d refused)", sets[0], bad)
	}

	// Every step is in the audit log.
	kinds := auditCounts(t, e)
	for k, want := range map[string]int{"signal/allow": 1, "agent.quarantine/allow": 1, "lease.revoke/allow": 1200,
		"lease.revoked/": 1200, "signal.contained/allow": 1, "mint/deny": 1} {
		if kinds[k] != want {
			t.Errorf("%d %s records, want %d", kinds[k], k, want)
		}
	}

	// An operator releases it, with a reason, and it mints again.
	r = e.Do("DELETE", agentPath(agent)+"/quarantine", testOperatorToken, nil)
	if r.Status != http.StatusBadRequest {
		t.Fatalf("release without a reason: %d %s", r.Status, r.Body)
	}
	r = e.Do("DELETE", agentPath(agent)+"/quarantine?reason="+url.QueryEscape("rotated the leaked key"), testOperatorToken, nil)
	if r.Status != http.StatusOK || r.JSON(t)["quarantined"] != false {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	e.Mint(e.Attest("contained", nil), "demo")
	if v := e.Do("GET", "/v1/audit/verify", testOperatorToken, nil).JSON(t); v["ok"] != true {
		t.Fatalf("audit verify: %v", v)
	}
}

// TestSignalRefusals: signals with bad authentication, bad shape or an
// unknown subject get a clear problem+json and change nothing.
func TestSignalRefusals(t *testing.T) {
	e := newTestEnv(t)
	withSignalSource(e, func(c *broker.SignalSourceConfig) {
		c.AllowedActions = []agents.Action{agents.ActionAlert, agents.ActionRevoke}
	})
	e.Start()
	lease := e.Mint(e.Attest("agent-1", nil), "demo")
	cases := []struct {
		name   string
		bearer string
		body   any
		status int
		code   string
		detail string
	}{
		{"no credential", "", map[string]any{"agent_id": "test/agent-1", "severity": "high", "reason": "x"}, 401, "unauthorized", "send a signal source's token"},
		{"a wrong token", "valet_sig_wrong", map[string]any{"agent_id": "test/agent-1", "severity": "high", "reason": "x"}, 401, "unauthorized", "no signal source's credential"},
		{"an agent's attestation", e.Attest("agent-1", nil), map[string]any{"agent_id": "test/agent-1", "severity": "high", "reason": "x"}, 401, "unauthorized", "no signal source's credential"},
		{"two subjects", siemToken, map[string]any{"agent_id": "test/agent-1", "role": "demo", "severity": "high", "reason": "x"}, 400, "invalid", "exactly one subject"},
		{"an unknown field", siemToken, map[string]any{"agent_id": "test/agent-1", "severity": "high", "reason": "x", "urgency": 1}, 400, "invalid", "urgency"},
		{"not JSON", siemToken, "severity=high", 400, "invalid", ""},
		{"a bad severity", siemToken, map[string]any{"agent_id": "test/agent-1", "severity": "HIGH", "reason": "x"}, 400, "invalid", "severity must be"},
		{"no reason", siemToken, map[string]any{"agent_id": "test/agent-1", "severity": "high"}, 400, "invalid", "reason is required"},
		{"a bad event time", siemToken, map[string]any{"agent_id": "test/agent-1", "severity": "high", "reason": "x", "event_time": "yesterday"}, 400, "invalid", ""},
		{"an unknown agent", siemToken, map[string]any{"agent_id": "test/ghost", "severity": "high", "reason": "x"}, 404, "not_found", "not known to valet"},
		{"an unknown lease", siemToken, map[string]any{"lease_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "severity": "high", "reason": "x"}, 404, "not_found", "not found"},
		{"an unknown role", siemToken, map[string]any{"role": "nope", "severity": "high", "reason": "x"}, 404, "not_found", "does not exist"},
		{"an action the source may not ask", siemToken, map[string]any{"agent_id": "test/agent-1", "severity": "low", "reason": "x", "action": "quarantine"}, 403, "forbidden", "may not ask for action quarantine"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := auditCounts(t, e)
			r := e.Do("POST", "/v1/signals", c.bearer, c.body)
			p := r.JSON(t)
			if r.Status != c.status || p["code"] != c.code || p["type"] != "urn:valet:problem:"+c.code || !strings.Contains(p["detail"].(string), c.detail) ||
				r.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s, want %d %s containing %q", r.Status, r.Body, c.status, c.code, c.detail)
			}
			after := auditCounts(t, e)
			if after["signal/deny"] != before["signal/deny"]+1 || after["signal/allow"] != 0 {
				t.Errorf("audit: %d refused signals recorded (before %d), %d accepted", after["signal/deny"], before["signal/deny"], after["signal/allow"])
			}
		})
	}
	if got := e.Do("GET", "/v1/leases/"+lease["lease_id"].(string), testOperatorToken, nil).JSON(t)["state"]; got != "active" {
		t.Fatalf("the agent's lease is %v", got)
	}
	a := e.Do("GET", agentPath("test/agent-1"), testOperatorToken, nil).JSON(t)
	if a["risk"] != float64(0) || a["quarantined"] != false {
		t.Fatalf("the agent changed: %v", a)
	}
	if l := e.Do("GET", "/v1/signals", testOperatorToken, nil).JSON(t)["signals"].([]any); len(l) != 0 {
		t.Fatalf("signals stored: %v", l)
	}
}

// TestSETPush: a SET from a configured transmitter (signed in the test)
// revokes; a bad signature, a wrong aud, a replayed jti or alg none change
// nothing and get RFC 8935 errors; an unknown event type is accepted
// (202), recorded and ignored.
func TestSETPush(t *testing.T) {
	e := newTestEnv(t)
	tx, jwksPath := newKeyedIssuer(t, e, "https://idp.test")
	other, err := attest.NewDevIssuer("https://idp.test") // same iss, a key valet does not trust
	if err != nil {
		t.Fatal(err)
	}
	e.Config.Signals.Transmitters = []attest.TransmitterConfig{config.Defaulted(func(tc *attest.TransmitterConfig) {
		tc.Name, tc.Issuer, tc.JWKSFile, tc.Algorithms = "idp", "https://idp.test", jwksPath, []string{"ES256"}
	})}
	e.Start()
	lease := e.Mint(e.Attest("agent-1", nil), "demo")
	sign := func(iss *attest.DevIssuer, jti, aud, typ string, hdr map[string]any) string {
		c := map[string]any{"aud": aud, "jti": jti, "exp": nil,
			"sub_id": map[string]any{"format": "iss_sub", "iss": "https://issuer.test", "sub": "agent-1"},
			"events": map[string]any{typ: map[string]any{"reason_admin": map[string]any{"en": "user signed out everywhere"}}}}
		h := map[string]any{"typ": "secevent+jwt"}
		for k, v := range hdr {
			h[k] = v
		}
		tok, err := iss.SignWithHeaders(c, h)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	push := func(body, contentType string) response {
		req, _ := http.NewRequest("POST", e.URL+"/v1/signals/set", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		return e.send(req)
	}
	const revoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	good := sign(tx, "set-1", "http://valet.test", revoked, nil)
	cases := []struct {
		name        string
		body        string
		contentType string
		status      int
		err         string
	}{
		{"a bad signature", sign(other, "set-2", "http://valet.test", revoked, map[string]any{"kid": tx.KeyID()}), "application/secevent+jwt", 400, "invalid_key"},
		{"a wrong aud", sign(tx, "set-3", "https://someone-else", revoked, nil), "application/secevent+jwt", 400, "invalid_audience"},
		{"alg none", func() string {
			parts := strings.Split(sign(tx, "set-4", "http://valet.test", revoked, map[string]any{"alg": "none"}), ".")
			return parts[0] + "." + parts[1] + "."
		}(), "application/secevent+jwt", 400, "invalid_request"},
		{"a plain JWT", sign(tx, "set-5", "http://valet.test", revoked, map[string]any{"typ": "JWT"}), "application/secevent+jwt", 400, "invalid_request"},
		{"the wrong content type", good, "application/json", 400, "invalid_request"},
		{"an unknown transmitter", sign(e.Issuer, "set-6", "http://valet.test", revoked, map[string]any{}), "application/secevent+jwt", 400, "invalid_issuer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := push(c.body, c.contentType)
			var body struct {
				Err         string `json:"err"`
				Description string `json:"description"`
			}
			if err := json.Unmarshal(r.Body, &body); err != nil || r.Status != c.status || body.Err != c.err || body.Description == "" {
				t.Fatalf("%d %s, want %d with err %s", r.Status, r.Body, c.status, c.err)
			}
			if got := e.Do("GET", "/v1/leases/"+lease["lease_id"].(string), testOperatorToken, nil).JSON(t)["state"]; got != "active" {
				t.Fatalf("the lease is %v after a refused SET", got)
			}
		})
	}
	r := push(sign(tx, "set-7", "http://valet.test", "https://example.com/secevent/made-up", nil), "application/secevent+jwt")
	if r.Status != http.StatusAccepted || len(r.Body) != 0 {
		t.Fatalf("an unknown event type: %d %s, want 202", r.Status, r.Body)
	}
	if l := e.Do("GET", "/v1/signals", testOperatorToken, nil).JSON(t)["signals"].([]any); len(l) != 0 {
		t.Fatalf("an unknown event type raised a signal: %v", l)
	}
	r = push(good, "application/secevent+jwt")
	if r.Status != http.StatusAccepted {
		t.Fatalf("a good SET: %d %s", r.Status, r.Body)
	}
	if got := e.Do("GET", "/v1/leases/"+lease["lease_id"].(string), testOperatorToken, nil).JSON(t)["state"]; got != "revoked" && got != "revoking" {
		t.Fatalf("the lease of the revoked session is %v", got)
	}
	r = push(good, "application/secevent+jwt")
	if r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), "received already") {
		t.Fatalf("the same SET again: %d %s", r.Status, r.Body)
	}
	l := e.Do("GET", "/v1/signals?source=ssf:idp", testOperatorToken, nil).JSON(t)["signals"].([]any)
	if len(l) != 1 || l[0].(map[string]any)["action"] != "revoke" {
		t.Fatalf("signals of the transmitter: %v", l)
	}
	kinds := auditCounts(t, e)
	// The request of the wrong content type carried no SET to refuse.
	if kinds["signal/deny"] != 6 || kinds["signal/"] != 1 || kinds["signal/allow"] != 1 {
		t.Fatalf("audit %v: want 6 refused SETs (5 that did not verify, 1 replay), 1 ignored event, 1 signal", kinds)
	}
}

// TestLineageSignalAcrossBackends: a lineage signal revokes everything
// derived from that attestation, on the jwt and the ledger backend, and
// nothing else.
func TestLineageSignalAcrossBackends(t *testing.T) {
	e := newTestEnv(t)
	withSignalSource(e, nil)
	e.Start()
	att := e.Attest("agent-1", map[string]any{"jti": "leaked-1"})
	var derived []string
	for _, role := range []string{"demo", "ledger", "demo", "ledger"} {
		derived = append(derived, e.Mint(att, role)["lease_id"].(string))
	}
	other := e.Mint(e.Attest("agent-1", map[string]any{"jti": "fine-1"}), "ledger")["lease_id"].(string)
	r := e.Do("POST", "/v1/signals", siemToken, map[string]any{"lineage": "jti:https://issuer.test#leaked-1", "severity": "medium", "reason": "token in a public repo"})
	if r.Status != http.StatusCreated || r.JSON(t)["leases_ended"] != float64(4) {
		t.Fatalf("lineage signal: %d %s", r.Status, r.Body)
	}
	eventually(t, 10*time.Second, "the derived leases are revoked", func() bool {
		for _, id := range derived {
			if e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).JSON(t)["state"] != "revoked" {
				return false
			}
		}
		return true
	})
	if got := e.Do("GET", "/v1/leases/"+other, testOperatorToken, nil).JSON(t)["state"]; got != "active" {
		t.Fatalf("a lease of another attestation is %v", got)
	}
	files, _ := filepathGlob(e.Dir, "ledger")
	if len(files) != 1 || files[0] != other {
		t.Fatalf("ledger credentials alive: %v, want only %s", files, other)
	}
}

// filepathGlob lists the files in dir/sub.
func filepathGlob(dir, sub string) ([]string, error) {
	es, err := os.ReadDir(filepath.Join(dir, sub))
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out, err
}

// TestRestartDuringMassRevocation kills valet (SIGKILL) after the first
// batch of a mass revocation; after a restart every lease the signal
// concerned ends revoked at its backend and none is lost.
func TestRestartDuringMassRevocation(t *testing.T) {
	e := newTestEnvYAML(t, func(s string) string {
		// The set-up mints 700 credentials in seconds, over the mint-rate
		// detector's ceiling; only the SIEM's signal is under test.
		return s + "signals:\n  sources:\n    - name: siem\n      token_sha256: " + broker.HashToken(siemToken) + "\n" +
			"  detectors:\n    mint_rate: {enabled: false}\n"
	})
	p := startServe(t, e)
	e.URL = p.url
	const n = 700 // two batches of containBatch (500)
	mintMany(t, e, "busy", "ledger", n)
	p.stop(t)
	p = startServe(t, e, "VALET_FAILPOINTS=contain.between-batches")
	e.URL = p.url
	req, _ := http.NewRequest("POST", p.url+"/v1/signals", strings.NewReader(`{"agent_id":"test/busy","severity":"high","reason":"crash test"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+siemToken)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the signal answered %d; the failpoint should have killed valet", resp.StatusCode)
	}
	<-p.done
	p = startServe(t, e)
	e.URL = p.url
	eventually(t, 60*time.Second, "every lease of the agent is revoked after the restart", func() bool {
		c := stateCounts(t, e, "test/busy")
		return c["revoked"] == n && len(c) == 1
	})
	files, _ := filepathGlob(e.Dir, "ledger")
	if len(files) != 0 {
		t.Fatalf("%d ledger credentials alive after the mass revocation", len(files))
	}
	l := e.Do("GET", "/v1/signals", testOperatorToken, nil).JSON(t)["signals"].([]any)
	c := l[0].(map[string]any)["containment"].(map[string]any)
	if len(l) != 1 || c["state"] != "done" || c["ended"] != float64(n) {
		t.Fatalf("the signal after the restart: %v", l)
	}
	r := e.Do("POST", "/v1/credentials", e.Attest("busy", nil), map[string]any{"role": "demo"})
	if r.Status != http.StatusForbidden || r.JSON(t)["code"] != "quarantined" {
		t.Fatalf("the quarantine did not survive the restart: %d %s", r.Status, r.Body)
	}
	p.stop(t)
}

// TestSignalSourceIDToken: a source may authenticate with an ID token of
// one of signals.issuers, matched to the source by its subject.
func TestSignalSourceIDToken(t *testing.T) {
	e := newTestEnv(t)
	ci, jwks := newKeyedIssuer(t, e, "https://ci.test")
	e.Config.Signals.Issuers = []attest.IssuerConfig{config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "ci", "https://ci.test", []string{"valet-signals"}, jwks, []string{"ES256"}
	})}
	e.Config.Signals.Sources = []broker.SignalSourceConfig{config.Defaulted(func(c *broker.SignalSourceConfig) {
		c.Name, c.Issuer, c.Subject = "falco", "ci", "repo:acme/falco"
	})}
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	e.Start()
	e.Mint(e.Attest("agent-1", nil), "demo")
	idToken := func(sub, aud string) string {
		tok, err := ci.Sign(map[string]any{"sub": sub, "aud": aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	body := map[string]any{"agent_id": "test/agent-1", "severity": "low", "reason": "unusual syscall"}
	r := e.Do("POST", "/v1/signals", idToken("repo:acme/falco", "valet-signals"), body)
	if r.Status != http.StatusCreated {
		t.Fatalf("signal with the source's ID token: %d %s", r.Status, r.Body)
	}
	if src := r.JSON(t)["signal"].(map[string]any)["source"].(map[string]any); src["kind"] != "source" || src["name"] != "falco" {
		t.Fatalf("source %v", src)
	}
	for _, c := range []struct {
		name, token, detail string
	}{
		{"another subject of the issuer", idToken("repo:acme/other", "valet-signals"), "not a configured signal source"},
		{"another audience", idToken("repo:acme/falco", "valet"), "audience"},
		{"an agent's attestation", e.Attest("agent-1", nil), "no signal source's credential"},
	} {
		r := e.Do("POST", "/v1/signals", c.token, body)
		if r.Status != http.StatusUnauthorized || !strings.Contains(r.JSON(t)["detail"].(string), c.detail) {
			t.Errorf("%s: %d %s, want 401 containing %q", c.name, r.Status, r.Body, c.detail)
		}
	}
}

// TestQuarantineReleasesOnItsOwn: with signals.auto_release, a signal's
// quarantine stops refusing at its release time, and the scheduled
// quarantine-release job records the release (agent.release) and the agent
// view shows it.
func TestQuarantineReleasesOnItsOwn(t *testing.T) {
	e := newTestEnv(t)
	fake := clock.NewFake(time.Now().Truncate(time.Second))
	e.Clock = fake
	e.Issuer.SetClock(fake)
	withSignalSource(e, nil)
	e.Config.Signals.AutoRelease = config.Duration(time.Hour)
	e.Start()
	const agent = "test/flaky"
	e.Mint(e.Attest("flaky", nil), "demo")
	if r := e.Do("POST", "/v1/signals", siemToken, map[string]any{"agent_id": agent, "severity": "high", "reason": "odd egress"}); r.Status != http.StatusCreated {
		t.Fatalf("signal: %d %s", r.Status, r.Body)
	}
	if r := e.Do("POST", "/v1/credentials", e.Attest("flaky", nil), map[string]any{"role": "demo"}); r.Status != http.StatusForbidden {
		t.Fatalf("mint while quarantined: %d %s", r.Status, r.Body)
	}
	if out := mustCLI(t, cliEnv(e), "jobs", "run", "quarantine-release"); !strings.Contains(out, "agents_released: 0") {
		t.Fatalf("jobs run before the release time: %q", out)
	}

	// An hour on, the agent mints again, and the job's next scheduled run
	// (every 30s on valet's clock) records the release.
	fake.Advance(time.Hour + time.Second)
	e.Mint(e.Attest("flaky", nil), "demo")
	eventually(t, 10*time.Second, "the scheduled run released the agent", func() bool {
		return e.Do("GET", agentPath(agent), testOperatorToken, nil).JSON(t)["last_release"] != nil
	})
	job := apiJSON[map[string]any](t, e, "/v1/jobs/quarantine-release")
	if !strings.Contains(fmt.Sprint(job["recent"]), "agents_released:1") {
		t.Errorf("the job's runs: %v", job)
	}
	a := e.Do("GET", agentPath(agent), testOperatorToken, nil).JSON(t)
	rel, _ := a["last_release"].(map[string]any)
	if a["quarantined"] != false || rel == nil || !strings.Contains(fmt.Sprint(rel["reason"]), "released automatically 1h0m0s after") {
		t.Fatalf("agent view after the release: %v", a)
	}
	if kinds := auditCounts(t, e); kinds["agent.quarantine/allow"] != 1 || kinds["agent.release/allow"] != 1 {
		t.Fatalf("audit kinds %v", kinds)
	}
}

// TestKEKSwitchKeepsTheSSFKey: valet's SSF transmitter key is sealed under
// the KEK like the signing keys; while valet switches KEKs it opens under
// the previous one, the kek-rotation job seals it again under the new one
// (counted in `valet kek finish`), and valet then starts with the new KEK
// alone and publishes the same SET key.
func TestKEKSwitchKeepsTheSSFKey(t *testing.T) {
	kekA, kekB := strings.Repeat("07", 32), strings.Repeat("5b", 32)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer rcv.Close()
	e := newTestEnvYAML(t, func(s string) string {
		return s + "notifications:\n  webhooks:\n    - name: gateway\n      format: set\n      url: " + rcv.URL + "\n"
	})
	ssfKids := func() []string {
		var kids []string
		signing, _ := publishedKeys(t, e)
		for _, k := range signing {
			if strings.HasPrefix(k, "ssf-") {
				kids = append(kids, k)
			}
		}
		return kids
	}
	p := startServe(t, e, "VALET_KEK="+kekA)
	e.URL = p.url
	before := ssfKids()
	if len(before) != 1 {
		t.Fatalf("JWKS before the switch: SET keys %v, want one", before)
	}
	p.stop(t)

	if msg := serveFails(t, e, "VALET_KEK="+kekB); !strings.Contains(msg, "VALET_KEK_PREVIOUS") {
		t.Fatalf("start with the new KEK alone: %s", msg)
	}
	p = startServe(t, e, "VALET_KEK="+kekB, "VALET_KEK_PREVIOUS="+kekA)
	e.URL = p.url
	out := mustCLI(t, cliEnv(e), "kek", "finish")
	if !strings.Contains(out, "is no longer needed") {
		t.Fatalf("valet kek finish:\n%s", out)
	}
	job := apiJSON[map[string]any](t, e, "/v1/jobs/kek-rotation")
	if !strings.Contains(fmt.Sprint(job["recent"]), "ssf_transmitter_key.rewrapped:1") {
		t.Fatalf("the kek-rotation run did not re-wrap the SSF key: %v", job["recent"])
	}
	p.stop(t)

	p = startServe(t, e, "VALET_KEK="+kekB)
	e.URL = p.url
	if after := ssfKids(); !slices.Equal(after, before) {
		t.Fatalf("SET keys after the switch %v, want %v", after, before)
	}
	p.stop(t)
}

// detectorSignals lists the signals one of valet's detectors raised.
func detectorSignals(t *testing.T, e *testEnv, name string) []map[string]any {
	t.Helper()
	r := e.Do("GET", "/v1/signals?source=detector:"+name, testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("list signals: %d %s", r.Status, r.Body)
	}
	var out []map[string]any
	for _, s := range r.JSON(t)["signals"].([]any) {
		out = append(out, s.(map[string]any))
	}
	return out
}

// TestDetectorsRaiseSignals: valet's detectors watch the real flows and
// raise their signals through the signal pipeline, with their evidence,
// audited with the detector as the actor; the new-role detector learns
// the roles an agent minted before a restart from its agent record.
func TestDetectorsRaiseSignals(t *testing.T) {
	e := newTestEnvYAML(t, func(s string) string {
		return s + "signals:\n  detectors:\n    mint_rate: {ceiling: 2}\n    new_role: {learning: 0s, severity: info}\n"
	})
	e.Start()
	for range 3 {
		e.Mint(e.Attest("busy", nil), "demo")
	}
	var rate []map[string]any
	eventually(t, 10*time.Second, "the mint-rate detector's signal", func() bool {
		rate = detectorSignals(t, e, "mint_rate")
		return len(rate) == 1
	})
	s := rate[0]
	ev, _ := s["evidence"].(map[string]any)
	if s["severity"] != "medium" || s["action"] != "alert" || s["subject"].(map[string]any)["id"] != "test/busy" ||
		ev["mints"] != "3" || ev["ceiling"] != "2" || !strings.Contains(s["reason"].(string), "over the ceiling of 2") {
		t.Fatalf("mint-rate signal: %v", s)
	}
	recs := e.Do("GET", "/v1/audit?kind=signal&limit=100", testOperatorToken, nil).JSON(t)["records"].([]any)
	found := false
	for _, r := range recs {
		m := r.(map[string]any)
		d, _ := m["details"].(map[string]any)
		actor, _ := m["actor"].(map[string]any)
		if actor["id"] == "detector:mint_rate" && d["evidence.mints"] == "3" && m["agent_id"] == "test/busy" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit record of the mint-rate signal with its evidence: %v", recs)
	}
	if got := detectorSignals(t, e, "new_role"); len(got) != 1 || got[0]["evidence"].(map[string]any)["role"] != "demo" {
		t.Fatalf("new-role signals: %v", got)
	}

	// After a restart, demo is a role busy minted: only other is new.
	e.Server.Close()
	e.Start()
	e.Mint(e.Attest("busy", nil), "demo")
	e.Mint(e.Attest("busy", nil), "other")
	var roles []map[string]any
	eventually(t, 10*time.Second, "the new role's signal", func() bool {
		roles = detectorSignals(t, e, "new_role")
		return len(roles) >= 2
	})
	if len(roles) != 2 || roles[0]["evidence"].(map[string]any)["role"] != "other" || roles[0]["evidence"].(map[string]any)["known_roles"] != "demo" {
		t.Fatalf("new-role signals after the restart: %v", roles)
	}
}
