package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
)

// Dev mode defaults.
const (
	devDataDir  = "valet-dev-data"
	devIssuer   = "valet-dev"
	devAudience = "valet"
	// devResourceServer is the introspection client of the dev config,
	// named after the demo role's audience; its secret is in
	// devResourceServerSecret.
	devResourceServer       = "demo-api"
	devResourceServerSecret = "introspection-client-secret"
)

func newDevCmd() *cobra.Command {
	var dataDir, listen string
	var ha devHA
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local broker with a dev attestation issuer, sample policy and roles",
		Long: `valet dev needs no setup. It writes a working configuration, a dev attestation
issuer key, a key-encryption key, a sample Cedar policy and two roles (demo,
and demo-elevated which needs approval) under ./valet-dev-data/, listens on
127.0.0.1:8750 and prints an operator token and the next commands to try.
Files it finds there are kept, so edits to config.yaml and policies survive.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, opToken, err := prepareDev(dataDir, listen)
			if err != nil {
				return err
			}
			if err := ha.apply(cfg, listen); err != nil {
				return err
			}
			vaultRoles, err := addDevVault(cfg, dataDir)
			if err != nil {
				return err
			}
			awsEndpoint, err := addDevAWS(cfg)
			if err != nil {
				return err
			}
			github, err := addDevGitHub(cfg, dataDir)
			if err != nil {
				return err
			}
			gcp, err := addDevGCP(cfg)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, func(s *Server) {
				printDevBanner(cmd.OutOrStdout(), s, cfg, opToken, dataDir, vaultRoles)
				printDevAWS(cmd.OutOrStdout(), awsEndpoint, selfName())
				printDevGitHub(cmd.OutOrStdout(), github)
				printDevGCP(cmd.OutOrStdout(), gcp, selfName())
				if awsEndpoint == "" && github == nil && gcp == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "  (use `make run-cloud` for the AWS, GitHub and Google Cloud demo roles)\n\n")
				}
			})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", devDataDir, "directory for the dev configuration and data")
	cmd.Flags().StringVar(&listen, "listen", DefaultListen, "address to listen on (used when config.yaml is first written; with --etcd, always: this replica's address)")
	ha.register(cmd)
	cmd.AddCommand(newDevAttestCmd(), newDevLBCmd())
	return cmd
}

// prepareDev creates the dev files that are missing and loads the config.
func prepareDev(dir, listen string) (*Config, string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o700); err != nil {
		return nil, "", err
	}
	if _, err := attest.LoadOrCreateDevIssuer(dir, devIssuer); err != nil {
		return nil, "", fmt.Errorf("dev issuer: %w", err)
	}
	if _, err := readOrCreate(filepath.Join(dir, "kek"), func() (string, error) { return randomHex(32) }); err != nil {
		return nil, "", err
	}
	opToken, err := readOrCreate(filepath.Join(dir, "operator-token"), func() (string, error) {
		h, err := randomHex(24)
		return "valet_op_" + h, err
	})
	if err != nil {
		return nil, "", err
	}
	rsSecret, err := readOrCreate(filepath.Join(dir, devResourceServerSecret), func() (string, error) { return randomHex(24) })
	if err != nil {
		return nil, "", err
	}
	if _, err := readOrCreate(filepath.Join(dir, "policies", "dev.cedar"), func() (string, error) { return devPolicy, nil }); err != nil {
		return nil, "", err
	}
	if _, err := readOrCreate(filepath.Join(dir, "policies", "dev.test.yaml"), func() (string, error) { return devPolicyTests, nil }); err != nil {
		return nil, "", err
	}
	if _, err := readOrCreate(filepath.Join(dir, "config.yaml"), func() (string, error) {
		return fmt.Sprintf(devConfig, listen, "http://"+listen, broker.HashToken(opToken), devResourceServer, broker.HashToken(rsSecret)), nil
	}); err != nil {
		return nil, "", err
	}
	cfg, err := LoadConfig(filepath.Join(dir, "config.yaml"))
	if err != nil {
		return nil, "", configError{err}
	}
	return cfg, opToken, nil
}

// readOrCreate returns the trimmed content of path, writing make()'s output
// there (mode 0600) first if the file does not exist.
func readOrCreate(path string, make func() (string, error)) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	v, err := make()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", err
	}
	return strings.TrimSpace(v), nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// printDevIntrospection shows how a resource server checks a token, when
// the dev config has the dev introspection client (a config.yaml written
// by an older valet has none).
func printDevIntrospection(w io.Writer, cfg *Config, addr, dir, self string) {
	for _, c := range cfg.Introspection.Clients {
		if c.ClientID != devResourceServer || c.AuthMethod != broker.AuthClientSecretBasic {
			continue
		}
		secret, err := os.ReadFile(filepath.Join(dir, devResourceServerSecret))
		if err != nil || broker.HashToken(strings.TrimSpace(string(secret))) != c.ClientSecretSHA256 {
			break
		}
		fmt.Fprintf(w, `
As the resource server %s, check a token (RFC 7662 introspection):

  TOKEN=$(%s creds demo -o token)
  curl -s -u %s:%s -d token=$TOKEN %s/v1/introspect
`, devResourceServer, self, devResourceServer, strings.TrimSpace(string(secret)), addr)
		return
	}
	fmt.Fprintf(w, "\n  (add an introspection client to %s/config.yaml to call /v1/introspect; see \"Resource servers\" in the README)\n", dir)
}

// selfName is how the banner's commands call valet: the path it was
// started by, or "valet" when it was found on PATH.
func selfName() string {
	if !strings.Contains(os.Args[0], "/") {
		return "valet"
	}
	return os.Args[0]
}

func printDevBanner(w io.Writer, s *Server, cfg *Config, opToken, dir, vaultRoles string) {
	self := selfName()
	addr := "http://" + s.Addr()
	attestCmd := self + " dev attest"
	if dir != devDataDir {
		// The dev issuer's key is in dir: a pasted command must find it.
		attestCmd += " --data-dir " + shellQuote(dir)
	}
	fmt.Fprintf(w, `
valet dev is running at %s  (data in %s/)

  operator token:  %s
  web console:     %s/ui/   (sign in with the operator token)
  roles:           demo (jwt, 5m), demo-elevated (needs 1 approval)

Next, in another terminal:

  export VALET_ADDR=%s VALET_TOKEN=%s
  export VALET_ATTESTATION=$(%s --sub my-agent)
  %s creds demo                 # mint a short-lived token for the demo role
  %s leases list                # see its lease, as an operator

  %s creds demo-elevated --reason "fix prod" --wait   # approve it at /ui/

  %s signal --agent dev/my-agent --severity high --reason test   # revoke and quarantine it
  %s agents list                # its risk and quarantine (and at /ui/agents)
  %s agents release dev/my-agent --reason "checked"
`, addr, dir, opToken, addr, addr, opToken, attestCmd, self, self, self, self, self, self)
	printDevIntrospection(w, cfg, addr, dir, self)
	if vaultRoles == "" {
		fmt.Fprintf(w, "\n  (set VAULT_ADDR and VAULT_TOKEN, or use `make run-vault`, for the Vault demo roles)\n\n")
		return
	}
	pgPort := os.Getenv("VALET_DEV_PGPORT")
	if pgPort == "" {
		pgPort = "5432"
	}
	// The commands are pasted into a new terminal, where neither the
	// vault binary nor VAULT_ADDR is set: each line carries what it needs
	// (the credential brings VALET_VAULT_ADDR and VALET_VAULT_TOKEN).
	fmt.Fprintf(w, `
Vault roles:       %s

  %s exec demo-vault -- sh -c 'VAULT_ADDR=$VALET_VAULT_ADDR VAULT_TOKEN=$VALET_VAULT_TOKEN GODEBUG=x509negativeserial=1 %s kv get secret/valet-demo/hello'
  %s exec demo-db -- sh -c 'PGPASSWORD=$VALET_PASSWORD psql -h 127.0.0.1 -p %s -U $VALET_USERNAME postgres'

`, vaultRoles, self, vaultCLI(), self, pgPort)
}

// vaultCLI is the absolute path of the vault binary on PATH (make
// run-vault puts the test server's there), or "vault".
func vaultCLI() string {
	p, err := exec.LookPath("vault")
	if err != nil {
		return "vault"
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

func newDevAttestCmd() *cobra.Command {
	var (
		dataDir, sub, aud string
		ttl               time.Duration
		claims            []string
	)
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Print a dev attestation JWT signed by the dev issuer",
		Example: `  export VALET_ATTESTATION=$(valet dev attest --sub my-agent --claim team=data)
  valet dev attest --sub ci-bot --ttl 2m --claim 'env="prod"' --claim 'risk=10'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// A key made here would sign attestations no server trusts:
			// the dev issuer's key is the one `valet dev` created.
			if _, err := os.Stat(filepath.Join(dataDir, attest.DevIssuerKeyFile)); err != nil {
				return fmt.Errorf("no dev issuer key in %s: start `valet dev` first, and give `valet dev attest` the same --data-dir", dataDir)
			}
			iss, err := attest.LoadOrCreateDevIssuer(dataDir, devIssuer)
			if err != nil {
				return err
			}
			now := time.Now()
			jti, err := randomHex(16)
			if err != nil {
				return err
			}
			c := map[string]any{"sub": sub, "aud": aud, "iat": now.Unix(), "exp": now.Add(ttl).Unix(), "jti": jti}
			for _, kv := range claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--claim %q must be key=value", kv)
				}
				// A value that parses as JSON (number, bool, list,
				// object, quoted string) keeps its type; anything else is
				// a string.
				var jv any
				if err := json.Unmarshal([]byte(v), &jv); err == nil {
					c[k] = jv
				} else {
					c[k] = v
				}
			}
			tok, err := iss.Sign(c)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", devDataDir, "dev data directory (holds the dev issuer key)")
	cmd.Flags().StringVar(&sub, "sub", "dev-agent", "subject (the agent id becomes dev/<sub>)")
	cmd.Flags().StringVar(&aud, "aud", devAudience, "audience")
	cmd.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "lifetime of the attestation")
	cmd.Flags().StringArrayVar(&claims, "claim", nil, "extra claim key=value (repeatable; JSON values keep their type)")
	return cmd
}

const devConfig = `# valet dev configuration. Edit freely: valet dev keeps this file.
listen: %s
data_dir: .
public_url: %s
kek_file: kek
issuers:
  - name: dev
    issuer: valet-dev
    audiences: [valet]
    jwks_file: dev-issuer-jwks.json
    algorithms: [ES256]
backends:
  - name: tokens
    type: jwt
roles:
  - name: demo
    description: A demo access token for the demo API.
    backend: tokens
    ttl: 5m
    max_ttl: 1h
    audience: [demo-api]
    scopes: [demo.read, demo.write]
    labels: {env: dev}
  - name: demo-elevated
    description: Admin access to the demo API; an operator must approve each request.
    backend: tokens
    ttl: 5m
    max_ttl: 15m
    audience: [demo-api]
    scopes: [demo.admin]
    labels: {env: dev, tier: elevated}
    approval:
      required: 1
      break_glass: {allowed: true, max_ttl: 5m}
policy:
  dir: policies
operators:
  tokens:
    - name: dev-operator
      sha256: %s
      groups: [approvers]
introspection:
  clients:                  # resource servers that may call /v1/introspect
    - client_id: %s
      auth_method: client_secret_basic
      client_secret_sha256: %s   # the secret is in introspection-client-secret
limits:
  agent_rate: 50
  agent_burst: 100
`

const devPolicy = `// valet dev policy. Deny by default: only what a permit allows is minted,
// and any matching forbid wins.

// Agents of the dev issuer may mint the demo role for up to an hour.
@id("demo-mint")
permit(principal in Issuer::"dev", action == Action::"mint", resource == Role::"demo")
when { context.ttl_seconds <= 3600 };

@id("demo-renew")
permit(principal in Issuer::"dev", action == Action::"renew", resource == Role::"demo");

// Anyone of the dev issuer may ask for demo-elevated if they say why; an
// operator still has to approve it.
// Emergency access to demo-elevated, reviewed by an operator afterwards:
// valet creds demo-elevated --break-glass --reason "..."
@id("demo-elevated-break-glass")
permit(principal in Issuer::"dev", action == Action::"break_glass", resource == Role::"demo-elevated");

@id("demo-elevated-mint")
permit(principal in Issuer::"dev", action in [Action::"mint", Action::"redeem"], resource == Role::"demo-elevated")
when { context.reason != "" };

// The Vault demo roles (present when valet dev runs beside a Vault).
@id("demo-vault-mint")
permit(principal in Issuer::"dev", action in [Action::"mint", Action::"renew"], resource)
when { resource.backend == "vault" && resource.labels has "env" && resource.labels.env == "dev" };

// The cloud demo roles (present when valet dev runs beside the cloud test
// servers: make run-cloud).
@id("demo-cloud-mint")
permit(principal in Issuer::"dev", action == Action::"mint", resource)
when { resource.labels has "demo" && resource.labels.demo == "cloud" };

// Try: valet dev attest --claim blocked=true
@id("deny-blocked")
forbid(principal, action, resource)
when { principal.claims has blocked && principal.claims.blocked == true };

// An agent's risk score (context.risk, 0 to 100) rises with every signal
// about it and halves every signals.half_life. Above 70 it gets no
// elevated access: try
//   valet signal --agent dev/my-agent --severity critical --reason test --action alert
@id("deny-elevated-at-high-risk")
forbid(principal, action, resource == Role::"demo-elevated")
when { context.risk >= 70 };
`

const devPolicyTests = `# Run with: valet policy test valet-dev-data/policies
cases:
  - name: a dev agent may mint demo for 5 minutes
    principal: {issuer: dev, iss: valet-dev, sub: my-agent}
    role: {name: demo, backend: tokens, ttl: 5m, max_ttl: 1h}
    context: {ttl: 5m}
    expect: allow
    expect_policies: [demo-mint]
  - name: not for more than an hour
    principal: {issuer: dev, iss: valet-dev, sub: my-agent}
    role: {name: demo, backend: tokens, ttl: 5m, max_ttl: 2h}
    context: {ttl: 2h}
    expect: deny
  - name: a blocked agent gets nothing
    principal: {issuer: dev, iss: valet-dev, sub: my-agent, claims: {blocked: true}}
    role: {name: demo, backend: tokens}
    expect: deny
    expect_policies: [deny-blocked]
  - name: demo-elevated needs a reason
    principal: {issuer: dev, iss: valet-dev, sub: my-agent}
    role: {name: demo-elevated, backend: tokens, approvals_required: 1}
    expect: deny
  - name: no elevated access at risk 70 or more
    principal: {issuer: dev, iss: valet-dev, sub: my-agent}
    role: {name: demo-elevated, backend: tokens, approvals_required: 1}
    context: {reason: fix prod, risk: 70}
    expect: deny
    expect_policies: [deny-elevated-at-high-risk]
  - name: the demo role at risk 90 is still allowed
    principal: {issuer: dev, iss: valet-dev, sub: my-agent}
    role: {name: demo, backend: tokens, ttl: 5m, max_ttl: 1h}
    context: {ttl: 5m, risk: 90}
    expect: allow
`
