package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/clock"
)

// ssoFlowTTL is how long a started sign-in may take at the provider.
const ssoFlowTTL = 10 * time.Minute

// maxSSOFlows bounds the sign-ins in progress (anyone can start one).
const maxSSOFlows = 10000

// sso is the console's OpenID Connect sign-in: the authorization code
// flow with PKCE (S256), state and nonce.
type sso struct {
	cfg      *broker.ConsoleOIDCConfig
	issuer   string
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	client   *http.Client
	clock    clock.Clock

	mu    sync.Mutex
	flows map[[sha256.Size]byte]*ssoFlow // by hash of state
}

// ssoFlow is one sign-in in progress.
type ssoFlow struct {
	bind       [sha256.Size]byte // hash of the browser-binding cookie
	verifier   string            // PKCE code verifier
	nonce      string
	next       string
	fresh      bool // a re-authentication: the provider must ask again
	oldSession [sha256.Size]byte
	started    time.Time
}

// newSSO discovers the provider and reads the client secret.
func newSSO(ctx context.Context, cfg *broker.ConsoleOIDCConfig, client *http.Client, clk clock.Clock) (*sso, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("console.oidc.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("console.oidc.ca_file %s holds no PEM certificates", cfg.CAFile)
			}
			client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		}
	}
	var secret string
	if cfg.ClientSecretFile != "" {
		b, err := os.ReadFile(cfg.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("console.oidc.client_secret_file: %w", err)
		}
		if secret = strings.TrimSpace(string(b)); secret == "" {
			return nil, fmt.Errorf("console.oidc.client_secret_file %s is empty", cfg.ClientSecretFile)
		}
	}
	// go-oidc keeps this context for later key fetches: it must outlive
	// the start-up context, and only its client matters.
	keep := oidc.ClientContext(context.WithoutCancel(ctx), client)
	dctx, cancel := context.WithTimeout(keep, 15*time.Second)
	defer cancel()
	provider, err := oidc.NewProvider(dctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("console.oidc: cannot discover the OpenID provider %s (GET %s/.well-known/openid-configuration): %w",
			cfg.Issuer, strings.TrimSuffix(cfg.Issuer, "/"), err)
	}
	var meta struct {
		Methods     []string `json:"code_challenge_methods_supported"`
		AuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := provider.Claims(&meta); err != nil {
		return nil, fmt.Errorf("console.oidc: the provider's discovery document: %w", err)
	}
	if len(meta.Methods) > 0 && !slices.Contains(meta.Methods, "S256") {
		return nil, fmt.Errorf("console.oidc: the provider %s does not support PKCE with S256 (code_challenge_methods_supported: %v)", cfg.Issuer, meta.Methods)
	}
	endpoint := provider.Endpoint()
	// client_secret_basic is the default when the provider lists nothing
	// (OpenID Connect Discovery 1.0); choosing up front spares a failed
	// first attempt at the token endpoint. A public client (no secret)
	// sends its client_id in the form.
	endpoint.AuthStyle = oauth2.AuthStyleInHeader
	if secret == "" || (len(meta.AuthMethods) > 0 && !slices.Contains(meta.AuthMethods, "client_secret_basic") && slices.Contains(meta.AuthMethods, "client_secret_post")) {
		endpoint.AuthStyle = oauth2.AuthStyleInParams
	}
	return &sso{
		cfg: cfg, issuer: cfg.Issuer, client: client, clock: clk, flows: map[[sha256.Size]byte]*ssoFlow{},
		oauth: oauth2.Config{
			ClientID: cfg.ClientID, ClientSecret: secret, Endpoint: endpoint,
			RedirectURL: cfg.RedirectURL, Scopes: cfg.Scopes,
		},
		verifier: provider.VerifierContext(keep, &oidc.Config{ClientID: cfg.ClientID, Now: clk.Now}),
	}, nil
}

// handleSSOStart begins a sign-in: it records state, nonce and the PKCE
// verifier server-side, binds them to this browser with a cookie, and
// sends the browser to the provider.
func (c *Console) handleSSOStart(w http.ResponseWriter, r *http.Request) {
	if c.sso == nil {
		c.renderMessage(w, r, http.StatusNotFound, "Single sign-on is not configured", "This server has no console.oidc section.")
		return
	}
	q := r.URL.Query()
	flow := &ssoFlow{verifier: oauth2.GenerateVerifier(), nonce: randomToken(), next: localPath(q.Get("next")),
		fresh: q.Get("fresh") == "1", started: c.clock.Now()}
	if se := c.sessions.peek(r); se != nil {
		flow.oldSession = se.key
	}
	state, bind := randomToken(), randomToken()
	flow.bind = sha256.Sum256([]byte(bind))
	if !c.sso.put(sha256.Sum256([]byte(state)), flow) {
		c.renderMessage(w, r, http.StatusServiceUnavailable, "Try again shortly", "Too many sign-ins are in progress. Try again in a few minutes.")
		return
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(flow.nonce), oauth2.S256ChallengeOption(flow.verifier)}
	if flow.fresh {
		// Ask the provider to authenticate again rather than reuse its
		// own session: the console wants proof that is fresh.
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "login"),
			oauth2.SetAuthURLParam("max_age", strconv.Itoa(int(c.cc.FreshLogin.D().Seconds()))))
	}
	setCookie(w, ssoCookie, bind, http.SameSiteLaxMode, int(ssoFlowTTL.Seconds()))
	http.Redirect(w, r, c.sso.oauth.AuthCodeURL(state, opts...), http.StatusSeeOther)
}

// put records a flow, dropping expired ones; false when full.
func (s *sso) put(key [sha256.Size]byte, f *ssoFlow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.flows) >= maxSSOFlows {
		for k, o := range s.flows {
			if f.started.Sub(o.started) >= ssoFlowTTL {
				delete(s.flows, k)
			}
		}
	}
	if len(s.flows) >= maxSSOFlows {
		return false
	}
	s.flows[key] = f
	return true
}

// take removes and returns the flow of state, if it has not expired.
func (s *sso) take(state string) *ssoFlow {
	if state == "" || len(state) > 256 {
		return nil
	}
	key := sha256.Sum256([]byte(state))
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flows[key]
	delete(s.flows, key)
	if f == nil || s.clock.Now().Sub(f.started) >= ssoFlowTTL {
		return nil
	}
	return f
}

var oauthErrorCode = regexp.MustCompile(`^[a-z_]{1,64}$`)

// handleSSOCallback completes a sign-in: the state must be one this
// server issued to this browser, the code is exchanged with the PKCE
// verifier, and the ID token must verify and carry the flow's nonce. The
// operator's name and groups come from the configured claims; members of
// none of console.oidc.allowed_groups are refused.
func (c *Console) handleSSOCallback(w http.ResponseWriter, r *http.Request) {
	if c.sso == nil {
		c.renderMessage(w, r, http.StatusNotFound, "Single sign-on is not configured", "This server has no console.oidc section.")
		return
	}
	refuse := func(status int, msg, logReason string, args ...any) {
		c.log.Warn("console SSO sign-in refused", append([]any{"reason", logReason, "remote", clientIP(r)}, args...)...)
		c.renderMessage(w, r, status, "Sign-in refused", msg)
	}
	q := r.URL.Query()
	flow := c.sso.take(q.Get("state"))
	if flow == nil {
		refuse(http.StatusForbidden, "This sign-in response does not belong to a sign-in this console started, or it took too long. Start again from the sign-in page.", "unknown or expired state")
		return
	}
	ck, err := r.Cookie(ssoCookie)
	if err != nil || subtle.ConstantTimeCompare(sha256Of(ck.Value), flow.bind[:]) != 1 {
		refuse(http.StatusForbidden, "This sign-in was started in another browser. Start again from the sign-in page.", "state not bound to this browser")
		return
	}
	clearCookie(w, ssoCookie, http.SameSiteLaxMode)
	if e := q.Get("error"); e != "" {
		if !oauthErrorCode.MatchString(e) {
			e = "unknown"
		}
		refuse(http.StatusForbidden, "The identity provider did not sign you in (error: "+e+").", "provider error", "error", e)
		return
	}
	code := q.Get("code")
	if code == "" || len(code) > 4096 {
		refuse(http.StatusBadRequest, "The identity provider's response carries no code. Start again from the sign-in page.", "no code")
		return
	}
	ctx, cancel := context.WithTimeout(oidc.ClientContext(r.Context(), c.sso.client), 15*time.Second)
	defer cancel()
	tok, err := c.sso.oauth.Exchange(context.WithValue(ctx, oauth2.HTTPClient, c.sso.client), code, oauth2.VerifierOption(flow.verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			refuse(http.StatusForbidden, "The identity provider did not accept the sign-in code. Start again from the sign-in page.", "token exchange refused",
				"error", re.ErrorCode, "status", re.Response.StatusCode)
			return
		}
		refuse(http.StatusBadGateway, "The identity provider could not be reached to complete the sign-in. Try again.", "token exchange failed", "err", err)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		refuse(http.StatusBadGateway, "The identity provider returned no ID token.", "no id_token")
		return
	}
	idt, err := c.sso.verifier.Verify(ctx, raw)
	if err != nil {
		refuse(http.StatusForbidden, "The identity provider's ID token did not verify.", "id_token did not verify", "err", err)
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(flow.nonce)) != 1 {
		refuse(http.StatusForbidden, "The ID token was not issued for this sign-in. Start again from the sign-in page.", "nonce mismatch")
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		refuse(http.StatusBadGateway, "The ID token's claims could not be read.", "claims", "err", err)
		return
	}
	op, msg := c.sso.operator(claims)
	if op == nil {
		refuse(http.StatusForbidden, msg, "not admitted", "sub", idt.Subject)
		return
	}
	now := c.clock.Now()
	authAt := now
	if at, ok := claims["auth_time"].(float64); ok {
		if t := time.Unix(int64(at), 0); t.Before(now) {
			authAt = t
		}
	}
	if flow.fresh && now.Sub(authAt) > c.cc.FreshLogin.D() {
		refuse(http.StatusForbidden, "The identity provider did not sign you in again (its last sign-in is older than "+
			humanDuration(c.cc.FreshLogin.D())+"), so the console cannot treat this as a fresh sign-in.", "stale auth_time", "operator", op.Name)
		return
	}
	if flow.oldSession != ([sha256.Size]byte{}) {
		c.sessions.endKey(flow.oldSession)
	}
	c.startSession(w, r, *op, authAt)
	next := flow.next
	if next == "" {
		next = "/ui/grants"
	}
	// The provider's redirect is a cross-site navigation, and a redirect
	// from here would be one too: the browser would not send the new
	// SameSite=Strict cookie. A page of our own that moves on does.
	c.render(w, r, http.StatusOK, "continue.html", &page{Title: "Signed in", Data: struct{ Next, Name string }{next, op.Name}})
}

// operator maps verified claims to an operator, or says why not.
func (s *sso) operator(claims map[string]any) (*broker.Operator, string) {
	name, _ := claims[s.cfg.NameClaim].(string)
	if name == "" {
		return nil, "Your identity provider account has no " + s.cfg.NameClaim + " claim, which names operators here."
	}
	if s.cfg.NameClaim == "email" {
		if v, ok := claims["email_verified"].(bool); ok && !v {
			return nil, "Your e-mail address " + name + " is not verified at the identity provider."
		}
	}
	var groups []string
	switch g := claims[s.cfg.GroupsClaim].(type) {
	case []any:
		for _, v := range g {
			if s, ok := v.(string); ok && s != "" {
				groups = append(groups, s)
			}
		}
	case string:
		if g != "" {
			groups = []string{g}
		}
	}
	if len(s.cfg.AllowedGroups) > 0 && !slices.ContainsFunc(groups, func(g string) bool { return slices.Contains(s.cfg.AllowedGroups, g) }) {
		return nil, name + " is not a member of a group allowed to use this console (" + strings.Join(s.cfg.AllowedGroups, ", ") + ")."
	}
	return &broker.Operator{Name: name, Groups: groups, Method: "sso:" + s.issuer}, ""
}

func sha256Of(s string) []byte {
	sum := sha256.Sum256([]byte(s))
	return sum[:]
}
