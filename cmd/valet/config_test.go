package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/jobs"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases/config"
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
		{"issuer type", cfg.Issuers[0].Type, attest.IssuerOIDC},
		{"algorithms", strings.Join(cfg.Issuers[0].Algorithms, ","), "RS256,ES256"},
		{"clock skew", cfg.Issuers[0].ClockSkew.D(), 30 * time.Second},
		{"max token age", cfg.Issuers[0].MaxTokenAge.D(), 24 * time.Hour},
		{"role ttl", cfg.Roles[0].TTL.D(), 15 * time.Minute},
		{"role max_ttl", cfg.Roles[0].MaxTTL.D(), time.Hour},
		{"renewable", cfg.Roles[0].IsRenewable(), true},
		{"watch", cfg.Policy.Watching(), true},
		{"policy on_error", cfg.Policy.OnError, broker.PolicyOnErrorDeny},
		{"body limit", cfg.Limits.MaxBodyBytes, int64(broker.DefaultMaxBodyBytes)},
		{"mint timeout", cfg.Limits.MintTimeout.D(), 10 * time.Second},
		{"revoke attempts", cfg.Leases.RevokeAttempts, 8},
		{"auth failures per minute", cfg.Limits.AuthFailuresPerMinute, 10},
		{"auth failure records per minute", cfg.Limits.AuthFailureRecordsPerMinute, 30},
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
		{"signal source without a credential", func(s string) string { return s + "signals:\n  sources:\n    - name: siem\n" },
			"signals.sources[0] needs token_sha256, or issuer and subject"},
		{"signal source naming no signals issuer", func(s string) string {
			return s + "signals:\n  sources:\n    - name: siem\n      issuer: gha\n      subject: x\n"
		}, `signals.sources[0].issuer "gha" is not one of signals.issuers`},
		{"unknown key in signals", func(s string) string { return s + "signals:\n  colour: red\n" }, "field colour not found"},
		{"unknown key in a signal source", func(s string) string {
			return s + "signals:\n  sources:\n    - name: siem\n      token: abc\n"
		}, "field token not found"},
		{"an action that is none", func(s string) string { return s + "signals:\n  actions: {high: nuke}\n" },
			`signals.actions.high "nuke" must be alert, revoke or quarantine`},
		{"a signals issuer sharing an audience with agents'", func(s string) string {
			return s + "signals:\n  issuers:\n    - name: k8s-signals\n      issuer: https://kubernetes.default.svc\n      audiences: [valet]\n      jwks_file: /x.json\n"
		}, "give signal sources an audience of their own"},
		{"a transmitter without keys", func(s string) string {
			return s + "signals:\n  transmitters:\n    - name: idp\n      issuer: https://idp.example\n"
		}, "signals.transmitters[0] needs exactly one of jwks_file or jwks_url"},
		{"a detector's severity that is none", func(s string) string { return s + "signals:\n  detectors:\n    replay: {severity: dire}\n" },
			`signals.detectors.replay.severity "dire" must be info, low, medium, high or critical`},
		{"a detector's action that is none", func(s string) string { return s + "signals:\n  detectors:\n    new_network: {action: block}\n" },
			`signals.detectors.new_network.action "block" must be alert, revoke or quarantine`},
		{"a detector valet does not have", func(s string) string { return s + "signals:\n  detectors:\n    geo_velocity: {}\n" },
			"field geo_velocity not found"},
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
	cfg, err := LoadConfig("../../deploy/examples/valet.yaml")
	if err != nil {
		t.Fatalf("deploy/examples/valet.yaml: %v", err)
	}
	if cfg.Issuers[1].Issuer != attest.GitHubActionsIssuer || !cfg.Issuers[1].Discovery {
		t.Fatalf("github preset not applied: %+v", cfg.Issuers[1])
	}
}

// TestParseConfigZeroMeansZero: a limit set to 0 is 0, not its default.
func TestParseConfigZeroMeansZero(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig + "limits:\n  auth_failure_records_per_minute: 0\ntrusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Limits.AuthFailureRecordsPerMinute; got != 0 {
		t.Errorf("limits.auth_failure_records_per_minute: 0 became %d", got)
	}
	if got := strings.Join(cfg.TrustedProxies, ","); got != "10.0.0.0/8,::1" {
		t.Errorf("trusted_proxies = %s", got)
	}
}

// keysConfig is a configuration that has every list the numeric keys live
// in (an operator issuer, two roles, a webhook), as nested maps so a test
// can set any key.
func keysConfig() map[string]any {
	return map[string]any{
		"data_dir": "/var/lib/valet",
		"issuers": []any{map[string]any{
			"name": "k8s", "issuer": "https://kubernetes.default.svc", "audiences": []any{"valet"}, "jwks_file": "/etc/valet/k8s.json",
		}},
		"backends": []any{map[string]any{"name": "tokens", "type": "jwt"}},
		"roles": []any{
			map[string]any{"name": "demo", "backend": "tokens"},
			map[string]any{"name": "glass", "backend": "tokens", "approval": map[string]any{"required": 1, "break_glass": map[string]any{"allowed": true}}},
		},
		"policy": map[string]any{"dir": "/etc/valet/policies"},
		"operators": map[string]any{"issuers": []any{map[string]any{
			"name": "sso", "issuer": "https://sso.example.com", "audiences": []any{"valet"}, "discovery": true, "allow_all": true,
		}}},
		"notifications": map[string]any{"webhooks": []any{map[string]any{"name": "sec", "url": "https://hooks.example.com/valet"}}},
		"introspection": map[string]any{"clients": []any{map[string]any{"client_id": "api", "client_secret_sha256": strings.Repeat("ab", 32)}}},
		"signals": map[string]any{
			"sources": []any{map[string]any{"name": "siem", "token_sha256": strings.Repeat("cd", 32)}},
			"issuers": []any{map[string]any{
				"name": "gha", "issuer": "https://token.actions.githubusercontent.com", "audiences": []any{"valet-signals"}, "discovery": true,
			}},
			"transmitters": []any{map[string]any{"name": "idp", "issuer": "https://idp.example.com", "jwks_url": "https://idp.example.com/jwks"}},
		},
		"jobs": []any{
			map[string]any{"name": "housekeeping"},
			map[string]any{"name": "signing-key-rotation"},
			map[string]any{"name": "audit-checkpoint", "witnesses": []any{map[string]any{"type": "webhook", "url": "https://witness.example.com"}}},
			map[string]any{"name": "audit-archive"},
		},
	}
}

// setKey sets the key at a dotted path ("roles.1.approval.required"; a
// number indexes a list) in a keysConfig, creating maps on the way.
func setKey(t *testing.T, m map[string]any, path string, v any) {
	t.Helper()
	var cur any = m
	parts := strings.Split(path, ".")
	for i, p := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				c[p] = v
				return
			}
			if _, ok := c[p]; !ok {
				c[p] = map[string]any{}
			}
			cur = c[p]
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n >= len(c) || last {
				t.Fatalf("bad path %s", path)
			}
			cur = c[n]
		}
	}
}

func parseKeys(t *testing.T, m map[string]any) (*Config, error) {
	t.Helper()
	b, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return ParseConfig(b)
}

// configKeys lists every numeric and duration key with its default and what
// 0 does: honoured (refused == "") or refused with an error naming the key.
var configKeys = []struct {
	path    string // dotted, for setKey
	get     func(*Config) any
	def     any
	refused string // "" when 0 is honoured
}{
	{"log.flush_interval", func(c *Config) any { return c.Log.FlushInterval.D() }, 100 * time.Millisecond, ""},
	{"issuers.0.clock_skew", func(c *Config) any { return c.Issuers[0].ClockSkew.D() }, 30 * time.Second, ""},
	{"issuers.0.max_token_age", func(c *Config) any { return c.Issuers[0].MaxTokenAge.D() }, 24 * time.Hour, ""},
	{"issuers.0.jwks_refresh_interval", func(c *Config) any { return c.Issuers[0].JWKSRefreshInterval.D() }, time.Minute,
		"issuers[0].jwks_refresh_interval must be at least 1s; it is 0s"},
	{"issuers.0.jwks_cache_ttl", func(c *Config) any { return c.Issuers[0].JWKSCacheTTL.D() }, time.Hour,
		"issuers[0].jwks_cache_ttl must be positive and not less than jwks_refresh_interval (1m0s); it is 0s"},
	{"operators.issuers.0.clock_skew", func(c *Config) any { return c.Operators.Issuers[0].ClockSkew.D() }, 30 * time.Second, ""},
	{"operators.issuers.0.max_token_age", func(c *Config) any { return c.Operators.Issuers[0].MaxTokenAge.D() }, 24 * time.Hour, ""},
	{"operators.issuers.0.jwks_refresh_interval", func(c *Config) any { return c.Operators.Issuers[0].JWKSRefreshInterval.D() }, time.Minute,
		"operators.issuers[0].jwks_refresh_interval must be at least 1s; it is 0s"},
	{"operators.issuers.0.jwks_cache_ttl", func(c *Config) any { return c.Operators.Issuers[0].JWKSCacheTTL.D() }, time.Hour,
		"operators.issuers[0].jwks_cache_ttl must be positive and not less than jwks_refresh_interval (1m0s); it is 0s"},
	{"roles.0.ttl", func(c *Config) any { return c.Roles[0].TTL.D() }, 15 * time.Minute, "roles[0].ttl must be positive; it is 0s"},
	{"roles.0.max_ttl", func(c *Config) any { return c.Roles[0].MaxTTL.D() }, time.Hour, "roles[0].max_ttl (0s) must not be less than ttl (15m0s)"},
	{"roles.0.approval.required", func(c *Config) any { return c.Roles[0].Approval.Required }, 0, ""},
	{"roles.0.approval.request_ttl", func(c *Config) any { return c.Roles[0].Approval.RequestTTL.D() }, time.Hour,
		"roles[0].approval.request_ttl must be at least 1m; it is 0s"},
	{"roles.0.approval.redeem_within", func(c *Config) any { return c.Roles[0].Approval.RedeemWithin.D() }, 15 * time.Minute,
		"roles[0].approval.redeem_within must be at least 10s; it is 0s"},
	{"roles.1.approval.break_glass.max_ttl", func(c *Config) any { return c.Roles[1].Approval.BreakGlass.MaxTTL.D() }, 15 * time.Minute,
		"roles[1].approval.break_glass.max_ttl must be positive and at most max_ttl (1h0m0s); it is 0s"},
	{"limits.max_body_bytes", func(c *Config) any { return c.Limits.MaxBodyBytes }, int64(64 << 10),
		"limits.max_body_bytes must be between 1024 and 16777216; it is 0"},
	{"limits.max_header_bytes", func(c *Config) any { return c.Limits.MaxHeaderBytes }, 32 << 10,
		"limits.max_header_bytes must be between 4096 and 1048576; it is 0"},
	{"limits.max_attestation_bytes", func(c *Config) any { return c.Limits.MaxAttestationBytes }, 16 << 10,
		"limits.max_attestation_bytes must be between 1024 and 1048576; it is 0"},
	{"limits.agent_rate", func(c *Config) any { return c.Limits.AgentRate }, 10.0,
		"limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is 0"},
	{"limits.agent_burst", func(c *Config) any { return c.Limits.AgentBurst }, 20, "limits.agent_burst must be at least 1; it is 0"},
	{"limits.mint_timeout", func(c *Config) any { return c.Limits.MintTimeout.D() }, 10 * time.Second,
		"limits.mint_timeout must be between 100ms and 5m; it is 0s"},
	{"limits.attestation_cache", func(c *Config) any { return c.Limits.AttestationCache }, 10000, ""},
	{"limits.auth_failures_per_minute", func(c *Config) any { return c.Limits.AuthFailuresPerMinute }, 10,
		"limits.auth_failures_per_minute must be between 1 and 100000, not 0"},
	{"limits.auth_failure_records_per_minute", func(c *Config) any { return c.Limits.AuthFailureRecordsPerMinute }, 30, ""},
	{"leases.revoke_attempts", func(c *Config) any { return c.Leases.RevokeAttempts }, 8, "leases.revoke_attempts must be at least 1; it is 0"},
	{"storage.etcd.dial_timeout", func(c *Config) any { return c.Storage.Etcd.DialTimeout.D() }, 5 * time.Second,
		"storage.etcd.dial_timeout must be positive; it is 0s"},
	{"storage.etcd.request_timeout", func(c *Config) any { return c.Storage.Etcd.RequestTimeout.D() }, 5 * time.Second,
		"storage.etcd.request_timeout must be positive; it is 0s"},
	{"storage.etcd.leader_ttl", func(c *Config) any { return c.Storage.Etcd.LeaderTTL.D() }, 10 * time.Second,
		"storage.etcd.leader_ttl must be a whole number of seconds, at least 1s; it is 0s"},
	{"leases.revoke_backoff", func(c *Config) any { return c.Leases.RevokeBackoff.D() }, time.Second, "leases.revoke_backoff must be positive; it is 0s"},
	{"leases.revoke_max_backoff", func(c *Config) any { return c.Leases.RevokeMaxBackoff.D() }, 5 * time.Minute,
		"leases.revoke_max_backoff must be positive and not less than revoke_backoff (1s); it is 0s"},
	{"leases.revoke_concurrency", func(c *Config) any { return c.Leases.RevokeConcurrency }, 16,
		"leases.revoke_concurrency must be between 1 and 1024; it is 0"},
	{"leases.retention", func(c *Config) any { return c.Leases.Retention.D() }, 7 * 24 * time.Hour, ""},
	{"notifications.webhooks.0.timeout", func(c *Config) any { return c.Notifications.Webhooks[0].Timeout.D() }, 5 * time.Second,
		"notifications.webhooks[0].timeout must be positive; it is 0s"},
	{"notifications.webhooks.0.max_attempts", func(c *Config) any { return c.Notifications.Webhooks[0].MaxAttempts }, 8,
		"notifications.webhooks[0].max_attempts must be at least 1 (1 sends once, without retries); it is 0"},
	{"console.session_idle", func(c *Config) any { return c.Console.SessionIdle.D() }, 15 * time.Minute,
		"console.session_idle must be positive; it is 0s"},
	{"console.session_max", func(c *Config) any { return c.Console.SessionMax.D() }, 8 * time.Hour,
		"console.session_max must be positive and not less than session_idle (15m0s); it is 0s"},
	{"console.fresh_login", func(c *Config) any { return c.Console.FreshLogin.D() }, 10 * time.Minute,
		"console.fresh_login must be positive; it is 0s"},
	{"signals.half_life", func(c *Config) any { return c.Signals.HalfLife.D() }, 6 * time.Hour, "signals.half_life must be at least 1m; it is 0s"},
	{"signals.points.info", func(c *Config) any { return c.Signals.Points.Info }, 0, ""},
	{"signals.points.low", func(c *Config) any { return c.Signals.Points.Low }, 10, ""},
	{"signals.points.medium", func(c *Config) any { return c.Signals.Points.Medium }, 30, ""},
	{"signals.points.high", func(c *Config) any { return c.Signals.Points.High }, 60, ""},
	{"signals.points.critical", func(c *Config) any { return c.Signals.Points.Critical }, 90, ""},
	{"signals.auto_release", func(c *Config) any { return c.Signals.AutoRelease.D() }, time.Duration(0), ""},
	{"signals.retention", func(c *Config) any { return c.Signals.Retention.D() }, 30 * 24 * time.Hour, ""},
	{"signals.sources.0.rate", func(c *Config) any { return c.Signals.Sources[0].Rate }, 5.0,
		"signals.sources[0].rate must be a positive number of signals per second (.inf for no limit); it is 0"},
	{"signals.sources.0.burst", func(c *Config) any { return c.Signals.Sources[0].Burst }, 20, "signals.sources[0].burst must be at least 1; it is 0"},
	{"signals.issuers.0.clock_skew", func(c *Config) any { return c.Signals.Issuers[0].ClockSkew.D() }, 30 * time.Second, ""},
	{"signals.issuers.0.max_token_age", func(c *Config) any { return c.Signals.Issuers[0].MaxTokenAge.D() }, 24 * time.Hour, ""},
	{"signals.issuers.0.jwks_refresh_interval", func(c *Config) any { return c.Signals.Issuers[0].JWKSRefreshInterval.D() }, time.Minute,
		"signals.issuers[0].jwks_refresh_interval must be at least 1s; it is 0s"},
	{"signals.issuers.0.jwks_cache_ttl", func(c *Config) any { return c.Signals.Issuers[0].JWKSCacheTTL.D() }, time.Hour,
		"signals.issuers[0].jwks_cache_ttl must be positive and not less than jwks_refresh_interval (1m0s); it is 0s"},
	{"signals.transmitters.0.clock_skew", func(c *Config) any { return c.Signals.Transmitters[0].ClockSkew.D() }, 30 * time.Second, ""},
	{"signals.transmitters.0.max_age", func(c *Config) any { return c.Signals.Transmitters[0].MaxAge.D() }, time.Hour,
		"signals.transmitters[0].max_age must be between 1m and 168h0m0s (each SET's jti is remembered that long); it is 0s"},
	{"signals.detectors.max_tracked", func(c *Config) any { return c.Signals.Detectors.MaxTracked }, 10000,
		"signals.detectors.max_tracked must be at least 1; it is 0"},
	{"signals.detectors.mint_rate.cooldown", func(c *Config) any { return c.Signals.Detectors.MintRate.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.mint_rate.window", func(c *Config) any { return c.Signals.Detectors.MintRate.Window.D() }, time.Minute,
		"signals.detectors.mint_rate.window must be at least 1s; it is 0s"},
	{"signals.detectors.mint_rate.baseline", func(c *Config) any { return c.Signals.Detectors.MintRate.Baseline.D() }, time.Hour,
		"signals.detectors.mint_rate.baseline must be at least the window (1m0s); it is 0s"},
	{"signals.detectors.mint_rate.factor", func(c *Config) any { return c.Signals.Detectors.MintRate.Factor }, 10.0,
		"signals.detectors.mint_rate.factor must be a number greater than 1; it is 0"},
	{"signals.detectors.mint_rate.min_mints", func(c *Config) any { return c.Signals.Detectors.MintRate.MinMints }, 30, ""},
	{"signals.detectors.mint_rate.ceiling", func(c *Config) any { return c.Signals.Detectors.MintRate.Ceiling }, 600,
		"signals.detectors.mint_rate.ceiling must be at least 1 mint per window; it is 0"},
	{"signals.detectors.new_role.cooldown", func(c *Config) any { return c.Signals.Detectors.NewRole.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.new_role.learning", func(c *Config) any { return c.Signals.Detectors.NewRole.Learning.D() }, 24 * time.Hour, ""},
	{"signals.detectors.denial_burst.cooldown", func(c *Config) any { return c.Signals.Detectors.DenialBurst.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.denial_burst.window", func(c *Config) any { return c.Signals.Detectors.DenialBurst.Window.D() }, time.Minute,
		"signals.detectors.denial_burst.window must be at least 1s; it is 0s"},
	{"signals.detectors.denial_burst.threshold", func(c *Config) any { return c.Signals.Detectors.DenialBurst.Threshold }, 10,
		"signals.detectors.denial_burst.threshold must be at least 1 denial; it is 0"},
	{"signals.detectors.replay.cooldown", func(c *Config) any { return c.Signals.Detectors.Replay.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.replay.remember", func(c *Config) any { return c.Signals.Detectors.Replay.Remember.D() }, 24 * time.Hour, ""},
	{"signals.detectors.revoked_use.cooldown", func(c *Config) any { return c.Signals.Detectors.RevokedUse.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.revoked_use.grace", func(c *Config) any { return c.Signals.Detectors.RevokedUse.Grace.D() }, time.Minute, ""},
	{"signals.detectors.new_network.cooldown", func(c *Config) any { return c.Signals.Detectors.NewNetwork.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.new_network.ipv4_prefix", func(c *Config) any { return c.Signals.Detectors.NewNetwork.IPv4Prefix }, 24, ""},
	{"signals.detectors.new_network.ipv6_prefix", func(c *Config) any { return c.Signals.Detectors.NewNetwork.IPv6Prefix }, 64, ""},
	{"signals.detectors.new_network.max_networks", func(c *Config) any { return c.Signals.Detectors.NewNetwork.MaxNetworks }, 16,
		"signals.detectors.new_network.max_networks must be at least 1; it is 0"},
	{"signals.detectors.renewal_hold.cooldown", func(c *Config) any { return c.Signals.Detectors.RenewalHold.Cooldown.D() }, 15 * time.Minute, ""},
	{"signals.detectors.renewal_hold.hold", func(c *Config) any { return c.Signals.Detectors.RenewalHold.Hold.D() }, time.Hour, ""},
	{"jobs.0.jitter", func(c *Config) any { return configuredJob(c, "housekeeping").Jitter }, time.Duration(0), ""},
	{"jobs.0.timeout", func(c *Config) any { return configuredJob(c, "housekeeping").Timeout }, 5 * time.Minute,
		"jobs[0].timeout must be positive; it is 0s"},
	{"jobs.1.prepublish", func(c *Config) any {
		return jobSettings[*jobdefs.SigningKeySettings](c, "signing-key-rotation").Prepublish.D()
	}, time.Hour, "jobs[1].prepublish must be at least 5m0s"},
	{"jobs.2.witnesses.0.timeout", func(c *Config) any {
		return jobSettings[*jobdefs.CheckpointSettings](c, "audit-checkpoint").Witnesses[0].Timeout.D()
	}, 5 * time.Second, "jobs[2].witnesses[0].timeout must be positive; it is 0s"},
	{"jobs.3.hot_window", func(c *Config) any {
		return jobSettings[*jobdefs.AuditArchiveSettings](c, "audit-archive").HotWindow.D()
	}, 30 * 24 * time.Hour, ""},
}

// configuredJob is the named job as the configuration resolves it.
func configuredJob(c *Config, name string) jobs.Resolved {
	resolved, err := jobdefs.Resolve(c.Jobs)
	if err != nil {
		panic(err)
	}
	for _, r := range resolved {
		if r.Name == name {
			return r
		}
	}
	panic("no job " + name)
}

// jobSettings is the named job's decoded settings.
func jobSettings[T any](c *Config, name string) T {
	v, err := jobdefs.Settings(configuredJob(c, name))
	if err != nil {
		panic(err)
	}
	return v.(T)
}

// TestConfigKeyAbsentOrZero: an absent key takes its default; a key set to
// 0 keeps 0 or is refused with an error naming the key. Both spellings of
// a zero duration (0s and the number 0) are tried.
func TestConfigKeyAbsentOrZero(t *testing.T) {
	for _, k := range configKeys {
		t.Run(k.path, func(t *testing.T) {
			cfg, err := parseKeys(t, keysConfig())
			if err != nil {
				t.Fatal(err)
			}
			if got := k.get(cfg); got != k.def {
				t.Errorf("absent: %v, want the default %v", got, k.def)
			}
			zero := reflect.Zero(reflect.TypeOf(k.def)).Interface()
			for _, z := range []any{0, "0s"} {
				if _, isDuration := k.def.(time.Duration); !isDuration && z == "0s" {
					continue
				}
				m := keysConfig()
				setKey(t, m, k.path, z)
				cfg, err := parseKeys(t, m)
				switch {
				case k.refused == "" && err != nil:
					t.Errorf("set to %v: refused (%v); 0 has a meaning here and must be kept", z, err)
				case k.refused == "" && k.get(cfg) != zero:
					t.Errorf("set to %v: %v, want 0 kept", z, k.get(cfg))
				case k.refused != "" && (err == nil || !strings.Contains(err.Error(), k.refused)):
					t.Errorf("set to %v: error %v, want one containing %q", z, err, k.refused)
				}
			}
		})
	}
}

// TestConfigRefusesFractionsOfWholeNumbers: YAML decoding truncates a
// number with a fraction into an integer key (approval.required: 1.5 would
// ask for one approval); every integer key refuses it instead, naming the
// key, and keeps accepting a whole number written as a float (1e3).
func TestConfigRefusesFractionsOfWholeNumbers(t *testing.T) {
	keyPath := regexp.MustCompile(`\.(\d+)`)
	for _, k := range configKeys {
		switch k.def.(type) {
		case int, int64:
		default:
			continue
		}
		t.Run(k.path, func(t *testing.T) {
			m := keysConfig()
			setKey(t, m, k.path, 2.5)
			_, err := parseKeys(t, m)
			want := "(" + keyPath.ReplaceAllString(k.path, "[$1]") + "): 2.5 is not a whole number"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("set to 2.5: error %v, want one containing %q", err, want)
			}
		})
	}
	t.Run("a whole number written as a float", func(t *testing.T) {
		cfg, err := ParseConfig([]byte(minimalConfig + "limits:\n  agent_burst: 4.0e1\n"))
		if err != nil || cfg.Limits.AgentBurst != 40 {
			t.Fatalf("agent_burst 4.0e1: %v, %v", cfg, err)
		}
	})
	t.Run("backend options", func(t *testing.T) {
		var o struct {
			NumUses int `yaml:"num_uses"`
		}
		err := config.DecodeOptions(map[string]any{"num_uses": 1.5}, &o)
		if err == nil || !strings.Contains(err.Error(), "num_uses: 1.5 is not a whole number") {
			t.Fatalf("num_uses 1.5: %v (decoded %d)", err, o.NumUses)
		}
	})
}

// TestConfigKeysAllListed walks the configuration's types: every numeric
// and duration key must have a row in configKeys (a new key needs its
// default and its meaning of 0 decided and tested).
func TestConfigKeysAllListed(t *testing.T) {
	listed := map[string]bool{}
	for _, k := range configKeys {
		listed[regexp.MustCompile(`\.\d+`).ReplaceAllString(k.path, "[]")] = true
	}
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if opts == "inline" && f.Type.Kind() == reflect.Struct {
				walk(prefix, f.Type)
				continue
			}
			if name == "-" || name == "" {
				continue
			}
			path := prefix + name
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(path+"[].", ft.Elem())
			case ft.Kind() == reflect.Struct:
				walk(path+".", ft)
			case ft.Kind() == reflect.Int || ft.Kind() == reflect.Int64 || ft.Kind() == reflect.Float64:
				if !listed[path] {
					t.Errorf("%s has no row in configKeys: decide its default and what 0 means, and test them", path)
				}
			}
		}
	}
	walk("", reflect.TypeOf(Config{}))
}

// TestDetectorsConfigKeepsDefaults: a detectors section names only what
// it changes; every other detector, and every other key of the one it
// names, keeps its default.
func TestDetectorsConfigKeepsDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig + "signals:\n  detectors:\n    new_role: {enabled: false}\n    replay: {action: revoke}\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Signals.Detectors
	if d.NewRole.Enabled || d.NewRole.Severity != "low" || d.NewRole.Learning.D() != 24*time.Hour {
		t.Fatalf("new_role %+v, want off with its other defaults", d.NewRole)
	}
	if !d.Replay.Enabled || d.Replay.Action != "revoke" || d.Replay.Severity != "high" || d.Replay.Remember.D() != 24*time.Hour {
		t.Fatalf("replay %+v, want on, asking revoke, with its other defaults", d.Replay)
	}
	if !d.MintRate.Enabled || d.MintRate.Ceiling != 600 || !d.RenewalHold.Enabled || d.MaxTracked != 10000 {
		t.Fatalf("detectors %+v, want the others on with their defaults", d)
	}
}

// TestConfigStrictInEverySection: a section decoded on top of its defaults
// (its own UnmarshalYAML) still refuses unknown keys.
func TestConfigStrictInEverySection(t *testing.T) {
	for _, section := range []string{
		"", "issuers.0.", "operators.issuers.0.", "roles.0.", "roles.0.approval.", "roles.1.approval.break_glass.",
		"limits.", "leases.", "storage.", "storage.etcd.", "console.", "console.oidc.", "notifications.webhooks.0.", "log.", "policy.", "tls.",
		"introspection.", "introspection.clients.0.", "signals.detectors.", "signals.detectors.mint_rate.", "signals.detectors.renewal_hold.",
	} {
		t.Run(section+"bogus_key", func(t *testing.T) {
			m := keysConfig()
			if section == "console.oidc." {
				setKey(t, m, "console.oidc.issuer", "https://sso.example.com")
				setKey(t, m, "console.oidc.client_id", "valet")
				setKey(t, m, "console.oidc.allow_all", true)
			}
			setKey(t, m, section+"bogus_key", 1)
			_, err := parseKeys(t, m)
			key := regexp.MustCompile(`\.(\d+)\.`).ReplaceAllString(section, "[$1].") + "bogus_key"
			if want := "(" + key + "): field bogus_key not found"; err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want the unknown key refused: %q", err, want)
			}
		})
	}
}

// TestConfigDefaultsFromOtherKeys: defaults that depend on another key are
// derived only when their own key is absent.
func TestConfigDefaultsFromOtherKeys(t *testing.T) {
	cases := []struct {
		name string
		set  map[string]any
		get  func(*Config) any
		want any
	}{
		{"max_ttl absent follows a long ttl", map[string]any{"roles.0.ttl": "2h"}, func(c *Config) any { return c.Roles[0].MaxTTL.D() }, 2 * time.Hour},
		{"max_ttl absent with a short ttl is 1h", map[string]any{"roles.0.ttl": "5m"}, func(c *Config) any { return c.Roles[0].MaxTTL.D() }, time.Hour},
		{"max_ttl set is kept", map[string]any{"roles.0.ttl": "5m", "roles.0.max_ttl": "10m"}, func(c *Config) any { return c.Roles[0].MaxTTL.D() }, 10 * time.Minute},
		{"break-glass max_ttl absent is capped by a short max_ttl", map[string]any{"roles.1.ttl": "1m", "roles.1.max_ttl": "5m"},
			func(c *Config) any { return c.Roles[1].Approval.BreakGlass.MaxTTL.D() }, 5 * time.Minute},
		{"break-glass max_ttl set is kept", map[string]any{"roles.1.approval.break_glass.max_ttl": "2m"},
			func(c *Config) any { return c.Roles[1].Approval.BreakGlass.MaxTTL.D() }, 2 * time.Minute},
		{"public_url absent follows listen", map[string]any{"listen": "0.0.0.0:9000"}, func(c *Config) any { return c.PublicURL }, "http://0.0.0.0:9000"},
		{"public_url set is kept, without a trailing slash", map[string]any{"listen": "0.0.0.0:9000", "public_url": "https://valet.example.com/"},
			func(c *Config) any { return c.PublicURL }, "https://valet.example.com"},
		{"console.oidc.redirect_url absent follows public_url", map[string]any{"public_url": "https://valet.example.com",
			"console.oidc.issuer": "https://sso.example.com", "console.oidc.client_id": "valet", "console.oidc.allow_all": true},
			func(c *Config) any { return c.Console.OIDC.RedirectURL }, "https://valet.example.com/ui/auth/callback"},
		{"console.oidc defaults", map[string]any{"console.oidc.issuer": "https://sso.example.com", "console.oidc.client_id": "valet", "console.oidc.allow_all": true},
			func(c *Config) any {
				return strings.Join(c.Console.OIDC.Scopes, ",") + " " + c.Console.OIDC.NameClaim + " " + c.Console.OIDC.GroupsClaim
			}, "openid,email,profile,groups email groups"},
		{"github issuer absent takes the preset", map[string]any{"issuers.0.type": "github", "issuers.0.issuer": nil},
			func(c *Config) any { return c.Issuers[0].Issuer }, attest.GitHubActionsIssuer},
		{"github discovery absent with no key source is on", map[string]any{"operators.issuers.0.type": "github", "operators.issuers.0.issuer": nil, "operators.issuers.0.discovery": nil},
			func(c *Config) any { return c.Operators.Issuers[0].Discovery }, true},
		{"github with a jwks_file does not discover", map[string]any{"issuers.0.type": "github", "issuers.0.issuer": nil},
			func(c *Config) any { return c.Issuers[0].Discovery }, false},
		{"operator identity defaults", nil, func(c *Config) any {
			return c.Operators.Issuers[0].NameClaim + " " + c.Operators.Issuers[0].GroupsClaim
		}, "email groups"},
		{"introspection auth_method absent is client_secret_basic", nil,
			func(c *Config) any { return c.Introspection.Clients[0].AuthMethod }, broker.AuthClientSecretBasic},
		{"private_key_jwt algorithms absent are RS256 and ES256", map[string]any{"introspection.clients.0.auth_method": broker.AuthPrivateKeyJWT,
			"introspection.clients.0.client_secret_sha256": nil, "introspection.clients.0.jwks_file": "/etc/valet/api.json"},
			func(c *Config) any { return strings.Join(c.Introspection.Clients[0].Algorithms, ",") }, "RS256,ES256"},
		{"a key with no value keeps the default", map[string]any{"issuers.0.clock_skew": nil},
			func(c *Config) any { return c.Issuers[0].ClockSkew.D() }, 30 * time.Second},
		{"agent_rate .inf sets no limit", map[string]any{"limits.agent_rate": math.Inf(1)},
			func(c *Config) any { return math.IsInf(c.Limits.AgentRate, 1) }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := keysConfig()
			for k, v := range tc.set {
				if v == nil {
					deleteKey(t, m, k)
					if !strings.HasSuffix(tc.name, "keeps the default") {
						continue
					}
				}
				setKey(t, m, k, v)
			}
			cfg, err := parseKeys(t, m)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.get(cfg); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// deleteKey removes the key at a dotted path (see setKey).
func deleteKey(t *testing.T, m map[string]any, path string) {
	t.Helper()
	parent, name, _ := strings.Cut(path, ".")
	for strings.Contains(name, ".") {
		var next string
		next, name, _ = strings.Cut(name, ".")
		parent += "." + next
	}
	if !strings.Contains(path, ".") {
		delete(m, path)
		return
	}
	setKey(t, m, path, nil) // makes sure the parent exists
	var cur any = m
	for _, p := range strings.Split(parent, ".") {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			n, _ := strconv.Atoi(p)
			cur = c[n]
		}
	}
	delete(cur.(map[string]any), name)
}

// TestConfigRefusesValuesThatUsedToMeanSomethingElse: negative numbers no
// longer switch a limit off, and empty lists are not replaced by defaults.
func TestConfigRefusesValuesThatUsedToMeanSomethingElse(t *testing.T) {
	cases := []struct {
		name string
		path string
		v    any
		want string
	}{
		{"negative agent_rate", "limits.agent_rate", -1, "limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is -1"},
		{"NaN agent_rate", "limits.agent_rate", math.NaN(), "limits.agent_rate must be a positive number"},
		{"negative attestation_cache", "limits.attestation_cache", -1, "limits.attestation_cache must not be negative (0 turns the cache off); it is -1"},
		{"negative approvals", "roles.0.approval.required", -1, "roles[0].approval.required must be between 0 and 10; it is -1"},
		{"negative duration", "issuers.0.clock_skew", "-1s", `(issuers[0].clock_skew): duration "-1s" out of range`},
		{"not a duration", "leases.retention", "a week", `(leases.retention): invalid duration "a week"`},
		{"empty algorithms", "issuers.0.algorithms", []any{}, "issuers[0].algorithms must not be empty"},
		{"empty subject_claim", "issuers.0.subject_claim", "", "issuers[0].subject_claim must not be empty"},
		{"empty issuer type", "issuers.0.type", "", `issuers[0].type "" must be oidc`},
		{"empty webhook format", "notifications.webhooks.0.format", "", `notifications.webhooks[0].format "" must be json, slack or set`},
		{"empty log level", "log.level", "", `log.level "" must be debug`},
		{"log flush_interval over 1s", "log.flush_interval", "2s", "log.flush_interval must be between 0 (each line at once) and 1s; it is 2s"},
		{"empty operator name_claim", "operators.issuers.0.name_claim", "", "operators.issuers[0].name_claim and groups_claim must not be empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := keysConfig()
			setKey(t, m, tc.path, tc.v)
			_, err := parseKeys(t, m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("console.oidc without openid", func(t *testing.T) {
		m := keysConfig()
		setKey(t, m, "console.oidc.issuer", "https://sso.example.com")
		setKey(t, m, "console.oidc.client_id", "valet")
		setKey(t, m, "console.oidc.allow_all", true)
		setKey(t, m, "console.oidc.scopes", []any{})
		_, err := parseKeys(t, m)
		if want := "console.oidc.scopes [] must include openid"; err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want one containing %q", err, want)
		}
	})
}

// On etcd the audit log stays in etcd: the default audit-archive job is
// left out, and one configured is refused naming its key.
func TestConfigAuditArchiveOnlyOnBbolt(t *testing.T) {
	resolvedTypes := func(c *Config) []string {
		t.Helper()
		rs, err := c.resolveJobs()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			out = append(out, r.Type)
		}
		return out
	}
	m := keysConfig()
	setKey(t, m, "jobs", []any{})
	c, err := parseKeys(t, m)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(resolvedTypes(c), jobdefs.AuditArchive) {
		t.Fatal("bbolt runs no audit-archive job by default")
	}
	setKey(t, m, "storage.engine", "etcd")
	setKey(t, m, "storage.etcd.endpoints", []any{"http://127.0.0.1:2379"})
	c, err = parseKeys(t, m)
	if err != nil {
		t.Fatal(err)
	}
	if types := resolvedTypes(c); slices.Contains(types, jobdefs.AuditArchive) || !slices.Contains(types, jobdefs.Housekeeping) {
		t.Fatalf("default jobs on etcd: %v, want housekeeping and no audit-archive", types)
	}
	setKey(t, m, "jobs", []any{map[string]any{"name": "archive", "type": "audit-archive"}})
	_, err = parseKeys(t, m)
	if want := "jobs[0]: the audit-archive job needs storage.engine bbolt"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
}

// TestDefaultConfigMatchesAbsentKeys: a configuration built in Go from
// DefaultConfig and Defaulted has the values a file leaving the same keys
// out has.
func TestDefaultConfigMatchesAbsentKeys(t *testing.T) {
	fromFile, err := parseKeys(t, keysConfig())
	if err != nil {
		t.Fatal(err)
	}
	inGo := DefaultConfig()
	inGo.DataDir = "/var/lib/valet"
	inGo.Issuers = []attest.IssuerConfig{config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile = "k8s", "https://kubernetes.default.svc", []string{"valet"}, "/etc/valet/k8s.json"
	})}
	inGo.Backends = []backends.Config{{Name: "tokens", Type: "jwt"}}
	inGo.Roles = []broker.Role{
		config.Defaulted(func(r *broker.Role) { r.Name, r.Backend = "demo", "tokens" }),
		config.Defaulted(func(r *broker.Role) {
			r.Name, r.Backend, r.Approval.Required, r.Approval.BreakGlass.Allowed = "glass", "tokens", 1, true
		}),
	}
	inGo.Policy.Dir = "/etc/valet/policies"
	inGo.Operators.Issuers = []attest.OperatorIssuerConfig{config.Defaulted(func(oi *attest.OperatorIssuerConfig) {
		oi.Name, oi.Issuer, oi.Audiences, oi.Discovery, oi.AllowAll = "sso", "https://sso.example.com", []string{"valet"}, true, true
	})}
	inGo.Notifications.Webhooks = []notify.WebhookConfig{config.Defaulted(func(w *notify.WebhookConfig) { w.Name, w.URL = "sec", "https://hooks.example.com/valet" })}
	inGo.Introspection.Clients = []broker.IntrospectionClientConfig{config.Defaulted(func(cl *broker.IntrospectionClientConfig) {
		cl.ClientID, cl.ClientSecretSHA256 = "api", strings.Repeat("ab", 32)
	})}
	inGo.Signals.Sources = []broker.SignalSourceConfig{config.Defaulted(func(c *broker.SignalSourceConfig) {
		c.Name, c.TokenSHA256 = "siem", strings.Repeat("cd", 32)
	})}
	inGo.Signals.Issuers = []attest.IssuerConfig{config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.Discovery = "gha", "https://token.actions.githubusercontent.com", []string{"valet-signals"}, true
	})}
	inGo.Signals.Transmitters = []attest.TransmitterConfig{config.Defaulted(func(tc *attest.TransmitterConfig) {
		tc.Name, tc.Issuer, tc.JWKSURL = "idp", "https://idp.example.com", "https://idp.example.com/jwks"
	})}
	inGo.Jobs = []jobs.Spec{{Name: "housekeeping"}, {Name: "signing-key-rotation"}, {Name: "audit-checkpoint", Settings: map[string]any{
		"witnesses": []any{map[string]any{"type": "webhook", "url": "https://witness.example.com"}},
	}}, {Name: "audit-archive"}}
	if err := inGo.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, inGo) {
		a, _ := yaml.Marshal(fromFile)
		b, _ := yaml.Marshal(inGo)
		t.Fatalf("from a file:\n%s\nbuilt in Go:\n%s", a, b)
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
	for _, ic := range []broker.OperatorIdentityConfig{cfg.Operators.Issuers[0].OperatorIdentityConfig, cfg.Console.OIDC.OperatorIdentityConfig} {
		if ic.NameClaim != "email" || ic.GroupsClaim != "groups" || ic.EmailVerifiedDefault {
			t.Errorf("defaults %+v: want name_claim email, groups_claim groups, email_verified_default false", ic)
		}
	}
}

// withIntrospection is minimalConfig with an introspection section.
func withIntrospection(clients string) string {
	return minimalConfig + "introspection:\n  clients:\n" + clients
}

var secretSum = broker.HashToken("rs-secret")

func TestIntrospectionConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(withIntrospection(`
    - client_id: orders-api
      client_secret_sha256: ` + secretSum + `
    - client_id: https://rs.example.com
      auth_method: private_key_jwt
      jwks_url: https://rs.example.com/jwks.json
`)))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Introspection.Clients
	if c[0].AuthMethod != broker.AuthClientSecretBasic {
		t.Errorf("auth_method left out = %q, want client_secret_basic (RFC 7591's default)", c[0].AuthMethod)
	}
	if c[0].Algorithms != nil {
		t.Errorf("a secret client got algorithms %v", c[0].Algorithms)
	}
	if !slices.Equal(c[1].Algorithms, []string{"RS256", "ES256"}) {
		t.Errorf("private_key_jwt algorithms left out = %v, want [RS256 ES256]", c[1].Algorithms)
	}
	iss := attest.ClientAssertionIssuers(cfg.Introspection, cfg.PublicURL)
	if len(iss) != 1 || iss[0].Issuer != "https://rs.example.com" || !iss[0].RequireJTI || iss[0].MaxTokenAge != 0 ||
		!slices.Contains(iss[0].Audiences, cfg.PublicURL+"/v1/introspect") || iss[0].Name != "introspection:https://rs.example.com" {
		t.Errorf("client assertion issuers = %+v", iss)
	}
	// No section: no clients, so introspection refuses everyone.
	cfg, err = ParseConfig([]byte(minimalConfig))
	if err != nil || len(cfg.Introspection.Clients) != 0 {
		t.Fatalf("config without introspection: %v %+v", err, cfg.Introspection)
	}
}

func TestIntrospectionConfigResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	text := withIntrospection(`
    - client_id: rs
      auth_method: private_key_jwt
      jwks_file: rs-jwks.json
`)
	path := filepath.Join(dir, "valet.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Introspection.Clients[0].JWKSFile; got != filepath.Join(dir, "rs-jwks.json") {
		t.Fatalf("jwks_file = %q, want it resolved against the config's directory", got)
	}
}

func TestIntrospectionConfigRejects(t *testing.T) {
	const tlsSection = "tls:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n  client_auth: verify_if_given\n"
	cases := []struct {
		name    string
		clients string
		extra   string
		want    string
	}{
		{"no client_id", "    - client_secret_sha256: " + secretSum + "\n", "", `introspection.clients[0].client_id "" must be 1 to 255 printable ASCII characters`},
		{"control character in client_id", "    - client_id: \"a\\tb\"\n      client_secret_sha256: " + secretSum + "\n", "", "introspection.clients[0].client_id"},
		{"client_id twice", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n    - client_id: a\n      client_secret_sha256: " + secretSum + "\n", "", `introspection.clients[1].client_id "a" is used twice`},
		{"no secret", "    - client_id: a\n", "", "introspection.clients[0].client_secret_sha256 must be the hex SHA-256 of the client secret"},
		{"secret in clear", "    - client_id: a\n      client_secret_sha256: hunter2\n", "", "introspection.clients[0].client_secret_sha256 must be the hex SHA-256"},
		{"unknown method", "    - client_id: a\n      auth_method: none\n", "", `introspection.clients[0].auth_method "none" must be client_secret_basic, client_secret_post, private_key_jwt or tls_client_auth`},
		{"jwks on a secret client", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      jwks_file: k.json\n", "", "introspection.clients[0].jwks_file does not apply to auth_method client_secret_basic"},
		{"private_key_jwt without keys", "    - client_id: a\n      auth_method: private_key_jwt\n", "", "introspection.clients[0] needs exactly one of jwks_file or jwks_url"},
		{"private_key_jwt with two key sources", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      jwks_url: https://a/jwks\n", "", "introspection.clients[0] needs exactly one of jwks_file or jwks_url"},
		{"private_key_jwt with a secret", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      client_secret_sha256: " + secretSum + "\n", "", "introspection.clients[0].client_secret_sha256 does not apply to auth_method private_key_jwt"},
		{"HMAC algorithm", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      algorithms: [HS256]\n", "", `introspection.clients[0].algorithms[0] "HS256" is not allowed`},
		{"algorithms set to nothing", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      algorithms: []\n", "", "introspection.clients[0].algorithms must not be empty"},
		{"relative jwks_url", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_url: /jwks\n", "", `introspection.clients[0].jwks_url "/jwks" must be an absolute http(s) URL`},
		{"tls_client_auth without tls", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n", "", "introspection.clients[0]: auth_method tls_client_auth needs tls.client_ca_file and tls.client_auth verify_if_given or require"},
		{"tls_client_auth with client_auth none", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n", "tls:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n  client_auth: none\n", "needs tls.client_ca_file and tls.client_auth verify_if_given or require"},
		{"tls_client_auth without a name", "    - client_id: a\n      auth_method: tls_client_auth\n", tlsSection, "introspection.clients[0] needs exactly one of tls_client_auth_subject_dn"},
		{"tls_client_auth with two names", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n      tls_client_auth_san_dns: a.example\n", tlsSection, "introspection.clients[0] needs exactly one of tls_client_auth_subject_dn"},
		{"bad SAN IP", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_san_ip: 10.0.0\n", tlsSection, `introspection.clients[0].tls_client_auth_san_ip "10.0.0" is not an IP address`},
		{"certificate name on a secret client", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      tls_client_auth_san_dns: a.example\n", "", "introspection.clients[0].tls_client_auth_san_dns does not apply to auth_method client_secret_basic"},
		{"audiences set to nothing", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      audiences: []\n", "", "introspection.clients[0].audiences must not be empty; leave it out"},
		{"empty audience", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      audiences: [\"\"]\n", "", "introspection.clients[0].audiences[0] must not be empty"},
		{"roles set to nothing", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      roles: []\n", "", "introspection.clients[0].roles must not be empty; leave it out"},
		{"unknown role", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      roles: [demo, nope]\n", "", `introspection.clients[0].roles[1] "nope" is not a configured role`},
		{"unknown key", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      client_secret: s\n", "", "field client_secret not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(withIntrospection(c.clients) + c.extra))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}
