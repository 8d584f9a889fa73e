package vault_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/vault"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/leases/clock"
)

// rotationPolicy is what valet's token needs to rotate its own secret-id
// (the README's policy for AppRole role valet).
const rotationPolicy = `
path "auth/approle/role/valet/secret-id"                  { capabilities = ["update"] }
path "auth/approle/role/valet/secret-id/lookup"           { capabilities = ["update"] }
path "auth/approle/role/valet/secret-id-accessor/destroy" { capabilities = ["update"] }
`

// appRoleBackend builds a vault backend that logs in with the AppRole
// files; its log goes to logs.
func appRoleBackend(t *testing.T, v *vaulttest.Server, roleIDFile, secretIDFile string, logs *bytes.Buffer) *vault.Backend {
	t.Helper()
	be, err := vault.New("vault-main", map[string]any{
		"address": v.Addr, "auth": map[string]any{"method": "approle", "role_id_file": roleIDFile, "secret_id_file": secretIDFile},
	}, backends.Deps{Clock: clock.Real{}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*vault.Backend)
	t.Cleanup(func() { b.Close() })
	return b
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// accessorOf is the accessor of a secret-id of role valet, "" when Vault
// no longer knows it.
func accessorOf(t *testing.T, v *vaulttest.Server, secretID string) string {
	t.Helper()
	sec := v.Write("auth/approle/role/valet/secret-id/lookup", map[string]any{"secret_id": secretID})
	if sec == nil {
		return ""
	}
	return sec.Data["secret_id_accessor"].(string)
}

// TestSecretIDRotation: a rotation replaces valet's AppRole secret-id in
// its file: Vault refuses the old one afterwards, valet is logged in with
// the new one, and neither secret-id reaches the log, which names the
// accessors.
func TestSecretIDRotation(t *testing.T) {
	v := vaulttest.StartDev(t)
	v.Policy("valet-rotate", rotationPolicy)
	rid, sid := v.AppRole("valet", "valet-rotate")
	var logs bytes.Buffer
	b := appRoleBackend(t, v, rid, sid, &logs)
	first := readTrimmed(t, sid)
	firstAccessor := accessorOf(t, v, first)

	var seen []string
	for round := range 2 {
		old := readTrimmed(t, sid)
		r, err := b.RotateLoginSecret(context.Background())
		if err != nil {
			t.Fatalf("rotation %d: %v", round, err)
		}
		now := readTrimmed(t, sid)
		if now == old || r.Resumed || r.Method != "approle" {
			t.Fatalf("rotation %d: %+v, secret-id file changed %v", round, r, now != old)
		}
		if err := v.AppRoleLogin(rid, old); err == nil {
			t.Fatalf("rotation %d: Vault still accepts the old secret-id", round)
		}
		if err := v.AppRoleLogin(rid, now); err != nil {
			t.Fatalf("rotation %d: Vault refuses the new secret-id: %v", round, err)
		}
		if r.NewAccessor != accessorOf(t, v, now) || r.OldAccessor == "" {
			t.Fatalf("rotation %d: accessors %+v", round, r)
		}
		if _, err := os.Stat(sid + ".next"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("rotation %d left the .next file: %v", round, err)
		}
		h, err := b.CheckLogin(context.Background())
		if err != nil || h.Relogged || h.TTL <= 0 {
			t.Fatalf("rotation %d: valet's login afterwards: %+v, %v", round, h, err)
		}
		seen = append(seen, old, now)
	}
	if !strings.Contains(logs.String(), "destroyed_accessor="+firstAccessor) {
		t.Errorf("the log does not name the destroyed accessor %s:\n%s", firstAccessor, logs.String())
	}
	for _, s := range seen {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("a secret-id is in the log:\n%s", logs.String())
		}
	}
}

// TestSecretIDRotationCrashes: whatever step a crash interrupts, the
// files it leaves let a restarted valet log in, and the next rotation
// finishes: the secret-ids valet held before it are refused, the one in
// secret_id_file is accepted, and no .next file remains.
func TestSecretIDRotationCrashes(t *testing.T) {
	v := vaulttest.StartDev(t)
	v.Policy("valet-rotate", rotationPolicy)
	destroy := func(secretID string) {
		v.Write("auth/approle/role/valet/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": accessorOf(t, v, secretID)})
	}
	cases := []struct {
		name string
		// crash leaves the files as the interrupted rotation did, from
		// the secret-id valet held (old); it returns the secret-ids that
		// must be refused at the end.
		crash   func(sid, old string) []string
		resumed bool
	}{
		{"Vault created a secret-id that no file got", func(sid, old string) []string {
			v.SecretID("valet") // held by nobody; expires with secret_id_ttl
			return []string{old}
		}, false},
		{"after the new secret-id was kept in the .next file", func(sid, old string) []string {
			writeSecret(t, sid+".next", v.SecretID("valet"))
			return []string{old}
		}, true},
		{"after the old secret-id was destroyed", func(sid, old string) []string {
			writeSecret(t, sid+".next", v.SecretID("valet"))
			destroy(old)
			return []string{old}
		}, true},
		{"after the new secret-id replaced the old in its file", func(sid, old string) []string {
			next := v.SecretID("valet")
			destroy(old)
			writeSecret(t, sid+".next", next)
			writeSecret(t, sid, next)
			return []string{old, next}
		}, false},
		{"a .next file Vault no longer knows", func(sid, old string) []string {
			stale := v.SecretID("valet")
			destroy(stale)
			writeSecret(t, sid+".next", stale)
			return []string{old}
		}, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			role := "valet"
			rid, sid := v.AppRole(role, "valet-rotate")
			old := readTrimmed(t, sid)
			refused := c.crash(sid, old)

			// The restart logs in with what the crash left.
			var logs bytes.Buffer
			b := appRoleBackend(t, v, rid, sid, &logs)
			h, err := b.CheckLogin(context.Background())
			if err != nil || h.Relogged || h.Method != "approle" {
				t.Fatalf("login after the crash: %+v, %v", h, err)
			}
			r, err := b.RotateLoginSecret(context.Background())
			if err != nil {
				t.Fatalf("the next rotation: %v", err)
			}
			if r.Resumed != c.resumed {
				t.Errorf("resumed %v, want %v", r.Resumed, c.resumed)
			}
			for _, s := range refused {
				if err := v.AppRoleLogin(rid, s); err == nil {
					t.Errorf("Vault still accepts a secret-id valet held before (case %d)", i)
				}
			}
			if err := v.AppRoleLogin(rid, readTrimmed(t, sid)); err != nil {
				t.Errorf("Vault refuses the secret-id in secret_id_file: %v", err)
			}
			if _, err := os.Stat(sid + ".next"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the .next file remains: %v", err)
			}
		})
	}
}

func writeSecret(t *testing.T, path, secret string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSecretIDRotationWithoutPermission: without the permission to
// destroy secret-ids the rotation fails naming the path, keeps valet
// logged in with the new secret-id (in the .next file), and finishes once
// the policy allows it.
func TestSecretIDRotationWithoutPermission(t *testing.T) {
	v := vaulttest.StartDev(t)
	v.Policy("valet-rotate", strings.Split(rotationPolicy, "path \"auth/approle/role/valet/secret-id-accessor/destroy\"")[0])
	rid, sid := v.AppRole("valet", "valet-rotate")
	old := readTrimmed(t, sid)
	var logs bytes.Buffer
	b := appRoleBackend(t, v, rid, sid, &logs)
	_, err := b.RotateLoginSecret(context.Background())
	if err == nil || !strings.Contains(err.Error(), "auth/approle/role/valet/secret-id-accessor/destroy") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("rotation without the destroy permission: %v; want the path named", err)
	}
	next := readTrimmed(t, sid+".next")
	if err := v.AppRoleLogin(rid, next); err != nil {
		t.Fatalf("the new secret-id in the .next file: %v", err)
	}
	restarted := appRoleBackend(t, v, rid, sid, &logs)
	if _, err := restarted.CheckLogin(context.Background()); err != nil {
		t.Fatalf("a restart during the failed rotation cannot log in: %v", err)
	}
	v.Policy("valet-rotate", rotationPolicy)
	r, err := restarted.RotateLoginSecret(context.Background())
	if err != nil || !r.Resumed {
		t.Fatalf("rotation once allowed: %+v, %v; want the interrupted one finished", r, err)
	}
	if err := v.AppRoleLogin(rid, old); err == nil {
		t.Fatal("Vault still accepts the old secret-id")
	}
	if got := readTrimmed(t, sid); got != next {
		t.Fatal("secret_id_file does not hold the secret-id of the finished rotation")
	}
}

// A backend that logs in with a token file has no secret to rotate.
func TestSecretIDRotationNeedsAppRole(t *testing.T) {
	v := vaulttest.StartDev(t)
	b := newBackend(t, v, nil, nil)
	if _, err := b.RotateLoginSecret(context.Background()); !errors.Is(err, backends.ErrNoLoginSecret) {
		t.Fatalf("RotateLoginSecret with method token: %v, want ErrNoLoginSecret", err)
	}
}

// TestCheckLogin: the check reports valet's token; when Vault has revoked
// it, the check logs in again; when Vault refuses the login too, it fails
// saying so, and the next check counts the failed login.
func TestCheckLogin(t *testing.T) {
	v := vaulttest.StartDev(t)
	v.Policy("valet-rotate", rotationPolicy)
	rid, sid := v.AppRole("valet", "valet-rotate")
	var logs bytes.Buffer
	b := appRoleBackend(t, v, rid, sid, &logs)
	h, err := b.CheckLogin(context.Background())
	if err != nil || h.Relogged || h.Accessor == "" || h.TTL <= 55*time.Minute || h.TTL > time.Hour || !h.Renewable || h.LastLogin.IsZero() {
		t.Fatalf("healthy login: %+v, %v", h, err)
	}
	revokeAll := func() {
		v.Write("sys/leases/revoke-prefix/auth/approle/login", nil)
	}
	revokeAll()
	h2, err := b.CheckLogin(context.Background())
	if err != nil || !h2.Relogged || h2.Accessor == h.Accessor || h2.Accessor == "" {
		t.Fatalf("after Vault revoked valet's token: %+v, %v; want a new login", h2, err)
	}
	v.Write("auth/approle/role/valet/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": accessorOf(t, v, readTrimmed(t, sid))})
	revokeAll()
	if _, err := b.CheckLogin(context.Background()); err == nil || !strings.Contains(err.Error(), "re-authentication to Vault failed") {
		t.Fatalf("with the secret-id destroyed: %v; want the failed re-authentication", err)
	}
	if h, _ := b.CheckLogin(context.Background()); h.LoginFailures < 1 {
		t.Fatalf("the next check counts %d failed logins", h.LoginFailures)
	}
}

// TestDatabaseRootRotation: after Vault rotates the root credential of the
// database connection, the password the operator configured no longer logs
// in to PostgreSQL, while credentials Vault issued before and after it do.
// An unknown connection and a token without the permission fail naming
// the path.
func TestDatabaseRootRotation(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	pg := vaulttest.StartPostgres(t)
	setupDatabase(t, v, pg, "ro", time.Minute)
	b := newBackend(t, v, map[string]map[string]any{
		"db": {"token_role": "valet-agents", "policies": []any{"db-ro"}, "path": "database/creds/ro"},
	}, nil)
	before, err := b.Mint(context.Background(), mintReq("R1", "db", time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	root := map[string]any{"username": pg.User, "password": pg.Password}
	if err := connect(t, pg, root); err != nil {
		t.Fatalf("the root password does not log in before the rotation: %v", err)
	}

	if err := b.RotateDatabaseRoot(context.Background(), "database", "pg"); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, pg, root); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("the root password after the rotation: %v; want it refused", err)
	}
	if err := connect(t, pg, before.Data); err != nil {
		t.Fatalf("a credential issued before the rotation: %v", err)
	}
	after, err := b.Mint(context.Background(), mintReq("R2", "db", time.Minute, nil))
	if err != nil {
		t.Fatalf("a credential after the rotation: %v", err)
	}
	if err := connect(t, pg, after.Data); err != nil {
		t.Fatalf("a credential issued after the rotation does not log in: %v", err)
	}
	if err := b.RotateDatabaseRoot(context.Background(), "database", "nope"); err == nil || !strings.Contains(err.Error(), "database/rotate-root/nope") {
		t.Fatalf("an unknown connection: %v; want the path named", err)
	}

	v.Policy("valet-plain", `path "auth/token/lookup-self" { capabilities = ["read"] }`)
	tokenFile := writeToken(t, v.Write("auth/token/create", map[string]any{"policies": []string{"valet-plain"}, "ttl": "1h"}).Auth.ClientToken)
	be, err := vault.New("vault-plain", map[string]any{"address": v.Addr, "auth": map[string]any{"method": "token", "token_file": tokenFile}},
		backends.Deps{Clock: clock.Real{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer be.(*vault.Backend).Close()
	err = be.(*vault.Backend).RotateDatabaseRoot(context.Background(), "database", "pg")
	if err == nil || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "database/rotate-root/pg") {
		t.Fatalf("without the permission: %v; want the refusal and the path", err)
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	p := t.TempDir() + "/token"
	if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
