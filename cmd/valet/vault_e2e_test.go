package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker"
)

// vaultPolicy permits the Vault roles to agents of the test issuer.
const vaultPolicy = `
@id("vault-roles")
permit(principal in Issuer::"test", action in [Action::"mint", Action::"renew"], resource)
when { resource.backend == "vault-main" };
`

// setupValetVault prepares a Vault for valet: an agent policy, a KV secret
// it may read, and an orphan token role whose renewals are capped.
func setupValetVault(t *testing.T, v *vaulttest.Server) {
	t.Helper()
	v.Policy("agent-read", `path "secret/data/agents/*" { capabilities = ["read"] }`)
	v.Write("secret/data/agents/config", map[string]any{"data": map[string]any{"greeting": "hello"}})
	v.Write("auth/token/roles/valet-agents", map[string]any{
		"allowed_policies": "agent-read,db-ro", "orphan": true, "renewable": true, "token_explicit_max_ttl": "2m",
	})
}

// newVaultEnv is a test env whose config adds a vault backend with the
// given roles (YAML list items) and a policy permitting them.
func newVaultEnv(t *testing.T, v *vaulttest.Server, roles string, tweak func(*broker.Config)) *testEnv {
	t.Helper()
	e := newTestEnv(t)
	path := filepath.Join(e.Dir, "config.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "backends:\n", fmt.Sprintf(`backends:
  - name: vault-main
    type: vault
    address: %s
    timeout: 3s
    auth: {method: token, token_file: %s}
`, v.Addr, v.TokenFile()), 1)
	cfg = strings.Replace(cfg, "roles:\n", "roles:\n"+roles, 1)
	cfg += "leases:\n  revoke_backoff: 500ms\n  revoke_max_backoff: 2s\n  revoke_attempts: 3\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "policies", "vault.cedar"), []byte(vaultPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.Config, err = broker.LoadConfig(path); err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(e.Config)
	}
	return e
}

const kvRole = `  - name: kv
    backend: vault-main
    ttl: 1m
    max_ttl: 2m
    params: {token_role: valet-agents, policies: [agent-read]}
`

// listLeases returns the leases of an agent, as an operator sees them.
func listLeases(t *testing.T, e *testEnv, agent string) []map[string]any {
	t.Helper()
	r := e.Do("GET", "/v1/leases?agent_id="+agent, testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("list leases: %d %s", r.Status, r.Body)
	}
	var out struct {
		Leases []map[string]any `json:"leases"`
	}
	json.Unmarshal(r.Body, &out)
	return out.Leases
}

// eventually polls cond every 50ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokensOfLease lists the accessors of Vault tokens whose metadata names
// the lease.
func tokensOfLease(t *testing.T, v *vaulttest.Server, leaseID string) []string {
	t.Helper()
	c := v.Client()
	list, err := c.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range list.Data["keys"].([]any) {
		sec, err := c.Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": k})
		if err != nil || sec == nil {
			continue
		}
		if meta, _ := sec.Data["meta"].(map[string]any); meta["valet_lease_id"] == leaseID {
			out = append(out, k.(string))
		}
	}
	return out
}

func TestVaultMintUseRevoke(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	e := newVaultEnv(t, v, kvRole, nil).Start()
	res := e.Mint(e.Attest("vault-agent", nil), "kv")
	cred := res["credential"].(map[string]any)
	tok := cred["vault_token"].(string)
	if s, err := v.ClientWithToken(tok).Logical().Read("secret/data/agents/config"); err != nil || s == nil {
		t.Fatalf("minted token cannot read its path: %v", err)
	}
	// Operators see the accessor and the Vault TTL, never the token.
	r := e.Do("GET", "/v1/leases/"+res["lease_id"].(string), testOperatorToken, nil)
	l := r.JSON(t)
	details := l["details"].(map[string]any)
	if l["handle"] != details["accessor"] || details["vault_ttl"] == nil || strings.Contains(string(r.Body), tok) {
		t.Fatalf("operator view: %s", r.Body)
	}
	r = e.Do("DELETE", "/v1/leases/"+res["lease_id"].(string), e.Attest("vault-agent", nil), nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "released" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the Vault token still works after release")
	}
}

func TestVaultCrashBetweenMintAndCommit(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	e := newVaultEnv(t, v, kvRole, nil)
	p := startServe(t, e, "VALET_FAILPOINTS=mint.after-backend")
	e.URL = p.url
	req, _ := http.NewRequest("POST", p.url+"/v1/credentials", strings.NewReader(`{"role":"kv"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.Attest("crash-agent", nil))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the mint answered %d; the failpoint should have killed valet", resp.StatusCode)
	}
	<-p.done
	// Vault holds a token that no active lease accounts for.
	p = startServe(t, e)
	e.URL = p.url
	ls := listLeases(t, e, "test/crash-agent")
	if len(ls) != 1 {
		t.Fatalf("leases after restart: %v", ls)
	}
	id := ls[0]["id"].(string)
	eventually(t, 30*time.Second, "the interrupted mint's lease is revoked", func() bool {
		return listLeases(t, e, "test/crash-agent")[0]["state"] == "revoked"
	})
	if left := tokensOfLease(t, v, id); len(left) != 0 {
		t.Fatalf("the orphaned Vault token survived recovery: %v", left)
	}
	r := e.Do("GET", "/v1/audit?kind=lease.recover", testOperatorToken, nil)
	if recs := r.JSON(t)["records"].([]any); len(recs) != 1 {
		t.Fatalf("recovery audit records: %s", r.Body)
	}
	p.stop(t)
}

func TestVaultOutageQueuesRevocations(t *testing.T) {
	v := vaulttest.StartFile(t)
	v.Mount("secret", "kv-v2")
	setupValetVault(t, v)
	e := newVaultEnv(t, v, kvRole, nil).Start()
	var ids, toks []string
	for i := 0; i < 3; i++ {
		res := e.Mint(e.Attest("outage-agent", nil), "kv")
		ids = append(ids, res["lease_id"].(string))
		toks = append(toks, res["credential"].(map[string]any)["vault_token"].(string))
	}
	v.Stop()
	// Mints fail fast with 503 and a problem that says why.
	start := time.Now()
	r := e.Do("POST", "/v1/credentials", e.Attest("outage-agent", nil), map[string]any{"role": "kv"})
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(r.JSON(t)["detail"].(string), "unavailable") || r.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("mint with Vault down: %d %s", r.Status, r.Body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the mint took %s to fail", d)
	}
	// Releases are accepted and queued: nothing is marked released yet.
	for _, id := range ids {
		r := e.Do("DELETE", "/v1/leases/"+id, e.Attest("outage-agent", nil), nil)
		if r.Status != http.StatusOK || r.JSON(t)["state"] != "revoking" {
			t.Fatalf("release with Vault down: %d %s", r.Status, r.Body)
		}
	}
	v.Start()
	v.Unseal()
	back := time.Now()
	eventually(t, 30*time.Second, "queued revocations complete after Vault is back", func() bool {
		for _, l := range listLeases(t, e, "test/outage-agent") {
			if l["state"] != "released" && l["state"] != "revoked" {
				return false
			}
		}
		return true
	})
	t.Logf("queued revocations completed %s after Vault came back", time.Since(back).Round(time.Millisecond))
	for _, tok := range toks {
		if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err == nil {
			t.Fatal("a token released during the outage is still valid at Vault")
		}
	}
	// The audit log tells the same story.
	kinds := map[string]int{}
	r = e.Do("GET", "/v1/audit?limit=1000", testOperatorToken, nil)
	for _, rec := range r.JSON(t)["records"].([]any) {
		kinds[rec.(map[string]any)["kind"].(string)]++
	}
	// Three releases confirmed by Vault, plus the mint that failed during
	// the outage, whose pending lease was revoked by correlation id.
	if kinds["lease.release"] != 3 || kinds["mint.failed"] != 1 || kinds["lease.revoked"] != 4 || kinds["lease.revoke_failed"]+kinds["lease.irrevocable"] == 0 {
		t.Fatalf("audit kinds %v", kinds)
	}
	if v := e.Do("GET", "/v1/audit/verify", testOperatorToken, nil).JSON(t); v["ok"] != true {
		t.Fatalf("audit verify: %v", v)
	}
}

func TestVaultTokenRenewedByItsHolderIsRevokedAtExpiry(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	e := newVaultEnv(t, v, `  - name: short
    backend: vault-main
    ttl: 3s
    max_ttl: 2m
    params: {token_role: valet-agents, policies: [agent-read]}
`, nil).Start()
	res := e.Mint(e.Attest("renewer", nil), "short")
	tok := res["credential"].(map[string]any)["vault_token"].(string)
	// The agent stretches its own token past its lease.
	if _, err := v.ClientWithToken(tok).Logical().Write("auth/token/renew-self", map[string]any{"increment": "90s"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "valet revokes the token when its lease expires", func() bool {
		_, err := v.ClientWithToken(tok).Auth().Token().LookupSelf()
		return err != nil
	})
	eventually(t, 10*time.Second, "the lease ends as expired", func() bool {
		return listLeases(t, e, "test/renewer")[0]["state"] == "expired"
	})
}

func TestVaultDatabaseCredentialWithExec(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	pg := vaulttest.StartPostgres(t)
	v.Mount("database", "database")
	v.Write("database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "allowed_roles": "*",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable", pg.Port),
		"username":       pg.User, "password": pg.Password,
	})
	v.Write("database/roles/ro", map[string]any{"db_name": "pg", "default_ttl": "1m", "max_ttl": "1h",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT pg_read_all_data TO "{{name}}";`})
	v.Policy("db-ro", `path "database/creds/ro" { capabilities = ["read"] }`)
	e := newVaultEnv(t, v, `  - name: db
    backend: vault-main
    ttl: 1m
    renewable: false
    params: {token_role: valet-agents, policies: [db-ro], path: database/creds/ro}
`, nil)
	p := startServe(t, e)
	e.URL = p.url
	env := []string{"VALET_ADDR=" + p.url, "VALET_ATTESTATION=" + e.Attest("psql-agent", nil), "VALET_TOKEN="}
	psql := fmt.Sprintf(`PGPASSWORD="$VALET_PASSWORD" psql -h 127.0.0.1 -p %d -U "$VALET_USERNAME" -d postgres -tAc "select current_user" && echo "lease=$VALET_LEASE_ID"`, pg.Port)
	out, errOut, code := runCLI(t, env, "exec", "db", "--", "sh", "-c", psql)
	if code != 0 || !strings.Contains(out, "v-token-") {
		t.Fatalf("valet exec psql: exit %d\n%s\n%s", code, out, errOut)
	}
	// When the command exits the lease is released and Vault drops the
	// database user.
	eventually(t, 15*time.Second, "the database user is dropped after exec", func() bool {
		n, err := vaultUsers(pg.SuperDSN())
		return err == nil && n == 0
	})
}

// vaultUsers counts the database users Vault created.
func vaultUsers(dsn string) (int, error) {
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(context.Background(), `select count(*) from pg_roles where rolname like 'v-%'`).Scan(&n)
	return n, err
}

// TestDevVaultRoles: the roles valet dev adds for a dev Vault are built in
// Go from the role defaults, so the keys they leave out have the values a
// config file leaving them out gets, and the whole config validates.
func TestDevVaultRoles(t *testing.T) {
	v := vaulttest.StartDev(t)
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", v.Token)
	dir := t.TempDir()
	cfg, _, err := prepareDev(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	banner, err := addDevVault(cfg, dir)
	if err != nil || banner == "" {
		t.Fatalf("addDevVault = %q, %v", banner, err)
	}
	for _, name := range []string{"demo-vault", "demo-db"} {
		r := cfg.Role(name)
		if r == nil {
			t.Fatalf("role %s missing", name)
		}
		if r.Approval.RequestTTL.D() != time.Hour || r.Approval.RedeemWithin.D() != 15*time.Minute || len(r.Approval.RequesterClaims) != 3 {
			t.Errorf("role %s approval = %+v, want the defaults", name, r.Approval)
		}
	}
}
