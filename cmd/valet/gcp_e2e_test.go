package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/gcp"
	"github.com/valet-broker/valet/backends/gcp/gcptest"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/leases"
)

// gcpPolicy permits the gcp roles to agents of the test issuer.
const gcpPolicy = `
@id("gcp-roles")
permit(principal in Issuer::"test", action == Action::"mint", resource)
when { resource.backend == "gcp-main" };
`

// gcpRoles are the test's gcp roles: a 10-minute access token, one of 3 s,
// and an ID token (which lives Google's hour).
const gcpRoles = `  - name: gcp-ro
    backend: gcp-main
    ttl: 10m
    max_ttl: 15m
    renewable: false
    params: {service_account: %[1]s}
  - name: gcp-short
    backend: gcp-main
    ttl: 3s
    max_ttl: 15m
    renewable: false
    params: {service_account: %[1]s}
  - name: gcp-id
    backend: gcp-main
    ttl: 1m
    max_ttl: 1h
    renewable: false
    params: {service_account: %[1]s, audience: "https://api.example.com"}
`

// newGCPEnv starts an IAM Credentials test server with the service account
// "agents" and returns a test env whose config adds a gcp backend on it.
// valet's identity reaches it through Application Default Credentials:
// GOOGLE_APPLICATION_CREDENTIALS, set in this process for Start, passed
// with srv.Env() to `valet serve`.
func newGCPEnv(t *testing.T) (*testEnv, *gcptest.Server, string) {
	t.Helper()
	srv := gcptest.Start(t, gcptest.Config{})
	srv.SetEnv(t)
	account := srv.CreateServiceAccount("agents", gcptest.ServiceAccountOptions{})
	e := newTestEnvYAML(t, func(cfg string) string {
		cfg = strings.Replace(cfg, "backends:\n", fmt.Sprintf("backends:\n  - name: gcp-main\n    type: gcp\n    endpoint: %s\n    timeout: 2s\n", srv.URL), 1)
		return strings.Replace(cfg, "roles:\n", "roles:\n"+fmt.Sprintf(gcpRoles, account), 1)
	})
	if err := os.WriteFile(filepath.Join(e.Dir, "policies", "gcp.cedar"), []byte(gcpPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.Config, err = LoadConfig(filepath.Join(e.Dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	return e, srv, account
}

// gcpValid says whether Google's tokeninfo accepts a token now.
func gcpValid(t *testing.T, srv *gcptest.Server, token string) bool {
	t.Helper()
	_, err := gcptest.TokenInfo(srv.URL, token)
	if err != nil && !errors.Is(err, gcptest.ErrInvalidToken) {
		t.Fatalf("tokeninfo: %v", err)
	}
	return err == nil
}

// auditReasons lists the kind and reason of each audit record of a lease.
func auditReasons(t *testing.T, e *testEnv, id string) []string {
	t.Helper()
	r := e.Do("GET", "/v1/audit?lease_id="+id, testOperatorToken, nil)
	var out []string
	for _, rec := range r.JSON(t)["records"].([]any) {
		m := rec.(map[string]any)
		out = append(out, fmt.Sprintf("%s: %v", m["kind"], m["reason"]))
	}
	return out
}

// TestGCPMintUseRelease: an agent's access token works at Google; its
// release is recorded, and since Google cannot revoke the token the lease
// says truthfully that it lives on (revoking, unrevocable, to end
// expired), never released, while Google still accepts it; once the token
// has expired Google refuses it. Nothing valet wrote holds a token.
func TestGCPMintUseRelease(t *testing.T) {
	e, srv, account := newGCPEnv(t)
	logs := &syncBuffer{}
	e.Log = logs
	e.Start()
	agent := e.Attest("gcp-agent", nil)
	res := e.Mint(agent, "gcp-ro")
	id := res["lease_id"].(string)
	cred := res["credential"].(map[string]any)
	token := cred["access_token"].(string)
	if info, err := gcptest.TokenInfo(srv.URL, token); err != nil || info["email"] != account || info["scope"] != gcp.CloudPlatformScope {
		t.Fatalf("tokeninfo of the fresh token: %v, %v", info, err)
	}
	r := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
	details, _ := r.JSON(t)["details"].(map[string]any)
	// The lease's whole seconds, less one for the request's flight.
	if lt := details["lifetime_seconds"]; details["service_account"] != account || lt != "599" && lt != "598" || strings.Contains(string(r.Body), token) {
		t.Fatalf("operator view: %s", r.Body)
	}

	r = e.Do("DELETE", "/v1/leases/"+id, agent, nil)
	l := r.JSON(t)
	if r.Status != http.StatusOK || l["state"] != "revoking" || l["end_reason"] != "expired" || l["unrevocable"] != true {
		t.Fatalf("release: %d %s; want revoking, unrevocable, to end expired", r.Status, r.Body)
	}
	if !gcpValid(t, srv, token) {
		t.Fatal("the released token died: the test server revokes, Google does not")
	}
	for _, who := range []string{agent, testOperatorToken} {
		if st := e.Do("GET", "/v1/leases/"+id, who, nil).JSON(t); st["state"] != "revoking" || st["unrevocable"] != true {
			t.Fatalf("the lease reads %v while its token works", st)
		}
	}
	reasons := strings.Join(auditReasons(t, e, id), "\n")
	if !strings.Contains(reasons, "lease.release:") || !strings.Contains(reasons, "lease.unrevocable: the backend cannot revoke the credential: Google offers no way to revoke") ||
		strings.Contains(reasons, "lease.revoked") {
		t.Fatalf("audit of the lease:\n%s", reasons)
	}

	// A 3 s lease: its token dies with it at Google; the lease reads
	// revoking, not ended, until the grace has passed too.
	short := e.Mint(agent, "gcp-short")
	shortTok := short["credential"].(map[string]any)["access_token"].(string)
	shortID := short["lease_id"].(string)
	if r := e.Do("DELETE", "/v1/leases/"+shortID, agent, nil); r.JSON(t)["state"] != "revoking" {
		t.Fatalf("release of the short lease: %s", r.Body)
	}
	eventually(t, 10*time.Second, "Google refuses the expired token", func() bool { return !gcpValid(t, srv, shortTok) })
	if st := leaseState(t, e, shortID); st != "revoking" {
		t.Fatalf("the short lease reads %s within the grace after its token's expiry", st)
	}
	e.Server.Close()
	assertNoSecrets(t, e, logs.String(), token, shortTok)
}

// TestGCPIDToken: an ID token lives Google's hour whatever its lease: the
// lease records the token's own expiry and, once the lease has expired,
// reads revoking (unrevocable) rather than expired.
func TestGCPIDToken(t *testing.T) {
	e, srv, account := newGCPEnv(t)
	e.Start()
	r := e.Do("POST", "/v1/credentials", e.Attest("id-agent", nil), map[string]any{"role": "gcp-id", "ttl": "2s"})
	if r.Status != http.StatusCreated {
		t.Fatalf("mint: %d %s", r.Status, r.Body)
	}
	res := r.JSON(t)
	id := res["lease_id"].(string)
	tok := res["credential"].(map[string]any)["id_token"].(string)
	claims, err := srv.IDTokenClaims(tok)
	if aud, _ := claims["aud"].([]string); err != nil || len(aud) != 1 || aud[0] != "https://api.example.com" || claims["sub"] != srv.UniqueID(account) {
		t.Fatalf("ID token claims %v, %v", claims, err)
	}
	l := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).JSON(t)
	expires, _ := time.Parse(time.RFC3339, fmt.Sprint(l["expires_at"]))
	credExpires, _ := time.Parse(time.RFC3339, fmt.Sprint(l["credential_expires_at"]))
	if d := credExpires.Sub(expires); d < 59*time.Minute {
		t.Fatalf("lease %v; want credential_expires_at the token's hour, after the lease's expiry", l)
	}
	eventually(t, 15*time.Second, "the expired lease reads revoking, unrevocable", func() bool {
		l := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).JSON(t)
		return l["state"] == "revoking" && l["unrevocable"] == true
	})
	if !gcpValid(t, srv, tok) {
		t.Fatal("the ID token died with its lease")
	}
	if reasons := strings.Join(auditReasons(t, e, id), "\n"); !strings.Contains(reasons, "lease.unrevocable") || !strings.Contains(reasons, "ID tokens") {
		t.Fatalf("audit of the lease:\n%s", reasons)
	}
}

// TestGCPCrashBetweenMintAndCommit kills valet after Google issued a token
// and before the lease was recorded active. Google can neither list nor
// revoke it: after the restart the pending lease is recovered honestly, as
// revoking, unrevocable, until the latest time such a token can live.
func TestGCPCrashBetweenMintAndCommit(t *testing.T) {
	e, srv, account := newGCPEnv(t)
	mintIntoFailpoint(t, e, "crash-agent", "gcp-ro")
	toks := srv.Tokens(account)
	if len(toks) != 1 {
		t.Fatalf("Google issued %d tokens for the interrupted mint; the test proves nothing", len(toks))
	}
	p := startServe(t, e, srv.Env()...)
	e.URL = p.url
	var l map[string]any
	eventually(t, 20*time.Second, "the interrupted mint's lease is recovered", func() bool {
		ls := listLeases(t, e, "test/crash-agent")
		if len(ls) == 1 {
			l = ls[0]
		}
		return l != nil && l["state"] == "revoking" && l["unrevocable"] == true
	})
	bound, _ := time.Parse(time.RFC3339, fmt.Sprint(l["credential_expires_at"]))
	if l["end_reason"] != "expired" || bound.Before(toks[0].Expires.Truncate(time.Second)) {
		t.Fatalf("recovered lease %v; want it to end expired no earlier than the orphan token (%s)", l, toks[0].Expires)
	}
	if !gcpValid(t, srv, toks[0].Token) {
		t.Fatal("the orphan token died; the lease's account would prove nothing")
	}
	reasons := strings.Join(auditReasons(t, e, l["id"].(string)), "\n")
	if !strings.Contains(reasons, "lease.recover:") || !strings.Contains(reasons, "interrupted mint may have made a Google token") {
		t.Fatalf("audit of the recovered lease:\n%s", reasons)
	}
	p.stop(t)
}

// TestGCPOutage: with Google unreachable, mints fail fast with 503, and
// releases are recorded at once (there is nothing to ask Google); once
// Google is back, mints work again.
func TestGCPOutage(t *testing.T) {
	e, srv, _ := newGCPEnv(t)
	e.Start()
	agent := e.Attest("outage-agent", nil)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, e.Mint(agent, "gcp-ro")["lease_id"].(string))
	}
	srv.Stop()
	for i := 0; i < 3; i++ {
		start := time.Now()
		r := e.Do("POST", "/v1/credentials", agent, map[string]any{"role": "gcp-ro"})
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.JSON(t)["detail"].(string), "unavailable") {
			t.Fatalf("mint with Google down: %d %s", r.Status, r.Body)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the mint took %s to fail", d)
		}
	}
	for _, id := range ids {
		r := e.Do("DELETE", "/v1/leases/"+id, agent, nil)
		if l := r.JSON(t); r.Status != http.StatusOK || l["state"] != "revoking" || l["unrevocable"] != true {
			t.Fatalf("release with Google down: %d %s", r.Status, r.Body)
		}
	}
	// The failed mints left no live lease behind.
	for _, l := range listLeases(t, e, "test/outage-agent") {
		if l["state"] == "active" || l["state"] == "pending" {
			t.Fatalf("a lease is %s after the outage: %v", l["state"], l)
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	e.Mint(agent, "gcp-ro")
}

// TestGCPCredentialsForTools: `valet exec` gives the command the access
// token where gcloud (CLOUDSDK_AUTH_ACCESS_TOKEN) and Terraform's google
// provider (GOOGLE_OAUTH_ACCESS_TOKEN) read it, and says on release that
// the token stays valid until its expiry; `valet creds -o token` prints it.
func TestGCPCredentialsForTools(t *testing.T) {
	e, srv, _ := newGCPEnv(t)
	p := startServe(t, e, srv.Env()...)
	e.URL = p.url
	env := []string{"VALET_ADDR=" + p.url, "VALET_ATTESTATION=" + e.Attest("tool-agent", nil), "VALET_TOKEN="}
	out, errOut, code := runCLI(t, env, "exec", "gcp-ro", "--", "sh", "-c",
		`test -n "$GOOGLE_OAUTH_ACCESS_TOKEN" && test "$GOOGLE_OAUTH_ACCESS_TOKEN" = "$CLOUDSDK_AUTH_ACCESS_TOKEN" && test "$VALET_ACCESS_TOKEN" = "$CLOUDSDK_AUTH_ACCESS_TOKEN" || exit 9; echo "$VALET_LEASE_ID $GOOGLE_OAUTH_ACCESS_TOKEN"`)
	f := strings.Fields(out)
	if code != 0 || len(f) != 2 || !gcpValid(t, srv, f[1]) {
		t.Fatalf("valet exec: exit %d, %q, %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "released lease "+f[0]+", but its backend cannot revoke the credential: it stays valid until") {
		t.Fatalf("valet exec said nothing true about the release: %q", errOut)
	}
	if st := leaseState(t, e, f[0]); st != "revoking" {
		t.Fatalf("after exec the lease is %s", st)
	}
	out, errOut, code = runCLI(t, env, "creds", "gcp-short", "-o", "token")
	if code != 0 || !gcpValid(t, srv, strings.TrimSpace(out)) {
		t.Fatalf("valet creds -o token: exit %d, %q, %s", code, out, errOut)
	}
	// An ID token is no access token for gcloud.
	out, errOut, code = runCLI(t, env, "exec", "gcp-id", "--", "sh", "-c", `echo "${CLOUDSDK_AUTH_ACCESS_TOKEN:-none} ${VALET_ID_TOKEN:+id}"`)
	if code != 0 || strings.TrimSpace(out) != "none id" {
		t.Fatalf("valet exec of an ID token role: exit %d, %q, %s", code, out, errOut)
	}
	p.stop(t)
}

// TestExampleGCPConfig: the example Google Cloud configuration loads, its
// roles pass the backend's checks, and Google issues a token for each,
// with the service account filled for an agent, through the delegation
// chain where there is one.
func TestExampleGCPConfig(t *testing.T) {
	srv := gcptest.Start(t, gcptest.Config{Project: "acme-prod"})
	srv.SetEnv(t)
	srv.CreateServiceAccount("agents-agents", gcptest.ServiceAccountOptions{})
	relay := srv.CreateServiceAccount("ci-relay", gcptest.ServiceAccountOptions{})
	srv.CreateServiceAccount("deployer", gcptest.ServiceAccountOptions{TokenCreators: []string{relay}})
	srv.CreateServiceAccount("reports-invoker", gcptest.ServiceAccountOptions{})
	cfg, err := LoadConfig(filepath.Join("..", "..", "deploy", "examples", "gcp.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var opts map[string]any
	for _, b := range cfg.Backends {
		if b.Type == "gcp" {
			opts = b.Options
		}
	}
	opts["endpoint"] = srv.URL
	be, err := gcp.New("gcp", opts, backends.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string]string{"namespace": "agents", "repository": "acme/app"}
	checked := 0
	for _, r := range cfg.Roles {
		if r.Backend != "gcp" {
			continue
		}
		spec := backends.RoleSpec{Name: r.Name, Params: r.Params, TTL: r.TTL.D(), MaxTTL: r.MaxTTL.D()}
		if err := be.(backends.RoleChecker).CheckRole(spec); err != nil {
			t.Fatalf("role %s: %v", r.Name, err)
		}
		now := time.Now()
		if _, err := be.Mint(context.Background(), backends.MintRequest{CorrelationID: leases.NewID(now), AgentID: "k8s-prod/x", Role: spec, Attributes: attrs,
			IssuedAt: now, ExpiresAt: now.Add(r.TTL.D())}); err != nil {
			t.Fatalf("role %s: mint: %v", r.Name, err)
		}
		checked++
	}
	if checked != 3 {
		t.Fatalf("checked %d gcp roles of the example, want 3", checked)
	}
}

// TestDevGCPDemoWorksInANewShell starts `valet dev` beside the IAM
// Credentials test server as `make run-cloud` does and pastes the banner's
// gcp-demo command into a new, empty shell: valet exec gives curl the
// access token, which Google's tokeninfo accepts; on exit valet says the
// token lives on until its expiry.
func TestDevGCPDemoWorksInANewShell(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (Debian package curl): apt-get install -y curl")
	}
	srv := gcptest.Start(t, gcptest.Config{})
	account := srv.CreateServiceAccount("valet-demo", gcptest.ServiceAccountOptions{})
	work := t.TempDir()
	banner := startDev(t, work, append(srv.Env(), "VAULT_ADDR=", "VAULT_TOKEN=", "VALET_DEV_GCP_ENDPOINT="+srv.URL+"/", "VALET_DEV_GCP_SERVICE_ACCOUNT="+account),
		func(l string) bool { return strings.Contains(l, "exec gcp-demo") },
		"--data-dir", filepath.Join(work, "dev"), "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))
	var exports []string
	demo := ""
	for _, l := range banner {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "export "):
			exports = append(exports, l)
		case strings.Contains(l, "exec gcp-demo"):
			demo = l
		}
	}
	sh := exec.Command("/bin/sh", "-c", strings.Join(append(append([]string{"set -e"}, exports...), demo), "\n"))
	sh.Dir = work
	sh.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	out, err := sh.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"email":"`+account+`"`) || !strings.Contains(string(out), "cannot revoke the credential: it stays valid until") {
		t.Fatalf("pasted %q: %v\n%s", demo, err, out)
	}
	if toks := srv.Tokens(account); len(toks) != 1 {
		t.Fatalf("Google issued %d tokens, want the demo's", len(toks))
	}
}
