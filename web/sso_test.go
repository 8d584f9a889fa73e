package web

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// testIdP is a small but real OpenID provider: discovery, JWKS, an
// authorization endpoint that signs in a configured user and redirects
// back with a code, and a token endpoint that checks the client secret,
// the redirect URI and the PKCE verifier against the S256 challenge
// before it issues an ES256-signed ID token carrying the nonce.
type testIdP struct {
	t        *testing.T
	srv      *httptest.Server
	key      *ecdsa.PrivateKey
	clock    clock.Clock
	clientID string
	secret   string
	redirect string // the registered redirect URI

	mu   sync.Mutex
	user map[string]any // claims of whoever signs in next
	// nonce, when set, replaces the nonce of issued ID tokens.
	nonce string
	// noAuthTime leaves auth_time out of issued ID tokens, as providers
	// may unless max_age is requested.
	noAuthTime   bool
	codes        map[string]*idpCode
	tokenCalls   int
	pkceFailures int
	lastAuth     url.Values // the last authorization request
}

type idpCode struct {
	challenge, nonce, redirect string
	claims                     map[string]any
	used                       bool
}

func newTestIdP(t *testing.T, clk clock.Clock) *testIdP {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &testIdP{t: t, key: key, clock: clk, clientID: "valet-console", secret: "s3cret-client", codes: map[string]*idpCode{},
		user: map[string]any{"sub": "u-1", "email": "dana@example.com", "email_verified": true, "groups": []any{"valet-operators", "approvers"}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	p.srv = httptest.NewTLSServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *testIdP) setUser(claims map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.user = claims
}

func (p *testIdP) counts() (tokenCalls, pkceFailures int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tokenCalls, p.pkceFailures
}

func (p *testIdP) discovery(w http.ResponseWriter, r *http.Request) {
	u := p.srv.URL
	writeJSON(w, 200, map[string]any{
		"issuer": u, "authorization_endpoint": u + "/authorize", "token_endpoint": u + "/token", "jwks_uri": u + "/jwks",
		"response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"}, "code_challenge_methods_supported": []string{"S256"},
	})
}

func (p *testIdP) jwks(w http.ResponseWriter, r *http.Request) {
	pub, err := p.key.PublicKey.ECDH()
	if err != nil {
		p.t.Error(err)
		return
	}
	b := pub.Bytes() // 0x04 || X || Y
	enc := base64.RawURLEncoding.EncodeToString
	writeJSON(w, 200, map[string]any{"keys": []map[string]any{{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
		"x": enc(b[1:33]), "y": enc(b[33:65])}}})
}

func (p *testIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastAuth = q
	switch {
	case q.Get("response_type") != "code", q.Get("client_id") != p.clientID, q.Get("redirect_uri") != p.redirect,
		q.Get("code_challenge_method") != "S256", q.Get("code_challenge") == "", q.Get("state") == "", q.Get("nonce") == "":
		http.Error(w, "invalid authorization request", http.StatusBadRequest)
		return
	}
	code := randomToken()
	claims := map[string]any{}
	for k, v := range p.user {
		claims[k] = v
	}
	p.codes[code] = &idpCode{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), redirect: q.Get("redirect_uri"), claims: claims}
	http.Redirect(w, r, q.Get("redirect_uri")+"?"+url.Values{"code": {code}, "state": {q.Get("state")}}.Encode(), http.StatusFound)
}

func (p *testIdP) token(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokenCalls++
	if err := r.ParseForm(); err != nil {
		oauthError(w, 400, "invalid_request")
		return
	}
	id, secret, ok := r.BasicAuth()
	if ok {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != p.clientID || secret != p.secret {
		oauthError(w, 401, "invalid_client")
		return
	}
	c := p.codes[r.PostForm.Get("code")]
	if r.PostForm.Get("grant_type") != "authorization_code" || c == nil || c.used || r.PostForm.Get("redirect_uri") != c.redirect {
		oauthError(w, 400, "invalid_grant")
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
		p.pkceFailures++
		oauthError(w, 400, "invalid_grant")
		return
	}
	c.used = true
	now := p.clock.Now()
	claims := jwtlib.MapClaims{"iss": p.srv.URL, "aud": p.clientID, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"auth_time": now.Unix(), "nonce": c.nonce}
	if p.nonce != "" {
		claims["nonce"] = p.nonce
	}
	if p.noAuthTime {
		delete(claims, "auth_time")
	}
	for k, v := range c.claims {
		claims[k] = v
	}
	tok := jwtlib.NewWithClaims(jwtlib.SigningMethodES256, claims)
	tok.Header["kid"] = "k1"
	signed, err := tok.SignedString(p.key)
	if err != nil {
		p.t.Error(err)
		return
	}
	writeJSON(w, 200, map[string]any{"access_token": randomToken(), "token_type": "Bearer", "expires_in": 300, "id_token": signed})
}

func oauthError(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// newSSOFixture starts a console with SSO against a fresh provider.
func newSSOFixture(t *testing.T, edit func(*ConsoleOIDCConfig)) (*fixture, *testIdP) {
	t.Helper()
	var idp *testIdP
	f := newFixture(t, func(cfg *fixtureConfig, w *Config) {
		idp = newTestIdP(t, w.Clock)
		secretFile := filepath.Join(t.TempDir(), "client-secret")
		if err := os.WriteFile(secretFile, []byte(idp.secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		oidc := config.Defaulted(func(o *ConsoleOIDCConfig) {
			o.Issuer, o.ClientID, o.ClientSecretFile = idp.srv.URL, idp.clientID, secretFile
			o.RedirectURL, o.AllowedGroups = cfg.PublicURL+"/ui/auth/callback", []string{"valet-operators"}
		})
		cfg.Console.OIDC = &oidc
		if edit != nil {
			edit(cfg.Console.OIDC)
		}
		w.HTTPClient = idp.srv.Client()
	})
	idp.redirect = f.URL + "/ui/auth/callback"
	return f, idp
}

// ssoBrowser is a browser that trusts the provider's certificate.
func (f *fixture) ssoBrowser(idp *testIdP) *browser {
	b := f.browser()
	b.client.Transport = idp.srv.Client().Transport
	return b
}

// startSSO follows the console's redirect to the provider and the
// provider's back, and returns the callback URL it hands the browser.
func (b *browser) startSSO(t *testing.T, start string) string {
	t.Helper()
	r := b.get(start)
	if r.Status != http.StatusSeeOther {
		t.Fatalf("GET %s: %d\n%s", start, r.Status, r.Body)
	}
	ar := b.get(r.Location())
	if ar.Status != http.StatusFound {
		t.Fatalf("authorization endpoint: %d %s", ar.Status, ar.Body)
	}
	return ar.Location()
}

func TestConsoleSSOSignIn(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	b := f.ssoBrowser(idp)

	page := b.get("/ui/login").Body
	mustContain(t, page, "Sign in with SSO", `href="/ui/auth/sso?"`, "Operator token")

	r := b.get("/ui/auth/sso?next=/ui/leases")
	if r.Status != http.StatusSeeOther || !strings.HasPrefix(r.Location(), idp.srv.URL+"/authorize?") {
		t.Fatalf("start: %d %q", r.Status, r.Location())
	}
	var bind *http.Cookie
	for _, c := range r.Cookies {
		if c.Name == ssoCookie {
			bind = c
		}
	}
	if bind == nil || !bind.Secure || !bind.HttpOnly || bind.SameSite != http.SameSiteLaxMode || bind.Path != "/" || bind.MaxAge != 300 {
		t.Fatalf("binding cookie %+v", bind)
	}
	auth, _ := url.Parse(r.Location())
	q := auth.Query()
	if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || len(q.Get("state")) != 43 || len(q.Get("nonce")) != 43 ||
		q.Get("redirect_uri") != f.URL+"/ui/auth/callback" || q.Get("client_id") != "valet-console" || !strings.Contains(q.Get("scope"), "openid") {
		t.Fatalf("authorization request %v", q)
	}
	ar := b.get(r.Location())
	if ar.Status != http.StatusFound {
		t.Fatalf("provider: %d %s", ar.Status, ar.Body)
	}
	cb := b.get(ar.Location())
	if cb.Status != 200 {
		t.Fatalf("callback: %d\n%s", cb.Status, cb.Body)
	}
	// The callback answers with a page that moves on (a redirect would
	// still be cross-site and lose the SameSite=Strict cookie).
	mustContain(t, cb.Body, `<meta http-equiv="refresh" content="0;url=/ui/leases">`, "Signed in as dana@example.com")
	if calls, fails := idp.counts(); calls != 1 || fails != 0 {
		t.Fatalf("token endpoint: %d calls, %d PKCE failures", calls, fails)
	}
	if b.cookie(ssoCookie) != nil {
		t.Fatal("the binding cookie outlives the sign-in")
	}
	ck := b.cookie(sessionCookie)
	if ck == nil || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v", ck)
	}
	page = b.get("/ui/leases").Body
	mustContain(t, page, "Signed in as <strong>dana@example.com</strong>", "sso:"+idp.srv.URL, "valet-operators, approvers")

	// Decisions carry the SSO identity, and its groups count for the
	// role's approver groups.
	id := f.request("agent-1", "two-keys", "sso approval", nil)
	r = b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"via sso"}})
	mustContain(t, b.get(r.Location()).Body, "(1 of 2)")
	g := f.grant(id)
	if len(g.Approvals) != 1 || g.Approvals[0].Operator != "dana@example.com" || g.Approvals[0].Method != "sso:"+idp.srv.URL {
		t.Fatalf("approval %+v", g.Approvals)
	}

	// A state is single-use: replaying the callback does nothing.
	if r := b.get(ar.Location()); r.Status != http.StatusForbidden {
		t.Fatalf("replayed callback: %d", r.Status)
	}
	if calls, _ := idp.counts(); calls != 1 {
		t.Fatalf("a replayed callback reached the token endpoint (%d calls)", calls)
	}
}

func TestConsoleSSORefusals(t *testing.T) {
	noSession := func(t *testing.T, b *browser) {
		t.Helper()
		if b.cookie(sessionCookie) != nil {
			t.Fatal("a refused sign-in got a session cookie")
		}
		if r := b.get("/ui/grants"); r.Status != http.StatusSeeOther {
			t.Fatalf("after a refused sign-in /ui/grants answers %d", r.Status)
		}
	}
	t.Run("wrong state", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		b := f.ssoBrowser(idp)
		cb, _ := url.Parse(b.startSSO(t, "/ui/auth/sso"))
		q := cb.Query()
		q.Set("state", randomToken())
		cb.RawQuery = q.Encode()
		r := b.get(cb.String())
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "does not belong to a sign-in this console started")
		if calls, _ := idp.counts(); calls != 0 {
			t.Fatal("a callback with a wrong state reached the token endpoint")
		}
		noSession(t, b)
	})
	t.Run("state of another browser", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		victim, attacker := f.ssoBrowser(idp), f.ssoBrowser(idp)
		cb := attacker.startSSO(t, "/ui/auth/sso")
		r := victim.get(cb) // the attacker's sign-in forced on the victim
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "started in another browser")
		noSession(t, victim)
	})
	t.Run("wrong PKCE verifier", func(t *testing.T) {
		// An authorization code issued for another sign-in (another
		// PKCE challenge) injected into this one: the console redeems it
		// with its own verifier, and the provider refuses.
		f, idp := newSSOFixture(t, nil)
		victim, attacker := f.ssoBrowser(idp), f.ssoBrowser(idp)
		mine, _ := url.Parse(victim.startSSO(t, "/ui/auth/sso"))
		theirs, _ := url.Parse(attacker.startSSO(t, "/ui/auth/sso"))
		q := mine.Query()
		q.Set("code", theirs.Query().Get("code"))
		mine.RawQuery = q.Encode()
		r := victim.get(mine.String())
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d\n%s", r.Status, r.Body)
		}
		mustContain(t, r.Body, "did not accept the sign-in code")
		if calls, fails := idp.counts(); calls != 1 || fails != 1 {
			t.Fatalf("token endpoint: %d calls, %d PKCE failures; want 1, 1", calls, fails)
		}
		noSession(t, victim)
	})
	t.Run("outside allowed groups", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		idp.setUser(map[string]any{"sub": "u-2", "email": "eve@example.com", "email_verified": true, "groups": []any{"staff"}})
		b := f.ssoBrowser(idp)
		r := b.get(b.startSSO(t, "/ui/auth/sso"))
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "eve@example.com is not a member of a group allowed to act as an operator (valet-operators)")
		noSession(t, b)
	})
	t.Run("no groups claim", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		idp.setUser(map[string]any{"sub": "u-3", "email": "fay@example.com"})
		b := f.ssoBrowser(idp)
		if r := b.get(b.startSSO(t, "/ui/auth/sso")); r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		noSession(t, b)
	})
	t.Run("unverified email", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		idp.setUser(map[string]any{"sub": "u-4", "email": "alice@example.com", "email_verified": false, "groups": []any{"valet-operators"}})
		b := f.ssoBrowser(idp)
		r := b.get(b.startSSO(t, "/ui/auth/sso"))
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "is not verified")
		noSession(t, b)
	})
	t.Run("nonce of another sign-in", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		idp.nonce = randomToken()
		b := f.ssoBrowser(idp)
		r := b.get(b.startSSO(t, "/ui/auth/sso"))
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "not issued for this sign-in")
		noSession(t, b)
	})
	t.Run("wrong client secret", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		idp.secret = "rotated"
		b := f.ssoBrowser(idp)
		if r := b.get(b.startSSO(t, "/ui/auth/sso")); r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		noSession(t, b)
	})
	t.Run("provider error", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		b := f.ssoBrowser(idp)
		cb, _ := url.Parse(b.startSSO(t, "/ui/auth/sso"))
		q := url.Values{"state": {cb.Query().Get("state")}, "error": {"access_denied"}}
		r := b.get(f.URL + "/ui/auth/callback?" + q.Encode())
		if r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		mustContain(t, r.Body, "error: access_denied")
		noSession(t, b)
	})
	t.Run("expired sign-in", func(t *testing.T) {
		f, idp := newSSOFixture(t, nil)
		b := f.ssoBrowser(idp)
		cb := b.startSSO(t, "/ui/auth/sso")
		f.clock.Advance(ssoFlowTTL)
		if r := b.get(cb); r.Status != http.StatusForbidden {
			t.Fatalf("status %d", r.Status)
		}
		noSession(t, b)
	})
}

func TestConsoleSSOFreshSignIn(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	b := f.ssoBrowser(idp)
	b.get(b.startSSO(t, "/ui/auth/sso"))
	first := b.cookie(sessionCookie).Value
	id := f.request("agent-1", "elevated", "fresh sso", nil)
	f.clock.Advance(11 * time.Minute)
	r := b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {b.csrf("/ui/grants")}})
	if !strings.Contains(r.Location(), "reason=fresh") {
		t.Fatalf("stale SSO sign-in approves: %q", r.Location())
	}
	login := b.get(r.Location()).Body
	mustContain(t, login, "Sign in with SSO", "fresh=1")
	// The re-authentication asks the provider to sign the operator in
	// again, and replaces the session.
	cb := b.startSSO(t, "/ui/auth/sso?fresh=1&next=/ui/grants/"+id)
	if idp.lastAuth.Get("prompt") != "login" || idp.lastAuth.Get("max_age") != "600" {
		t.Fatalf("re-authentication request %v", idp.lastAuth)
	}
	if r := b.get(cb); r.Status != 200 {
		t.Fatalf("callback %d", r.Status)
	}
	if b.cookie(sessionCookie).Value == first {
		t.Fatal("session id kept across re-authentication")
	}
	r = b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"fresh"}})
	mustContain(t, b.get(r.Location()).Body, "Approved test/agent-1 → elevated")
	if g := f.grant(id); g.State != grants.StateApproved {
		t.Fatalf("grant %s", g.State)
	}
	// The previous session was ended on the server.
	old := &http.Cookie{Name: sessionCookie, Value: first}
	b.cookies[hostOf(f.URL)][sessionCookie] = old
	if r := b.get("/ui/grants"); r.Status != http.StatusSeeOther {
		t.Fatalf("the replaced session still works: %d", r.Status)
	}
}

func TestConsoleSSOWithoutAuthTimeIsNeverFresh(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	idp.mu.Lock()
	idp.noAuthTime = true
	idp.mu.Unlock()
	b := f.ssoBrowser(idp)
	// An ordinary sign-in works, but the provider did not say when the
	// operator authenticated: the session is not a fresh sign-in.
	if r := b.get(b.startSSO(t, "/ui/auth/sso")); r.Status != http.StatusOK {
		t.Fatalf("sign-in: %d\n%s", r.Status, r.Body)
	}
	id := f.request("agent-1", "elevated", "no auth_time", nil)
	r := b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"ok"}})
	if !strings.Contains(r.Location(), "reason=fresh") {
		t.Fatalf("approval right after a sign-in without auth_time: %d %q", r.Status, r.Location())
	}
	if g := f.grant(id); g.State != grants.StatePending || len(g.Approvals) != 0 {
		t.Fatalf("grant %s with %d approvals", g.State, len(g.Approvals))
	}
	// A re-authentication asks for a new sign-in and its time; a token
	// that still does not say when is not fresh.
	cb := b.startSSO(t, "/ui/auth/sso?fresh=1&next=/ui/grants/"+id)
	if idp.lastAuth.Get("prompt") != "login" || idp.lastAuth.Get("max_age") != "600" {
		t.Fatalf("re-authentication request %v", idp.lastAuth)
	}
	r = b.get(cb)
	if r.Status != http.StatusForbidden {
		t.Fatalf("fresh sign-in without auth_time: %d", r.Status)
	}
	mustContain(t, r.Body, "did not say when you signed in")
	r = b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"ok"}})
	if !strings.Contains(r.Location(), "reason=fresh") {
		t.Fatalf("approval after a refused re-authentication: %d %q", r.Status, r.Location())
	}
	if g := f.grant(id); g.State != grants.StatePending {
		t.Fatalf("grant %s", g.State)
	}
}

// pending counts the sign-ins in progress of the client at ip.
func (s *sso) pending(ip string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byClient[flowClient(ip)])
}

// total counts the sign-ins in progress.
func (s *sso) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.flows)
}

// ssoStartFrom starts a sign-in as a client at addr, straight through the
// console's handler, and returns the status.
func ssoStartFrom(f *fixture, addr string) int {
	req := httptest.NewRequest("GET", f.URL+"/ui/auth/sso", nil)
	req.RemoteAddr = addr
	w := httptest.NewRecorder()
	f.console.ServeHTTP(w, req)
	return w.Code
}

func TestConsoleSSOFlowsBoundedPerClient(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	// One client starts 10,000 sign-ins and finishes none.
	for i := 0; i < 10000; i++ {
		if code := ssoStartFrom(f, "203.0.113.7:40000"); code != http.StatusSeeOther {
			t.Fatalf("start %d: %d", i, code)
		}
	}
	if n := f.console.sso.pending("203.0.113.7"); n > maxSSOFlowsPerClient {
		t.Fatalf("one client holds %d sign-ins in progress, want at most %d", n, maxSSOFlowsPerClient)
	}
	// Another client can still sign in.
	b := f.ssoBrowser(idp)
	if r := b.get(b.startSSO(t, "/ui/auth/sso")); r.Status != http.StatusOK {
		t.Fatalf("sign-in of another client: %d\n%s", r.Status, r.Body)
	}
	if b.cookie(sessionCookie) == nil {
		t.Fatal("no session for the other client")
	}
}

func TestConsoleSSOFlowsBoundedOverall(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	f.console.sso.maxFlows = 100
	// Many clients together fill the table, the heaviest first...
	for i := 0; i < 40; i++ {
		for j := 0; j < maxSSOFlowsPerClient; j++ {
			if code := ssoStartFrom(f, "198.51.100."+itoa(i)+":1"); code != http.StatusSeeOther {
				t.Fatalf("start: %d", code)
			}
		}
	}
	if n := f.console.sso.total(); n > 100 {
		t.Fatalf("%d sign-ins in progress, want at most 100", n)
	}
	// ...and a newcomer's sign-in still starts and completes.
	b := f.ssoBrowser(idp)
	cb := b.startSSO(t, "/ui/auth/sso")
	for i := 40; i < 60; i++ {
		ssoStartFrom(f, "198.51.100."+itoa(i)+":1")
	}
	if r := b.get(cb); r.Status != http.StatusOK {
		t.Fatalf("sign-in of a light client while the table is full: %d\n%s", r.Status, r.Body)
	}
}

func TestConsoleSSOFlowsExpire(t *testing.T) {
	f, idp := newSSOFixture(t, nil)
	b := f.ssoBrowser(idp)
	cb := b.startSSO(t, "/ui/auth/sso")
	f.clock.Advance(ssoFlowTTL)
	if r := b.get(cb); r.Status != http.StatusForbidden {
		t.Fatalf("callback after %s: %d", ssoFlowTTL, r.Status)
	}
	// Expired flows are dropped, not kept until the table fills.
	for i := 0; i < 3; i++ {
		ssoStartFrom(f, "203.0.113.9:1")
	}
	f.clock.Advance(ssoFlowTTL)
	ssoStartFrom(f, "203.0.113.10:1")
	if n := f.console.sso.total(); n != 1 {
		t.Fatalf("%d sign-ins in progress after the others expired, want 1", n)
	}
}
