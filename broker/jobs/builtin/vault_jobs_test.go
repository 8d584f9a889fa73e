package builtin_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/broker/jobs/builtin"
)

// fakeVault is a backend with the capabilities of the vault backend; the
// real one is tested against a real Vault in backends/vault and
// cmd/valet.
type fakeVault struct {
	backends.Backend
	method   string
	rotated  []string // mount/connection
	rootErr  error
	loginErr error
}

func (f *fakeVault) RotateLoginSecret(context.Context) (backends.LoginSecretRotation, error) {
	if f.method != "approle" {
		return backends.LoginSecretRotation{Method: f.method}, fmt.Errorf("method %s: %w", f.method, backends.ErrNoLoginSecret)
	}
	return backends.LoginSecretRotation{Method: f.method, NewAccessor: "new-acc", OldAccessor: "old-acc"}, nil
}

func (f *fakeVault) CheckLogin(context.Context) (backends.LoginHealth, error) {
	if f.loginErr != nil {
		return backends.LoginHealth{Method: f.method, LoginFailures: 4}, f.loginErr
	}
	return backends.LoginHealth{Method: f.method, Accessor: "tok-acc", TTL: 90 * time.Second, Renewable: true,
		ExpiresAt: time.Date(2030, 1, 1, 0, 1, 30, 0, time.UTC)}, nil
}

func (f *fakeVault) RotateDatabaseRoot(_ context.Context, mount, conn string) error {
	if f.rootErr != nil && conn == "bad" {
		return f.rootErr
	}
	f.rotated = append(f.rotated, mount+"/"+conn)
	return nil
}

// buildJob resolves and builds one job with the given settings.
func buildJob(t *testing.T, name string, settings map[string]any, bes map[string]backends.Backend) (jobs.Job, error) {
	t.Helper()
	resolved, err := builtin.Resolve([]jobs.Spec{{Name: name, Settings: settings}})
	if err != nil {
		return nil, err
	}
	for _, r := range resolved {
		if r.Name == name {
			entries, err := builtin.Build([]jobs.Resolved{r}, builtin.Deps{Backends: bes, KEK: testKEK, DataDir: t.TempDir()})
			if err != nil {
				return nil, err
			}
			return entries[0].Job, nil
		}
	}
	t.Fatalf("job %s not resolved", name)
	return nil, nil
}

func TestVaultJobSettingsRefused(t *testing.T) {
	two := map[string]backends.Backend{"v1": &fakeVault{}, "v2": &fakeVault{}}
	cases := []struct {
		name     string
		job      string
		settings map[string]any
		bes      map[string]backends.Backend
		want     string
	}{
		{"no connections", "vault-database-root-rotation", nil, two, "jobs[0].connections must name at least one connection"},
		{"a path as a connection", "vault-database-root-rotation", map[string]any{"connections": []any{"a/b"}}, two,
			`jobs[0].connections[0] "a/b" must be the name of a connection`},
		{"a connection twice", "vault-database-root-rotation", map[string]any{"connections": []any{"pg", "pg"}}, two,
			`jobs[0].connections[1] "pg" is named twice`},
		{"a bad mount", "vault-database-root-rotation", map[string]any{"mount": "/database", "connections": []any{"pg"}}, two,
			`jobs[0].mount "/database" must be the path of Vault's database secrets engine`},
		{"an empty mount", "vault-database-root-rotation", map[string]any{"mount": "", "connections": []any{"pg"}}, two,
			`jobs[0].mount "" must be the path`},
		{"several vault backends, none named", "vault-database-root-rotation", map[string]any{"connections": []any{"pg"}}, two,
			"backend must name the vault backend whose Vault holds the connections (2 vault backends are configured)"},
		{"no vault backend", "vault-database-root-rotation", map[string]any{"connections": []any{"pg"}}, nil,
			"(0 vault backends are configured)"},
		{"a backend that is not a vault backend", "vault-database-root-rotation", map[string]any{"backend": "tokens", "connections": []any{"pg"}},
			map[string]backends.Backend{"tokens": failingRewrapper{}}, `backend "tokens" is not a configured backend of type vault`},
		{"secret-id rotation of an unknown backend", "vault-secret-id-rotation", map[string]any{"backends": []any{"nope"}}, two,
			`backends[0] "nope" is not a configured backend that logs in to Vault`},
		{"an empty backend name", "vault-token-health", map[string]any{"backends": []any{""}}, two, "jobs[0].backends[0] must name a backend"},
		{"unknown setting", "vault-token-health", map[string]any{"min_ttl": "1m"}, two, "min_ttl"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := buildJob(t, c.job, c.settings, c.bes)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// The secret-id rotation skips a backend that logs in without a secret
// when it was not named, and fails when it was; changes carry accessors.
func TestSecretIDRotationJob(t *testing.T) {
	bes := map[string]backends.Backend{"approle": &fakeVault{method: "approle"}, "tokenfile": &fakeVault{method: "token"}}
	job, err := buildJob(t, "vault-secret-id-rotation", nil, bes)
	if err != nil {
		t.Fatal(err)
	}
	res, err := job.Run(context.Background(), time.Now())
	want := map[string]string{"approle.new_accessor": "new-acc", "approle.destroyed_accessor": "old-acc", "approle.resumed": "false",
		"tokenfile": "skipped: logs in with method token"}
	if err != nil || !equalMaps(res.Changes, want) {
		t.Fatalf("run: %v, %v; want %v", res.Changes, err, want)
	}
	job, err = buildJob(t, "vault-secret-id-rotation", map[string]any{"backends": []any{"tokenfile"}}, bes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := job.Run(context.Background(), time.Now()); !errors.Is(err, backends.ErrNoLoginSecret) || !strings.Contains(err.Error(), "backend tokenfile") {
		t.Fatalf("a named backend without a secret: %v", err)
	}
}

// The token check reports each login and fails while one cannot log in.
func TestTokenHealthJob(t *testing.T) {
	bes := map[string]backends.Backend{"ok": &fakeVault{method: "approle"}, "down": &fakeVault{method: "approle", loginErr: errors.New("re-authentication to Vault failed: connection refused")}}
	job, err := buildJob(t, "vault-token-health", nil, bes)
	if err != nil {
		t.Fatal(err)
	}
	res, err := job.Run(context.Background(), time.Now())
	if err == nil || !strings.Contains(err.Error(), "backend down: re-authentication to Vault failed") {
		t.Fatalf("run error %v", err)
	}
	want := map[string]string{"ok.method": "approle", "ok.accessor": "tok-acc", "ok.ttl_seconds": "90", "ok.renewable": "true",
		"ok.expires_at": "2030-01-01T00:01:30Z", "ok.last_renewal": "never", "ok.last_login": "never", "ok.relogged": "false", "ok.login_failures": "0",
		"down.method": "approle", "down.login_failures": "4"}
	if !equalMaps(res.Changes, want) {
		t.Fatalf("changes %v, want %v", res.Changes, want)
	}
}

// The root rotation rotates every connection, goes on past one that
// fails, and names it.
func TestDatabaseRootRotationJob(t *testing.T) {
	v := &fakeVault{rootErr: errors.New("permission denied")}
	job, err := buildJob(t, "vault-database-root-rotation", map[string]any{"mount": "db/eu", "connections": []any{"pg", "bad", "mysql"}},
		map[string]backends.Backend{"vault-main": v})
	if err != nil {
		t.Fatal(err)
	}
	res, err := job.Run(context.Background(), time.Now())
	if err == nil || !strings.Contains(err.Error(), "connection bad: permission denied") {
		t.Fatalf("run error %v", err)
	}
	want := map[string]string{"backend": "vault-main", "mount": "db/eu", "pg": "rotated", "bad": "failed", "mysql": "rotated"}
	if !equalMaps(res.Changes, want) || strings.Join(v.rotated, ",") != "db/eu/pg,db/eu/mysql" {
		t.Fatalf("changes %v (rotated %v), want %v", res.Changes, v.rotated, want)
	}
}
