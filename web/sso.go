package web

import (
	"container/list"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
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
	"github.com/valet-broker/valet/leases/clock"
)

// ssoFlowTTL is how long a started sign-in may take at the provider.
const ssoFlowTTL = 5 * time.Minute

// Anyone can start a sign-in, so the sign-ins in progress are bounded:
// each client (an IPv4 address or an IPv6 /64) keeps at most
// maxSSOFlowsPerClient, its oldest dropped first, and all clients together
// at most maxSSOFlows, beyond which the oldest flow of the client holding
// the most is dropped. A client can only ever crowd out itself.
const (
	maxSSOFlowsPerClient = 8
	maxSSOFlows          = 10000
)

// authTimeSkew is how far in the future an ID token's auth_time may be
// (the provider's clock running ahead) and still be taken as now.
const authTimeSkew = time.Minute

// sso is the console's OpenID Connect sign-in: the authorization code
// flow with PKCE (S256), state and nonce.
type sso struct {
	cfg      *ConsoleOIDCConfig
	issuer   string
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	client   *http.Client
	clock    clock.Clock

	mu       sync.Mutex
	flows    map[[sha256.Size]byte]*ssoFlow // by hash of state
	order    *list.List                     // of *ssoFlow, oldest first
	byClient map[string][]*ssoFlow          // each client's flows, oldest first
	maxFlows int                            // maxSSOFlows; tests lower it
}

// ssoFlow is one sign-in in progress.
type ssoFlow struct {
	key        [sha256.Size]byte // hash of the state
	client     string            // flowClient of the address that started it
	elem       *list.Element     // in sso.order
	bind       [sha256.Size]byte // hash of the browser-binding cookie
	verifier   string            // PKCE code verifier
	nonce      string
	next       string
	fresh      bool // a re-authentication: the provider must ask again
	oldSession [sha256.Size]byte
	started    time.Time
}

// newSSO discovers the provider and reads the client secret.
func newSSO(ctx context.Context, cfg *ConsoleOIDCConfig, client *http.Client, clk clock.Clock) (*sso, error) {
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
		cfg: cfg, issuer: cfg.Issuer, client: client, clock: clk,
		flows: map[[sha256.Size]byte]*ssoFlow{}, order: list.New(), byClient: map[string][]*ssoFlow{}, maxFlows: maxSSOFlows,
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
	state, bind := randomToken(), randomToken()
	flow := &ssoFlow{key: sha256.Sum256([]byte(state)), client: flowClient(clientIP(r)), bind: sha256.Sum256([]byte(bind)),
		verifier: oauth2.GenerateVerifier(), nonce: randomToken(), next: localPath(q.Get("next")),
		fresh: q.Get("fresh") == "1", started: c.clock.Now()}
	if se := c.sessions.peek(r); se != nil {
		flow.oldSession = se.key
	}
	c.sso.put(flow)
	opts := []oauth2.AuthCodeOption{oidc.Nonce(flow.nonce), oauth2.S256ChallengeOption(flow.verifier)}
	if flow.fresh {
		// Ask the provider to authenticate again rather than reuse its
		// own session: the console wants proof that is fresh. With
		// max_age the provider must return auth_time (OpenID Connect
		// Core 1.0, 3.1.2.1), which the callback checks.
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "login"),
			oauth2.SetAuthURLParam("max_age", strconv.Itoa(int(c.cc.FreshLogin.D().Seconds()))))
	}
	setCookie(w, ssoCookie, bind, http.SameSiteLaxMode, int(ssoFlowTTL.Seconds()))
	http.Redirect(w, r, c.sso.oauth.AuthCodeURL(state, opts...), http.StatusSeeOther)
}

// flowClient is the client a sign-in is counted against: the address
// itself for IPv4, its /64 for IPv6 (one host commonly holds a whole /64).
func flowClient(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// put records a flow. It never refuses one: it makes room by dropping
// expired flows, then the client's own oldest beyond
// maxSSOFlowsPerClient, then, when all clients together hold maxFlows,
// the oldest flow of the client holding the most.
func (s *sso) put(f *ssoFlow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := s.order.Front(); e != nil; e = s.order.Front() {
		if o := e.Value.(*ssoFlow); f.started.Sub(o.started) >= ssoFlowTTL {
			s.removeLocked(o)
			continue
		}
		break
	}
	if len(s.byClient[f.client]) >= maxSSOFlowsPerClient {
		s.removeLocked(s.byClient[f.client][0])
	}
	for len(s.flows) >= s.maxFlows {
		var heaviest []*ssoFlow
		for _, fs := range s.byClient {
			if len(fs) > len(heaviest) {
				heaviest = fs
			}
		}
		s.removeLocked(heaviest[0])
	}
	s.flows[f.key] = f
	f.elem = s.order.PushBack(f)
	s.byClient[f.client] = append(s.byClient[f.client], f)
}

func (s *sso) removeLocked(f *ssoFlow) {
	delete(s.flows, f.key)
	s.order.Remove(f.elem)
	fs := slices.DeleteFunc(s.byClient[f.client], func(o *ssoFlow) bool { return o == f })
	if len(fs) == 0 {
		delete(s.byClient, f.client)
	} else {
		s.byClient[f.client] = fs
	}
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
	if f == nil {
		return nil
	}
	s.removeLocked(f)
	if s.clock.Now().Sub(f.started) >= ssoFlowTTL {
		return nil
	}
	return f
}

var oauthErrorCode = regexp.MustCompile(`^[a-z_]{1,64}$`)

// handleSSOCallback completes a sign-in: the state must be one this
// server issued to this browser, the code is exchanged with the PKCE
// verifier, and the ID token must verify and carry the flow's nonce. The
// operator's name and groups come from broker.OperatorFromClaims, as for
// operator ID tokens at the API. The session's sign-in time is the token's
// auth_time; without one it is unknown, and the session is not a fresh
// sign-in.
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
	op, err := broker.OperatorFromClaims(c.sso.cfg.OperatorIdentityConfig, c.sso.issuer, claims)
	if err != nil {
		refuse(http.StatusForbidden, broker.ErrorMessage(err)+".", "not admitted", "sub", idt.Subject, "err", broker.ErrorMessage(err))
		return
	}
	now := c.clock.Now()
	authAt := signInTime(op.AuthTime, now)
	if flow.fresh {
		switch {
		case authAt.IsZero():
			refuse(http.StatusForbidden, "The identity provider did not say when you signed in (the ID token has no auth_time), "+
				"so the console cannot treat this as a fresh sign-in.", "no auth_time", "operator", op.Name)
			return
		case now.Sub(authAt) > c.cc.FreshLogin.D():
			refuse(http.StatusForbidden, "The identity provider did not sign you in again (its last sign-in is older than "+
				humanDuration(c.cc.FreshLogin.D())+"), so the console cannot treat this as a fresh sign-in.", "stale auth_time", "operator", op.Name)
			return
		}
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

// signInTime is when an SSO operator signed in, for the session: the ID
// token's auth_time (broker.Operator.AuthTime). It is the zero time
// (unknown) when the token has none or one further in the future than
// authTimeSkew; a time slightly ahead is taken as now.
func signInTime(authTime, now time.Time) time.Time {
	switch {
	case authTime.IsZero(), authTime.After(now.Add(authTimeSkew)):
		return time.Time{}
	case authTime.After(now):
		return now
	}
	return authTime
}

func sha256Of(s string) []byte {
	sum := sha256.Sum256([]byte(s))
	return sum[:]
}
