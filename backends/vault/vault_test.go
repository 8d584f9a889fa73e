package vault_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/vault"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// setupVault prepares a dev Vault the way an operator would for valet: a
// policy agents get, a KV secret it allows, and an orphan token role.
func setupVault(t *testing.T, v *vaulttest.Server) {
	t.Helper()
	v.Policy("agent-read", `path "secret/data/agents/*" { capabilities = ["read"] }`)
	v.Policy("agent-team-a", `path "secret/data/team-a/*" { capabilities = ["read"] }`)
	v.Write("secret/data/agents/config", map[string]any{"data": map[string]any{"greeting": "hello"}})
	v.Write("secret/data/team-a/config", map[string]any{"data": map[string]any{"team": "a"}})
	v.Write("secret/data/other/config", map[string]any{"data": map[string]any{"no": "access"}})
	v.Write("auth/token/roles/valet-agents", map[string]any{
		"allowed_policies": "agent-read,agent-team-a,db-ro,db-long", "orphan": true, "renewable": true,
		"token_explicit_max_ttl": "2m",
	})
}

// newBackend builds a vault backend logged in with the root token file and
// checks the given roles.
func newBackend(t *testing.T, v *vaulttest.Server, roles map[string]map[string]any, extra map[string]any) *vault.Backend {
	t.Helper()
	opts := map[string]any{"address": v.Addr, "auth": map[string]any{"method": "token", "token_file": v.TokenFile()}}
	for k, val := range extra {
		opts[k] = val
	}
	be, err := vault.New("vault-main", opts, backends.Deps{Clock: clock.Real{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*vault.Backend)
	t.Cleanup(func() { b.Close() })
	for name, params := range roles {
		if err := b.CheckRole(backends.RoleSpec{Name: name, Params: params, TTL: time.Minute, MaxTTL: 2 * time.Minute, Renewable: true}); err != nil {
			t.Fatalf("role %s: %v", name, err)
		}
	}
	return b
}

func mintReq(id, role string, ttl time.Duration, attrs map[string]string) backends.MintRequest {
	now := time.Now()
	return backends.MintRequest{
		CorrelationID: id, AgentID: "k8s/system:serviceaccount:agents:bot", Role: backends.RoleSpec{Name: role},
		Attributes: attrs, IssuedAt: now, ExpiresAt: now.Add(ttl),
	}
}

func refOf(id string, c *backends.Credential) backends.Ref {
	return backends.Ref{Handle: c.Handle, CorrelationID: id, Details: c.Details, ExpiresAt: c.ExpiresAt}
}

// lookupSelf reports whether token is still valid at Vault.
func lookupSelf(t *testing.T, v *vaulttest.Server, token string) error {
	t.Helper()
	_, err := v.ClientWithToken(token).Auth().Token().LookupSelf()
	return err
}

func TestVaultTokenCredential(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{
		"kv": {"token_role": "valet-agents", "policies": []any{"agent-read"}},
	}, nil)
	c, err := b.Mint(context.Background(), mintReq("L1", "kv", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Data["vault_token"].(string)
	if c.Handle == "" || c.Handle == tok || c.Details["accessor"] != c.Handle {
		t.Fatalf("handle %q must be the accessor, never the token", c.Handle)
	}
	if d := time.Until(c.ExpiresAt); d > time.Minute || d < 55*time.Second {
		t.Fatalf("credential expires in %s; want just under the lease's minute", d)
	}
	agent := v.ClientWithToken(tok)
	if s, err := agent.Logical().Read("secret/data/agents/config"); err != nil || s.Data["data"].(map[string]any)["greeting"] != "hello" {
		t.Fatalf("the token cannot read what its policy allows: %v %v", s, err)
	}
	if _, err := agent.Logical().Read("secret/data/other/config"); !isForbidden(err) {
		t.Fatalf("the token read a path outside its policy: %v", err)
	}
	// Vault's record of the token: TTL, max TTL, metadata, display name.
	look, err := v.Client().Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": c.Handle})
	if err != nil {
		t.Fatal(err)
	}
	meta := look.Data["meta"].(map[string]any)
	if meta["valet_lease_id"] != "L1" || meta["valet_agent_id"] != "k8s/system:serviceaccount:agents:bot" {
		t.Fatalf("token metadata %v", meta)
	}
	if name := look.Data["display_name"].(string); !strings.Contains(name, "valet-k8s-system-serviceaccount-agents-bot") {
		t.Fatalf("display name %q does not name the agent", name)
	}
	if em, _ := look.Data["explicit_max_ttl"].(json.Number).Int64(); em <= 0 || em > 60 {
		t.Fatalf("token's explicit max TTL is %ds; want at most the lease's 60s", em)
	}
	// Revoke, then the token is dead.
	if err := b.Revoke(context.Background(), refOf("L1", c)); err != nil {
		t.Fatal(err)
	}
	if err := lookupSelf(t, v, tok); err == nil {
		t.Fatal("token still valid after revoke")
	}
	// Revoking again is harmless.
	if err := b.Revoke(context.Background(), refOf("L1", c)); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
}

func isForbidden(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == 403
}

func TestVaultTokenExpiresOnItsOwn(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{"kv": {"token_role": "valet-agents", "policies": []any{"agent-read"}}}, nil)
	c, err := b.Mint(context.Background(), mintReq("L2", "kv", 3*time.Second, nil))
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Data["vault_token"].(string)
	if err := lookupSelf(t, v, tok); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	// Vault expires it by its own clock: poll, bounded.
	deadline := time.Now().Add(15 * time.Second)
	for lookupSelf(t, v, tok) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the token outlived its 3s lease by more than 12s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if time.Now().Before(c.ExpiresAt.Add(-time.Second)) {
		t.Fatalf("token died before its reported expiry %s", c.ExpiresAt)
	}
}

func TestVaultTokenPolicyTemplates(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{
		"team": {"token_role": "valet-agents", "policies": []any{"agent-{{team}}"}},
	}, nil)
	c, err := b.Mint(context.Background(), mintReq("L3", "team", time.Minute, map[string]string{"team": "team-a"}))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := v.ClientWithToken(c.Data["vault_token"].(string)).Logical().Read("secret/data/team-a/config"); err != nil || s == nil {
		t.Fatalf("templated policy not applied: %v", err)
	}
	cases := map[string]map[string]string{
		"missing attribute": nil,
		"hostile value":     {"team": "a\" }\npath \"*\" {"},
	}
	for name, attrs := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := b.Mint(context.Background(), mintReq("L3-"+name, "team", time.Minute, attrs))
			var be *backends.Error
			if !errors.As(err, &be) || !errors.Is(err, backends.ErrForbidden) {
				t.Fatalf("error %v, want a *backends.Error of kind ErrForbidden (EFORBIDDEN)", err)
			}
		})
	}
	if err := b.CheckRole(backends.RoleSpec{Name: "bad", Params: map[string]any{"token_role": "valet-agents", "policies": []any{"a b"}}}); err == nil {
		t.Fatal("a policy template that can never be a policy name was accepted")
	}
}

func TestTokenRoleChecks(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	v.Write("auth/token/roles/uncapped", map[string]any{"allowed_policies": "agent-read", "orphan": true, "renewable": true})
	v.Write("auth/token/roles/periodic", map[string]any{"allowed_policies": "agent-read", "orphan": true, "token_period": "1h"})
	b := newBackend(t, v, nil, nil)
	cases := []struct {
		name string
		spec backends.RoleSpec
		want string
	}{
		{"renewable role, token role without a renewal cap",
			backends.RoleSpec{Name: "r", TTL: time.Minute, MaxTTL: time.Hour, Renewable: true, Params: map[string]any{"token_role": "uncapped"}},
			"caps renewals at 0s"},
		{"renewable role, cap above the role's max_ttl",
			backends.RoleSpec{Name: "r", TTL: time.Minute, MaxTTL: time.Minute + time.Second, Renewable: true, Params: map[string]any{"token_role": "valet-agents"}},
			"set token_explicit_max_ttl=61"},
		{"periodic tokens", backends.RoleSpec{Name: "r", TTL: time.Minute, MaxTTL: time.Minute, Params: map[string]any{"token_role": "periodic"}}, "periodic tokens"},
		{"no such token role", backends.RoleSpec{Name: "r", Params: map[string]any{"token_role": "nope"}}, "has no token role"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := b.CheckRole(c.spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CheckRole = %v, want %q", err, c.want)
			}
		})
	}
	// A non-renewable role needs no cap.
	if err := b.CheckRole(backends.RoleSpec{Name: "ok", TTL: time.Minute, MaxTTL: time.Hour, Params: map[string]any{"token_role": "uncapped"}}); err != nil {
		t.Fatalf("non-renewable role on an uncapped token role: %v", err)
	}
}

func TestVaultTokenRenew(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{"kv": {"token_role": "valet-agents", "policies": []any{"agent-read"}}}, nil)
	req := mintReq("L4", "kv", 30*time.Second, nil)
	req.MaxExpiresAt = req.IssuedAt.Add(2 * time.Minute)
	c, err := b.Mint(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	renew := req
	renew.ExpiresAt = time.Now().Add(90 * time.Second)
	r, err := b.Renew(context.Background(), refOf("L4", c), renew)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(r.ExpiresAt); d < 80*time.Second || d > 90*time.Second {
		t.Fatalf("renewed to %s from now, want about 89s", d)
	}
	// Never past the max: Vault caps at explicit_max_ttl.
	renew.ExpiresAt = time.Now().Add(10 * time.Minute)
	r, err = b.Renew(context.Background(), refOf("L4", c), renew)
	if err != nil {
		t.Fatal(err)
	}
	if r.ExpiresAt.After(req.MaxExpiresAt) {
		t.Fatalf("renewed to %s, past the lease's max %s", r.ExpiresAt, req.MaxExpiresAt)
	}
	// Even the agent renewing its own token cannot pass the lease's max:
	// Vault enforces the token role's explicit max TTL, which valet
	// checked at start-up to be within the role's max_ttl.
	sec, err := v.ClientWithToken(c.Data["vault_token"].(string)).Logical().Write("auth/token/renew-self", map[string]any{"increment": "24h"})
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Now().Add(time.Duration(sec.Auth.LeaseDuration) * time.Second); got.After(req.IssuedAt.Add(2*time.Minute + time.Second)) {
		t.Fatalf("Vault let the token live until %s, past the lease's max %s", got, req.MaxExpiresAt)
	}
}

// setupDatabase configures Vault's database engine against a real
// PostgreSQL with a role whose TTL is ttl.
func setupDatabase(t *testing.T, v *vaulttest.Server, pg *vaulttest.Postgres, role string, ttl time.Duration) {
	t.Helper()
	v.Mount("database", "database")
	v.Write("database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "allowed_roles": "*",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable", pg.Port),
		"username":       pg.User, "password": pg.Password,
	})
	v.Write("database/roles/"+role, map[string]any{
		"db_name": "pg", "default_ttl": ttl.String(), "max_ttl": "1h",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT pg_read_all_data TO "{{name}}";`,
	})
	v.Policy("db-"+role, fmt.Sprintf(`path "database/creds/%s" { capabilities = ["read"] }`, role))
}

func connect(t *testing.T, pg *vaulttest.Postgres, data map[string]any) error {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pg.DSN(data["username"].(string), data["password"].(string)))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var n int
	return conn.QueryRow(context.Background(), "select count(*) from pg_roles").Scan(&n)
}

// valetUsers lists the database users Vault created.
func valetUsers(t *testing.T, pg *vaulttest.Postgres) []string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pg.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), `select rolname from pg_roles where rolname like 'v-%'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		out = append(out, n)
	}
	return out
}

func TestDynamicDatabaseCredential(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	pg := vaulttest.StartPostgres(t)
	setupDatabase(t, v, pg, "ro", time.Minute)
	b := newBackend(t, v, map[string]map[string]any{
		"db": {"token_role": "valet-agents", "policies": []any{"db-ro"}, "path": "database/creds/ro"},
	}, nil)
	c, err := b.Mint(context.Background(), mintReq("D1", "db", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Handle, "database/creds/ro/") || c.Details["child_accessor"] == "" {
		t.Fatalf("handle %q details %v: want the Vault lease id and the child token's accessor", c.Handle, c.Details)
	}
	if err := connect(t, pg, c.Data); err != nil {
		t.Fatalf("the database credential does not log in: %v", err)
	}
	if err := b.Revoke(context.Background(), refOf("D1", c)); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, pg, c.Data); err == nil {
		t.Fatal("the database credential still logs in after revoke")
	}
	if u := valetUsers(t, pg); len(u) != 0 {
		t.Fatalf("database users left after revoke: %v", u)
	}
}

func TestDynamicDatabaseCredentialExpires(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	pg := vaulttest.StartPostgres(t)
	setupDatabase(t, v, pg, "ro", 3*time.Second)
	b := newBackend(t, v, map[string]map[string]any{
		"db": {"token_role": "valet-agents", "policies": []any{"db-ro"}, "path": "database/creds/ro"},
	}, nil)
	c, err := b.Mint(context.Background(), mintReq("D2", "db", 4*time.Second, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := connect(t, pg, c.Data); err != nil {
		t.Fatalf("fresh credential: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(valetUsers(t, pg)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Vault did not drop the database user within 20s of its 3s lease: %v", valetUsers(t, pg))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := connect(t, pg, c.Data); err == nil {
		t.Fatal("the expired credential still logs in")
	}
}

func TestVaultRoleTTLLongerThanLeaseIsRefused(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	pg := vaulttest.StartPostgres(t)
	setupDatabase(t, v, pg, "long", time.Hour)
	b := newBackend(t, v, map[string]map[string]any{
		"db": {"token_role": "valet-agents", "policies": []any{"db-long"}, "path": "database/creds/long"},
	}, nil)
	_, err := b.Mint(context.Background(), mintReq("D3", "db", time.Minute, nil))
	var be *backends.Error
	if !errors.As(err, &be) || !errors.Is(err, backends.ErrBadResponse) || !strings.Contains(be.Message, "lower the Vault role's default_ttl to at most") {
		t.Fatalf("error %v, want a refusal naming the Vault role's TTL", err)
	}
	// Nothing is left behind: no database user, no Vault lease.
	if u := valetUsers(t, pg); len(u) != 0 {
		t.Fatalf("database users left behind: %v", u)
	}
	list, err := v.Client().Logical().List("sys/leases/lookup/database/creds/long")
	if err != nil {
		t.Fatal(err)
	}
	if list != nil && len(list.Data["keys"].([]any)) != 0 {
		t.Fatalf("Vault leases left behind: %v", list.Data["keys"])
	}
}

func TestRecoverInterruptedMintByCorrelationID(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{"kv": {"token_role": "valet-agents", "policies": []any{"agent-read"}}}, nil)
	// A mint whose lease was never recorded: only the lease id is known.
	c, err := b.Mint(context.Background(), mintReq("ORPHAN", "kv", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.Mint(context.Background(), mintReq("KEEP", "kv", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "ORPHAN"}); err != nil {
		t.Fatal(err)
	}
	if lookupSelf(t, v, c.Data["vault_token"].(string)) == nil {
		t.Fatal("the orphaned token was not found and revoked")
	}
	if err := lookupSelf(t, v, other.Data["vault_token"].(string)); err != nil {
		t.Fatalf("recovery revoked a token of another lease: %v", err)
	}
	// A lease whose mint never reached Vault: nothing found, nothing to do.
	if err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "NEVER-MINTED"}); err != nil {
		t.Fatalf("recovery of a mint that created nothing: %v", err)
	}
}

func TestVaultDownAnswersUnavailable(t *testing.T) {
	v := vaulttest.StartFile(t)
	v.Mount("secret", "kv-v2")
	setupVault(t, v)
	b := newBackend(t, v, map[string]map[string]any{"kv": {"token_role": "valet-agents", "policies": []any{"agent-read"}}}, nil)
	c, err := b.Mint(context.Background(), mintReq("O1", "kv", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	v.Stop()
	start := time.Now()
	if _, err := b.Mint(context.Background(), mintReq("O2", "kv", time.Minute, nil)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("mint with Vault down: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("mint with Vault down took %s; it must fail fast", d)
	}
	if err := b.Revoke(context.Background(), refOf("O1", c)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("revoke with Vault down: %v, want ErrUnavailable (it must not claim success)", err)
	}
	v.Start()
	// Sealed is unavailable too.
	if _, err := b.Mint(context.Background(), mintReq("O3", "kv", time.Minute, nil)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("mint with Vault sealed: %v, want ErrUnavailable", err)
	}
	v.Unseal()
	if err := b.Revoke(context.Background(), refOf("O1", c)); err != nil {
		t.Fatalf("revoke after Vault is back: %v", err)
	}
	if lookupSelf(t, v, c.Data["vault_token"].(string)) == nil {
		t.Fatal("token still valid after the revocation that followed the outage")
	}
}

func TestAppRoleLoginAndRelogin(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	v.Policy("valet", `
path "auth/token/create/valet-agents" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/accessors" { capabilities = ["list", "sudo"] }
path "sys/leases/*" { capabilities = ["update"] }
`)
	rid, sid := v.AppRole("valet", "valet")
	be, err := vault.New("vault-approle", map[string]any{
		"address": v.Addr, "auth": map[string]any{"method": "approle", "role_id_file": rid, "secret_id_file": sid},
	}, backends.Deps{Clock: clock.Real{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*vault.Backend)
	defer b.Close()
	if err := b.CheckRole(backends.RoleSpec{Name: "kv", Params: map[string]any{"token_role": "valet-agents", "policies": []any{"agent-read"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Mint(context.Background(), mintReq("A1", "kv", time.Minute, nil)); err != nil {
		t.Fatalf("mint with an AppRole login: %v", err)
	}
	// Revoke every token of the approle mount (valet's own included): the
	// next mint must log in again and succeed.
	if _, err := v.Client().Logical().Write("sys/leases/revoke-prefix/auth/approle/login", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Mint(context.Background(), mintReq("A2", "kv", time.Minute, nil)); err != nil {
		t.Fatalf("mint after valet's token was revoked: %v", err)
	}
}

func TestDynamicSecretRenew(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	pg := vaulttest.StartPostgres(t)
	setupDatabase(t, v, pg, "ro", 30*time.Second)
	b := newBackend(t, v, map[string]map[string]any{
		"db": {"token_role": "valet-agents", "policies": []any{"db-ro"}, "path": "database/creds/ro"},
	}, nil)
	req := mintReq("R1", "db", 30*time.Second, nil)
	req.MaxExpiresAt = req.IssuedAt.Add(2 * time.Minute)
	c, err := b.Mint(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	renew := req
	renew.ExpiresAt = time.Now().Add(90 * time.Second)
	r, err := b.Renew(context.Background(), refOf("R1", c), renew)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(r.ExpiresAt); d < 80*time.Second || d > 90*time.Second {
		t.Fatalf("renewed credential expires in %s, want about 89s", d)
	}
	// Both the secret's lease and the child token were extended at Vault.
	look, err := v.Client().Logical().Write("sys/leases/lookup", map[string]any{"lease_id": c.Handle})
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := look.Data["ttl"].(json.Number).Int64(); ttl < 80 || ttl > 90 {
		t.Fatalf("Vault lease TTL after renewal: %ds", ttl)
	}
	tok, err := v.Client().Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": c.Details["child_accessor"]})
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := tok.Data["ttl"].(json.Number).Int64(); ttl < 80 || ttl > 90 {
		t.Fatalf("child token TTL after renewal: %ds", ttl)
	}
	if err := connect(t, pg, c.Data); err != nil {
		t.Fatalf("renewed credential: %v", err)
	}
}

func TestJWTAuthLogin(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	v.Policy("valet", `
path "auth/token/create/valet-agents" { capabilities = ["update"] }
path "auth/token/roles/valet-agents" { capabilities = ["read"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
`)
	iss, err := attest.NewDevIssuer("https://valet-pod.test")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := iss.Key().PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	var raw any
	if err := pub.Raw(&raw); err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(raw)
	if err := v.Client().Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	v.Write("auth/jwt/config", map[string]any{
		"jwt_validation_pubkeys": []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
		"bound_issuer":           "https://valet-pod.test",
	})
	v.Write("auth/jwt/role/valet", map[string]any{"role_type": "jwt", "bound_audiences": []string{"vault"}, "user_claim": "sub", "token_policies": []string{"valet"}, "token_ttl": "1h"})
	jwtTok, err := iss.Sign(map[string]any{"sub": "system:serviceaccount:valet:valet", "aud": "vault"})
	if err != nil {
		t.Fatal(err)
	}
	jwtFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(jwtFile, []byte(jwtTok), 0o600)
	be, err := vault.New("vault-jwt", map[string]any{
		"address": v.Addr, "auth": map[string]any{"method": "jwt", "role": "valet", "jwt_file": jwtFile},
	}, backends.Deps{Clock: clock.Real{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*vault.Backend)
	defer b.Close()
	if err := b.CheckRole(backends.RoleSpec{Name: "kv", TTL: time.Minute, MaxTTL: time.Minute, Params: map[string]any{"token_role": "valet-agents", "policies": []any{"agent-read"}}}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Mint(context.Background(), mintReq("J1", "kv", time.Minute, nil))
	if err != nil {
		t.Fatalf("mint with a JWT login: %v", err)
	}
	if err := b.Revoke(context.Background(), refOf("J1", c)); err != nil {
		t.Fatal(err)
	}
}

// TestNewRefusesZeroTimeout: timeout: 0 is refused at start-up, not
// replaced by the default (the api client would wait forever on a Vault
// that hangs). No Vault is needed: New checks its options first.
func TestNewRefusesZeroTimeout(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s.unused\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, timeout := range []any{"0s", 0} {
		opts := map[string]any{"address": "http://127.0.0.1:1", "timeout": timeout,
			"auth": map[string]any{"method": "token", "token_file": tokenFile}}
		be, err := vault.New("vault-main", opts, backends.Deps{Clock: clock.Real{}, Logger: quiet})
		if err == nil || !strings.Contains(err.Error(), "backend vault-main: timeout must be positive; it is 0s") {
			if be != nil {
				be.(*vault.Backend).Close()
			}
			t.Fatalf("timeout %v: New = %v; want a refusal naming timeout", timeout, err)
		}
	}
}
