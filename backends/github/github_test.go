package github

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gh "github.com/google/go-github/v93/github"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/github/githubtest"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
	"go.yaml.in/yaml/v3"
)

var testKEK = bytes.Repeat([]byte{7}, 32)

// fixture is a github backend talking to a GitHub test server.
type fixture struct {
	gh    *githubtest.Server
	b     *Backend
	dir   string
	clock clock.Clock
	opts  map[string]any
	logs  *bytes.Buffer
}

func startServer(t *testing.T, o githubtest.Options) *githubtest.Server {
	t.Helper()
	s, err := githubtest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newFixture(t *testing.T, srv *githubtest.Server, edit func(o map[string]any)) *fixture {
	t.Helper()
	if srv == nil {
		srv = startServer(t, githubtest.Options{})
	}
	opts := map[string]any{
		"base_url": srv.URL,
		"timeout":  "5s",
		"apps":     []any{map[string]any{"name": "ci", "app_id": srv.AppID, "private_key_file": srv.KeyFile}},
	}
	if edit != nil {
		edit(opts)
	}
	f := &fixture{gh: srv, dir: t.TempDir(), clock: clock.Real{}, opts: opts, logs: &bytes.Buffer{}}
	f.b = f.open(t)
	return f
}

// open builds the backend (again) on the fixture's data dir.
func (f *fixture) open(t *testing.T) *Backend {
	t.Helper()
	be, err := New("gh", f.opts, backends.Deps{DataDir: f.dir, KEK: testKEK, Clock: f.clock,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.(*Backend).Close() })
	return be.(*Backend)
}

// role checks a role with these params.
func (f *fixture) role(t *testing.T, params map[string]any) backends.RoleSpec {
	t.Helper()
	r := backends.RoleSpec{Name: "gh-role", Params: params, TTL: 5 * time.Minute, MaxTTL: time.Hour}
	if err := f.b.CheckRole(r); err != nil {
		t.Fatalf("CheckRole: %v", err)
	}
	return r
}

var leaseSeq int

func mintReq(r backends.RoleSpec, attrs map[string]string, scope map[string]any) backends.MintRequest {
	leaseSeq++
	now := time.Now()
	return backends.MintRequest{CorrelationID: "lease-" + time.Now().Format("150405.000000") + "-" + string(rune('a'+leaseSeq%26)),
		AgentID: "test/agent", Role: r, Attributes: attrs, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute), Scope: scope}
}

// asToken is a go-github client authenticated with an installation token,
// as an agent would use it.
func (f *fixture) asToken(t *testing.T, token string) *gh.Client {
	t.Helper()
	c, err := gh.NewClient(gh.WithEnterpriseURLs(f.gh.URL, f.gh.URL), gh.WithAuthToken(token))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ghStatus(err error) int {
	var ge *gh.ErrorResponse
	if errors.As(err, &ge) {
		return ge.Response.StatusCode
	}
	return 0
}

func TestMintUseRevoke(t *testing.T) {
	f := newFixture(t, nil, nil)
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})
	req := mintReq(r, nil, nil)
	start := time.Now()
	c, err := f.b.Mint(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := c.Data["token"].(string)
	if !strings.HasPrefix(tok, "ghs_") || c.Handle != req.CorrelationID || strings.Contains(c.Handle, tok) {
		t.Fatalf("credential %+v", c)
	}
	if c.ExpiresAt.Before(start.Add(TokenLifetime)) || c.ExpiresAt.After(time.Now().Add(TokenLifetime)) {
		t.Fatalf("ExpiresAt %s, want an hour after the mint", c.ExpiresAt)
	}
	if got := c.Data["repositories"].([]any); len(got) != 1 || got[0] != "acme/widgets" {
		t.Fatalf("repositories %v", got)
	}
	if got := c.Data["permissions"].(map[string]any); got["contents"] != "read" || got["issues"] != nil {
		t.Fatalf("permissions %v", got)
	}
	for k, v := range c.Details {
		if strings.Contains(v, tok) {
			t.Fatalf("detail %s holds the token", k)
		}
	}
	// The agent uses it: its repository yes, another no, no writes.
	agent := f.asToken(t, tok)
	if repo, _, err := agent.Repositories.Get(context.Background(), "acme", "widgets"); err != nil || repo.GetFullName() != "acme/widgets" {
		t.Fatalf("GET the repository: %v, %v", repo, err)
	}
	if _, _, err := agent.Repositories.Get(context.Background(), "acme", "gadgets"); ghStatus(err) != 404 {
		t.Fatalf("GET a repository outside the token: %v, want 404", err)
	}
	if n, _ := f.b.sealedTokens(); n != 1 {
		t.Fatalf("%d sealed tokens, want 1", n)
	}
	// Release: revoked at GitHub, refused afterwards, the copy erased.
	if err := f.b.Revoke(context.Background(), backends.Ref{Handle: c.Handle, CorrelationID: req.CorrelationID, Details: c.Details}); err != nil {
		t.Fatal(err)
	}
	if st := f.gh.TokenState(tok); st != "revoked" {
		t.Fatalf("token is %s at GitHub after Revoke", st)
	}
	if _, _, err := agent.Repositories.Get(context.Background(), "acme", "widgets"); ghStatus(err) != 401 {
		t.Fatalf("GET with a revoked token: %v, want 401", err)
	}
	if n, _ := f.b.sealedTokens(); n != 0 {
		t.Fatalf("%d sealed tokens after revocation, want 0", n)
	}
	// Revoking again is harmless and does not reach GitHub with the token.
	if err := f.b.Revoke(context.Background(), backends.Ref{Handle: c.Handle, CorrelationID: req.CorrelationID}); err != nil {
		t.Fatalf("second Revoke: %v", err)
	}
	if s := f.gh.Stats(); s.Revoked != 1 || s.Live != 0 {
		t.Fatalf("GitHub stats %+v", s)
	}
}

// TestMintNarrowsAndRefuses: what each role and request asks of GitHub,
// and the refusal (code and message) when it cannot be served.
func TestMintNarrowsAndRefuses(t *testing.T) {
	cases := []struct {
		name      string
		params    map[string]any
		attrs     map[string]string
		scope     map[string]any
		wantRepos []string
		wantPerms map[string]string
		wantKind  error
		wantMsg   string
	}{
		{name: "static repositories and permissions",
			params:    map[string]any{"installation": 42, "repositories": []any{"widgets", "acme/docs"}, "permissions": map[string]any{"contents": "read", "issues": "write"}},
			wantRepos: []string{"acme/widgets", "acme/docs"}, wantPerms: map[string]string{"contents": "read", "issues": "write", "metadata": "read"}},
		{name: "the workflow's own repository, from its attestation",
			params:    map[string]any{"owner": "{{repository_owner}}", "repositories": []any{"{{repository}}"}, "permissions": map[string]any{"contents": "write"}},
			attrs:     map[string]string{"repository": "acme/gadgets", "repository_owner": "acme"},
			wantRepos: []string{"acme/gadgets"}, wantPerms: map[string]string{"contents": "write", "metadata": "read"}},
		{name: "narrowed by the request's scope",
			params:    map[string]any{"installation": 42, "repositories": []any{"widgets", "docs"}, "permissions": map[string]any{"contents": "write", "issues": "write"}},
			scope:     map[string]any{"repositories": []any{"docs"}, "permissions": map[string]any{"contents": "read"}},
			wantRepos: []string{"acme/docs"}, wantPerms: map[string]string{"contents": "read", "metadata": "read"}},
		{name: "an attestation without the attribute",
			params:   map[string]any{"installation": 42, "repositories": []any{"{{repository}}"}, "permissions": map[string]any{"contents": "read"}},
			wantKind: backends.ErrForbidden, wantMsg: `needs the agent attribute "repository"`},
		{name: "a repository of another account",
			params:   map[string]any{"installation": 42, "repositories": []any{"{{repository}}"}, "permissions": map[string]any{"contents": "read"}},
			attrs:    map[string]string{"repository": "evil/widgets"},
			wantKind: backends.ErrForbidden, wantMsg: "repository evil/widgets is not in account acme"},
		{name: "an agent's repository the installation lacks",
			params:   map[string]any{"installation": 42, "repositories": []any{"{{repository}}"}, "permissions": map[string]any{"contents": "read"}},
			attrs:    map[string]string{"repository": "acme/secret-plans"},
			wantKind: backends.ErrForbidden, wantMsg: "not accessible to the parent installation"},
		{name: "a configured repository the installation lacks",
			params:   map[string]any{"installation": 42, "repositories": []any{"secret-plans"}, "permissions": map[string]any{"contents": "read"}},
			wantKind: backends.ErrBadResponse, wantMsg: "422 There is at least one repository that does not exist"},
		{name: "more than the installation has, named",
			params:   map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read", "administration": "write"}},
			wantKind: backends.ErrBadResponse, wantMsg: "does not grant: administration: write (the installation has none)"},
		{name: "an installation that does not exist",
			params:   map[string]any{"installation": 7, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}},
			wantKind: backends.ErrBadResponse, wantMsg: "GitHub has no installation 7 of app ci (404)"},
		{name: "an owner without the app",
			params:   map[string]any{"owner": "{{repository_owner}}", "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}},
			attrs:    map[string]string{"repository_owner": "other"},
			wantKind: backends.ErrBadResponse, wantMsg: "installation of app ci on account other (404)"},
		{name: "a scope wider than the role",
			params:   map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}},
			scope:    map[string]any{"permissions": map[string]any{"contents": "write"}},
			wantKind: backends.ErrInvalid, wantMsg: "scope.permissions.contents: write is more than the role's read"},
		{name: "a scope with another repository",
			params:   map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}},
			scope:    map[string]any{"repositories": []any{"gadgets"}},
			wantKind: backends.ErrInvalid, wantMsg: `scope.repositories: "gadgets" is not one of the role's repositories`},
	}
	f := newFixture(t, nil, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.role(t, c.params)
			before := f.gh.Stats()
			cred, err := f.b.Mint(context.Background(), mintReq(r, c.attrs, c.scope))
			if c.wantKind != nil {
				if cred != nil || !errors.Is(err, c.wantKind) || !strings.Contains(err.Error(), c.wantMsg) {
					t.Fatalf("Mint = %v, %v; want %s saying %q", cred, err, c.wantKind, c.wantMsg)
				}
				if s := f.gh.Stats(); s.Created != before.Created {
					t.Fatalf("GitHub created %d tokens for a refused mint", s.Created-before.Created)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var repos []string
			for _, r := range cred.Data["repositories"].([]any) {
				repos = append(repos, r.(string))
			}
			perms := map[string]string{}
			for k, v := range cred.Data["permissions"].(map[string]any) {
				perms[k] = v.(string)
			}
			if strings.Join(repos, ",") != strings.Join(c.wantRepos, ",") || permissionList(perms) != permissionList(c.wantPerms) {
				t.Fatalf("token for %v with %v; want %v with %v", repos, perms, c.wantRepos, c.wantPerms)
			}
		})
	}
}

func TestCheckRoleNamesTheKey(t *testing.T) {
	good := func() map[string]any {
		return map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}}
	}
	cases := []struct {
		name   string
		edit   func(p map[string]any, r *backends.RoleSpec)
		detail string
	}{
		{"max_ttl over GitHub's hour", func(p map[string]any, r *backends.RoleSpec) { r.MaxTTL = 2 * time.Hour }, "max_ttl 2h0m0s must be at most 1h"},
		{"no repositories", func(p map[string]any, r *backends.RoleSpec) { delete(p, "repositories") }, "params.repositories must name at least one"},
		{"no permissions", func(p map[string]any, r *backends.RoleSpec) { delete(p, "permissions") }, "params.permissions must name at least one"},
		{"an unknown permission", func(p map[string]any, r *backends.RoleSpec) { p["permissions"] = map[string]any{"contnets": "read"} }, `params.permissions.contnets: "contnets" is not a GitHub App permission`},
		{"an unknown level", func(p map[string]any, r *backends.RoleSpec) { p["permissions"] = map[string]any{"contents": "all"} }, `params.permissions.contents: level "all" must be read, write or admin`},
		{"installation and owner", func(p map[string]any, r *backends.RoleSpec) { p["owner"] = "acme" }, "give exactly one of installation"},
		{"neither installation nor owner", func(p map[string]any, r *backends.RoleSpec) { delete(p, "installation") }, "give exactly one of installation"},
		{"an unknown app", func(p map[string]any, r *backends.RoleSpec) { p["app"] = "other" }, `params.app "other" is not an app of backend gh`},
		{"a malformed template", func(p map[string]any, r *backends.RoleSpec) { p["repositories"] = []any{"{{repository}"} }, "params.repositories[0]: \"{{repository}\" has a malformed placeholder"},
		{"a bad repository name", func(p map[string]any, r *backends.RoleSpec) { p["repositories"] = []any{"a/b/c"} }, "params.repositories[0]: \"a/b/c\" is not a valid name"},
		{"an unknown key", func(p map[string]any, r *backends.RoleSpec) { p["repos"] = []any{"x"} }, "repos"},
		{"a negative installation", func(p map[string]any, r *backends.RoleSpec) { p["installation"] = -1 }, "params.installation must be a positive installation id"},
	}
	f := newFixture(t, nil, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := good()
			r := backends.RoleSpec{Name: "x", TTL: 5 * time.Minute, MaxTTL: time.Hour}
			c.edit(p, &r)
			r.Params = p
			err := f.b.CheckRole(r)
			if err == nil || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("CheckRole: %v; want %q", err, c.detail)
			}
		})
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	srv := startServer(t, githubtest.Options{})
	app := func() map[string]any {
		return map[string]any{"name": "ci", "app_id": srv.AppID, "private_key_file": srv.KeyFile}
	}
	cases := []struct {
		name string
		opts map[string]any
		want string
	}{
		{"no apps", map[string]any{"base_url": srv.URL}, "apps must name at least one GitHub App"},
		{"timeout 0", map[string]any{"base_url": srv.URL, "timeout": 0, "apps": []any{app()}}, "timeout must be positive; it is 0s"},
		{"negative cache", map[string]any{"base_url": srv.URL, "installation_cache": "-1s", "apps": []any{app()}}, `installation_cache: duration "-1s" out of range`},
		{"bad base_url", map[string]any{"base_url": "ftp://x", "apps": []any{app()}}, `base_url "ftp://x" must be an http(s) URL`},
		{"app without id", map[string]any{"base_url": srv.URL, "apps": []any{map[string]any{"name": "ci", "private_key_file": srv.KeyFile}}}, "apps[0].app_id must be the app's positive numeric id"},
		{"two apps, one name", map[string]any{"base_url": srv.URL, "apps": []any{app(), app()}}, `apps[1].name "ci" is used twice`},
		{"no key anywhere", map[string]any{"base_url": srv.URL, "apps": []any{map[string]any{"name": "ci", "app_id": 1, "private_key_file": "/nonexistent/key.pem"}}},
			"apps[0].private_key_file /nonexistent/key.pem does not exist, and"},
		{"an unknown key", map[string]any{"base_url": srv.URL, "apps": []any{app()}, "timout": "1s"}, "timout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := New("gh", c.opts, backends.Deps{DataDir: t.TempDir(), KEK: testKEK, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v; want %q", err, c.want)
			}
		})
	}
}

// TestAppKeySealedAtRest: the app key is read from its file once and then
// kept sealed; it is never in data_dir in clear, and a wrong KEK cannot
// open it.
func TestAppKeySealedAtRest(t *testing.T) {
	srv := startServer(t, githubtest.Options{})
	f, keyCopy, pem := fixtureWithKeyCopy(t, srv)
	f.b.Close()
	os.Remove(keyCopy)
	// The key file is gone: the sealed copy serves.
	f.b = f.open(t)
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})
	if _, err := f.b.Mint(context.Background(), mintReq(r, nil, nil)); err != nil {
		t.Fatalf("mint with the sealed app key: %v", err)
	}
	sealed, err := os.ReadFile(filepath.Join(f.dir, "gh", "apps.json"))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Join(strings.Split(strings.TrimSpace(string(pem)), "\n")[1:3], "")
	if strings.Contains(string(sealed), body) || strings.Contains(string(sealed), "PRIVATE KEY") {
		t.Fatal("apps.json holds the app key in clear")
	}
	f.b.Close()
	_, err = New("gh", f.opts, backends.Deps{DataDir: f.dir, KEK: bytes.Repeat([]byte{9}, 32), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Fatalf("New with another KEK: %v; want the sealed key refused", err)
	}
}

// TestRecoveryByCorrelationID: a lease recovered without a handle is
// revoked through its sealed copy when the mint got that far; a mint that
// created nothing has nothing to revoke; a mint that gave up while GitHub
// may have created a token says honestly that it cannot be found.
func TestRecoveryByCorrelationID(t *testing.T) {
	f := newFixture(t, nil, func(o map[string]any) { o["timeout"] = "300ms" })
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})

	// The mint finished at the backend; valet died before the lease
	// commit, so the lease has no handle.
	done := mintReq(r, nil, nil)
	c, err := f.b.Mint(context.Background(), done)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Data["token"].(string)
	if err := f.b.Revoke(context.Background(), backends.Ref{CorrelationID: done.CorrelationID}); err != nil {
		t.Fatalf("recovery of a minted token: %v", err)
	}
	if st := f.gh.TokenState(tok); st != "revoked" {
		t.Fatalf("the recovered token is %s at GitHub", st)
	}

	// GitHub refused: nothing to look for.
	refused := mintReq(r, nil, map[string]any{"repositories": []any{"gadgets"}})
	if _, err := f.b.Mint(context.Background(), refused); err == nil {
		t.Fatal("a refused scope minted")
	}
	if err := f.b.Revoke(context.Background(), backends.Ref{CorrelationID: refused.CorrelationID}); err != nil {
		t.Fatalf("revoking a mint that created nothing: %v", err)
	}

	// GitHub created the token but valet stopped waiting: it cannot be
	// found, and Revoke must not claim otherwise.
	release := f.gh.Hold()
	lost := mintReq(r, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = f.b.Mint(ctx, lost)
	cancel()
	release()
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Mint past its deadline: %v, want unavailable", err)
	}
	err = f.b.Revoke(context.Background(), backends.Ref{CorrelationID: lost.CorrelationID})
	if err == nil || !strings.Contains(err.Error(), "cannot be found") {
		t.Fatalf("Revoke of a token valet never received: %v; want an error saying it cannot be found", err)
	}
	if s := f.gh.Stats(); s.Live != 1 {
		t.Fatalf("GitHub has %d live tokens; the lost one should still be live (and Revoke honest about it)", s.Live)
	}
}

// TestOutageFailsFastAndRevocationWaits: with GitHub unreachable a mint
// fails at once as unavailable (and created nothing), a revocation fails
// and succeeds once GitHub is back.
func TestOutageFailsFastAndRevocationWaits(t *testing.T) {
	f := newFixture(t, nil, func(o map[string]any) { o["installation_cache"] = 0 })
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})
	req := mintReq(r, nil, nil)
	c, err := f.b.Mint(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	f.gh.Stop()
	start := time.Now()
	failed := mintReq(r, nil, nil)
	_, err = f.b.Mint(context.Background(), failed)
	if !errors.Is(err, backends.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("Mint during the outage: %v after %s; want unavailable at once", err, time.Since(start))
	}
	if err := f.b.Revoke(context.Background(), backends.Ref{CorrelationID: failed.CorrelationID}); err != nil {
		t.Fatalf("revoking the failed mint (connection refused: nothing created): %v", err)
	}
	ref := backends.Ref{Handle: c.Handle, CorrelationID: req.CorrelationID}
	if err := f.b.Revoke(context.Background(), ref); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Revoke during the outage: %v, want unavailable", err)
	}
	if n, _ := f.b.sealedTokens(); n != 1 {
		t.Fatalf("%d sealed tokens; the copy must stay until the revocation succeeds", n)
	}
	if err := f.gh.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := f.b.Revoke(context.Background(), ref); err != nil {
		t.Fatalf("Revoke after the outage: %v", err)
	}
	if st := f.gh.TokenState(c.Data["token"].(string)); st != "revoked" {
		t.Fatalf("token is %s after the outage's revocation", st)
	}
}

// TestSweepErasesExpiredTokens: the sealed copy of a token that was never
// revoked goes once the token has expired.
func TestSweepErasesExpiredTokens(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := startServer(t, githubtest.Options{Now: clk.Now})
	f := &fixture{gh: srv, dir: t.TempDir(), clock: clk, logs: &bytes.Buffer{},
		opts: map[string]any{"base_url": srv.URL, "apps": []any{map[string]any{"name": "ci", "app_id": srv.AppID, "private_key_file": srv.KeyFile}}}}
	f.b = f.open(t)
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})
	c, err := f.b.Mint(context.Background(), mintReq(r, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	f.b.sweep()
	if n, _ := f.b.sealedTokens(); n != 1 {
		t.Fatalf("%d sealed tokens before expiry, want 1", n)
	}
	clk.Set(c.ExpiresAt.Add(time.Second))
	f.b.sweep()
	if n, _ := f.b.sealedTokens(); n != 0 {
		t.Fatalf("%d sealed tokens after expiry, want 0", n)
	}
	// The token is dead at GitHub: revoking its lease is done.
	if err := f.b.Revoke(context.Background(), backends.Ref{Handle: c.Handle, CorrelationID: c.Handle, Details: c.Details}); err != nil {
		t.Fatalf("Revoke of an expired token: %v", err)
	}
}

// TestTokensSealedAtRest: neither the token nor the app key appears in
// clear in the backend's files or its log.
func TestTokensSealedAtRest(t *testing.T) {
	f := newFixture(t, nil, nil)
	r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}})
	var toks []string
	for i := 0; i < 3; i++ {
		c, err := f.b.Mint(context.Background(), mintReq(r, nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, c.Data["token"].(string))
	}
	f.b.Close()
	var files []string
	filepath.Walk(f.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 2 {
		t.Fatalf("files %v; want tokens.db and apps.json", files)
	}
	for _, p := range files {
		b, _ := os.ReadFile(p)
		for _, tok := range toks {
			if bytes.Contains(b, []byte(tok)) || bytes.Contains(b, []byte(tok[4:])) {
				t.Errorf("%s holds a token in clear", p)
			}
		}
	}
	for _, tok := range toks {
		if strings.Contains(f.logs.String(), tok) {
			t.Error("the log holds a token")
		}
	}
}

// TestInstallationCacheZeroReadsEveryMint: installation_cache 0 means the
// installation is read at every mint, so a permission its owner withdrew
// is refused by valet, naming it; with a cache, GitHub's own refusal
// answers until the cache expires.
func TestInstallationCacheZeroReadsEveryMint(t *testing.T) {
	for _, c := range []struct {
		cache   any
		wantMsg string
	}{
		{0, "does not grant: contents: write (the installation has read)"},
		{"1m", "422 The permissions requested are not granted to this installation."},
	} {
		t.Run(fmt.Sprint(c.cache), func(t *testing.T) {
			f := newFixture(t, nil, func(o map[string]any) { o["installation_cache"] = c.cache })
			r := f.role(t, map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "write"}})
			if _, err := f.b.Mint(context.Background(), mintReq(r, nil, nil)); err != nil {
				t.Fatal(err)
			}
			f.gh.SetPermissions(42, map[string]string{"metadata": "read", "contents": "read"})
			_, err := f.b.Mint(context.Background(), mintReq(r, nil, nil))
			if !errors.Is(err, backends.ErrBadResponse) || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("Mint after the installation lost contents: write: %v; want 502 saying %q", err, c.wantMsg)
			}
		})
	}
}

// TestExampleRolesAreValid: the github backend and roles of the example
// configuration pass the backend's checks (against the test server, with
// its key in place of the example's).
func TestExampleRolesAreValid(t *testing.T) {
	// The example's backends and roles, read as the server reads them
	// (valet serve's own loading is tested in cmd/valet).
	b, err := os.ReadFile("../../deploy/examples/valet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Backends []backends.Config `yaml:"backends"`
		Roles    []broker.Role     `yaml:"roles"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, githubtest.Options{Installations: []githubtest.Installation{
		{ID: 12345678, Account: "acme", Repositories: []string{"docs", "handbook"}, Permissions: map[string]string{"contents": "read"}},
	}})
	n := 0
	for _, bc := range cfg.Backends {
		if bc.Type != Type {
			continue
		}
		opts := map[string]any{}
		for k, v := range bc.Options {
			opts[k] = v
		}
		if err := decodeOptions(opts, &Options{}); err != nil {
			t.Fatalf("backend %s: %v", bc.Name, err)
		}
		// The same apps, with the test server's URL, id and key.
		var apps []any
		for _, a := range opts["apps"].([]any) {
			m := map[string]any{}
			for k, v := range a.(map[string]any) {
				m[k] = v
			}
			m["app_id"], m["private_key_file"], m["client_id"] = srv.AppID, srv.KeyFile, srv.ClientID
			apps = append(apps, m)
		}
		opts["apps"], opts["base_url"] = apps, srv.URL
		f := newFixture(t, srv, func(o map[string]any) {
			for k := range o {
				delete(o, k)
			}
			for k, v := range opts {
				o[k] = v
			}
		})
		for _, r := range cfg.Roles {
			if r.Backend != bc.Name {
				continue
			}
			if err := f.b.CheckRole(backends.RoleSpec{Name: r.Name, Params: r.Params, TTL: r.TTL.D(), MaxTTL: r.MaxTTL.D()}); err != nil {
				t.Errorf("role %s: %v", r.Name, err)
			}
			n++
		}
	}
	if n < 2 {
		t.Fatalf("%d github roles checked; the example has two", n)
	}
}

// TestKEKSwitch: during a switch of KEK the backend opens its app key and
// the tokens it keeps for revocation under the previous KEK; RewrapKEK
// seals them under the new one, after which the new KEK alone serves:
// the app mints, and a token minted before the switch is still revoked.
func TestKEKSwitch(t *testing.T) {
	srv := startServer(t, githubtest.Options{})
	f, keyCopy, _ := fixtureWithKeyCopy(t, srv)
	params := map[string]any{"installation": 42, "repositories": []any{"widgets"}, "permissions": map[string]any{"contents": "read"}}
	r := f.role(t, params)
	before, err := f.b.Mint(context.Background(), mintReq(r, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	f.b.Close()
	os.Remove(keyCopy) // from now on only the sealed copy holds the app key

	newKEK := bytes.Repeat([]byte{8}, 32)
	open := func(key, previous []byte) (*Backend, error) {
		be, err := New("gh", f.opts, backends.Deps{DataDir: f.dir, KEK: key, PreviousKEK: previous, Clock: f.clock,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { be.(*Backend).Close() })
		return be.(*Backend), nil
	}
	if _, err := open(newKEK, nil); err == nil || !strings.Contains(err.Error(), "VALET_KEK_PREVIOUS") {
		t.Fatalf("the new KEK alone before the re-wrap: %v; want a refusal naming VALET_KEK_PREVIOUS", err)
	}
	b, err := open(newKEK, testKEK)
	if err != nil {
		t.Fatalf("the new KEK with the previous one: %v", err)
	}
	f.b = b
	r = f.role(t, params)
	if _, err := b.Mint(context.Background(), mintReq(r, nil, nil)); err != nil {
		t.Fatalf("mint during the switch: %v", err)
	}
	rep, err := b.RewrapKEK(context.Background())
	if err != nil || rep != (kek.Report{Rewrapped: 2, Current: 1}) {
		t.Fatalf("RewrapKEK: %+v, %v; want the app key and the earlier token re-wrapped, the token of the switch already current", rep, err)
	}
	if rep, err := b.RewrapKEK(context.Background()); err != nil || rep != (kek.Report{Current: 3}) {
		t.Fatalf("second RewrapKEK: %+v, %v", rep, err)
	}
	b.Close()

	b, err = open(newKEK, nil)
	if err != nil {
		t.Fatalf("the new KEK alone after the re-wrap: %v", err)
	}
	f.b = b
	r = f.role(t, params)
	if _, err := b.Mint(context.Background(), mintReq(r, nil, nil)); err != nil {
		t.Fatalf("mint after the switch: %v", err)
	}
	if err := b.Revoke(context.Background(), backends.Ref{Handle: before.Handle, Details: before.Details}); err != nil {
		t.Fatalf("revoking a token minted before the switch: %v", err)
	}
	if st := srv.TokenState(before.Data["token"].(string)); st != "revoked" {
		t.Fatalf("the token minted before the switch is %s at GitHub", st)
	}
}

// fixtureWithKeyCopy is a fixture whose app key file is a copy the test
// may remove; it returns the copy's path and its PEM.
func fixtureWithKeyCopy(t *testing.T, srv *githubtest.Server) (*fixture, string, []byte) {
	t.Helper()
	keyCopy := filepath.Join(t.TempDir(), "app.pem")
	pem, err := os.ReadFile(srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyCopy, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, srv, func(o map[string]any) {
		o["apps"] = []any{map[string]any{"name": "ci", "app_id": srv.AppID, "private_key_file": keyCopy}}
	})
	return f, keyCopy, pem
}
