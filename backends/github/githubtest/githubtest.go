// Package githubtest is a local stand-in for the GitHub REST API, for
// valet's tests, benchmarks and `make run-cloud`: no GitHub is reachable
// from here. It checks what GitHub checks on the endpoints valet and its
// agents use, and answers in GitHub's documented shapes (REST API version
// 2022-11-28):
//
//   - app endpoints (GET /app, GET /app/installations/{id}, GET
//     /orgs/{org}/installation, GET /users/{user}/installation, POST
//     /app/installations/{id}/access_tokens) take an app JWT: RS256 with the
//     app's key, iss the app id or client id, iat not in the future (60 s of
//     drift allowed), exp in the future and at most 10 minutes ahead;
//   - an installation access token is created only for repositories and
//     permissions the installation has (422 otherwise), lives one hour,
//     and is refused (401 Bad credentials) once it expired or was revoked
//     with DELETE /installation/token;
//   - with it an agent can list its repositories (GET
//     /installation/repositories), read a repository (GET
//     /repos/{owner}/{repo}, metadata), read a file (GET
//     /repos/{owner}/{repo}/contents/{path}, contents: read) and, when git
//     is installed, clone over HTTP (/{owner}/{repo}.git, Basic auth with
//     the token as password; contents: read, and write to push).
//
// Every path is served both at the root and under /api/v3/, as GitHub
// Enterprise Server serves it, so valet's base_url can take either form.
package githubtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// TokenLifetime is how long GitHub's installation access tokens live.
const TokenLifetime = time.Hour

// Limits GitHub applies to app JWTs and token requests.
const (
	// MaxJWTLifetime: exp may be at most this far in the future.
	MaxJWTLifetime = 10 * time.Minute
	// JWTDrift: iat may be this far in the future (clock drift).
	JWTDrift = 60 * time.Second
	// MaxRepositories a token request may name.
	MaxRepositories = 500
)

// Installation is one installation of the app on an account.
type Installation struct {
	ID      int64
	Account string // the organization or user login, e.g. "acme"
	// Repositories are the names (without owner) of the repositories the
	// installation may access.
	Repositories []string
	// Permissions the installation was granted, e.g. {"contents": "write"}.
	Permissions map[string]string
	Suspended   bool
}

// Options configure a Server.
type Options struct {
	AppID    int64  // default 1
	ClientID string // default "Iv1.test"
	// Installations of the app (default: DefaultInstallation).
	Installations []Installation
	// Now is the server's clock (default time.Now).
	Now func() time.Time
	// Dir holds the app's private key (app.pem) and the git repositories
	// (default: a new temporary directory, removed by Close).
	Dir string
	// Git serves the installations' repositories over HTTP with `git
	// http-backend`; the git binary must be installed.
	Git bool
	// Addr is the address to listen on (default: a free loopback port).
	Addr string
}

// DefaultInstallation is the installation a Server has unless Options
// says otherwise: account acme with three repositories.
func DefaultInstallation() Installation {
	return Installation{
		ID: 42, Account: "acme", Repositories: []string{"widgets", "gadgets", "docs"},
		Permissions: map[string]string{"metadata": "read", "contents": "write", "issues": "write", "pull_requests": "write"},
	}
}

// Server is a running stand-in for GitHub. It is safe for concurrent use.
type Server struct {
	// URL is the server's root, e.g. http://127.0.0.1:PORT/ (valet's
	// base_url; its GitHub client adds api/v3/).
	URL string
	// KeyFile is the app's private key, PKCS#1 PEM as GitHub hands it out.
	KeyFile  string
	AppID    int64
	ClientID string

	opts    Options
	key     *rsa.PrivateKey
	now     func() time.Time
	tmpDir  string
	gitRoot string

	mu            sync.Mutex
	installations map[int64]*Installation
	tokens        map[[32]byte]*token // by SHA-256 of the token
	listener      net.Listener
	srv           *http.Server
	addr          string
	// fail, when set, answers the next token creations with this status.
	fail []int
	// hold, when set, is waited on by token creations after the token
	// was created and before the answer is sent.
	hold chan struct{}

	created, revoked atomic.Int64
	requests         atomic.Int64
}

// token is an installation access token the server created.
type token struct {
	installation int64
	repositories []string
	permissions  map[string]string
	expires      time.Time
	revoked      bool
}

// Start starts a Server on a free loopback port.
func Start(o Options) (*Server, error) {
	if o.AppID == 0 {
		o.AppID = 1
	}
	if o.ClientID == "" {
		o.ClientID = "Iv1.test"
	}
	if o.Installations == nil {
		o.Installations = []Installation{DefaultInstallation()}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{AppID: o.AppID, ClientID: o.ClientID, opts: o, now: o.Now,
		installations: map[int64]*Installation{}, tokens: map[[32]byte]*token{}}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "githubtest")
		if err != nil {
			return nil, err
		}
		o.Dir, s.tmpDir = d, d
	}
	for i := range o.Installations {
		in := o.Installations[i]
		in.Permissions = copyMap(in.Permissions)
		s.installations[in.ID] = &in
	}
	key, err := loadOrCreateKey(filepath.Join(o.Dir, "app.pem"))
	if err != nil {
		return nil, err
	}
	s.key, s.KeyFile = key, filepath.Join(o.Dir, "app.pem")
	if o.Git {
		s.gitRoot = filepath.Join(o.Dir, "git")
		if err := s.initRepositories(); err != nil {
			return nil, err
		}
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, err
	}
	s.addr = l.Addr().String()
	s.URL = "http://" + s.addr + "/"
	s.serve(l)
	return s, nil
}

func (s *Server) serve(l net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.listener, s.srv = l, srv
	s.mu.Unlock()
	go srv.Serve(l)
}

// Stop closes the listener and every connection, as an outage would:
// requests fail with "connection refused" until Resume. Tokens and
// installations are kept.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv, s.listener = nil, nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Resume listens again on the address the server had.
func (s *Server) Resume() error {
	var err error
	var l net.Listener
	for i := 0; i < 50; i++ { // the old socket may linger for a moment
		if l, err = net.Listen("tcp", s.addr); err == nil {
			s.serve(l)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Close stops the server and removes its temporary directory.
func (s *Server) Close() {
	s.Stop()
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
}

// FailNext makes the next len(statuses) token creations answer with these
// HTTP statuses (e.g. 502) without creating a token.
func (s *Server) FailNext(statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = append(s.fail, statuses...)
}

// Hold makes token creations wait, after the token exists and before the
// server answers, until the returned function is called: the window in
// which a client may give up on a token GitHub did create.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// SetPermissions changes an installation's permissions (as when its owner
// approves fewer), for tests.
func (s *Server) SetPermissions(installation int64, perms map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.installations[installation]; in != nil {
		in.Permissions = copyMap(perms)
	}
}

// AppJWT signs an app JWT as the app would (iss the app id, iat a minute
// ago, exp in nine minutes), for tools that call the app endpoints
// directly, such as the benchmark.
func (s *Server) AppJWT() (string, error) {
	now := s.now()
	t, err := jwt.NewBuilder().Issuer(strconv.FormatInt(s.AppID, 10)).IssuedAt(now.Add(-time.Minute)).Expiration(now.Add(9 * time.Minute)).Build()
	if err != nil {
		return "", err
	}
	b, err := jwt.Sign(t, jwt.WithKey(jwa.RS256, s.key))
	return string(b), err
}

// Stats are the server's counters.
type Stats struct {
	Created, Revoked int64
	// Live counts tokens neither revoked nor expired.
	Live     int
	Requests int64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	live := 0
	now := s.now()
	for _, t := range s.tokens {
		if !t.revoked && now.Before(t.expires) {
			live++
		}
	}
	return Stats{Created: s.created.Load(), Revoked: s.revoked.Load(), Live: live, Requests: s.requests.Load()}
}

// TokenState says what the server knows of a token: "live", "revoked",
// "expired" or "unknown".
func (s *Server) TokenState(tok string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[sha256.Sum256([]byte(tok))]
	switch {
	case t == nil:
		return "unknown"
	case t.revoked:
		return "revoked"
	case !s.now().Before(t.expires):
		return "expired"
	}
	return "live"
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	path := strings.TrimPrefix(r.URL.Path, "/api/v3")
	if s.gitRoot != "" && (strings.Contains(path, ".git/") || strings.HasSuffix(path, ".git")) {
		s.serveGit(w, r, path)
		return
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	route := r.Method + " " + pattern(parts)
	switch route {
	case "GET app":
		s.withApp(w, r, func() { s.json(w, 200, s.appJSON()) })
	case "GET app/installations/*":
		s.withApp(w, r, func() { s.getInstallation(w, parseID(parts[2]), "") })
	case "GET orgs/*/installation", "GET users/*/installation":
		s.withApp(w, r, func() { s.getInstallation(w, 0, parts[1]) })
	case "POST app/installations/*/access_tokens":
		s.withApp(w, r, func() { s.createToken(w, r, parseID(parts[2])) })
	case "DELETE installation/token":
		s.withToken(w, r, func(string, *token) { s.revoke(w, r) })
	case "GET installation/repositories":
		s.withToken(w, r, func(_ string, t *token) { s.listRepositories(w, t) })
	case "GET repos/*/*":
		s.withToken(w, r, func(_ string, t *token) { s.getRepository(w, t, parts[1], parts[2]) })
	default:
		if len(parts) >= 5 && r.Method == "GET" && parts[0] == "repos" && parts[3] == "contents" {
			s.withToken(w, r, func(_ string, t *token) { s.getContents(w, t, parts[1], parts[2], strings.Join(parts[4:], "/")) })
			return
		}
		s.fail404(w)
	}
}

// pattern turns path segments into a route with * for the variable ones.
func pattern(parts []string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = p
		switch {
		case i == 2 && len(parts) >= 3 && parts[0] == "app" && parts[1] == "installations":
			out[i] = "*"
		case i == 1 && (parts[0] == "orgs" || parts[0] == "users" || parts[0] == "repos"):
			out[i] = "*"
		case i == 2 && parts[0] == "repos":
			out[i] = "*"
		}
	}
	return strings.Join(out, "/")
}

func parseID(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// problem writes GitHub's error shape.
func (s *Server) problem(w http.ResponseWriter, status int, msg, doc string) {
	s.json(w, status, map[string]any{"message": msg, "documentation_url": "https://docs.github.com/rest" + doc, "status": strconv.Itoa(status)})
}

func (s *Server) fail404(w http.ResponseWriter) { s.problem(w, 404, "Not Found", "") }

func (s *Server) json(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// bearer returns the request's bearer token (GitHub also accepts "token").
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	for _, p := range []string{"Bearer ", "bearer ", "token "} {
		if strings.HasPrefix(h, p) {
			return strings.TrimSpace(h[len(p):])
		}
	}
	return ""
}

// withApp runs next if the request carries a valid app JWT.
func (s *Server) withApp(w http.ResponseWriter, r *http.Request, next func()) {
	if msg := s.checkAppJWT(bearer(r)); msg != "" {
		s.problem(w, 401, msg, "/apps/apps#get-the-authenticated-app")
		return
	}
	next()
}

// checkAppJWT verifies an app JWT as GitHub does and returns why it is
// refused, or "".
func (s *Server) checkAppJWT(tok string) string {
	if tok == "" {
		return "Requires authentication"
	}
	payload, err := jws.Verify([]byte(tok), jws.WithKey(jwa.RS256, &s.key.PublicKey))
	if err != nil {
		return "A JSON web token could not be decoded"
	}
	var c struct {
		Iss json.RawMessage `json:"iss"`
		Iat json.Number     `json:"iat"`
		Exp json.Number     `json:"exp"`
	}
	d := json.NewDecoder(strings.NewReader(string(payload)))
	d.UseNumber()
	if err := d.Decode(&c); err != nil {
		return "A JSON web token could not be decoded"
	}
	var iss string
	if err := json.Unmarshal(c.Iss, &iss); err != nil {
		var n int64
		if json.Unmarshal(c.Iss, &n) != nil {
			return "'Issuer' claim ('iss') must be an Integer or a String"
		}
		iss = strconv.FormatInt(n, 10)
	}
	if iss != strconv.FormatInt(s.AppID, 10) && iss != s.ClientID {
		return "Integration not found"
	}
	iat, err1 := c.Iat.Int64()
	exp, err2 := c.Exp.Int64()
	now := s.now()
	if err1 != nil || time.Unix(iat, 0).After(now.Add(JWTDrift)) {
		return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued."
	}
	if err2 != nil || !time.Unix(exp, 0).After(now) {
		return "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires."
	}
	if time.Unix(exp, 0).After(now.Add(MaxJWTLifetime)) {
		return "'Expiration time' claim ('exp') is too far in the future."
	}
	return ""
}

// withToken runs next with the request's installation token, if it is one
// the server created and it is neither revoked nor expired.
func (s *Server) withToken(w http.ResponseWriter, r *http.Request, next func(tok string, t *token)) {
	tok := bearer(r)
	t := s.liveToken(tok)
	if t == nil {
		s.problem(w, 401, "Bad credentials", "")
		return
	}
	next(tok, t)
}

func (s *Server) liveToken(tok string) *token {
	if tok == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[sha256.Sum256([]byte(tok))]
	if t == nil || t.revoked || !s.now().Before(t.expires) {
		return nil
	}
	return t
}

func (s *Server) appJSON() map[string]any {
	return map[string]any{"id": s.AppID, "client_id": s.ClientID, "slug": "valet-test", "name": "valet test app",
		"owner": map[string]any{"login": "valet-test", "id": 1, "type": "Organization"}}
}

func (s *Server) installationJSON(in *Installation) map[string]any {
	v := map[string]any{
		"id": in.ID, "app_id": s.AppID, "client_id": s.ClientID, "app_slug": "valet-test",
		"account":              map[string]any{"login": in.Account, "id": accountID(in.Account), "type": "Organization"},
		"target_type":          "Organization",
		"repository_selection": "selected",
		"permissions":          copyMap(in.Permissions),
		"access_tokens_url":    fmt.Sprintf("%sapp/installations/%d/access_tokens", s.URL, in.ID),
		"created_at":           "2026-01-01T00:00:00Z",
		"suspended_at":         nil,
	}
	if in.Suspended {
		v["suspended_at"] = "2026-01-02T00:00:00Z"
	}
	return v
}

// getInstallation answers GET /app/installations/{id} (id > 0) or the
// installation of an account (login).
func (s *Server) getInstallation(w http.ResponseWriter, id int64, login string) {
	s.mu.Lock()
	var found *Installation
	for _, in := range s.installations {
		if in.ID == id || login != "" && strings.EqualFold(in.Account, login) {
			c := *in
			c.Permissions = copyMap(in.Permissions)
			found = &c
		}
	}
	s.mu.Unlock()
	if found == nil {
		s.problem(w, 404, "Not Found", "/apps/apps#get-an-installation-for-the-authenticated-app")
		return
	}
	s.json(w, 200, s.installationJSON(found))
}

// levels orders permission levels.
var levels = map[string]int{"read": 1, "write": 2, "admin": 3}

// createToken answers POST /app/installations/{id}/access_tokens.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request, id int64) {
	const doc = "/apps/apps#create-an-installation-access-token-for-an-app"
	var body struct {
		Repositories  []string          `json:"repositories"`
		RepositoryIDs []int64           `json:"repository_ids"`
		Permissions   map[string]string `json:"permissions"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			s.problem(w, 400, "Problems parsing JSON", doc)
			return
		}
	}
	s.mu.Lock()
	in := s.installations[id]
	var fail int
	if len(s.fail) > 0 {
		fail, s.fail = s.fail[0], s.fail[1:]
	}
	s.mu.Unlock()
	switch {
	case fail != 0:
		s.problem(w, fail, http.StatusText(fail), doc)
		return
	case in == nil:
		s.problem(w, 404, "Not Found", doc)
		return
	case in.Suspended:
		s.problem(w, 403, "This installation has been suspended", doc)
		return
	case len(body.RepositoryIDs) > 0:
		s.problem(w, 422, "repository_ids are not supported by this test server; use repositories", doc)
		return
	case len(body.Repositories) > MaxRepositories:
		s.problem(w, 422, fmt.Sprintf("Too many repositories: at most %d can be listed", MaxRepositories), doc)
		return
	}
	s.mu.Lock()
	have := copyMap(in.Permissions)
	haveRepos := append([]string{}, in.Repositories...)
	s.mu.Unlock()
	repos := haveRepos
	if len(body.Repositories) > 0 {
		repos = nil
		for _, name := range body.Repositories {
			if !containsFold(haveRepos, name) {
				s.problem(w, 422, "There is at least one repository that does not exist or is not accessible to the parent installation.", doc)
				return
			}
			repos = append(repos, canonical(haveRepos, name))
		}
	}
	perms := have
	if len(body.Permissions) > 0 {
		perms = map[string]string{}
		for name, level := range body.Permissions {
			if levels[level] == 0 {
				s.problem(w, 422, fmt.Sprintf("Invalid permission level %q for %s", level, name), doc)
				return
			}
			if levels[have[name]] < levels[level] {
				s.problem(w, 422, "The permissions requested are not granted to this installation.", doc)
				return
			}
			perms[name] = level
		}
		// Every token may read metadata when its installation may.
		if _, ok := perms["metadata"]; !ok && have["metadata"] != "" {
			perms["metadata"] = "read"
		}
	}
	tok, err := newToken()
	if err != nil {
		s.problem(w, 500, "Server Error", doc)
		return
	}
	t := &token{installation: id, repositories: repos, permissions: perms, expires: s.now().Add(TokenLifetime).Truncate(time.Second)}
	s.mu.Lock()
	s.tokens[sha256.Sum256([]byte(tok))] = t
	hold := s.hold
	s.mu.Unlock()
	s.created.Add(1)
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return // the client gave up on a token that exists
		}
	}
	sel := "all"
	if len(body.Repositories) > 0 {
		sel = "selected"
	}
	repoJSON := make([]any, 0, len(repos))
	for _, name := range repos {
		repoJSON = append(repoJSON, s.repositoryJSON(in.Account, name))
	}
	s.json(w, 201, map[string]any{
		"token": tok, "expires_at": t.expires.UTC().Format(time.RFC3339),
		"permissions": perms, "repository_selection": sel, "repositories": repoJSON,
	})
}

// revoke answers DELETE /installation/token (204).
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	t := s.tokens[sha256.Sum256([]byte(bearer(r)))]
	if t != nil && !t.revoked {
		t.revoked = true
		s.revoked.Add(1)
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) account(t *token) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.installations[t.installation]; in != nil {
		return in.Account
	}
	return ""
}

// listRepositories answers GET /installation/repositories.
func (s *Server) listRepositories(w http.ResponseWriter, t *token) {
	acct := s.account(t)
	repos := make([]any, 0, len(t.repositories))
	for _, name := range t.repositories {
		repos = append(repos, s.repositoryJSON(acct, name))
	}
	s.json(w, 200, map[string]any{"total_count": len(repos), "repository_selection": "selected", "repositories": repos})
}

// reachable reports whether t covers owner/repo; GitHub answers 404 for
// a repository a token cannot see.
func (s *Server) reachable(t *token, owner, repo string) bool {
	return strings.EqualFold(s.account(t), owner) && containsFold(t.repositories, repo) && t.permissions["metadata"] != ""
}

// getRepository answers GET /repos/{owner}/{repo}.
func (s *Server) getRepository(w http.ResponseWriter, t *token, owner, repo string) {
	if !s.reachable(t, owner, repo) {
		s.fail404(w)
		return
	}
	v := s.repositoryJSON(s.account(t), canonical(t.repositories, repo))
	v["permissions"] = map[string]any{"pull": true, "push": levels[t.permissions["contents"]] >= 2, "admin": false}
	s.json(w, 200, v)
}

// getContents answers GET /repos/{owner}/{repo}/contents/{path} for the
// one file every test repository has, README.md.
func (s *Server) getContents(w http.ResponseWriter, t *token, owner, repo, path string) {
	if !s.reachable(t, owner, repo) {
		s.fail404(w)
		return
	}
	if levels[t.permissions["contents"]] < 1 {
		s.problem(w, 403, "Resource not accessible by integration", "/repos/contents#get-repository-content")
		return
	}
	if path != "README.md" {
		s.fail404(w)
		return
	}
	content := readme(s.account(t), canonical(t.repositories, repo))
	s.json(w, 200, map[string]any{
		"type": "file", "encoding": "base64", "name": path, "path": path, "size": len(content),
		"content": base64.StdEncoding.EncodeToString([]byte(content)),
		"sha":     fmt.Sprintf("%x", sha256.Sum256([]byte(content)))[:40],
	})
}

func readme(owner, repo string) string {
	return fmt.Sprintf("# %s/%s\n\nA repository of the GitHub test server.\n", owner, repo)
}

func (s *Server) repositoryJSON(owner, name string) map[string]any {
	return map[string]any{
		"id": repoID(owner, name), "node_id": "R_" + hex.EncodeToString([]byte(name)), "name": name,
		"full_name": owner + "/" + name, "private": true,
		"owner":    map[string]any{"login": owner, "id": accountID(owner), "type": "Organization"},
		"html_url": s.URL + owner + "/" + name, "clone_url": s.URL + owner + "/" + name + ".git",
		"default_branch": "main",
	}
}

func accountID(login string) int64 { return int64(hashOf(strings.ToLower(login)) % 1e9) }
func repoID(owner, name string) int64 {
	return int64(hashOf(strings.ToLower(owner+"/"+name)) % 1e9)
}

func hashOf(s string) uint64 {
	sum := sha256.Sum256([]byte(s))
	return new(big.Int).SetBytes(sum[:8]).Uint64()
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// canonical returns the name in list that s names (GitHub names are
// case-insensitive).
func canonical(list []string, s string) string {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return x
		}
	}
	return s
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// newToken returns a token in GitHub's installation token format: ghs_
// and 36 alphanumerics.
func newToken() (string, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 36)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "ghs_" + string(b), nil
}

// loadOrCreateKey reads the app's PKCS#1 PEM key at path, or creates a
// 2048-bit one there (mode 0600).
func loadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	if b, err := os.ReadFile(path); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: not PEM", path)
		}
		return x509.ParsePKCS1PrivateKey(blk.Bytes)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return key, os.WriteFile(path, out, 0o600)
}

// Repositories lists owner/name of every repository of every
// installation, sorted.
func (s *Server) Repositories() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, in := range s.installations {
		for _, r := range in.Repositories {
			out = append(out, in.Account+"/"+r)
		}
	}
	sort.Strings(out)
	return out
}

// basicToken returns the password of a Basic Authorization header (git
// sends the token as the password, with any user name).
func basicToken(r *http.Request) string {
	_, pw, ok := r.BasicAuth()
	if !ok {
		return ""
	}
	return pw
}
