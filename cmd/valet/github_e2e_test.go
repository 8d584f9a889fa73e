package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gh "github.com/google/go-github/v93/github"

	"github.com/valet-broker/valet/backends/github/githubtest"
)

// githubPolicy permits the GitHub roles to agents of the test issuer.
const githubPolicy = `
@id("github-roles")
permit(principal in Issuer::"test", action == Action::"mint", resource)
when { resource.backend == "github" };
`

// githubRoles: gh reads and writes the agent's own repository (from its
// repository claim); gh-static reads one configured repository.
const githubRoles = `  - name: gh
    backend: github
    ttl: 1m
    max_ttl: 1h
    params:
      owner: "{{repository_owner}}"
      repositories: ["{{repository}}"]
      permissions: {contents: write, pull_requests: write}
  - name: gh-static
    backend: github
    ttl: 1m
    params:
      installation: 42
      repositories: [widgets]
      permissions: {contents: read}
`

// newGitHubEnv is a test env whose config adds a github backend talking to
// srv, the GitHub roles, a claim mapping for the repository claims, and a
// policy permitting them.
func newGitHubEnv(t *testing.T, srv *githubtest.Server) *testEnv {
	t.Helper()
	e := newTestEnv(t)
	path := filepath.Join(e.Dir, "config.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "backends:\n", fmt.Sprintf(`backends:
  - name: github
    type: github
    base_url: %s
    timeout: 3s
    apps:
      - {name: ci, app_id: %d, private_key_file: %s}
`, srv.URL, srv.AppID, srv.KeyFile), 1)
	cfg = strings.Replace(cfg, "roles:\n", "roles:\n"+githubRoles, 1)
	cfg = strings.Replace(cfg, "    algorithms: [ES256]\n", "    algorithms: [ES256]\n    claim_mappings: {repository: repository, repository_owner: repository_owner}\n", 1)
	cfg += "leases:\n  revoke_backoff: 200ms\n  revoke_max_backoff: 1s\n  revoke_attempts: 3\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "policies", "github.cedar"), []byte(githubPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.Config, err = LoadConfig(path); err != nil {
		t.Fatal(err)
	}
	return e
}

func startGitHub(t *testing.T, o githubtest.Options) *githubtest.Server {
	t.Helper()
	s, err := githubtest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// workflow is the attestation of a GitHub Actions run of repo.
func workflow(e *testEnv, sub, repo string) string {
	owner, _, _ := strings.Cut(repo, "/")
	return e.Attest(sub, map[string]any{"repository": repo, "repository_owner": owner})
}

// agentClient is go-github authenticated with an installation token, as
// an agent uses the credential.
func agentClient(t *testing.T, srv *githubtest.Server, token string) *gh.Client {
	t.Helper()
	c, err := gh.NewClient(gh.WithEnterpriseURLs(srv.URL, srv.URL), gh.WithAuthToken(token))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func githubStatus(err error) int {
	var ge *gh.ErrorResponse
	if errors.As(err, &ge) {
		return ge.Response.StatusCode
	}
	return 0
}

// TestGitHubMintUseRelease: a workflow gets a token for its own repository
// only, uses it, releases it, and GitHub refuses it afterwards. Operators
// see the lease's facts and the token's own expiry, never the token.
func TestGitHubMintUseRelease(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv).Start()
	tok := workflow(e, "repo:acme/gadgets:ref:refs/heads/main", "acme/gadgets")
	res := e.Mint(tok, "gh")
	cred := res["credential"].(map[string]any)
	token := cred["token"].(string)
	if repos := cred["repositories"].([]any); len(repos) != 1 || repos[0] != "acme/gadgets" {
		t.Fatalf("repositories %v, want the workflow's own", repos)
	}
	if perms := cred["permissions"].(map[string]any); perms["contents"] != "write" || perms["pull_requests"] != "write" {
		t.Fatalf("permissions %v", perms)
	}
	agent := agentClient(t, srv, token)
	ctx := context.Background()
	if _, _, err := agent.Repositories.Get(ctx, "acme", "gadgets"); err != nil {
		t.Fatalf("the token cannot read its repository: %v", err)
	}
	if _, _, err := agent.Repositories.Get(ctx, "acme", "widgets"); githubStatus(err) != 404 {
		t.Fatalf("the token reads another repository: %v", err)
	}
	id := res["lease_id"].(string)
	r := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
	l := r.JSON(t)
	details, _ := l["details"].(map[string]any)
	if l["handle"] != id || details["installation"] != "42" || details["repositories"] != "acme/gadgets" || l["credential_expires_at"] == nil {
		t.Fatalf("operator view: %s", r.Body)
	}
	if strings.Contains(string(r.Body), token) {
		t.Fatal("the lease view shows the token")
	}
	r = e.Do("DELETE", "/v1/leases/"+id, tok, nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "released" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	if _, _, err := agent.Repositories.Get(ctx, "acme", "gadgets"); githubStatus(err) != 401 {
		t.Fatalf("the released token still works: %v", err)
	}
	// Another workflow's attestation cannot reach outside its account.
	r = e.Do("POST", "/v1/credentials", workflow(e, "repo:evil/x:ref:refs/heads/main", "evil/x"), map[string]any{"role": "gh"})
	if r.Status != http.StatusBadGateway && r.Status != http.StatusForbidden {
		t.Fatalf("mint for an account without the app: %d %s", r.Status, r.Body)
	}
	if s := srv.Stats(); s.Live != 0 || s.Created != 1 {
		t.Fatalf("GitHub: %+v; want the one token, revoked", s)
	}
}

// TestGitHubLeaseExpiryRevokesTheToken: a token outlives its one-minute
// lease at GitHub, so valet revokes it when the lease expires.
func TestGitHubLeaseExpiryRevokesTheToken(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv).Start()
	r := e.Do("POST", "/v1/credentials", e.Attest("short", nil), map[string]any{"role": "gh-static", "ttl": "2s"})
	if r.Status != http.StatusCreated {
		t.Fatalf("mint: %d %s", r.Status, r.Body)
	}
	res := r.JSON(t)
	token := res["credential"].(map[string]any)["token"].(string)
	id := res["lease_id"].(string)
	eventually(t, 15*time.Second, "the expired lease's token is revoked", func() bool {
		return srv.TokenState(token) == "revoked" && leaseState(t, e, id) == "expired"
	})
}

// TestGitHubCLI: valet exec gives the token as GH_TOKEN and GITHUB_TOKEN,
// and git clones through valet's credential helper with no token in its
// environment.
func TestGitHubCLI(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed (Debian package git): apt-get install -y git")
	}
	srv := startGitHub(t, githubtest.Options{Git: true})
	e := newGitHubEnv(t, srv)
	p := startServe(t, e)
	e.URL = p.url
	env := []string{"VALET_ADDR=" + p.url, "VALET_ATTESTATION=" + workflow(e, "repo:acme/widgets", "acme/widgets"), "VALET_TOKEN="}

	out, errOut, code := runCLI(t, env, "exec", "gh", "--", "sh", "-c",
		`test -n "$GH_TOKEN" && test "$GH_TOKEN" = "$GITHUB_TOKEN" && test "$GH_TOKEN" = "$VALET_TOKEN" || exit 9; echo "$VALET_LEASE_ID $GH_TOKEN"`)
	if code != 0 {
		t.Fatalf("exec: exit %d: %s", code, errOut)
	}
	id, token, _ := strings.Cut(strings.TrimSpace(out), " ")
	if st := leaseState(t, e, id); st != "released" || srv.TokenState(token) != "revoked" {
		t.Fatalf("after exec the lease is %s and the token %s; want released and revoked", st, srv.TokenState(token))
	}

	// git asks the helper, which mints; the clone needs no token in git's
	// environment.
	dst := filepath.Join(t.TempDir(), "widgets")
	helper := "!" + valetBinary(t) + " creds gh --ttl 30s -o git-credential"
	cmd := exec.Command("git", "-c", "credential.helper=", "-c", "credential.helper="+helper, "clone", "--quiet", srv.URL+"acme/widgets.git", dst)
	cmd.Env = append(os.Environ(), append(env, "GIT_TERMINAL_PROMPT=0")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git clone through the credential helper: %v\n%s", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "README.md")); err != nil || !strings.Contains(string(b), "acme/widgets") {
		t.Fatalf("the clone has no README: %v %q", err, b)
	}
	// The same clone without the helper is refused.
	cmd = exec.Command("git", "-c", "credential.helper=", "clone", "--quiet", srv.URL+"acme/widgets.git", filepath.Join(t.TempDir(), "x"))
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	if err := cmd.Run(); err == nil {
		t.Fatal("git cloned without credentials")
	}
	// The helper's other actions do nothing, and a stray argument is refused.
	for _, c := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"creds", "gh", "-o", "git-credential", "store"}, 0, ""},
		{[]string{"creds", "gh", "-o", "git-credential", "erase"}, 0, ""},
		{[]string{"creds", "gh", "-o", "git-credential", "fetch"}, 1, ""},
		{[]string{"creds", "gh", "extra"}, 1, ""},
		{[]string{"creds", "gh", "-o", "git-credential"}, 0, "username=x-access-token\npassword=ghs_"},
		{[]string{"creds", "gh", "-o", "env"}, 0, "export GH_TOKEN='ghs_"},
	} {
		out, errOut, code := runCLI(t, env, c.args...)
		if code != c.code || !strings.Contains(out, c.out) || c.out == "" && out != "" {
			t.Errorf("valet %v: exit %d, out %q, err %q", c.args, code, out, errOut)
		}
	}
	p.stop(t)
}

// TestGitHubCrashBetweenMintAndCommit: valet dies after GitHub created the
// token and before the lease is active; on restart the token is found by
// its lease id (its sealed copy) and revoked.
func TestGitHubCrashBetweenMintAndCommit(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv)
	mintIntoFailpoint(t, e, "crash-agent", "gh-static")
	if s := srv.Stats(); s.Live != 1 {
		t.Fatalf("GitHub holds %d live tokens before the restart, want the orphan", s.Live)
	}
	p := startServe(t, e)
	e.URL = p.url
	eventually(t, 20*time.Second, "the interrupted mint's lease is revoked", func() bool {
		ls := listLeases(t, e, "test/crash-agent")
		return len(ls) == 1 && ls[0]["state"] == "revoked"
	})
	if s := srv.Stats(); s.Live != 0 || s.Revoked != 1 {
		t.Fatalf("GitHub after recovery: %+v; want the orphan revoked", s)
	}
	r := e.Do("GET", "/v1/audit?kind=lease.recover", testOperatorToken, nil)
	if recs := r.JSON(t)["records"].([]any); len(recs) != 1 {
		t.Fatalf("recovery audit records: %s", r.Body)
	}
	p.stop(t)
}

// TestGitHubOutage: while GitHub is unreachable mints fail at once with
// 503 and leave nothing alive; releases are queued and confirmed once
// GitHub is back, and until then the leases say they are not revoked.
func TestGitHubOutage(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv).Start()
	tok := e.Attest("outage-agent", nil)
	var ids, tokens []string
	for i := 0; i < 10; i++ {
		res := e.Mint(tok, "gh-static")
		ids = append(ids, res["lease_id"].(string))
		tokens = append(tokens, res["credential"].(map[string]any)["token"].(string))
	}
	srv.Stop()
	start := time.Now()
	r := e.Do("POST", "/v1/credentials", tok, map[string]any{"role": "gh-static"})
	if r.Status != http.StatusServiceUnavailable || time.Since(start) > 2*time.Second {
		t.Fatalf("mint during the outage: %d after %s: %s; want 503 at once", r.Status, time.Since(start), r.Body)
	}
	for _, id := range ids {
		r := e.Do("DELETE", "/v1/leases/"+id, tok, nil)
		if r.Status != http.StatusOK || r.JSON(t)["state"] != "revoking" {
			t.Fatalf("release during the outage: %d %s; want the lease revoking", r.Status, r.Body)
		}
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every release is confirmed after the outage", func() bool {
		for _, id := range ids {
			if leaseState(t, e, id) != "released" {
				return false
			}
		}
		return true
	})
	for _, tk := range tokens {
		if st := srv.TokenState(tk); st != "revoked" {
			t.Fatalf("a released token is %s at GitHub", st)
		}
	}
	if s := srv.Stats(); s.Created != 10 {
		t.Fatalf("GitHub created %d tokens; the failed mint must have created none", s.Created)
	}
	if c := e.LeaseCounts(); c["revoking"]+c["irrevocable"] != 0 {
		t.Fatalf("leases still revoking: %v", c)
	}
}

// TestGitHubSecretScan: no token appears in the server's log, the audit
// records, the lease database or the backend's files.
func TestGitHubSecretScan(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv)
	logs := &syncBuffer{}
	e.Log = logs
	e.Start()
	tok := workflow(e, "repo:acme/docs", "acme/docs")
	var tokens []string
	for i := 0; i < 6; i++ {
		res := e.Mint(tok, "gh")
		tokens = append(tokens, res["credential"].(map[string]any)["token"].(string))
		if i%2 == 0 {
			e.Do("DELETE", "/v1/leases/"+res["lease_id"].(string), tok, nil)
		}
	}
	// A refused mint and a failing revocation, whose messages go to logs
	// and the audit log.
	e.Do("POST", "/v1/credentials", workflow(e, "repo:acme/nope", "acme/nope"), map[string]any{"role": "gh"})
	recs, err := json.Marshal(e.auditRecords())
	if err != nil {
		t.Fatal(err)
	}
	places := map[string][]byte{"the server log": []byte(logs.String()), "the audit records": recs}
	filepath.Walk(e.Dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(p)
			places[p] = b
		}
		return nil
	})
	if _, ok := places[filepath.Join(e.Dir, "github", "tokens.db")]; !ok {
		t.Fatal("the scan did not read the backend's token store")
	}
	for where, b := range places {
		for _, tk := range tokens {
			if bytes.Contains(b, []byte(tk)) || bytes.Contains(b, []byte(tk[4:])) {
				t.Errorf("a token appears in %s", where)
			}
		}
	}
}

// TestGitHubKillDuringMints kills valet (SIGKILL) while many GitHub mints
// are in flight, twice, and checks what recovery leaves: every credential
// a client received has an active lease; every token GitHub holds alive
// belongs to an active lease, or to a lease that says honestly that its
// token cannot be found (GitHub cannot list installation tokens: valet
// died between GitHub creating it and its sealed copy); nothing else is
// alive, and no lease claims a revocation that did not happen.
func TestGitHubKillDuringMints(t *testing.T) {
	srv := startGitHub(t, githubtest.Options{})
	e := newGitHubEnv(t, srv)
	var returned []string
	for round := 0; round < 2; round++ {
		returned = append(returned, killDuringMints(t, e, 12, 30+20*round, func(w int) (string, string) {
			return fmt.Sprintf("kill-%d-%d", round, w), "gh-static"
		})...)
	}
	p := startServe(t, e)
	e.URL = p.url
	var states map[string][]map[string]any
	eventually(t, 30*time.Second, "recovery settles", func() bool {
		states = map[string][]map[string]any{}
		r := e.Do("GET", "/v1/leases?backend=github&limit=1000", testOperatorToken, nil)
		var list struct {
			Leases []map[string]any `json:"leases"`
		}
		if json.Unmarshal(r.Body, &list) != nil {
			return false
		}
		for _, l := range list.Leases {
			st := l["state"].(string)
			states[st] = append(states[st], l)
		}
		for _, l := range states["irrevocable"] {
			if msg, _ := l["last_error"].(string); !strings.Contains(msg, "GitHub cannot list installation tokens") {
				return false
			}
		}
		return len(states["pending"])+len(states["revoking"]) == 0
	})
	for _, id := range returned {
		if st := leaseState(t, e, id); st != "active" {
			t.Fatalf("lease %s whose credential was returned is %s", id, st)
		}
	}
	live, active, unfindable := srv.Stats().Live, len(states["active"]), len(states["irrevocable"])
	if live < active || live > active+unfindable {
		t.Fatalf("GitHub holds %d live tokens; active leases %d, leases whose token cannot be found %d", live, active, unfindable)
	}
	t.Logf("%d credentials returned, %d active leases, %d revoked by recovery, %d tokens unfindable (irrevocable until their hour ends)",
		len(returned), active, len(states["revoked"]), unfindable)
	p.stop(t)
}
