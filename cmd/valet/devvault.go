package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// Dev mode's Vault demo: with VAULT_ADDR and VAULT_TOKEN in the
// environment, `valet dev` adds a vault backend and two roles, demo-vault
// (a Vault token that reads secret/valet-demo/*) and demo-db (a PostgreSQL
// login from database/creds/valet-demo, when the database engine has that
// role), and creates the Vault objects they need, all named valet-demo*.
// Meant for a dev Vault; `make run-vault` starts one with PostgreSQL.

const (
	devVaultBackend = "vault"
	devTokenRole    = "valet-demo"
)

// addDevVault extends cfg with the Vault demo and prepares Vault. It
// returns a line for the banner, or "" when no Vault is configured.
func addDevVault(cfg *Config, dir string) (string, error) {
	addr, token := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
	if addr == "" || token == "" {
		return "", nil
	}
	tokenFile, err := filepath.Abs(filepath.Join(dir, "vault-token"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return "", err
	}
	if err := setupDevVault(addr, token); err != nil {
		return "", fmt.Errorf("prepare Vault at %s for the demo roles: %w", addr, err)
	}
	cfg.Backends = append(cfg.Backends, backends.Config{Name: devVaultBackend, Type: "vault", Options: map[string]any{
		"address": addr,
		"auth":    map[string]any{"method": "token", "token_file": tokenFile},
	}})
	notRenewable := false
	cfg.Roles = append(cfg.Roles,
		config.Defaulted(func(r *broker.Role) {
			r.Name, r.Description, r.Backend = "demo-vault", "A Vault token that reads secret/valet-demo/*.", devVaultBackend
			r.TTL, r.MaxTTL, r.Labels = config.Duration(5*time.Minute), config.Duration(time.Hour), map[string]string{"env": "dev"}
			r.Params = map[string]any{"token_role": devTokenRole, "policies": []any{"valet-demo"}}
		}),
		config.Defaulted(func(r *broker.Role) {
			r.Name, r.Description, r.Backend = "demo-db", "A PostgreSQL login from Vault's database engine.", devVaultBackend
			r.TTL, r.MaxTTL, r.Renewable = config.Duration(5*time.Minute), config.Duration(5*time.Minute), &notRenewable
			r.Labels = map[string]string{"env": "dev"}
			r.Params = map[string]any{"token_role": devTokenRole, "policies": []any{"valet-demo-db"}, "path": "database/creds/valet-demo"}
		}),
	)
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	return fmt.Sprintf("demo-vault (Vault token), demo-db (PostgreSQL login) at %s", addr), nil
}

// setupDevVault creates the demo's policies, secret and token role.
func setupDevVault(addr, token string) error {
	c, err := api.NewClient(&api.Config{Address: addr, Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	c.SetToken(token)
	ctx := context.Background()
	sys := c.Sys()
	if err := sys.PutPolicyWithContext(ctx, "valet-demo", `path "secret/data/valet-demo/*" { capabilities = ["read"] }`); err != nil {
		return err
	}
	if err := sys.PutPolicyWithContext(ctx, "valet-demo-db", `path "database/creds/valet-demo" { capabilities = ["read"] }`); err != nil {
		return err
	}
	if _, err := c.Logical().WriteWithContext(ctx, "auth/token/roles/"+devTokenRole, map[string]any{
		"allowed_policies": "valet-demo,valet-demo-db", "orphan": true, "renewable": true, "token_explicit_max_ttl": "1h",
	}); err != nil {
		return err
	}
	// The demo secret, in the KV v2 engine a dev Vault mounts at secret/.
	// Without an engine there Vault answers 404 (no handler for the
	// route), and the demo goes without its secret.
	_, err = c.Logical().WriteWithContext(ctx, "secret/data/valet-demo/hello", map[string]any{
		"data": map[string]any{"message": "hello from Vault, through valet"},
	})
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusNotFound {
		return nil
	}
	return err
}
