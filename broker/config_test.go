package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimalConfig = `
data_dir: /var/lib/valet
issuers:
  - name: k8s
    issuer: https://kubernetes.default.svc
    audiences: [valet]
    jwks_file: /etc/valet/k8s.json
backends:
  - name: tokens
    type: jwt
roles:
  - name: demo
    backend: tokens
policy:
  dir: /etc/valet/policies
`

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, DefaultListen},
		{"public_url", cfg.PublicURL, "http://" + DefaultListen},
		{"issuer type", cfg.Issuers[0].Type, IssuerOIDC},
		{"algorithms", strings.Join(cfg.Issuers[0].Algorithms, ","), "RS256,ES256"},
		{"clock skew", cfg.Issuers[0].ClockSkew.D(), 30 * time.Second},
		{"max token age", cfg.Issuers[0].MaxTokenAge.D(), 24 * time.Hour},
		{"role ttl", cfg.Roles[0].TTL.D(), 15 * time.Minute},
		{"role max_ttl", cfg.Roles[0].MaxTTL.D(), time.Hour},
		{"renewable", cfg.Roles[0].IsRenewable(), true},
		{"watch", *cfg.Policy.Watch, true},
		{"policy on_error", cfg.Policy.OnError, PolicyOnErrorDeny},
		{"body limit", cfg.Limits.MaxBodyBytes, int64(DefaultMaxBodyBytes)},
		{"mint timeout", cfg.Limits.MintTimeout.D(), 10 * time.Second},
		{"revoke attempts", cfg.Leases.RevokeAttempts, 8},
		{"auth failures per minute", *cfg.Limits.AuthFailuresPerMinute, 10},
		{"auth failure records per minute", *cfg.Limits.AuthFailureRecordsPerMinute, 30},
		{"trusted proxies", len(cfg.TrustedProxies), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseConfigRejects(t *testing.T) {
	cases := []struct {
		name string
		edit func(string) string
		want string
	}{
		{"unknown top-level key", func(s string) string { return s + "colour: blue\n" }, "field colour not found"},
		{"unknown issuer key", func(s string) string {
			return strings.Replace(s, "    audiences: [valet]", "    audiences: [valet]\n    audience: valet", 1)
		}, "field audience not found"},
		{"no audiences", func(s string) string { return strings.Replace(s, "    audiences: [valet]\n", "", 1) }, "issuers[0].audiences must not be empty"},
		{"two key sources", func(s string) string {
			return strings.Replace(s, "    jwks_file: /etc/valet/k8s.json", "    jwks_file: /etc/valet/k8s.json\n    discovery: true", 1)
		}, "issuers[0] needs exactly one of jwks_file, jwks_url or discovery"},
		{"HMAC algorithm", func(s string) string {
			return strings.Replace(s, "    audiences: [valet]", "    audiences: [valet]\n    algorithms: [HS256]", 1)
		}, `issuers[0].algorithms[0] "HS256" is not allowed`},
		{"none algorithm", func(s string) string {
			return strings.Replace(s, "    audiences: [valet]", "    audiences: [valet]\n    algorithms: [none]", 1)
		}, `"none" is not allowed`},
		{"role on unknown backend", func(s string) string { return strings.Replace(s, "    backend: tokens", "    backend: vault", 1) }, `roles[0].backend "vault" is not one of the configured backends`},
		{"max_ttl below ttl", func(s string) string {
			return strings.Replace(s, "    backend: tokens", "    backend: tokens\n    ttl: 2h\n    max_ttl: 1h", 1)
		}, "roles[0].max_ttl (1h0m0s) must not be less than ttl (2h0m0s)"},
		{"bad duration", func(s string) string {
			return strings.Replace(s, "    backend: tokens", "    backend: tokens\n    ttl: soon", 1)
		}, "invalid duration"},
		{"bad role name", func(s string) string { return strings.Replace(s, "  - name: demo", "  - name: Demo Role", 1) }, `roles[0].name "Demo Role"`},
		{"no policy dir", func(s string) string { return strings.Replace(s, "policy:\n  dir: /etc/valet/policies\n", "", 1) }, "policy.dir must be set"},
		{"unknown policy on_error", func(s string) string {
			return strings.Replace(s, "  dir: /etc/valet/policies\n", "  dir: /etc/valet/policies\n  on_error: ignore\n", 1)
		}, `policy.on_error "ignore" must be deny or skip`},
		{"no issuers", func(s string) string {
			i := strings.Index(s, "issuers:")
			j := strings.Index(s, "backends:")
			return s[:i] + s[j:]
		}, "issuers must list at least one"},
		{"bad operator hash", func(s string) string { return s + "operators:\n  tokens:\n    - name: alice\n      sha256: abc\n" }, "operators.tokens[0].sha256 must be the hex SHA-256"},
		{"operator issuer shares a name", func(s string) string {
			return s + "operators:\n  issuers:\n    - name: k8s\n      issuer: https://sso\n      audiences: [valet]\n      discovery: true\n"
		}, `operators.issuers[0].name "k8s" is also an attestation issuer's name`},
		{"issuer with a fragment", func(s string) string {
			return strings.Replace(s, "    issuer: https://kubernetes.default.svc", "    issuer: https://kubernetes.default.svc#x", 1)
		}, `issuers[0].issuer "https://kubernetes.default.svc#x" must not contain '#' or control characters`},
		{"webhook name not a name", func(s string) string {
			return s + "notifications:\n  webhooks:\n    - name: \"Sec\\nops\"\n      url: https://hooks.example/x\n"
		}, `notifications.webhooks[0].name "Sec\nops" must be 1 to 63 lower-case letters`},
		{"trusted proxy not an address", func(s string) string { return s + "trusted_proxies: [10.0.0.0/8, proxy.internal]\n" },
			`trusted_proxies[1] "proxy.internal" must be an IP address or a CIDR prefix`},
		{"trusted proxy with host bits", func(s string) string { return s + "trusted_proxies: [10.0.0.1/8]\n" },
			`trusted_proxies[0] "10.0.0.1/8" has bits set after the prefix length; did you mean 10.0.0.0/8?`},
		{"no failures allowed", func(s string) string { return s + "limits:\n  auth_failures_per_minute: 0\n" },
			"limits.auth_failures_per_minute must be between 1 and 100000, not 0"},
		{"negative failure records", func(s string) string { return s + "limits:\n  auth_failure_records_per_minute: -1\n" },
			"limits.auth_failure_records_per_minute must be between 0 and 100000, not -1"},
		{"two documents", func(s string) string { return s + "---\nlisten: x\n" }, "single YAML document"},
		{"empty", func(string) string { return "" }, "config is empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.edit(minimalConfig)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestLoadConfigResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	text := strings.NewReplacer("/var/lib/valet", "data", "/etc/valet/k8s.json", "k8s.json", "/etc/valet/policies", "policies").Replace(minimalConfig)
	path := filepath.Join(dir, "valet.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != filepath.Join(dir, "data") || cfg.Policy.Dir != filepath.Join(dir, "policies") || cfg.Issuers[0].JWKSFile != filepath.Join(dir, "k8s.json") {
		t.Fatalf("paths not resolved against the config's directory: %q %q %q", cfg.DataDir, cfg.Policy.Dir, cfg.Issuers[0].JWKSFile)
	}
}

func TestParseKEK(t *testing.T) {
	if _, err := ParseKEK(strings.Repeat("ab", 32) + "\n"); err != nil {
		t.Fatalf("valid KEK refused: %v", err)
	}
	for _, bad := range []string{"", "zz", strings.Repeat("ab", 16), strings.Repeat("ab", 33)} {
		if _, err := ParseKEK(bad); err == nil {
			t.Errorf("KEK %q accepted", bad)
		}
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := LoadConfig("../deploy/examples/valet.yaml")
	if err != nil {
		t.Fatalf("deploy/examples/valet.yaml: %v", err)
	}
	if cfg.Issuers[1].Issuer != GitHubActionsIssuer || !cfg.Issuers[1].Discovery {
		t.Fatalf("github preset not applied: %+v", cfg.Issuers[1])
	}
}

// TestParseConfigZeroMeansZero: a limit set to 0 is 0, not its default.
func TestParseConfigZeroMeansZero(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig + "limits:\n  auth_failure_records_per_minute: 0\ntrusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Limits.AuthFailureRecords(); got != 0 {
		t.Errorf("limits.auth_failure_records_per_minute: 0 became %d", got)
	}
	if got := strings.Join(cfg.TrustedProxies, ","); got != "10.0.0.0/8,::1" {
		t.Errorf("trusted_proxies = %s", got)
	}
}

// ssoIssuer is an operator issuer; %s are its extra keys.
const ssoIssuer = `operators:
  issuers:
    - name: sso
      issuer: https://sso.example.com
      audiences: [valet]
      discovery: true
%s`

func TestOperatorIdentityConfig(t *testing.T) {
	tokens := func(names ...string) string {
		s := "operators:\n  tokens:\n"
		for i, n := range names {
			s += "    - name: " + n + "\n      sha256: " + strings.Repeat(string(rune('a'+i)), 64) + "\n"
		}
		return s
	}
	approvers := func(list string) string {
		return strings.Replace(minimalConfig, "    backend: tokens", "    backend: tokens\n    approval:\n      required: 1\n      approvers: "+list, 1)
	}
	console := func(keys string) string {
		return "public_url: https://valet.example.com\nconsole:\n  oidc:\n    issuer: https://sso.example.com\n    client_id: valet\n" + keys
	}
	cases := []struct {
		name   string
		config string
		want   string // "" when the config is valid
	}{
		{"issuer with allowed_groups", minimalConfig + fmt.Sprintf(ssoIssuer, "      allowed_groups: [sre]\n"), ""},
		{"issuer with allow_all", minimalConfig + fmt.Sprintf(ssoIssuer, "      allow_all: true\n"), ""},
		{"issuer admitting every account by default", minimalConfig + fmt.Sprintf(ssoIssuer, ""),
			"operators.issuers[0].allowed_groups must list the groups whose members are operators, or set allow_all: true"},
		{"issuer with both", minimalConfig + fmt.Sprintf(ssoIssuer, "      allowed_groups: [sre]\n      allow_all: true\n"),
			"operators.issuers[0]: set allowed_groups or allow_all: true, not both"},
		{"allowed groups differing in case", minimalConfig + fmt.Sprintf(ssoIssuer, "      allowed_groups: [sre, SRE]\n"),
			`operators.issuers[0].allowed_groups[1] "SRE" is the same name as operators.issuers[0].allowed_groups[0] "sre"`},
		{"email_verified_default without email names", minimalConfig + fmt.Sprintf(ssoIssuer, "      allow_all: true\n      name_claim: preferred_username\n      email_verified_default: true\n"),
			`operators.issuers[0].email_verified_default applies only when name_claim is email (it is "preferred_username")`},
		{"email_verified_default", minimalConfig + fmt.Sprintf(ssoIssuer, "      allow_all: true\n      email_verified_default: true\n"), ""},
		{"console admitting every account by default", minimalConfig + console(""),
			"console.oidc.allowed_groups must list the groups whose members are operators, or set allow_all: true"},
		{"console with allowed_groups", minimalConfig + console("    allowed_groups: [sre]\n"), ""},
		{"operator names differing in case", minimalConfig + tokens("alice@example.com", "bob", "ALICE@example.com"),
			`operators.tokens[2].name "ALICE@example.com" is the same name as operators.tokens[0].name "alice@example.com" (names compare case-insensitively)`},
		{"operator name with a control character", minimalConfig + tokens(`"al\u0007ice"`),
			`operators.tokens[0].name: not a valid name: "al\aice" holds a control character`},
		{"operator name with surrounding spaces", minimalConfig + tokens(`" alice"`), `operators.tokens[0].name " alice" must be written "alice"`},
		{"one token for two operators", minimalConfig + "operators:\n  tokens:\n    - name: alice\n      sha256: " + strings.Repeat("a", 64) +
			"\n    - name: bob\n      sha256: " + strings.Repeat("A", 64) + "\n", "operators.tokens[1].sha256 is the token of operators.tokens[0] too"},
		{"approver operators differing in case", approvers("{operators: [Alice@Example.com, alice@example.com]}"),
			`roles[0].approval.approvers.operators[1] "alice@example.com" is the same name as roles[0].approval.approvers.operators[0] "Alice@Example.com"`},
		{"approver groups differing in case", approvers("{groups: [sre, Sre]}"),
			`roles[0].approval.approvers.groups[1] "Sre" is the same name as roles[0].approval.approvers.groups[0] "sre"`},
		{"distinct approvers", approvers("{operators: [alice, bob], groups: [sre]}"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.config))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error = %v, want it to contain %q", err, c.want)
			}
		})
	}
	cfg, err := ParseConfig([]byte(minimalConfig + fmt.Sprintf(ssoIssuer, "      allow_all: true\n") + "  tokens: []\n" + console("    allow_all: true\n")))
	if err != nil {
		t.Fatal(err)
	}
	for _, ic := range []OperatorIdentityConfig{cfg.Operators.Issuers[0].OperatorIdentityConfig, cfg.Console.OIDC.OperatorIdentityConfig} {
		if ic.NameClaim != "email" || ic.GroupsClaim != "groups" || ic.EmailVerifiedDefault {
			t.Errorf("defaults %+v: want name_claim email, groups_claim groups, email_verified_default false", ic)
		}
	}
}
