package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/audit"
)

// This file tests the HTTP API end to end, against the real server: hostile
// input (invariant 8), the lease lifecycle, token exchange, the operational
// endpoints, and that no secret reaches the log or the audit records
// (invariant 6).

// raw sends a request with exactly the given headers and body.
func (e *testEnv) raw(method, path string, h map[string]string, body io.Reader) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	return e.send(req)
}

// problem is an RFC 9457 body as valet writes it.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Code      string `json:"code"`
	RequestID string `json:"request_id"`
}

// assertProblem checks that r is an application/problem+json answer with
// the given status and every RFC 9457 member valet promises.
func assertProblem(t *testing.T, r response, status int) problem {
	t.Helper()
	if r.Status != status {
		t.Errorf("status = %d, want %d; body %s", r.Status, status, r.Body)
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/problem+json" {
		t.Errorf("Content-Type = %q, want application/problem+json", r.Header.Get("Content-Type"))
	}
	var p problem
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("problem body: %v\n%s", err, r.Body)
	}
	if p.Type == "" || p.Title == "" || p.Detail == "" || p.Code == "" || p.Status != r.Status {
		t.Errorf("problem %+v lacks type, title, detail or code, or its status is not the HTTP status %d", p, r.Status)
	}
	if p.RequestID == "" || p.RequestID != r.Header.Get("X-Request-Id") {
		t.Errorf("problem request_id %q, X-Request-Id %q: want the same, non-empty", p.RequestID, r.Header.Get("X-Request-Id"))
	}
	return p
}

// assertNoLeases checks invariant 8: the request left no lease behind.
func assertNoLeases(t *testing.T, e *testEnv) {
	t.Helper()
	if got := e.LeaseCounts(); len(got) != 0 {
		t.Errorf("leases after a refused request: %v, want none", got)
	}
}

// auditRecords reads the whole audit log through the operator API.
func (e *testEnv) auditRecords() []audit.Record {
	e.t.Helper()
	var out []audit.Record
	after := uint64(0)
	for {
		r := e.Do("GET", fmt.Sprintf("/v1/audit?limit=1000&after=%d", after), testOperatorToken, nil)
		if r.Status != http.StatusOK {
			e.t.Fatalf("GET /v1/audit: %d %s", r.Status, r.Body)
		}
		var page struct {
			Records []audit.Record `json:"records"`
		}
		if err := json.Unmarshal(r.Body, &page); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, page.Records...)
		if len(page.Records) < 1000 {
			return out
		}
		after = page.Records[len(page.Records)-1].Seq
	}
}

// auditFor returns the audit records of one request.
func (e *testEnv) auditFor(requestID string) []audit.Record {
	e.t.Helper()
	var out []audit.Record
	for _, rec := range e.auditRecords() {
		if rec.RequestID == requestID {
			out = append(out, rec)
		}
	}
	return out
}

func b64json(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// validClaims are claims the test issuer's verifier accepts.
func validClaims(sub string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": "https://issuer.test", "sub": sub, "aud": "valet", "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
}

// publicJWK is the issuer's public key as a JWK object.
func publicJWK(t testing.TB, iss *attest.DevIssuer) map[string]any {
	t.Helper()
	b, err := iss.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("dev issuer JWKS: %v %s", err, b)
	}
	return set.Keys[0]
}

func mustSign(t testing.TB, iss *attest.DevIssuer, claims, headers map[string]any) string {
	t.Helper()
	tok, err := iss.SignWithHeaders(claims, headers)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCredentialsHostileAttestation(t *testing.T) {
	e := newTestEnv(t).Start()
	// The attacker runs an issuer with the trusted iss but its own key.
	attacker, err := attest.NewDevIssuer("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	var keyFetches atomic.Int64
	keySrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keyFetches.Add(1)
		b, _ := attacker.PublicJWKS()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}))
	defer keySrv.Close()

	victimKid := e.Issuer.KeyID()
	now := time.Now()
	valid := validClaims("agent-1")
	payload := b64json(t, valid)
	jwksFile, err := os.ReadFile(filepath.Join(e.Dir, "issuer-jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	hsInput := b64json(t, map[string]any{"alg": "HS256", "kid": victimKid, "typ": "JWT"}) + "." + payload
	mac := hmac.New(sha256.New, jwksFile)
	mac.Write([]byte(hsInput))
	good := e.Attest("agent-1", nil)
	gp := strings.Split(good, ".")

	tests := []struct {
		name   string
		auth   string // the whole Authorization header; "" sends none
		status int
	}{
		{"no Authorization", "", http.StatusUnauthorized},
		{"Basic scheme", "Basic " + base64.StdEncoding.EncodeToString([]byte("agent:secret")), http.StatusUnauthorized},
		{"token without scheme", good, http.StatusUnauthorized},
		{"Bearer without token", "Bearer", http.StatusUnauthorized},
		{"Bearer with blank token", "Bearer    ", http.StatusUnauthorized},
		{"forged signature, attacker kid", "Bearer " + mustSign(t, attacker, valid, nil), http.StatusUnauthorized},
		{"forged signature, victim kid", "Bearer " + mustSign(t, attacker, valid, map[string]any{"kid": victimKid}), http.StatusUnauthorized},
		{"signature of another token", "Bearer " + gp[0] + "." + b64json(t, validClaims("admin")) + "." + gp[2], http.StatusUnauthorized},
		{"expired beyond skew", "Bearer " + e.Attest("agent-1", map[string]any{"iat": now.Add(-20 * time.Minute).Unix(), "exp": now.Add(-5 * time.Minute).Unix()}), http.StatusUnauthorized},
		{"no exp", "Bearer " + e.Attest("agent-1", map[string]any{"exp": nil}), http.StatusUnauthorized},
		{"not yet valid", "Bearer " + e.Attest("agent-1", map[string]any{"nbf": now.Add(time.Hour).Unix()}), http.StatusUnauthorized},
		{"wrong aud", "Bearer " + e.Attest("agent-1", map[string]any{"aud": "someone-else"}), http.StatusUnauthorized},
		{"no aud", "Bearer " + e.Attest("agent-1", map[string]any{"aud": nil}), http.StatusUnauthorized},
		{"unknown iss", "Bearer " + e.Attest("agent-1", map[string]any{"iss": "https://evil.test"}), http.StatusUnauthorized},
		{"no sub", "Bearer " + e.Attest("", map[string]any{"sub": nil}), http.StatusUnauthorized},
		{"alg none", "Bearer " + b64json(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + payload + ".", http.StatusUnauthorized},
		{"alg none with a signature", "Bearer " + b64json(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + payload + "." + gp[2], http.StatusUnauthorized},
		{"HS256 keyed with the public JWKS", "Bearer " + hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), http.StatusUnauthorized},
		{"alg not allowed for the issuer", "Bearer " + mustSign(t, e.Issuer, valid, map[string]any{"alg": "RS256"}), http.StatusUnauthorized},
		{"jku to the attacker's keys", "Bearer " + mustSign(t, attacker, valid, map[string]any{"jku": keySrv.URL + "/jwks.json"}), http.StatusUnauthorized},
		{"jku with the victim kid", "Bearer " + mustSign(t, attacker, valid, map[string]any{"jku": keySrv.URL + "/jwks.json", "kid": victimKid}), http.StatusUnauthorized},
		{"x5u to the attacker", "Bearer " + mustSign(t, attacker, valid, map[string]any{"x5u": keySrv.URL + "/cert.pem"}), http.StatusUnauthorized},
		{"embedded jwk", "Bearer " + mustSign(t, attacker, valid, map[string]any{"jwk": publicJWK(t, attacker)}), http.StatusUnauthorized},
		{"embedded jwk with the victim kid", "Bearer " + mustSign(t, attacker, valid, map[string]any{"jwk": publicJWK(t, attacker), "kid": victimKid}), http.StatusUnauthorized},
		{"crit header", "Bearer " + mustSign(t, e.Issuer, valid, map[string]any{"crit": []string{"exp"}, "exp": now.Add(time.Hour).Unix()}), http.StatusUnauthorized},
		{"b64 false", "Bearer " + mustSign(t, e.Issuer, valid, map[string]any{"b64": false}), http.StatusUnauthorized},
		{"oversized", "Bearer " + e.Attest("agent-1", map[string]any{"pad": strings.Repeat("x", e.Config.Limits.MaxAttestationBytes)}), http.StatusRequestEntityTooLarge},
		{"two segments", "Bearer " + gp[0] + "." + gp[1], http.StatusUnauthorized},
		{"four segments", "Bearer " + good + ".AAAA", http.StatusUnauthorized},
		{"five segments (JWE)", "Bearer " + good + ".AAAA.BBBB", http.StatusUnauthorized},
		{"not base64", "Bearer " + gp[0] + ".$$$." + gp[2], http.StatusUnauthorized},
		{"padded base64", "Bearer " + gp[0] + "==." + gp[1] + "." + gp[2], http.StatusUnauthorized},
		{"payload not JSON", "Bearer " + gp[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("not json")) + "." + gp[2], http.StatusUnauthorized},
		{"JSON serialization", "Bearer " + fmt.Sprintf(`{"payload":%q,"protected":%q,"signature":%q}`, gp[1], gp[0], gp[2]), http.StatusUnauthorized},
		{"garbage", "Bearer garbage", http.StatusUnauthorized},
	}
	body := `{"role":"demo"}`
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"Content-Type": "application/json"}
			if tt.auth != "" {
				h["Authorization"] = tt.auth
			}
			r := e.raw("POST", "/v1/credentials", h, strings.NewReader(body))
			p := assertProblem(t, r, tt.status)
			if tt.status == http.StatusUnauthorized && r.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tok, ok := strings.CutPrefix(tt.auth, "Bearer "); ok && len(tok) > 20 && strings.Contains(string(r.Body), tok) {
				t.Errorf("the answer echoes the token: %s", p.Detail)
			}
			assertNoLeases(t, e)
			assertOnlyDenials(t, e, p.RequestID)
		})
	}
	if n := keyFetches.Load(); n != 0 {
		t.Errorf("valet fetched keys from a URL in a token header %d times, want never", n)
	}
}

func TestCredentialsHostileBody(t *testing.T) {
	e := newTestEnv(t).Start()
	huge := `{"role":"demo","reason":"` + strings.Repeat("a", int(e.Config.Limits.MaxBodyBytes)) + `"}`
	tests := []struct {
		name   string
		ctype  string
		body   func() io.Reader
		status int
	}{
		{"unknown field", "application/json", str(`{"role":"demo","admin":true}`), 400},
		{"huge body", "application/json", str(huge), 413},
		{"huge body chunked", "application/json", func() io.Reader { return io.MultiReader(strings.NewReader(huge)) }, 413},
		{"empty body", "application/json", str(""), 400},
		{"whitespace body", "application/json", str(" \n "), 400},
		{"invalid JSON", "application/json", str(`{"role":`), 400},
		{"not an object", "application/json", str(`["demo"]`), 400},
		{"null", "application/json", str(`null`), 400},
		{"wrong Content-Type", "text/plain", str(`{"role":"demo"}`), 400},
		{"form Content-Type", "application/x-www-form-urlencoded", str(`role=demo`), 400},
		{"no Content-Type", "", str(`{"role":"demo"}`), 400},
		{"two JSON objects", "application/json", str(`{"role":"demo"}{"role":"demo"}`), 400},
		{"trailing garbage", "application/json", str(`{"role":"demo"} x`), 400},
		{"no role", "application/json", str(`{"ttl":"5m"}`), 400},
		{"role not a string", "application/json", str(`{"role":7}`), 400},
		{"role too long", "application/json", str(`{"role":"` + strings.Repeat("r", 64) + `"}`), 400},
		{"ttl negative string", "application/json", str(`{"role":"demo","ttl":"-5m"}`), 400},
		{"ttl negative number", "application/json", str(`{"role":"demo","ttl":-5}`), 400},
		{"ttl zero", "application/json", str(`{"role":"demo","ttl":0}`), 400},
		{"ttl under a second", "application/json", str(`{"role":"demo","ttl":"500ms"}`), 400},
		{"ttl fractional seconds", "application/json", str(`{"role":"demo","ttl":1.5}`), 400},
		{"ttl garbage", "application/json", str(`{"role":"demo","ttl":"soon"}`), 400},
		{"ttl boolean", "application/json", str(`{"role":"demo","ttl":true}`), 400},
		{"ttl over a year", "application/json", str(`{"role":"demo","ttl":"8761h"}`), 400},
		{"ttl seconds over a year", "application/json", str(`{"role":"demo","ttl":31536001}`), 400},
		{"ttl overflowing", "application/json", str(`{"role":"demo","ttl":1e300}`), 400},
		{"reason with a newline", "application/json", str(`{"role":"demo","reason":"ok\nFAKE LOG LINE"}`), 400},
		{"reason with NUL", "application/json", str(`{"role":"demo","reason":"a\u0000b"}`), 400},
		{"reason with an escape sequence", "application/json", str(`{"role":"demo","reason":"\u001b[31mred"}`), 400},
		{"reason too long", "application/json", str(`{"role":"demo","reason":"` + strings.Repeat("a", 1025) + `"}`), 400},
		{"scope not an object", "application/json", str(`{"role":"demo","scope":["read"]}`), 400},
		{"scope superset", "application/json", str(`{"role":"demo","scope":{"scopes":["read","admin"]}}`), 400},
		{"scope audience superset", "application/json", str(`{"role":"demo","scope":{"audience":["demo-api","evil-api"]}}`), 400},
		{"scope audience empty", "application/json", str(`{"role":"demo","scope":{"audience":[]}}`), 400},
		{"unknown scope key", "application/json", str(`{"role":"demo","scope":{"admin":true}}`), 400},
		{"too many scope keys", "application/json", str(`{"role":"demo","scope":{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"m":1,"n":1,"o":1,"p":1,"q":1}}`), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"Authorization": "Bearer " + e.Attest("agent-1", nil)}
			if tt.ctype != "" {
				h["Content-Type"] = tt.ctype
			}
			r := e.raw("POST", "/v1/credentials", h, tt.body())
			p := assertProblem(t, r, tt.status)
			assertNoLeases(t, e)
			assertOnlyDenials(t, e, p.RequestID)
		})
	}
}

// assertOnlyDenials checks that a refused request left at most its denial
// in the audit log.
func assertOnlyDenials(t *testing.T, e *testEnv, requestID string) {
	t.Helper()
	recs := e.auditFor(requestID)
	if len(recs) > 1 {
		t.Errorf("a refused request left %d audit records, want at most its denial: %+v", len(recs), recs)
	}
	for _, rec := range recs {
		if rec.Decision != audit.Deny {
			t.Errorf("a refused request left audit record %+v, want only a denial", rec)
		}
	}
}

func str(s string) func() io.Reader { return func() io.Reader { return strings.NewReader(s) } }

func TestCredentialsDenied(t *testing.T) {
	e := newTestEnv(t).Start()
	tests := []struct {
		name       string
		claims     map[string]any
		role       string
		status     int
		wantPolicy []string // policy ids on the audit record
		wantDetail string
	}{
		{name: "unknown role", role: "no-such-role", status: 404, wantDetail: `"no-such-role" does not exist`},
		{name: "blocked by policy", claims: map[string]any{"blocked": true}, role: "demo", status: 403, wantPolicy: []string{"deny-blocked"}, wantDetail: "forbidden by policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.Do("POST", "/v1/credentials", e.Attest("agent-1", tt.claims), map[string]any{"role": tt.role})
			p := assertProblem(t, r, tt.status)
			if !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("detail %q does not say %q", p.Detail, tt.wantDetail)
			}
			assertNoLeases(t, e)
			recs := e.auditFor(p.RequestID)
			if len(recs) != 1 {
				t.Fatalf("audit records of the request: %+v, want exactly one", recs)
			}
			rec := recs[0]
			if rec.Kind != audit.KindMint || rec.Decision != audit.Deny || rec.AgentID != "test/agent-1" || rec.Role != tt.role ||
				rec.Actor.Type != audit.ActorAgent || rec.PolicyVersion == "" || rec.Reason == "" {
				t.Errorf("audit record %+v, want a mint denial of role %s for test/agent-1 with a policy version and a reason", rec, tt.role)
			}
			if !slices.Equal(rec.PolicyIDs, tt.wantPolicy) {
				t.Errorf("audit policy ids = %v, want %v", rec.PolicyIDs, tt.wantPolicy)
			}
		})
	}
}

// leaseJSON is a lease as the API shows it.
type leaseJSON struct {
	ID         string    `json:"id"`
	AgentID    string    `json:"agent_id"`
	Role       string    `json:"role"`
	State      string    `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	RenewCount int       `json:"renew_count"`
	Handle     string    `json:"handle"`
}

func decode[T any](t testing.TB, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, r.Body)
	}
	return v
}

// minted is a 201 answer of POST /v1/credentials.
type minted struct {
	LeaseID    string         `json:"lease_id"`
	Role       string         `json:"role"`
	AgentID    string         `json:"agent_id"`
	ExpiresAt  time.Time      `json:"expires_at"`
	Renewable  bool           `json:"renewable"`
	Credential map[string]any `json:"credential"`
}

func (e *testEnv) mint(t *testing.T, sub string, body map[string]any) minted {
	t.Helper()
	r := e.Do("POST", "/v1/credentials", e.Attest(sub, nil), body)
	if r.Status != http.StatusCreated {
		t.Fatalf("mint %v: %d %s", body, r.Status, r.Body)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("a credential answer has Cache-Control %q, want no-store", r.Header.Get("Cache-Control"))
	}
	m := decode[minted](t, r)
	if r.Header.Get("Location") != "/v1/leases/"+m.LeaseID {
		t.Errorf("Location = %q, want /v1/leases/%s", r.Header.Get("Location"), m.LeaseID)
	}
	return m
}

// tokenClaims decodes the payload of a valet access token (its signature
// is checked by introspection elsewhere).
func tokenClaims(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("access token has %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func accessToken(t testing.TB, cred map[string]any) string {
	t.Helper()
	tok, _ := cred["access_token"].(string)
	if tok == "" {
		t.Fatalf("credential without access_token: %v", cred)
	}
	return tok
}

func TestCredentialTTL(t *testing.T) {
	e := newTestEnv(t).Start()
	tests := []struct {
		name string
		ttl  any // nil leaves ttl out
		want time.Duration
	}{
		{"role default", nil, 5 * time.Minute},
		{"integer seconds", 90, 90 * time.Second},
		{"duration string", "90s", 90 * time.Second},
		{"integer seconds as a string", "120", 2 * time.Minute},
		{"capped at max_ttl", "2h", time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"role": "demo"}
			if tt.ttl != nil {
				body["ttl"] = tt.ttl
			}
			m := e.mint(t, "agent-ttl", body)
			r := e.Do("GET", "/v1/leases/"+m.LeaseID, testOperatorToken, nil)
			l := decode[leaseJSON](t, r)
			if got := l.ExpiresAt.Sub(l.CreatedAt); got != tt.want {
				t.Errorf("lease ttl = %v, want %v", got, tt.want)
			}
			if !m.ExpiresAt.Equal(l.ExpiresAt) {
				t.Errorf("answer expires_at %v, lease %v", m.ExpiresAt, l.ExpiresAt)
			}
			exp, _ := tokenClaims(t, accessToken(t, m.Credential))["exp"].(float64)
			if int64(exp) != l.ExpiresAt.Unix() {
				t.Errorf("token exp = %v, want the lease's expiry %d (floored)", exp, l.ExpiresAt.Unix())
			}
		})
	}
}

func TestLeaseLifecycle(t *testing.T) {
	e := newTestEnv(t).Start()
	owner := func() string { return e.Attest("agent-1", nil) }
	m := e.mint(t, "agent-1", map[string]any{"role": "demo", "scope": map[string]any{"scopes": []string{"read"}, "audience": []string{"demo-api"}}})
	if m.AgentID != "test/agent-1" || m.Role != "demo" || !m.Renewable {
		t.Fatalf("mint answer %+v", m)
	}
	firstTok := accessToken(t, m.Credential)
	path := "/v1/leases/" + m.LeaseID

	t.Run("owner reads it", func(t *testing.T) {
		r := e.Do("GET", path, owner(), nil)
		if r.Status != http.StatusOK {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		l := decode[leaseJSON](t, r)
		if l.ID != m.LeaseID || l.State != "active" || l.Handle != "" {
			t.Errorf("owner sees %+v, want the active lease without its handle", l)
		}
	})
	t.Run("another agent does not see it", func(t *testing.T) {
		assertProblem(t, e.Do("GET", path, e.Attest("agent-2", nil), nil), http.StatusNotFound)
		assertProblem(t, e.Do("DELETE", path, e.Attest("agent-2", nil), nil), http.StatusNotFound)
		assertProblem(t, e.Do("POST", path+"/renew", e.Attest("agent-2", nil), nil), http.StatusNotFound)
	})
	t.Run("operator sees the handle", func(t *testing.T) {
		r := e.Do("GET", path, testOperatorToken, nil)
		if l := decode[leaseJSON](t, r); r.Status != http.StatusOK || l.Handle != m.LeaseID {
			t.Errorf("operator sees %d %+v, want the handle (the jti %s)", r.Status, l, m.LeaseID)
		}
	})
	t.Run("unknown and malformed ids", func(t *testing.T) {
		assertProblem(t, e.Do("GET", "/v1/leases/01JZZZZZZZZZZZZZZZZZZZZZZZ", testOperatorToken, nil), http.StatusNotFound)
		assertProblem(t, e.Do("GET", "/v1/leases/..%2f..%2fetc", testOperatorToken, nil), http.StatusNotFound)
	})

	t.Run("owner renews", func(t *testing.T) {
		r := e.Do("POST", path+"/renew", owner(), map[string]any{"ttl": "30m"})
		if r.Status != http.StatusOK {
			t.Fatalf("renew: %d %s", r.Status, r.Body)
		}
		rr := decode[struct {
			Lease      leaseJSON      `json:"lease"`
			Credential map[string]any `json:"credential"`
		}](t, r)
		if !rr.Lease.ExpiresAt.After(m.ExpiresAt) || rr.Lease.RenewCount != 1 || rr.Lease.State != "active" {
			t.Errorf("renewed lease %+v, want a later expiry than %v and renew_count 1", rr.Lease, m.ExpiresAt)
		}
		newTok := accessToken(t, rr.Credential)
		oldC, newC := tokenClaims(t, firstTok), tokenClaims(t, newTok)
		if newTok == firstTok || newC["exp"].(float64) <= oldC["exp"].(float64) || int64(newC["exp"].(float64)) != rr.Lease.ExpiresAt.Unix() {
			t.Errorf("renewal token exp %v, first %v, lease %v: want a new token expiring with the lease", newC["exp"], oldC["exp"], rr.Lease.ExpiresAt)
		}
		// A renewal never widens: the narrowed scope and audience stay.
		if newC["scope"] != "read" || newC["aud"] != "demo-api" || newC["jti"] != m.LeaseID {
			t.Errorf("renewed token scope %v aud %v jti %v, want read, demo-api, %s as minted", newC["scope"], newC["aud"], newC["jti"], m.LeaseID)
		}
		if in := introspect(t, e, newTok); in["active"] != true || in["scope"] != "read" {
			t.Errorf("introspection of the renewed token = %v", in)
		}
	})
	t.Run("policy denies renewing role other", func(t *testing.T) {
		o := e.mint(t, "agent-1", map[string]any{"role": "other"})
		r := e.Do("POST", "/v1/leases/"+o.LeaseID+"/renew", owner(), map[string]any{"ttl": "2m"})
		p := assertProblem(t, r, http.StatusForbidden)
		if recs := e.auditFor(p.RequestID); len(recs) != 1 || recs[0].Kind != audit.KindRenew || recs[0].Decision != audit.Deny {
			t.Errorf("audit of the denied renewal: %+v", recs)
		}
		if l := decode[leaseJSON](t, e.Do("GET", "/v1/leases/"+o.LeaseID, testOperatorToken, nil)); !l.ExpiresAt.Equal(o.ExpiresAt) {
			t.Errorf("a denied renewal moved the expiry from %v to %v", o.ExpiresAt, l.ExpiresAt)
		}
	})
	t.Run("owner releases, twice", func(t *testing.T) {
		r := e.Do("DELETE", path, owner(), nil)
		if l := decode[leaseJSON](t, r); r.Status != http.StatusOK || l.State != "released" {
			t.Fatalf("release: %d %s", r.Status, r.Body)
		}
		r = e.Do("DELETE", path, owner(), nil)
		if l := decode[leaseJSON](t, r); r.Status != http.StatusOK || l.State != "released" {
			t.Fatalf("second release: %d %s, want 200 released", r.Status, r.Body)
		}
		if in := introspect(t, e, firstTok); in["active"] != false {
			t.Errorf("introspection after release = %v", in)
		}
		assertProblem(t, e.Do("POST", path+"/renew", owner(), nil), http.StatusConflict)
	})
	t.Run("operator revokes", func(t *testing.T) {
		o := e.mint(t, "agent-1", map[string]any{"role": "demo"})
		r := e.Do("DELETE", "/v1/leases/"+o.LeaseID+"?reason=incident-42", testOperatorToken, nil)
		if l := decode[leaseJSON](t, r); r.Status != http.StatusOK || l.State != "revoked" {
			t.Fatalf("operator DELETE: %d %s, want 200 revoked", r.Status, r.Body)
		}
		assertProblem(t, e.Do("DELETE", "/v1/leases/"+o.LeaseID+"?reason=a%0Ab", testOperatorToken, nil), http.StatusBadRequest)
	})
}

type leaseList struct {
	Leases []leaseJSON `json:"leases"`
	Next   string      `json:"next"`
}

func TestOperatorLeases(t *testing.T) {
	e := newTestEnv(t).Start()
	// agent-a: 3 demo, 1 other; agent-b: 2 demo, one of them released.
	var ids []string
	for range 3 {
		ids = append(ids, e.mint(t, "agent-a", map[string]any{"role": "demo"}).LeaseID)
	}
	e.mint(t, "agent-a", map[string]any{"role": "other"})
	b1 := e.mint(t, "agent-b", map[string]any{"role": "demo"})
	b2 := e.mint(t, "agent-b", map[string]any{"role": "demo"})
	if r := e.Do("DELETE", "/v1/leases/"+b2.LeaseID, e.Attest("agent-b", nil), nil); r.Status != http.StatusOK {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}

	list := func(t *testing.T, query string) leaseList {
		t.Helper()
		r := e.Do("GET", "/v1/leases?"+query, testOperatorToken, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET /v1/leases?%s: %d %s", query, r.Status, r.Body)
		}
		return decode[leaseList](t, r)
	}
	tests := []struct {
		query string
		want  int
	}{
		{"", 6},
		{"agent_id=test/agent-a", 4},
		{"agent_id=test/agent-b", 2},
		{"agent_id=test/agent-c", 0},
		{"state=active", 5},
		{"state=released", 1},
		{"role=other", 1},
		{"role=demo&agent_id=test/agent-a", 3},
		{"role=demo&state=active&agent_id=test/agent-b", 1},
	}
	for _, tt := range tests {
		t.Run("filter "+tt.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			got := list(t, q.Encode())
			if len(got.Leases) != tt.want {
				t.Fatalf("%d leases, want %d: %+v", len(got.Leases), tt.want, got.Leases)
			}
			for _, l := range got.Leases {
				if (q.Get("agent_id") != "" && l.AgentID != q.Get("agent_id")) || (q.Get("role") != "" && l.Role != q.Get("role")) ||
					(q.Get("state") != "" && l.State != q.Get("state")) || l.Handle == "" {
					t.Errorf("lease %+v does not match %s (or lacks its handle)", l, tt.query)
				}
			}
		})
	}
	t.Run("paging", func(t *testing.T) {
		var seen []string
		q := url.Values{"agent_id": {"test/agent-a"}, "role": {"demo"}, "limit": {"2"}}
		for page := 0; ; page++ {
			if page > 3 {
				t.Fatal("paging does not end")
			}
			got := list(t, q.Encode())
			for _, l := range got.Leases {
				seen = append(seen, l.ID)
			}
			if got.Next == "" {
				break
			}
			q.Set("before", got.Next)
		}
		// Pages run in id order, newest first (ids sort by creation time).
		want := slices.Clone(ids)
		slices.Sort(want)
		slices.Reverse(want)
		if !slices.Equal(seen, want) {
			t.Errorf("paged ids %v, want %v (newest first, each once)", seen, want)
		}
	})
	for _, bad := range []string{"state=bogus", "limit=0", "limit=1001", "limit=x", "before=not-an-id"} {
		t.Run("bad query "+bad, func(t *testing.T) {
			assertProblem(t, e.Do("GET", "/v1/leases?"+bad, testOperatorToken, nil), http.StatusBadRequest)
		})
	}

	t.Run("revoke by agent", func(t *testing.T) {
		r := e.Do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{"agent_id": "test/agent-a", "reason": "compromised"})
		if r.Status != http.StatusOK || decode[map[string]int](t, r)["revoked"] != 4 {
			t.Fatalf("revoke: %d %s, want 4 revoked", r.Status, r.Body)
		}
		for _, l := range list(t, "agent_id=test/agent-a").Leases {
			if l.State != "revoked" {
				t.Errorf("agent-a lease %s is %s after revoke", l.ID, l.State)
			}
		}
		if l := decode[leaseJSON](t, e.Do("GET", "/v1/leases/"+b1.LeaseID, testOperatorToken, nil)); l.State != "active" {
			t.Errorf("agent-b's lease is %s after revoking agent-a's, want active", l.State)
		}
		// Again: nothing left to revoke, harmless.
		if r := e.Do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{"agent_id": "test/agent-a"}); decode[map[string]int](t, r)["revoked"] != 0 {
			t.Errorf("second revoke: %s", r.Body)
		}
		assertProblem(t, e.Do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{}), http.StatusBadRequest)
		assertProblem(t, e.Do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{"agent_id": "x", "lineage": "y"}), http.StatusBadRequest)
	})

	t.Run("operator endpoints refuse agents and anonymous callers", func(t *testing.T) {
		endpoints := []struct{ method, path string }{
			{"GET", "/v1/leases"}, {"POST", "/v1/leases/revoke"}, {"GET", "/v1/audit"}, {"GET", "/v1/audit/verify"}, {"GET", "/v1/roles"},
		}
		for _, ep := range endpoints {
			for _, who := range []struct{ name, bearer string }{
				{"agent", e.Attest("agent-b", nil)}, {"anonymous", ""}, {"wrong operator token", testOperatorToken + "x"},
			} {
				t.Run(who.name+" "+ep.method+" "+ep.path, func(t *testing.T) {
					var body any
					if ep.method == "POST" {
						body = map[string]any{"agent_id": "test/agent-b"}
					}
					assertProblem(t, e.Do(ep.method, ep.path, who.bearer, body), http.StatusUnauthorized)
				})
			}
		}
		if l := decode[leaseJSON](t, e.Do("GET", "/v1/leases/"+b1.LeaseID, testOperatorToken, nil)); l.State != "active" {
			t.Errorf("a refused revoke changed agent-b's lease to %s", l.State)
		}
	})

	t.Run("audit verifies", func(t *testing.T) {
		r := e.Do("GET", "/v1/audit/verify", testOperatorToken, nil)
		v := decode[audit.VerifyResult](t, r)
		if r.Status != http.StatusOK || !v.OK || v.Records < 10 {
			t.Errorf("audit verify: %d %s", r.Status, r.Body)
		}
	})
}

func TestOpsEndpoints(t *testing.T) {
	e := newTestEnv(t).Start()
	e.mint(t, "agent-1", map[string]any{"role": "demo"})
	e.Do("POST", "/v1/credentials", e.Attest("agent-1", nil), map[string]any{"role": "nope"})

	t.Run("health", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			if r := e.Do("GET", p, "", nil); r.Status != http.StatusOK {
				t.Errorf("%s: %d %s", p, r.Status, r.Body)
			}
		}
	})
	t.Run("metrics", func(t *testing.T) {
		r := e.Do("GET", "/metrics", "", nil)
		for _, want := range []string{
			`valet_mints_total{outcome="ok",role="demo"} 1`,
			`valet_mints_total{outcome="not_found",role="other"} 1`,
			"valet_active_leases 1",
			`valet_leases{state="active"} 1`,
		} {
			if !strings.Contains(string(r.Body), want+"\n") {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})
	t.Run("JWKS", func(t *testing.T) {
		r := e.Do("GET", "/.well-known/jwks.json", "", nil)
		var set struct {
			Keys []map[string]any `json:"keys"`
		}
		if err := json.Unmarshal(r.Body, &set); err != nil || r.Status != http.StatusOK {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		if len(set.Keys) != 1 {
			t.Fatalf("keys = %v, want one", set.Keys)
		}
		k := set.Keys[0]
		for _, f := range []string{"kid", "kty", "crv", "x", "y", "alg", "use"} {
			if s, _ := k[f].(string); s == "" {
				t.Errorf("jwk lacks %s: %v", f, k)
			}
		}
		for _, private := range []string{"d", "p", "q", "k"} {
			if _, ok := k[private]; ok {
				t.Errorf("jwk publishes private member %s", private)
			}
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/jwk-set+json") {
			t.Errorf("Content-Type = %q", ct)
		}
	})
	t.Run("openid-configuration", func(t *testing.T) {
		r := e.Do("GET", "/.well-known/openid-configuration", "", nil)
		m := r.JSON(t)
		pub := e.Config.PublicURL
		for k, want := range map[string]string{
			"issuer": pub, "jwks_uri": pub + "/.well-known/jwks.json", "token_endpoint": pub + "/v1/oauth/token",
			"introspection_endpoint": pub + "/v1/introspect",
		} {
			if m[k] != want {
				t.Errorf("%s = %v, want %s", k, m[k], want)
			}
		}
		if gts, _ := m["grant_types_supported"].([]any); !slices.Contains(gts, any("urn:ietf:params:oauth:grant-type:token-exchange")) {
			t.Errorf("grant_types_supported = %v", m["grant_types_supported"])
		}
	})
	t.Run("request id", func(t *testing.T) {
		r := e.raw("GET", "/healthz", map[string]string{"X-Request-Id": "my-req.42_A"}, nil)
		if got := r.Header.Get("X-Request-Id"); got != "my-req.42_A" {
			t.Errorf("a good X-Request-Id came back as %q", got)
		}
		for _, bad := range []string{"has space", "quote\"d", strings.Repeat("a", 65), "new\u00e9"} {
			r := e.raw("GET", "/v1/nothing", map[string]string{"X-Request-Id": bad}, nil)
			got := r.Header.Get("X-Request-Id")
			if got == bad || !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(got) {
				t.Errorf("bad X-Request-Id %q came back as %q, want a fresh id", bad, got)
			}
			if p := assertProblem(t, r, http.StatusNotFound); p.RequestID != got {
				t.Errorf("problem request_id %q, header %q", p.RequestID, got)
			}
		}
		if a, b := e.Do("GET", "/healthz", "", nil).Header.Get("X-Request-Id"), e.Do("GET", "/healthz", "", nil).Header.Get("X-Request-Id"); a == "" || a == b {
			t.Errorf("generated request ids %q, %q: want distinct", a, b)
		}
	})
	t.Run("unknown route", func(t *testing.T) {
		for _, p := range []string{"/nope", "/v1/nope", "/v2/credentials"} {
			assertProblem(t, e.Do("GET", p, "", nil), http.StatusNotFound)
		}
	})
	t.Run("wrong method", func(t *testing.T) {
		for _, c := range []struct{ method, path string }{
			{"GET", "/v1/credentials"}, {"PUT", "/v1/credentials"}, {"POST", "/healthz"}, {"DELETE", "/v1/leases"}, {"GET", "/v1/oauth/token"},
		} {
			r := e.Do(c.method, c.path, "", nil)
			p := assertProblem(t, r, http.StatusMethodNotAllowed)
			if p.Code != "method_not_allowed" {
				t.Errorf("%s %s: code %q", c.method, c.path, p.Code)
			}
		}
	})
}

// formRequest is a POST to an OAuth endpoint: form, or body when form is
// nil, sent as a form unless ctype names another Content-Type ("-": none);
// query goes in the URL, header is added.
type formRequest struct {
	form   url.Values
	body   string
	ctype  string
	query  string
	header map[string]string
}

func (e *testEnv) postForm(path string, fr formRequest) response {
	e.t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	switch fr.ctype {
	case "":
	case "-":
		delete(h, "Content-Type")
	default:
		h["Content-Type"] = fr.ctype
	}
	maps.Copy(h, fr.header)
	body := fr.body
	if fr.form != nil {
		body = fr.form.Encode()
	}
	if fr.query != "" {
		path += "?" + fr.query
	}
	return e.raw("POST", path, h, strings.NewReader(body))
}

// exchange posts a token exchange form.
func (e *testEnv) exchange(form url.Values) response {
	e.t.Helper()
	return e.raw("POST", "/v1/oauth/token", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, strings.NewReader(form.Encode()))
}

// oauthErrorBody is an RFC 6749 section 5.2 error response.
type oauthErrorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// assertOAuthError checks that r is an RFC 6749 section 5.2 error with the
// given code, a description and no other member (no token details).
func assertOAuthError(t *testing.T, r response, code string) oauthErrorBody {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body: %v %s", err, r.Body)
	}
	var oe oauthErrorBody
	oe.Error, _ = m["error"].(string)
	oe.Description, _ = m["error_description"].(string)
	if oe.Error != code || oe.Description == "" || len(m) != 2 {
		t.Errorf("body %s, want only error %q and an error_description", r.Body, code)
	}
	for _, c := range oe.Description {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			t.Errorf("error_description %q holds %q, which RFC 6749 section 5.2 does not allow", oe.Description, c)
			break
		}
	}
	return oe
}

func exchangeForm(subjectToken, role string) url.Values {
	return url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {subjectToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"resource":           {role},
	}
}

func TestTokenExchange(t *testing.T) {
	e := newTestEnv(t).Start()
	with := func(f url.Values, change func(url.Values)) url.Values {
		change(f)
		return f
	}
	att := func() string { return e.Attest("agent-1", nil) }
	const formType = "application/x-www-form-urlencoded"
	// audit says which audit record a refusal leaves: "" none (the
	// request never reached a decision), "anonymous" a refused
	// attestation, "agent" a decision about a verified agent.
	type exchangeCase struct {
		name      string
		form      url.Values
		ctype     string // default form encoding
		body      string // instead of form
		query     string // URL query
		header    map[string]string
		status    int
		wantError string
		audit     string
	}
	tests := []exchangeCase{
		{name: "wrong grant_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("grant_type", "client_credentials") }), status: 400, wantError: "unsupported_grant_type"},
		{name: "no grant_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Del("grant_type") }), status: 400, wantError: "invalid_request"},
		{name: "empty grant_type is no grant_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("grant_type", "") }), status: 400, wantError: "invalid_request"},
		{name: "missing subject_token", form: with(exchangeForm("", "demo"), func(f url.Values) { f.Del("subject_token") }), status: 400, wantError: "invalid_request"},
		{name: "missing subject_token_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Del("subject_token_type") }), status: 400, wantError: "invalid_request"},
		{name: "bad subject_token_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("subject_token_type", "urn:ietf:params:oauth:token-type:saml2") }), status: 400, wantError: "invalid_request"},
		{name: "invalid attestation", form: exchangeForm(e.Attest("agent-1", map[string]any{"aud": "other"}), "demo"), status: 400, wantError: "invalid_request", audit: "anonymous"},
		{name: "expired attestation", form: exchangeForm(e.Attest("agent-1", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}), "demo"), status: 400, wantError: "invalid_request", audit: "anonymous"},
		{name: "garbage attestation", form: exchangeForm("not.a.jwt", "demo"), status: 400, wantError: "invalid_request", audit: "anonymous"},
		{name: "oversized attestation", form: exchangeForm(strings.Repeat("a", e.Config.Limits.MaxAttestationBytes+1), "demo"), status: 413, wantError: "invalid_request"},
		{name: "actor_token", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("actor_token", att()) }), status: 400, wantError: "invalid_request"},
		{name: "bad requested_token_type", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token") }), status: 400, wantError: "invalid_request"},
		{name: "unknown role", form: exchangeForm(att(), "no-such-role"), status: 400, wantError: "invalid_target", audit: "agent"},
		{name: "denied by policy", form: exchangeForm(e.Attest("agent-1", map[string]any{"blocked": true}), "demo"), status: 400, wantError: "invalid_target", audit: "agent"},
		{name: "approval required", form: exchangeForm(att(), "elevated"), status: 400, wantError: "invalid_target", audit: "agent"},
		{name: "approval required, bad attestation", form: exchangeForm(e.Attest("agent-1", map[string]any{"aud": "other"}), "elevated"), status: 400, wantError: "invalid_request", audit: "anonymous"},
		{name: "no role", form: with(exchangeForm(att(), ""), func(f url.Values) { f.Del("resource") }), status: 400, wantError: "invalid_target"},
		{name: "resource and audience", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("audience", "demo") }), status: 400, wantError: "invalid_target"},
		{name: "two resources", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Add("resource", "other") }), status: 400, wantError: "invalid_target"},
		{name: "scope not granted", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("scope", "read admin") }), status: 400, wantError: "invalid_scope"},
		{name: "scope on a role without scopes", form: with(exchangeForm(att(), "other"), func(f url.Values) { f.Set("scope", "read") }), status: 400, wantError: "invalid_scope"},
		{name: "malformed scope", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("scope", `read "write"`) }), status: 400, wantError: "invalid_scope"},
		{name: "client_secret", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("client_id", "app"); f.Set("client_secret", "s") }), status: 401, wantError: "invalid_client"},
		{name: "client_assertion", form: with(exchangeForm(att(), "demo"), func(f url.Values) {
			f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
			f.Set("client_assertion", att())
		}), status: 401, wantError: "invalid_client"},
		{name: "HTTP Basic client authentication", form: exchangeForm(att(), "demo"), header: map[string]string{"Authorization": "Basic YXBwOnM="}, status: 401, wantError: "invalid_client"},
		{name: "parameters in the URL query", form: with(exchangeForm(att(), "demo"), func(f url.Values) { f.Del("subject_token") }), query: "subject_token=" + url.QueryEscape(att()), status: 400, wantError: "invalid_request"},
		{name: "JSON body", body: `{"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","subject_token":"x","resource":"demo"}`, ctype: "application/json", status: 400, wantError: "invalid_request"},
		{name: "JSON body labelled as a form", body: `{"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange"}`, status: 400, wantError: "invalid_request"},
		{name: "form body labelled JSON", body: exchangeForm(att(), "demo").Encode(), ctype: "application/json", status: 400, wantError: "invalid_request"},
		{name: "no Content-Type", body: exchangeForm(att(), "demo").Encode(), ctype: "-", status: 400, wantError: "invalid_request"},
		{name: "malformed form body", body: exchangeForm(att(), "demo").Encode() + "&scope=%zz", status: 400, wantError: "invalid_request"},
		{name: "semicolon separator", body: exchangeForm(att(), "demo").Encode() + ";scope=read", status: 400, wantError: "invalid_request"},
		{name: "empty body", body: "", ctype: formType, status: 400, wantError: "invalid_request"},
		{name: "huge body", body: exchangeForm(att(), "demo").Encode() + "&pad=" + strings.Repeat("a", int(e.Config.Limits.MaxBodyBytes)), status: 413, wantError: "invalid_request"},
	}
	// RFC 6749 section 3.1: no parameter may be given twice (resource and
	// audience name targets: RFC 8693 allows several, valet refuses them
	// as invalid_target above).
	for _, p := range []string{"grant_type", "subject_token", "subject_token_type", "scope", "requested_token_type", "actor_token", "actor_token_type", "client_id", "unknown_extension"} {
		tests = append(tests, exchangeCase{name: p + " twice", form: with(exchangeForm(att(), "demo"), func(f url.Values) {
			v := f.Get(p)
			if v == "" {
				v = "x"
			}
			f[p] = []string{v, v}
		}), status: 400, wantError: "invalid_request"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.auditRecords())
			r := e.postForm("/v1/oauth/token", formRequest{tt.form, tt.body, tt.ctype, tt.query, tt.header})
			if r.Status != tt.status {
				t.Errorf("status = %d, want %d: %s", r.Status, tt.status, r.Body)
			}
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				t.Errorf("Content-Type = %q, want application/json (RFC 6749 5.2)", r.Header.Get("Content-Type"))
			}
			if r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", r.Header.Get("Cache-Control"))
			}
			if tt.status == http.StatusUnauthorized && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("WWW-Authenticate = %q, want a Basic challenge (RFC 6749 5.2)", r.Header.Get("WWW-Authenticate"))
			}
			oe := assertOAuthError(t, r, tt.wantError)
			if strings.Contains(strings.ToLower(oe.Description), "json") {
				t.Errorf("error_description %q speaks of JSON; the endpoint takes a form body", oe.Description)
			}
			assertNoLeases(t, e)
			recs := e.auditRecords()[before:]
			switch {
			case tt.audit == "" && len(recs) != 0:
				t.Errorf("audit records %+v, want none", recs)
			case tt.audit != "" && (len(recs) != 1 || recs[0].Decision != audit.Deny):
				t.Errorf("audit records %+v, want one denial", recs)
			case tt.audit == "anonymous" && recs[0].Actor.Type != audit.ActorAnonymous,
				tt.audit == "agent" && recs[0].AgentID != "test/agent-1":
				t.Errorf("audit record %+v, want a denial of %s", recs[0], tt.audit)
			}
		})
	}

	t.Run("success", func(t *testing.T) {
		f := exchangeForm(att(), "")
		f.Del("resource")
		f.Set("audience", "demo")
		f.Set("scope", "read")
		r := e.exchange(f)
		if r.Status != http.StatusOK {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		if r.Header.Get("Cache-Control") != "no-store" || r.Header.Get("Pragma") != "no-cache" {
			t.Errorf("Cache-Control %q Pragma %q, want no-store and no-cache", r.Header.Get("Cache-Control"), r.Header.Get("Pragma"))
		}
		m := r.JSON(t)
		if m["issued_token_type"] != "urn:ietf:params:oauth:token-type:access_token" || m["token_type"] != "Bearer" || m["scope"] != "read" {
			t.Errorf("answer %v", m)
		}
		if in, _ := m["expires_in"].(float64); in <= 0 || in > 300 {
			t.Errorf("expires_in = %v, want within the role's 5m ttl", m["expires_in"])
		}
		tok, _ := m["access_token"].(string)
		if in := introspect(t, e, tok); in["active"] != true || in["role"] != "demo" || in["scope"] != "read" {
			t.Errorf("introspection of the exchanged token = %v", in)
		}
		if got := e.LeaseCounts(); got["active"] != 1 || len(got) != 1 {
			t.Errorf("leases = %v, want the one active lease", got)
		}
	})
	// Each subject_token_type valet takes works, and a refusal names
	// them all.
	for _, typ := range []string{"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"} {
		if r := e.exchange(with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("subject_token_type", typ) })); r.Status != http.StatusOK {
			t.Errorf("subject_token_type %s: %d %s", typ, r.Status, r.Body)
		}
		r := e.exchange(with(exchangeForm(att(), "demo"), func(f url.Values) { f.Set("subject_token_type", "urn:x") }))
		if oe := assertOAuthError(t, r, "invalid_request"); !strings.Contains(oe.Description, typ) {
			t.Errorf("refused subject_token_type: %q does not name %s, which is accepted", oe.Description, typ)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent log writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSecretsNeverLeak(t *testing.T) {
	logs := &syncBuffer{}
	e := newTestEnv(t)
	e.Log = logs
	e.Start()

	secrets := []string{testOperatorToken}
	sign := func(sub string, claims map[string]any) string {
		tok := e.Attest(sub, claims)
		secrets = append(secrets, tok)
		return tok
	}
	keep := func(cred map[string]any) {
		secrets = append(secrets, accessToken(t, cred))
	}

	// Successes: mint, renew, exchange.
	r := e.Do("POST", "/v1/credentials", sign("agent-1", nil), map[string]any{"role": "demo", "reason": "nightly report"})
	m := decode[minted](t, r)
	keep(m.Credential)
	r = e.Do("POST", "/v1/leases/"+m.LeaseID+"/renew", sign("agent-1", nil), map[string]any{"ttl": "10m"})
	keep(decode[struct {
		Credential map[string]any `json:"credential"`
	}](t, r).Credential)
	r = e.exchange(exchangeForm(sign("agent-2", nil), "demo"))
	secrets = append(secrets, r.JSON(t)["access_token"].(string))
	introspect(t, e, secrets[len(secrets)-1])

	// Failures of every kind.
	for _, c := range []struct {
		tok  string
		body any
	}{
		{sign("agent-1", map[string]any{"blocked": true}), map[string]any{"role": "demo"}},
		{sign("agent-1", nil), map[string]any{"role": "no-such-role"}},
		{sign("agent-1", nil), map[string]any{"role": "two-keys"}}, // no reason: the policy refuses
		{sign("agent-1", map[string]any{"aud": "other"}), map[string]any{"role": "demo"}},
		{sign("agent-1", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}), map[string]any{"role": "demo"}},
		{sign("agent-1", nil), `{"role":"demo","bogus":1}`},
		{sign("agent-1", nil), map[string]any{"role": "demo", "scope": map[string]any{"scopes": []string{"admin"}}}},
	} {
		if r := e.Do("POST", "/v1/credentials", c.tok, c.body); r.Status < 400 {
			t.Fatalf("expected a failure, got %d %s", r.Status, r.Body)
		}
	}
	forged := mustSign(t, mustDevIssuer(t), validClaims("agent-1"), map[string]any{"kid": e.Issuer.KeyID()})
	secrets = append(secrets, forged)
	e.Do("POST", "/v1/credentials", forged, map[string]any{"role": "demo"})
	e.Do("GET", "/v1/leases/"+m.LeaseID, sign("agent-3", nil), nil)
	e.Do("GET", "/v1/leases", secrets[1], nil)
	e.Do("GET", "/v1/leases", testOperatorToken, nil)
	e.Do("GET", "/v1/leases", testOperatorToken+"-wrong", nil)
	e.exchange(exchangeForm(sign("agent-2", map[string]any{"blocked": true}), "demo"))
	// Introspection client secrets, right and wrong, in both places they
	// travel.
	secrets = append(secrets, rsSecret("demo-api"), rsSecret("other-api"))
	for _, c := range []struct {
		auth string
		form url.Values
	}{
		{basicAuth("demo-api", rsSecret("other-api")), url.Values{"token": {secrets[1]}}},
		{"", url.Values{"token": {secrets[1]}, "client_id": {"other-api"}, "client_secret": {rsSecret("other-api")}}},
		{"", url.Values{"token": {secrets[1]}, "client_id": {"demo-api"}, "client_secret": {rsSecret("demo-api")}}},
	} {
		h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
		if c.auth != "" {
			h["Authorization"] = c.auth
		}
		e.raw("POST", "/v1/introspect", h, strings.NewReader(c.form.Encode()))
	}
	e.Do("DELETE", "/v1/leases/"+m.LeaseID, sign("agent-1", nil), nil)

	recs, err := json.Marshal(e.auditRecords())
	if err != nil {
		t.Fatal(err)
	}
	logText := logs.String()
	if !strings.Contains(logText, "request_id=") || !strings.Contains(string(recs), `"decision":"deny"`) {
		t.Fatalf("the test did not capture the log or the denials:\n%s", logText)
	}
	db, err := os.ReadFile(filepath.Join(e.Dir, "valet.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range secrets {
		sig := s[strings.LastIndexByte(s, '.')+1:] // the whole string for the operator token
		for where, text := range map[string]string{"the server log": logText, "the audit records": string(recs), "the database": string(db)} {
			if strings.Contains(text, s) || strings.Contains(text, sig) {
				t.Errorf("secret %d (%.20s...) appears in %s", i, s, where)
			}
		}
	}
}

func mustDevIssuer(t testing.TB) *attest.DevIssuer {
	t.Helper()
	d, err := attest.NewDevIssuer("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	return d
}
