package main

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/jobs"
)

// readmeValetPolicy is the Vault policy the README gives valet's own
// token, with AppRole role valet and database connection pg: the tests
// below run valet with exactly it.
const readmeValetPolicy = `
path "auth/token/create/valet-agents" { capabilities = ["update"] }
path "auth/token/roles/valet-agents"  { capabilities = ["read"] }
path "auth/token/revoke-accessor"     { capabilities = ["update"] }
path "auth/token/renew-accessor"      { capabilities = ["update"] }
path "auth/token/lookup-accessor"     { capabilities = ["update"] }
path "auth/token/accessors"           { capabilities = ["list", "sudo"] }
path "sys/leases/revoke"              { capabilities = ["update"] }
path "sys/leases/renew"               { capabilities = ["update"] }

path "auth/approle/role/valet/secret-id"                  { capabilities = ["update"] }
path "auth/approle/role/valet/secret-id/lookup"           { capabilities = ["update"] }
path "auth/approle/role/valet/secret-id-accessor/destroy" { capabilities = ["update"] }

path "database/rotate-root/pg" { capabilities = ["update"] }
`

// appRoleVaultEnv is a vault env whose backend logs in as AppRole role
// valet, holding readmeValetPolicy; it returns the AppRole files.
func appRoleVaultEnv(t *testing.T, v *vaulttest.Server, roles string, tweak func(*Config)) (e *testEnv, roleIDFile, secretIDFile string) {
	t.Helper()
	setupValetVault(t, v)
	v.Policy("valet", readmeValetPolicy)
	roleIDFile, secretIDFile = v.AppRole("valet", "valet")
	e = newVaultEnv(t, v, roles, func(cfg *Config) {
		for _, b := range cfg.Backends {
			if b.Name == "vault-main" {
				b.Options["auth"] = map[string]any{"method": "approle", "role_id_file": roleIDFile, "secret_id_file": secretIDFile}
			}
		}
		if tweak != nil {
			tweak(cfg)
		}
	})
	return e, roleIDFile, secretIDFile
}

// runJob runs a job through the API and returns its run.
func runJob(t *testing.T, e *testEnv, name string) (outcome, errText string, changes map[string]any) {
	t.Helper()
	r := e.Do("POST", "/v1/jobs/"+name+"/run", testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("run %s: %d %s", name, r.Status, r.Body)
	}
	run := r.JSON(t)["run"].(map[string]any)
	errText, _ = run["error"].(string)
	changes, _ = run["changes"].(map[string]any)
	return run["outcome"].(string), errText, changes
}

// TestVaultCredentialJobs: `valet jobs run vault-secret-id-rotation`
// replaces valet's AppRole secret-id (Vault refuses the old one, valet
// keeps minting, the audit log names accessors and never a secret-id);
// vault-token-health logs in again when Vault revoked valet's token, and
// once valet cannot log in at all it fails, raising job.failing after
// three failed runs.
func TestVaultCredentialJobs(t *testing.T) {
	v := vaulttest.StartDev(t)
	e, rid, sid := appRoleVaultEnv(t, v, kvRole, nil)
	e.Start()
	e.Mint(e.Attest("rot-agent", nil), "kv")
	old := readTrimmed(t, sid)

	out := mustCLI(t, cliEnv(e), "jobs", "run", "vault-secret-id-rotation")
	if !strings.Contains(out, "vault-main.destroyed_accessor: ") || !strings.Contains(out, "vault-main.new_accessor: ") {
		t.Fatalf("valet jobs run vault-secret-id-rotation:\n%s", out)
	}
	if err := v.AppRoleLogin(rid, old); err == nil {
		t.Fatal("Vault still accepts the old secret-id")
	}
	current := readTrimmed(t, sid)
	if current == old || v.AppRoleLogin(rid, current) != nil {
		t.Fatal("secret_id_file does not hold a secret-id Vault accepts")
	}
	e.Mint(e.Attest("rot-agent", nil), "kv")
	audit := string(e.Do("GET", "/v1/audit?limit=1000", testOperatorToken, nil).Body)
	if strings.Contains(audit, old) || strings.Contains(audit, current) {
		t.Fatal("a secret-id is in the audit log")
	}
	if !strings.Contains(audit, `"vault-main.new_accessor"`) {
		t.Fatal("the audit log does not name the new secret-id's accessor")
	}

	if outcome, errText, ch := runJob(t, e, "vault-token-health"); outcome != "ok" || ch["vault-main.relogged"] != "false" || ch["vault-main.method"] != "approle" {
		t.Fatalf("token health: %s %s %v", outcome, errText, ch)
	}
	revokeValet := func() { v.Write("sys/leases/revoke-prefix/auth/approle/login", nil) }
	revokeValet()
	if outcome, errText, ch := runJob(t, e, "vault-token-health"); outcome != "ok" || ch["vault-main.relogged"] != "true" {
		t.Fatalf("token health after Vault revoked valet's token: %s %s %v", outcome, errText, ch)
	}

	// Nothing valet holds logs in any more.
	acc := v.Write("auth/approle/role/valet/secret-id/lookup", map[string]any{"secret_id": current}).Data["secret_id_accessor"]
	v.Write("auth/approle/role/valet/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": acc})
	revokeValet()
	for i := range 3 {
		outcome, errText, _ := runJob(t, e, "vault-token-health")
		if outcome != "error" || !strings.Contains(errText, "re-authentication to Vault failed") {
			t.Fatalf("run %d without a valid secret-id: %s %s", i, outcome, errText)
		}
	}
	eventually(t, 5*time.Second, "job.failing is raised", func() bool {
		return strings.Contains(strings.Join(e.Events.Types(), ","), broker.EventJobFailing)
	})
}

// TestVaultDatabaseRootRotationJob: with the job configured for connection
// pg, `valet jobs run vault-database-root-rotation` has Vault replace the
// PostgreSQL root password: the password the operator configured no longer
// logs in, and a credential valet mints afterwards does.
func TestVaultDatabaseRootRotationJob(t *testing.T) {
	v := vaulttest.StartDev(t)
	pg := startVaultDatabase(t, v)
	e, _, _ := appRoleVaultEnv(t, v, `  - name: db
    backend: vault-main
    ttl: 1m
    renewable: false
    params: {token_role: valet-agents, policies: [db-ro], path: database/creds/ro}
`, func(cfg *Config) {
		cfg.Jobs = append(cfg.Jobs, jobs.Spec{Name: "vault-database-root-rotation", Settings: map[string]any{"connections": []any{"pg"}}})
	})
	e.Start()
	if err := pgLogin(pg.SuperDSN()); err != nil {
		t.Fatalf("the root password before the rotation: %v", err)
	}
	out := mustCLI(t, cliEnv(e), "jobs", "run", "vault-database-root-rotation")
	if !strings.Contains(out, ": ok in ") || !strings.Contains(out, "  pg: rotated") {
		t.Fatalf("valet jobs run vault-database-root-rotation:\n%s", out)
	}
	if err := pgLogin(pg.SuperDSN()); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("the root password after the rotation: %v; want it refused", err)
	}
	cred := e.Mint(e.Attest("db-agent", nil), "db")["credential"].(map[string]any)
	if err := pgLogin(pg.DSN(cred["username"].(string), cred["password"].(string))); err != nil {
		t.Fatalf("a credential minted after the rotation: %v", err)
	}
}

// pgLogin connects to PostgreSQL and runs a query.
func pgLogin(dsn string) error {
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	return conn.QueryRow(context.Background(), "select 1").Scan(&one)
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
