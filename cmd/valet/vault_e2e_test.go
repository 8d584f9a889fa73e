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

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/leases"
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
func newVaultEnv(t *testing.T, v *vaulttest.Server, roles string, tweak func(*Config)) *testEnv {
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
	if e.Config, err = LoadConfig(path); err != nil {
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
	mintIntoFailpoint(t, e, "crash-agent", "kv")
	// Vault holds a token that no active lease accounts for.
	p := startServe(t, e)
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

// TestVaultOutageQueuesRevocations releases 50 leases while Vault is down,
// with mints failing meanwhile (their leases are revoked by correlation id,
// through a scan that meets accessors Vault cannot look up): once Vault is
// back every release is confirmed within 30 s.
func TestVaultOutageQueuesRevocations(t *testing.T) {
	v := vaulttest.StartFile(t)
	v.Mount("secret", "kv-v2")
	setupValetVault(t, v)
	unreadable := v.LeaveUnreadableAccessors("valet-agents")
	e := newVaultEnv(t, v, kvRole, nil).Start()
	const n, failedMints = 50, 8
	var ids, toks []string
	for i := 0; i < n; i++ {
		res := e.Mint(e.Attest("outage-agent", nil), "kv")
		ids = append(ids, res["lease_id"].(string))
		toks = append(toks, res["credential"].(map[string]any)["vault_token"].(string))
	}
	v.Stop()
	// Mints fail fast with 503 and a problem that says why.
	for i := 0; i < failedMints; i++ {
		start := time.Now()
		r := e.Do("POST", "/v1/credentials", e.Attest("outage-agent", nil), map[string]any{"role": "kv"})
		if r.Status != http.StatusServiceUnavailable || !strings.Contains(r.JSON(t)["detail"].(string), "unavailable") || r.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("mint with Vault down: %d %s", r.Status, r.Body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the mint took %s to fail", d)
		}
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
	eventually(t, 30*time.Second, "every queued revocation completes within 30s of Vault's return", func() bool {
		ls := e.Do("GET", "/v1/leases?agent_id=test/outage-agent&limit=1000", testOperatorToken, nil)
		var out struct {
			Leases []map[string]any `json:"leases"`
		}
		json.Unmarshal(ls.Body, &out)
		if len(out.Leases) != n+failedMints {
			t.Fatalf("%d leases, want %d", len(out.Leases), n+failedMints)
		}
		for _, l := range out.Leases {
			if l["state"] != "released" && l["state"] != "revoked" {
				return false
			}
		}
		return true
	})
	t.Logf("%d queued revocations and %d recoveries completed %s after Vault came back (%d unreadable accessors in Vault)",
		n, failedMints, time.Since(back).Round(time.Millisecond), len(unreadable))
	for _, tok := range toks {
		if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err == nil {
			t.Fatal("a token released during the outage is still valid at Vault")
		}
	}
	// The audit log tells the same story.
	kinds := map[string]int{}
	for after := ""; ; {
		r := e.Do("GET", "/v1/audit?limit=1000"+after, testOperatorToken, nil)
		recs := r.JSON(t)["records"].([]any)
		for _, rec := range recs {
			kinds[rec.(map[string]any)["kind"].(string)]++
		}
		if len(recs) < 1000 {
			break
		}
		after = fmt.Sprintf("&after=%v", recs[len(recs)-1].(map[string]any)["seq"])
	}
	// Every release confirmed by Vault, plus the mints that failed during
	// the outage, whose pending leases were revoked by correlation id.
	if kinds["lease.release"] != n || kinds["mint.failed"] != failedMints || kinds["lease.revoked"] != n+failedMints || kinds["lease.revoke_failed"]+kinds["lease.irrevocable"] == 0 {
		t.Fatalf("audit kinds %v", kinds)
	}
	if v := e.Do("GET", "/v1/audit/verify", testOperatorToken, nil).JSON(t); v["ok"] != true {
		t.Fatalf("audit verify: %v", v)
	}
}

// TestVaultKillDuringMintsRevokesEveryOrphan kills valet (SIGKILL) while
// many agents mint Vault tokens, several times, which leaves tokens whose
// leases are pending and, now and then, accessors Vault cannot look up.
// After the last restart every Vault token valet created must belong to an
// active lease within seconds of /readyz: every orphan is found and revoked.
func TestVaultKillDuringMintsRevokesEveryOrphan(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	e := newVaultEnv(t, v, kvRole, nil)
	const rounds, workers = 3, 24
	for round := 0; round < rounds; round++ {
		killDuringMints(t, e, workers, 30+round*20, func(w int) (string, string) {
			return fmt.Sprintf("kill-%d-%d", round, w), "kv"
		})
	}
	// Kills cut Vault's token creation off half-way now and then, leaving
	// accessors nobody can look up; make sure the recovery meets some.
	unreadable := v.LeaveUnreadableAccessors("valet-agents")
	p := startServe(t, e)
	e.URL = p.url
	if r := e.Do("GET", "/readyz", "", nil); r.Status != http.StatusOK {
		t.Fatalf("readyz: %d %s", r.Status, r.Body)
	}
	ready := time.Now()
	var orphans []string
	eventually(t, 10*time.Second, "every orphaned Vault token is revoked", func() bool {
		orphans = orphans[:0]
		for lease, accs := range valetTokens(t, v) {
			r := e.Do("GET", "/v1/leases/"+lease, testOperatorToken, nil)
			if r.Status != http.StatusOK || r.JSON(t)["state"] != "active" {
				orphans = append(orphans, fmt.Sprintf("%s (%d tokens, lease %d %s)", lease, len(accs), r.Status, r.JSON(t)["state"]))
			}
		}
		return len(orphans) == 0
	})
	took := time.Since(ready).Round(time.Millisecond)
	r := e.Do("GET", "/v1/audit?kind=lease.recover&limit=1000", testOperatorToken, nil)
	recovered := len(r.JSON(t)["records"].([]any))
	if recovered == 0 {
		t.Fatal("the kills left no pending lease to recover; the test proved nothing")
	}
	t.Logf("%d interrupted mints recovered; every orphan revoked %s after /readyz, past %d accessors Vault cannot look up", recovered, took, len(unreadable))
	eventually(t, 10*time.Second, "no lease is left pending or revoking", func() bool {
		for _, st := range []string{"pending", "revoking", "irrevocable"} {
			r := e.Do("GET", "/v1/leases?limit=1&state="+st, testOperatorToken, nil)
			if r.Status != http.StatusOK || len(r.JSON(t)["leases"].([]any)) != 0 {
				return false
			}
		}
		return true
	})
	p.stop(t)
}

// valetTokens maps the lease ids in the metadata of the Vault tokens that
// can be looked up to their accessors.
func valetTokens(t *testing.T, v *vaulttest.Server) map[string][]string {
	t.Helper()
	c := v.Client()
	list, err := c.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, k := range list.Data["keys"].([]any) {
		sec, err := c.Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": k})
		if err != nil || sec == nil {
			continue
		}
		if meta, _ := sec.Data["meta"].(map[string]any); meta["valet_lease_id"] != nil {
			out[meta["valet_lease_id"].(string)] = append(out[meta["valet_lease_id"].(string)], k.(string))
		}
	}
	return out
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
	pg := startVaultDatabase(t, v)
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

// startVaultDatabase starts a PostgreSQL and configures Vault's database
// engine with it: connection pg (the superuser's password), role ro
// (default TTL 1m), and policy db-ro that reads its credentials.
func startVaultDatabase(t *testing.T, v *vaulttest.Server) *vaulttest.Postgres {
	t.Helper()
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
	return pg
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

// TestVaultRenewedTokenStaysIrrevocableUntilItsMaximum: an agent renews its
// own Vault token, valet's policy loses the permission to revoke it, and
// the agent releases the lease. As long as Vault may still accept the
// token (up to the lease's maximum, plus ExpiryGrace) the lease must read
// irrevocable, in the API and the metric, never expired; once valet may
// revoke again, the lease is released with Vault's confirmation.
func TestVaultRenewedTokenStaysIrrevocableUntilItsMaximum(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupValetVault(t, v)
	withRevoke := `
path "auth/token/create/valet-agents" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/accessors" { capabilities = ["list", "sudo"] }
path "auth/token/roles/*" { capabilities = ["read"] }
`
	v.Policy("valet", withRevoke+`path "auth/token/revoke-accessor" { capabilities = ["update"] }`)
	valetToken := v.Write("auth/token/create", map[string]any{"policies": []string{"valet"}, "ttl": "1h"}).Auth.ClientToken
	tokenFile := filepath.Join(t.TempDir(), "valet-token")
	if err := os.WriteFile(tokenFile, []byte(valetToken), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newVaultEnv(t, v, `  - name: short
    backend: vault-main
    ttl: 3s
    max_ttl: 2m
    params: {token_role: valet-agents, policies: [agent-read]}
`, func(cfg *Config) {
		for _, b := range cfg.Backends {
			if b.Name == "vault-main" {
				b.Options["auth"] = map[string]any{"method": "token", "token_file": tokenFile}
			}
		}
	}).Start()
	res := e.Mint(e.Attest("renewer", nil), "short")
	id := res["lease_id"].(string)
	tok := res["credential"].(map[string]any)["vault_token"].(string)
	expires, _ := time.Parse(time.RFC3339, res["expires_at"].(string))
	// The agent stretches its own token, as its token role allows.
	if _, err := v.ClientWithToken(tok).Logical().Write("auth/token/renew-self", map[string]any{"increment": "110s"}); err != nil {
		t.Fatal(err)
	}
	v.Policy("valet", withRevoke) // valet may no longer revoke
	if r := e.Do("DELETE", "/v1/leases/"+id, e.Attest("renewer", nil), nil); r.Status != http.StatusOK || r.JSON(t)["state"] != "revoking" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	state := func() string { return e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).JSON(t)["state"].(string) }
	eventually(t, 30*time.Second, "the lease becomes irrevocable", func() bool { return state() == "irrevocable" })

	// Past the lease's expiry plus the grace the token is still valid at
	// Vault: the lease must still say so.
	for time.Now().Before(expires.Add(leases.ExpiryGrace + 3*time.Second)) {
		if st := state(); st != "irrevocable" {
			t.Fatalf("at %s past the lease's expiry the lease reads %s, while Vault still accepts its token", time.Since(expires).Round(time.Second), st)
		}
		time.Sleep(time.Second)
	}
	if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err != nil {
		t.Fatalf("the token is no longer valid at Vault (%v): the test proves nothing", err)
	}
	if st := state(); st != "irrevocable" {
		t.Fatalf("the lease reads %s while Vault still accepts its token", st)
	}
	metrics := string(e.Do("GET", "/metrics", "", nil).Body)
	if !strings.Contains(metrics, "\nvalet_irrevocable_leases 1\n") {
		t.Fatalf("metrics do not count the irrevocable lease:\n%s", metrics)
	}
	// valet may revoke again: the next retry is confirmed by Vault.
	v.Policy("valet", withRevoke+`path "auth/token/revoke-accessor" { capabilities = ["update"] }`)
	eventually(t, 30*time.Second, "the lease is released once Vault confirms", func() bool { return state() == "released" })
	if _, err := v.ClientWithToken(tok).Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the lease reads released but the token still works")
	}
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

// TestDevVaultWithoutKV: valet dev writes its demo secret to the KV engine
// a dev Vault has at secret/, and goes without it when there is none
// (Vault's 404); any other failure is reported.
func TestDevVaultWithoutKV(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(t *testing.T, v *vaulttest.Server)
		secret  bool // the demo secret is written
	}{
		{"a KV engine at secret/", func(*testing.T, *vaulttest.Server) {}, true},
		{"no engine at secret/", func(t *testing.T, v *vaulttest.Server) {
			if err := v.Client().Sys().Unmount("secret"); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := vaulttest.StartDev(t)
			tc.prepare(t, v)
			if err := setupDevVault(v.Addr, v.Token); err != nil {
				t.Fatalf("setupDevVault: %v", err)
			}
			s, err := v.Client().Logical().Read("secret/data/valet-demo/hello")
			if written := err == nil && s != nil; written != tc.secret {
				t.Errorf("demo secret written: %v (%v), want %v", written, err, tc.secret)
			}
		})
	}
	t.Run("a token that may not write", func(t *testing.T) {
		v := vaulttest.StartDev(t)
		tok, err := v.Client().Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"default"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := setupDevVault(v.Addr, tok.Auth.ClientToken); err == nil {
			t.Fatal("setupDevVault succeeded with a token that may write nothing")
		}
	})
}
