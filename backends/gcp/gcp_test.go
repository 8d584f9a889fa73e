package gcp_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/gcp"
	"github.com/valet-broker/valet/backends/gcp/gcptest"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/clock"
)

// fixture is a backend talking to a test server, both on one fake clock.
type fixture struct {
	srv   *gcptest.Server
	be    *gcp.Backend
	clock *clock.Fake
	logs  *syncBuffer
	agent string // service account "agent", valet a token creator on it
}

// syncBuffer is a log destination tests read while the backend writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newFixture(t *testing.T, options map[string]any) *fixture {
	t.Helper()
	clk := clock.NewFake(time.Now())
	srv := gcptest.Start(t, gcptest.Config{Now: clk.Now})
	srv.SetEnv(t)
	f := &fixture{srv: srv, clock: clk, logs: &syncBuffer{}, agent: srv.CreateServiceAccount("agent", gcptest.ServiceAccountOptions{})}
	opts := map[string]any{"endpoint": srv.URL, "timeout": "2s"}
	for k, v := range options {
		opts[k] = v
	}
	be, err := gcp.New("gcp-test", opts, backends.Deps{Clock: clk, Logger: slog.New(slog.NewTextHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.be = be.(*gcp.Backend)
	return f
}

// role checks a role; params without service_account get the fixture's.
func (f *fixture) role(t *testing.T, name string, maxTTL time.Duration, params map[string]any) backends.RoleSpec {
	t.Helper()
	p := map[string]any{"service_account": f.agent}
	for k, v := range params {
		p[k] = v
	}
	r := backends.RoleSpec{Name: name, Params: p, TTL: min(maxTTL, 5*time.Minute), MaxTTL: maxTTL}
	if err := f.be.CheckRole(r); err != nil {
		t.Fatalf("CheckRole: %v", err)
	}
	return r
}

func (f *fixture) mintReq(r backends.RoleSpec, ttl time.Duration, attrs map[string]string, scope map[string]any) backends.MintRequest {
	now := f.clock.Now()
	return backends.MintRequest{CorrelationID: leases.NewID(now), AgentID: "test/agent", Role: r, Attributes: attrs,
		IssuedAt: now, ExpiresAt: now.Add(ttl), Scope: scope}
}

func (f *fixture) mint(t *testing.T, r backends.RoleSpec, ttl time.Duration, attrs map[string]string, scope map[string]any) (backends.MintRequest, *backends.Credential) {
	t.Helper()
	req := f.mintReq(r, ttl, attrs, scope)
	cred, err := f.be.Mint(context.Background(), req)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return req, cred
}

// TestMintAccessToken: an access token of the role's service account,
// for the role's scopes (narrowed by the agent), living the lease's whole
// seconds less one, valid at Google, and nowhere stored by the backend.
func TestMintAccessToken(t *testing.T) {
	f := newFixture(t, nil)
	relay := f.srv.CreateServiceAccount("relay", gcptest.ServiceAccountOptions{})
	behind := f.srv.CreateServiceAccount("behind", gcptest.ServiceAccountOptions{TokenCreators: []string{relay}})
	team := f.srv.CreateServiceAccount("team-a-runner", gcptest.ServiceAccountOptions{})
	storage := "https://www.googleapis.com/auth/devstorage.read_only"
	cases := []struct {
		name     string
		params   map[string]any
		attrs    map[string]string
		scope    map[string]any
		account  string
		scopes   []string
		ttl      time.Duration
		lifetime time.Duration
	}{
		{name: "the default scope", account: f.agent, scopes: []string{gcp.CloudPlatformScope}, ttl: 10 * time.Minute, lifetime: 10*time.Minute - time.Second},
		{name: "scopes narrowed by the agent", params: map[string]any{"scopes": []any{gcp.CloudPlatformScope, storage}},
			scope: map[string]any{"scopes": []any{storage}}, account: f.agent, scopes: []string{storage}, ttl: time.Minute, lifetime: 59 * time.Second},
		{name: "the account from the agent's attributes", params: map[string]any{"service_account": "{{namespace}}-runner@valet-test.iam.gserviceaccount.com"},
			attrs: map[string]string{"namespace": "team-a"}, account: team, scopes: []string{gcp.CloudPlatformScope}, ttl: time.Minute, lifetime: 59 * time.Second},
		{name: "the whole account from an attribute", params: map[string]any{"service_account": "{{gcp_service_account}}"},
			attrs: map[string]string{"gcp_service_account": team}, account: team, scopes: []string{gcp.CloudPlatformScope}, ttl: time.Minute, lifetime: 59 * time.Second},
		{name: "through a delegation chain", params: map[string]any{"service_account": behind, "delegates": []any{relay}},
			account: behind, scopes: []string{gcp.CloudPlatformScope}, ttl: time.Minute, lifetime: 59 * time.Second},
		{name: "a one-second lease", account: f.agent, scopes: []string{gcp.CloudPlatformScope}, ttl: time.Second, lifetime: time.Second},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.role(t, "access-"+string(rune('a'+i)), 15*time.Minute, c.params)
			before := len(f.srv.Tokens(c.account))
			req, cred := f.mint(t, r, c.ttl, c.attrs, c.scope)
			toks := f.srv.Tokens(c.account)
			if len(toks) != before+1 {
				t.Fatalf("tokens of %s: %+v; want one more", c.account, toks)
			}
			tok := toks[before]
			if tok.Token != cred.Data["access_token"] || tok.Kind != "access" || !slices.Equal(tok.Scopes, c.scopes) || tok.Expires.Sub(tok.IssuedAt) != c.lifetime {
				t.Fatalf("Google issued %+v; want %v for %s", tok, c.scopes, c.lifetime)
			}
			if c.ttl >= 2*time.Second && cred.ExpiresAt.After(req.ExpiresAt) {
				t.Fatalf("the token outlives its lease: %s after %s", cred.ExpiresAt, req.ExpiresAt)
			}
			if info, err := gcptest.TokenInfo(f.srv.URL, tok.Token); err != nil || info["email"] != c.account {
				t.Fatalf("tokeninfo %v, %v", info, err)
			}
			if cred.Handle != req.CorrelationID || cred.Data["token_type"] != "Bearer" || cred.Data["service_account"] != c.account ||
				cred.Details["service_account"] != c.account || cred.Details["token_type"] != "access_token" {
				t.Fatalf("credential %+v", cred)
			}
			for k, v := range cred.Details {
				if strings.Contains(v, tok.Token) {
					t.Fatalf("detail %s holds the token", k)
				}
			}
		})
	}
	if strings.Contains(f.logs.String(), "ya29.") {
		t.Fatal("the log holds a token")
	}
}

// TestMintIDToken: an ID token for the role's audience lives Google's hour
// whatever the lease: the backend says so (CredentialLifetime) and the
// credential's expiry is the hour, by valet's clock.
func TestMintIDToken(t *testing.T) {
	f := newFixture(t, nil)
	r := f.role(t, "id", 10*time.Minute, map[string]any{"audience": "https://api.example.com", "include_email": true})
	access := f.role(t, "access", 10*time.Minute, nil)
	if got := f.be.CredentialLifetime(r, time.Minute); got != time.Hour {
		t.Fatalf("CredentialLifetime(id role) = %s, want 1h", got)
	}
	if got := f.be.CredentialLifetime(access, time.Minute); got != time.Minute {
		t.Fatalf("CredentialLifetime(access role) = %s, want the lease's ttl", got)
	}
	start := f.clock.Now()
	_, cred := f.mint(t, r, time.Minute, nil, nil)
	tok, _ := cred.Data["id_token"].(string)
	claims, err := f.srv.IDTokenClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if aud, _ := claims["aud"].([]string); len(aud) != 1 || aud[0] != "https://api.example.com" || claims["email"] != f.agent {
		t.Fatalf("claims %v", claims)
	}
	if !cred.ExpiresAt.Equal(start.Add(time.Hour)) || cred.Details["token_type"] != "id_token" || cred.Data["audience"] != "https://api.example.com" {
		t.Fatalf("credential expires %s (want the hour), %+v", cred.ExpiresAt, cred.Details)
	}
	if _, err := f.be.Mint(context.Background(), f.mintReq(r, time.Minute, nil, map[string]any{"scopes": []any{gcp.CloudPlatformScope}})); !errors.Is(err, backends.ErrInvalid) {
		t.Fatalf("an ID token role took a scope: %v", err)
	}
}

// TestRevokeCannot: Google cannot revoke its tokens. Revoke says so
// (backends.ErrUnrevocable) for an issued token and for an interrupted
// mint, and the token keeps working until its expiry; a mint Google
// refused left nothing, and its revocation is nil.
func TestRevokeCannot(t *testing.T) {
	f := newFixture(t, nil)
	r := f.role(t, "access", 15*time.Minute, nil)
	req, cred := f.mint(t, r, 2*time.Minute, nil, nil)
	tok := cred.Data["access_token"].(string)
	err := f.be.Revoke(context.Background(), backends.Ref{Handle: cred.Handle, CorrelationID: req.CorrelationID, Details: cred.Details})
	if !errors.Is(err, backends.ErrUnrevocable) || !strings.Contains(err.Error(), "no way to revoke") {
		t.Fatalf("Revoke = %v; want ErrUnrevocable saying why", err)
	}
	if !f.srv.Valid(tok) {
		t.Fatal("the token died without a revocation; the test server is wrong")
	}
	f.clock.Set(cred.ExpiresAt)
	if f.srv.Valid(tok) {
		t.Fatal("the token outlived its credential expiry")
	}
	// An interrupted mint: the token may exist, and cannot be found.
	if err := f.be.Revoke(context.Background(), backends.Ref{CorrelationID: leases.NewID(f.clock.Now()), Role: r.Name}); !errors.Is(err, backends.ErrUnrevocable) ||
		!strings.Contains(err.Error(), "interrupted mint") || !strings.Contains(err.Error(), "access tokens") {
		t.Fatalf("Revoke of an interrupted mint = %v", err)
	}
	id := f.role(t, "id", 15*time.Minute, map[string]any{"audience": "https://api.example.com"})
	if err := f.be.Revoke(context.Background(), backends.Ref{CorrelationID: leases.NewID(f.clock.Now()), Role: id.Name}); !errors.Is(err, backends.ErrUnrevocable) || !strings.Contains(err.Error(), "ID tokens") {
		t.Fatalf("Revoke of an interrupted ID token mint = %v", err)
	}
	// A mint Google refused made nothing.
	other := f.srv.CreateServiceAccount("other", gcptest.ServiceAccountOptions{TokenCreators: []string{}})
	refused := f.role(t, "refused", 15*time.Minute, map[string]any{"service_account": other})
	req = f.mintReq(refused, time.Minute, nil, nil)
	if _, err := f.be.Mint(context.Background(), req); err == nil {
		t.Fatal("Google gave a token of an account valet may not impersonate")
	}
	if err := f.be.Revoke(context.Background(), backends.Ref{CorrelationID: req.CorrelationID}); err != nil {
		t.Fatalf("Revoke of a refused mint = %v, want nil (nothing was issued)", err)
	}
}

// TestMintRefusals: each failure is of the kind the client can act on,
// with a message that says what to change, and says whether a token may
// exist (the revocation of the abandoned lease).
func TestMintRefusals(t *testing.T) {
	cases := []struct {
		name    string
		params  map[string]any
		attrs   map[string]string
		scope   map[string]any
		ttl     time.Duration
		setup   func(f *fixture)
		kind    error
		says    string
		maybeIn bool // a token may exist: the abandoned lease's revocation says it cannot be revoked
	}{
		{name: "a missing attribute", params: map[string]any{"service_account": "{{namespace}}@valet-test.iam.gserviceaccount.com"},
			kind: backends.ErrForbidden, says: `needs the agent attribute "namespace"`},
		{name: "an attribute that would change the domain", params: map[string]any{"service_account": "{{namespace}}@valet-test.iam.gserviceaccount.com"},
			attrs: map[string]string{"namespace": "x@evil.example.com#"}, kind: backends.ErrForbidden, says: "only as letters, digits"},
		{name: "a whole account that is not one", params: map[string]any{"service_account": "{{sa}}"},
			attrs: map[string]string{"sa": "projects/x"}, kind: backends.ErrForbidden, says: "not a service account"},
		{name: "an account from the attributes that Google does not have", params: map[string]any{"service_account": "{{sa}}"},
			attrs: map[string]string{"sa": "ghost@valet-test.iam.gserviceaccount.com"}, kind: backends.ErrForbidden, says: "which this agent's attributes name"},
		{name: "a configured account that Google does not have", params: map[string]any{"service_account": "ghost@valet-test.iam.gserviceaccount.com"},
			kind: backends.ErrBadResponse, says: "Google has no service account ghost@valet-test.iam.gserviceaccount.com"},
		{name: "valet may not impersonate the account", params: map[string]any{"service_account": "locked@valet-test.iam.gserviceaccount.com"},
			setup: func(f *fixture) {
				f.srv.CreateServiceAccount("locked", gcptest.ServiceAccountOptions{TokenCreators: []string{}})
			},
			kind: backends.ErrBadResponse, says: "roles/iam.serviceAccountTokenCreator"},
		{name: "a scope the role does not grant", scope: map[string]any{"scopes": []any{"https://www.googleapis.com/auth/compute"}},
			kind: backends.ErrInvalid, says: "not one of the role's scopes"},
		{name: "an unknown scope key", scope: map[string]any{"audience": "x"}, kind: backends.ErrInvalid, says: "scope.audience is not understood"},
		{name: "less than a second left", ttl: 500 * time.Millisecond, kind: backends.ErrInvalid, says: "less than a second left"},
		{name: "Google throttles", setup: func(f *fixture) { f.srv.Fail("generateAccessToken", 429) }, kind: backends.ErrUnavailable},
		{name: "Google fails", setup: func(f *fixture) { f.srv.Fail("generateAccessToken", 503) }, kind: backends.ErrUnavailable, maybeIn: true},
		{name: "Google is unreachable", setup: func(f *fixture) { f.srv.Stop() }, kind: backends.ErrUnavailable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, nil)
			if c.setup != nil {
				c.setup(f)
			}
			r := f.role(t, "r", 15*time.Minute, c.params)
			ttl := c.ttl
			if ttl == 0 {
				ttl = time.Minute
			}
			req := f.mintReq(r, ttl, c.attrs, c.scope)
			start := time.Now()
			cred, err := f.be.Mint(context.Background(), req)
			if cred != nil || !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("Mint = %v, %v; want %v saying %q", cred, err, c.kind, c.says)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("the refusal took %s", d)
			}
			err = f.be.Revoke(context.Background(), backends.Ref{CorrelationID: req.CorrelationID})
			if c.maybeIn != errors.Is(err, backends.ErrUnrevocable) || !c.maybeIn && err != nil {
				t.Fatalf("Revoke of the abandoned lease = %v; want ErrUnrevocable only when a token may exist (%v)", err, c.maybeIn)
			}
		})
	}
}

// TestCheckRole: a role's params within Google's limits and the lease's,
// each refusal naming its key; roles whose leases may outlast 15 minutes
// are warned about, since Google cannot revoke their tokens.
func TestCheckRole(t *testing.T) {
	cases := []struct {
		name     string
		extended bool
		params   map[string]any
		scopes   []string // the role's own (jwt) scopes
		maxTTL   time.Duration
		err      string // "" when accepted
		warns    bool
	}{
		{name: "an access token role", maxTTL: 15 * time.Minute},
		{name: "a long lease is warned about", maxTTL: time.Hour, warns: true},
		{name: "an ID token role is warned about", params: map[string]any{"audience": "https://api.example.com"}, maxTTL: 5 * time.Minute, warns: true},
		{name: "no service account", params: map[string]any{"service_account": ""}, maxTTL: time.Minute, err: "params.service_account is required"},
		{name: "not an account", params: map[string]any{"service_account": "agent"}, maxTTL: time.Minute, err: "params.service_account"},
		{name: "a malformed placeholder", params: map[string]any{"service_account": "{{ns@x.iam.gserviceaccount.com"}, maxTTL: time.Minute, err: "malformed placeholder"},
		{name: "a delegate that is not an account", params: map[string]any{"delegates": []any{"projects/-/serviceAccounts/x"}}, maxTTL: time.Minute, err: "params.delegates[0]"},
		{name: "no scopes", params: map[string]any{"scopes": []any{}}, maxTTL: time.Minute, err: "params.scopes must name at least one"},
		{name: "not a scope", params: map[string]any{"scopes": []any{"cloud-platform"}}, maxTTL: time.Minute, err: "params.scopes[0]"},
		{name: "the role's own scopes", scopes: []string{"read"}, maxTTL: time.Minute, err: "params.scopes"},
		{name: "a lease longer than Google's hour", maxTTL: 2 * time.Hour, err: "max_ttl 2h0m0s is longer than the role's tokens may live"},
		{name: "a lifetime over the hour without the policy", params: map[string]any{"lifetime": "2h"}, maxTTL: time.Hour, err: "constraints/iam.allowServiceAccountCredentialLifetimeExtension"},
		{name: "a lifetime over the hour with the policy", extended: true, params: map[string]any{"lifetime": "2h"}, maxTTL: 2 * time.Hour, warns: true},
		{name: "over twelve hours even with it", extended: true, params: map[string]any{"lifetime": "13h"}, maxTTL: time.Hour, err: "longer than Google's longest token"},
		{name: "a lease longer than the lifetime", params: map[string]any{"lifetime": "10m"}, maxTTL: 15 * time.Minute, err: "a lease must not outlive its token"},
		{name: "a zero lifetime", params: map[string]any{"lifetime": "0s"}, maxTTL: time.Minute, err: "params.lifetime must be whole seconds, at least 1s"},
		{name: "scopes on an ID token role", params: map[string]any{"audience": "a", "scopes": []any{gcp.CloudPlatformScope}}, maxTTL: time.Minute, err: "params.scopes are for access tokens"},
		{name: "a lifetime on an ID token role", params: map[string]any{"audience": "a", "lifetime": "5m"}, maxTTL: time.Minute, err: "params.lifetime is for access tokens"},
		{name: "an ID token role longer than its hour", params: map[string]any{"audience": "a"}, maxTTL: 2 * time.Hour, err: "longer than Google's ID tokens live"},
		{name: "include_email on an access token role", params: map[string]any{"include_email": true}, maxTTL: time.Minute, err: "params.include_email is for ID tokens"},
		{name: "an unknown param", params: map[string]any{"role_arn": "x"}, maxTTL: time.Minute, err: "role_arn"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, map[string]any{"extended_lifetime": c.extended})
			p := map[string]any{"service_account": f.agent}
			for k, v := range c.params {
				p[k] = v
			}
			err := f.be.CheckRole(backends.RoleSpec{Name: "r", Params: p, Scopes: c.scopes, TTL: min(c.maxTTL, time.Minute), MaxTTL: c.maxTTL})
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("CheckRole = %v; want %q", err, c.err)
			}
			if warned := strings.Contains(f.logs.String(), "Google cannot revoke"); warned != c.warns {
				t.Fatalf("warned %v, want %v: %s", warned, c.warns, f.logs.String())
			}
		})
	}
}

// TestExtendedLifetime: with the organization policy a role's tokens live
// past the hour; without it for the account, Google refuses, and the
// client is told why.
func TestExtendedLifetime(t *testing.T) {
	f := newFixture(t, map[string]any{"extended_lifetime": true})
	long := f.srv.CreateServiceAccount("long", gcptest.ServiceAccountOptions{ExtendedLifetime: true})
	r := f.role(t, "long", 2*time.Hour, map[string]any{"service_account": long, "lifetime": "2h"})
	_, _ = f.mint(t, r, 2*time.Hour, nil, nil)
	if toks := f.srv.Tokens(long); len(toks) != 1 || toks[0].Expires.Sub(toks[0].IssuedAt) != 2*time.Hour-time.Second {
		t.Fatalf("tokens %+v; want one of 2h less a second", toks)
	}
	plain := f.role(t, "plain", 2*time.Hour, map[string]any{"lifetime": "2h"})
	if _, err := f.be.Mint(context.Background(), f.mintReq(plain, 2*time.Hour, nil, nil)); !errors.Is(err, backends.ErrBadResponse) || !strings.Contains(err.Error(), "lifetime") {
		t.Fatalf("Mint past the hour for an account outside the policy = %v", err)
	}
}

// TestNew: options mean what they say, and valet's own credentials must
// be found.
func TestNew(t *testing.T) {
	srv := gcptest.Start(t, gcptest.Config{})
	srv.SetEnv(t)
	quiet := backends.Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cases := []struct {
		name    string
		options map[string]any
		env     string // GOOGLE_APPLICATION_CREDENTIALS, when set
		err     string
	}{
		{name: "defaults", options: map[string]any{"endpoint": srv.URL}},
		{name: "a zero timeout", options: map[string]any{"timeout": "0s"}, err: "timeout must be positive"},
		{name: "an endpoint that is not a URL", options: map[string]any{"endpoint": "iamcredentials"}, err: "endpoint"},
		{name: "an unknown key", options: map[string]any{"region": "x"}, err: "region"},
		{name: "no credentials", env: "/nonexistent/key.json", err: "Application Default Credentials"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", c.env)
			}
			_, err := gcp.New("g", c.options, quiet)
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("New = %v; want %q", err, c.err)
			}
		})
	}
}
