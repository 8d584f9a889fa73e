package broker

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases/config"
)

// Config is valet's server configuration, read from YAML. Unknown keys are
// errors. Validate names the offending key's full path in every message.
//
// Defaults come only from absent keys, never from keys set to their zero
// value: each section type with defaults has a SetDefaults method that sets
// them all, and an UnmarshalYAML that calls it before decoding the section
// (see config.DecodeOnDefaults), so a key present in the file, even as 0, keeps
// its value and Validate decides whether that value is allowed. Code that
// builds a configuration in Go starts from DefaultConfig and Defaulted in
// the same way, then sets its own fields.
//
// Adding a key with a default: set the default in its section's
// SetDefaults (a new section type gets SetDefaults, the four-line
// UnmarshalYAML, and a call from its parent's SetDefaults; a type used only
// inline gets SetDefaults alone); a default computed from another key is
// derived in UnmarshalYAML only when config.ReadPresentKeys says the key is
// absent. Then make Validate accept 0 with a stated meaning or refuse it,
// naming the full key path, and add the key to configKeys in
// config_test.go (TestConfigKeysAllListed fails until it is there) and to
// the README's configuration block.
type Config struct {
	Listen    string `yaml:"listen"`
	DataDir   string `yaml:"data_dir"`
	PublicURL string `yaml:"public_url"`
	// KEKFile holds the hex key-encryption key for signing keys at rest.
	// VALET_KEK in the environment takes precedence.
	KEKFile string `yaml:"kek_file"`

	// TrustedProxies are the reverse proxies, as CIDR prefixes or single
	// addresses, whose X-Forwarded-For header names the client (the
	// right-most address in it that is not itself a trusted proxy). From
	// any other peer the header is ignored. Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`

	TLS       *TLSConfig      `yaml:"tls"`
	Issuers   []IssuerConfig  `yaml:"issuers"`
	Backends  []BackendConfig `yaml:"backends"`
	Roles     []Role          `yaml:"roles"`
	Policy    PolicyConfig    `yaml:"policy"`
	Operators OperatorsConfig `yaml:"operators"`
	Limits    LimitsConfig    `yaml:"limits"`
	Leases    LeasesConfig    `yaml:"leases"`
	Audit     AuditConfig     `yaml:"audit"`
	Log       LogConfig       `yaml:"log"`

	Notifications NotificationsConfig `yaml:"notifications"`
	Console       ConsoleConfig       `yaml:"console"`
	Introspection IntrospectionConfig `yaml:"introspection"`

	// ConfigDir is the directory of the config file (set by LoadConfig);
	// backends resolve relative paths in their options against it.
	ConfigDir string `yaml:"-"`
}

// TLSConfig turns on HTTPS, optionally with client certificates.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is "none" (default), "verify_if_given" or "require".
	ClientAuth string `yaml:"client_auth"`
}

// Issuer types. Presets set defaults (discovery, claim mappings, lineage) for
// well-known workload identity platforms.
const (
	IssuerOIDC       = "oidc"
	IssuerKubernetes = "kubernetes"
	IssuerGitHub     = "github"
	IssuerSPIFFE     = "spiffe"
)

// GitHubActionsIssuer is the iss of GitHub Actions OIDC tokens.
const GitHubActionsIssuer = "https://token.actions.githubusercontent.com"

// IssuerConfig is one trusted attestation issuer (or operator SSO issuer).
type IssuerConfig struct {
	Name string `yaml:"name"`
	// Type is oidc (default), kubernetes, github or spiffe.
	Type string `yaml:"type"`
	// Issuer is the exact iss claim tokens must carry. For spiffe issuers it
	// may be empty: tokens without iss are then matched by TrustDomain.
	Issuer string `yaml:"issuer"`
	// TrustDomain is the SPIFFE trust domain (spiffe only).
	TrustDomain string `yaml:"trust_domain"`
	// Audiences: a token's aud (string or array) must contain one of them.
	Audiences []string `yaml:"audiences"`
	// Exactly one key source: JWKSFile, JWKSURL or Discovery.
	JWKSFile  string `yaml:"jwks_file"`
	JWKSURL   string `yaml:"jwks_url"`
	Discovery bool   `yaml:"discovery"`
	// CAFile verifies the TLS certificate of JWKSURL or the discovery URL.
	CAFile string `yaml:"ca_file"`
	// Algorithms allowed for this issuer, e.g. [RS256, ES256]. Asymmetric only.
	Algorithms []string `yaml:"algorithms"`
	// ClockSkew tolerated on exp, nbf and iat (default 30s, at most 5m; 0
	// tolerates none).
	ClockSkew config.Duration `yaml:"clock_skew"`
	// MaxTokenAge rejects tokens whose iat is older than this (default 24h);
	// tokens without iat are rejected when it is set. 0 sets no limit on
	// age (exp still applies) and does not require iat.
	MaxTokenAge config.Duration `yaml:"max_token_age"`
	// RequireJTI makes each token single-use: its jti is consumed and
	// remembered until the token expires.
	RequireJTI bool `yaml:"require_jti"`
	// SubjectClaim names the claim used as the agent's subject (default sub).
	SubjectClaim string `yaml:"subject_claim"`
	// ClaimMappings maps principal attribute names to claim paths
	// (dot-separated for nested claims), e.g. team: "ext.team".
	ClaimMappings map[string]string `yaml:"claim_mappings"`
	// JWKSRefreshInterval is the least time between two key fetches caused by
	// an unknown kid (default 1m, at least 1s); JWKSCacheTTL is how long
	// fetched keys are used before a scheduled refresh (default 1h, not less
	// than JWKSRefreshInterval).
	JWKSRefreshInterval config.Duration `yaml:"jwks_refresh_interval"`
	JWKSCacheTTL        config.Duration `yaml:"jwks_cache_ttl"`
}

// BackendConfig is one credential backend. Name and Type are common; every
// other key belongs to the backend type and is decoded strictly by it.
type BackendConfig struct {
	Name    string         `yaml:"name"`
	Type    string         `yaml:"type"`
	Options map[string]any `yaml:",inline"`
}

// Role is a named kind of credential agents can ask for.
type Role struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Backend     string `yaml:"backend"`
	// TTL is the default lease TTL (default 15m); MaxTTL caps requests and
	// renewals, measured from the lease's creation (default max(1h, TTL)).
	// Both must be positive.
	TTL    config.Duration `yaml:"ttl"`
	MaxTTL config.Duration `yaml:"max_ttl"`
	// Audience and Scopes describe what the credential is for; the jwt
	// backend puts them in aud and scope.
	Audience []string `yaml:"audience"`
	Scopes   []string `yaml:"scopes"`
	// Labels are free-form attributes policies can test (resource.labels).
	Labels   map[string]string `yaml:"labels"`
	Approval ApprovalConfig    `yaml:"approval"`
	// Renewable allows renewals up to MaxTTL (default true).
	Renewable *bool `yaml:"renewable"`
	// Params are backend-specific and validated by the backend.
	Params map[string]any `yaml:"params"`
}

// IsRenewable reports whether leases of the role may be renewed (renewable
// absent means true).
func (r *Role) IsRenewable() bool { return r.Renewable == nil || *r.Renewable }

// ApprovalConfig says whether minting a role needs operator approval, who
// may give it, and whether break-glass access is possible.
type ApprovalConfig struct {
	// Required is the number of distinct operators who must approve (0: no
	// approval; the role mints at once).
	Required int `yaml:"required"`
	// Approvers limits who may approve: operator names and operator groups
	// (from the operator token's config or the SSO token's groups claim),
	// compared as identity.Equal does (case-insensitively). Empty lists
	// mean any operator.
	Approvers ApproversConfig `yaml:"approvers"`
	// RequestTTL is how long a request waits for approval (default 1h, at
	// least 1m).
	RequestTTL config.Duration `yaml:"request_ttl"`
	// RedeemWithin is how long an approval stays redeemable (default 15m,
	// at least 10s).
	RedeemWithin config.Duration `yaml:"redeem_within"`
	// RequesterClaims name the attestation claims that identify the people
	// behind an agent (default email, actor, owner): an operator whose name
	// equals one of them cannot approve that agent's requests.
	RequesterClaims []string `yaml:"requester_claims"`
	// BreakGlass allows emergency access without approval.
	BreakGlass BreakGlassConfig `yaml:"break_glass"`
}

// ApproversConfig lists who may approve.
type ApproversConfig struct {
	Operators []string `yaml:"operators"`
	Groups    []string `yaml:"groups"`
}

// BreakGlassConfig governs emergency access to an elevated role.
type BreakGlassConfig struct {
	// Allowed lets an agent mint at once with a mandatory justification; the
	// grant is flagged until an operator reviews it.
	Allowed bool `yaml:"allowed"`
	// MaxTTL caps a break-glass lease (default the lesser of 15m and the
	// role's max_ttl; positive and at most max_ttl when Allowed).
	MaxTTL config.Duration `yaml:"max_ttl"`
}

// ConsoleConfig configures the operator web console at /ui/.
type ConsoleConfig struct {
	// Disabled turns the console off.
	Disabled bool `yaml:"disabled"`
	// TokenLogin lets operators sign in with an operator token (default
	// true; turn it off where SSO is configured).
	TokenLogin *bool `yaml:"token_login"`
	// SessionIdle and SessionMax end a session after inactivity (default
	// 15m, positive) and after its start (default 8h, not less than
	// SessionIdle).
	SessionIdle config.Duration `yaml:"session_idle"`
	SessionMax  config.Duration `yaml:"session_max"`
	// FreshLogin is how recent a sign-in must be to approve, deny or
	// review (default 10m, positive).
	FreshLogin config.Duration `yaml:"fresh_login"`
	// OIDC, when set, offers single sign-on (authorization code with PKCE).
	OIDC *ConsoleOIDCConfig `yaml:"oidc"`
}

// TokenLoginAllowed reports whether operators may sign in with an operator
// token (token_login absent means true).
func (cc *ConsoleConfig) TokenLoginAllowed() bool { return cc.TokenLogin == nil || *cc.TokenLogin }

// ConsoleOIDCConfig is the console's single sign-on.
type ConsoleOIDCConfig struct {
	// Issuer is the OpenID provider's issuer URL (discovery is used).
	Issuer           string `yaml:"issuer"`
	ClientID         string `yaml:"client_id"`
	ClientSecretFile string `yaml:"client_secret_file"`
	// RedirectURL defaults to <public_url>/ui/auth/callback.
	RedirectURL string   `yaml:"redirect_url"`
	Scopes      []string `yaml:"scopes"` // default openid, email, profile, groups
	// CAFile verifies the provider's TLS certificate.
	CAFile string `yaml:"ca_file"`
	// The operator's name and groups come from the ID token as for
	// operators.issuers (see OperatorFromClaims).
	OperatorIdentityConfig `yaml:",inline"`
}

// OperatorIdentityConfig says how an operator's identity is read from the
// verified claims of an OpenID Connect ID token, and which accounts of the
// issuer are operators at all. operators.issuers[] and console.oidc take
// the same keys; OperatorFromClaims applies them.
type OperatorIdentityConfig struct {
	// NameClaim is the claim that names the operator (default email). The
	// email claim names an operator only when the token's email_verified
	// is true (OpenID Connect Core 1.0, section 5.1).
	NameClaim string `yaml:"name_claim"`
	// GroupsClaim lists the operator's groups (default groups): an array
	// of strings or a single string.
	GroupsClaim string `yaml:"groups_claim"`
	// AllowedGroups admits only members of one of these groups.
	AllowedGroups []string `yaml:"allowed_groups"`
	// AllowAll admits every account the issuer signs in. Exactly one of
	// AllowedGroups and AllowAll must be set.
	AllowAll bool `yaml:"allow_all"`
	// EmailVerifiedDefault is the value assumed for email_verified when a
	// token carries no such claim (default false: unverified). Set it only
	// for a provider that verifies every email it issues and omits the
	// claim. An explicit email_verified: false is never overridden.
	EmailVerifiedDefault bool `yaml:"email_verified_default"`
}

// OperatorIssuerConfig is an issuer of operator ID tokens: the keys of an
// attestation issuer plus those of the operator's identity.
type OperatorIssuerConfig struct {
	IssuerConfig           `yaml:",inline"`
	OperatorIdentityConfig `yaml:",inline"`
}

// NotificationsConfig sends grant and break-glass events to webhooks.
type NotificationsConfig struct {
	Webhooks []WebhookConfig `yaml:"webhooks"`
}

// WebhookConfig is one notification receiver.
type WebhookConfig struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Format is json (valet's event JSON, default) or slack (a Slack
	// incoming-webhook message).
	Format string `yaml:"format"`
	// SecretFile holds the HMAC key that signs each body
	// (X-Valet-Signature: sha256=<hex>).
	SecretFile string `yaml:"secret_file"`
	// Events selects event types (default all): grant.requested,
	// grant.approved, grant.denied, grant.expired, grant.redeemed,
	// break_glass, break_glass.reviewed.
	Events []string `yaml:"events"`
	// Timeout bounds one delivery attempt (default 5s, positive).
	Timeout config.Duration `yaml:"timeout"`
	// MaxAttempts is how many times an event is sent before valet gives up
	// (default 8, at least 1; 1 means no retries; backoff doubles from 1s).
	MaxAttempts int `yaml:"max_attempts"`
}

// PolicyConfig locates the Cedar policies.
type PolicyConfig struct {
	// Dir holds *.cedar files, loaded in name order.
	Dir string `yaml:"dir"`
	// Watch reloads the policies when a file in Dir changes (default true);
	// SIGHUP always reloads.
	Watch *bool `yaml:"watch"`
	// OnError is what a policy that fails to evaluate does: deny (the
	// default; an erroring forbid denies, fail closed) or skip (Cedar's
	// semantics: it is ignored). Errors are logged, counted and audited
	// either way.
	OnError PolicyOnError `yaml:"on_error"`
}

// Watching reports whether policy files are watched (watch absent means
// true).
func (p *PolicyConfig) Watching() bool { return p.Watch == nil || *p.Watch }

// OperatorsConfig says who may act as an operator.
type OperatorsConfig struct {
	Tokens  []OperatorToken        `yaml:"tokens"`
	Issuers []OperatorIssuerConfig `yaml:"issuers"`
}

// IssuerConfigs returns the attestation-issuer part of each operator
// issuer, in order, for the token verifier.
func (c OperatorsConfig) IssuerConfigs() []IssuerConfig {
	out := make([]IssuerConfig, 0, len(c.Issuers))
	for _, ic := range c.Issuers {
		out = append(out, ic.IssuerConfig)
	}
	return out
}

// OperatorToken is a static operator bearer token, stored as its SHA-256.
// Name is the operator's name; it is one identity with an SSO operator of
// the same name (compared as identity.Equal does).
type OperatorToken struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Groups []string `yaml:"groups"`
}

// LimitsConfig bounds what a client can make valet do.
type LimitsConfig struct {
	MaxBodyBytes        int64 `yaml:"max_body_bytes"`        // default 64 KiB, 1 KiB to 16 MiB
	MaxHeaderBytes      int   `yaml:"max_header_bytes"`      // default 32 KiB, 4 KiB to 1 MiB
	MaxAttestationBytes int   `yaml:"max_attestation_bytes"` // default 16 KiB, 1 KiB to 1 MiB
	// AgentRate is the requests per second allowed to each agent (default
	// 10). It must be positive; .inf (YAML's infinity) sets no limit.
	AgentRate   float64         `yaml:"agent_rate"`
	AgentBurst  int             `yaml:"agent_burst"`  // default 20, at least 1
	MintTimeout config.Duration `yaml:"mint_timeout"` // default 10s, 100ms to 5m
	// AttestationCache is how many verified attestations are remembered so
	// an agent re-presenting the same token skips the signature check
	// (time rules are still applied on every use; single-use tokens are
	// never cached). Default 10000; 0 turns the cache off.
	AttestationCache int `yaml:"attestation_cache"`
	// AuthFailuresPerMinute is how many credentials that do not verify
	// (attestations, operator tokens, console sign-ins) one client address
	// may present per minute, in a burst of as many, before its further
	// failures are refused with 429 and counted instead of audited one by
	// one. A valid credential is never refused by it. IPv6 clients are
	// counted by /64. Default 10; at least 1.
	AuthFailuresPerMinute int `yaml:"auth_failures_per_minute"`
	// AuthFailureRecordsPerMinute is how many refused credentials, across
	// all addresses, are written to the audit log one by one per minute;
	// the rest are counted in an auth.refused.summary record. Default 30;
	// 0 writes summaries only.
	AuthFailureRecordsPerMinute int `yaml:"auth_failure_records_per_minute"`
}

// LeasesConfig tunes revocation.
type LeasesConfig struct {
	// RevokeAttempts is how many failed revocations make a lease irrevocable
	// (default 8, at least 1). Irrevocable leases keep being retried, at
	// RevokeMaxBackoff, until their credential can no longer be valid at the
	// backend (leases.BoltStore.ValidUntil).
	RevokeAttempts    int             `yaml:"revoke_attempts"`
	RevokeBackoff     config.Duration `yaml:"revoke_backoff"`     // first retry delay (default 1s, positive)
	RevokeMaxBackoff  config.Duration `yaml:"revoke_max_backoff"` // default 5m, not less than RevokeBackoff
	RevokeConcurrency int             `yaml:"revoke_concurrency"` // default 16, 1 to 1024
	// Retention is how long ended leases stay queryable (default 7 days).
	// 0 keeps none: an ended lease is deleted by the next housekeeping
	// pass, within a minute. Audit records are kept either way.
	Retention config.Duration `yaml:"retention"`
}

// AuditConfig adds an optional JSON-lines copy of the audit log for a SIEM.
type AuditConfig struct {
	// Sink is "", "stdout" or a file path.
	Sink string `yaml:"sink"`
}

// LogConfig sets the log level (debug, info, warn, error; default info).
type LogConfig struct {
	Level string `yaml:"level"`
}

// LoadConfig reads and strictly decodes a YAML config file, with defaults
// for absent keys, and validates it. Relative paths in the file are
// resolved against the file's directory.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var cfg Config
	if err := config.DecodeStrict(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.ResolvePaths(filepath.Dir(path))
	if abs, err := filepath.Abs(filepath.Dir(path)); err == nil {
		cfg.ConfigDir = abs
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

// ResolvePaths makes every relative file path in the config relative to
// base (the config file's directory) instead of the working directory.
func (c *Config) ResolvePaths(base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.KEKFile)
	abs(&c.Policy.Dir)
	if c.TLS != nil {
		abs(&c.TLS.CertFile)
		abs(&c.TLS.KeyFile)
		abs(&c.TLS.ClientCAFile)
	}
	for i := range c.Issuers {
		abs(&c.Issuers[i].JWKSFile)
		abs(&c.Issuers[i].CAFile)
	}
	for i := range c.Operators.Issuers {
		abs(&c.Operators.Issuers[i].JWKSFile)
		abs(&c.Operators.Issuers[i].CAFile)
	}
	if c.Audit.Sink != "stdout" {
		abs(&c.Audit.Sink)
	}
	for i := range c.Notifications.Webhooks {
		abs(&c.Notifications.Webhooks[i].SecretFile)
	}
	if c.Console.OIDC != nil {
		abs(&c.Console.OIDC.ClientSecretFile)
		abs(&c.Console.OIDC.CAFile)
	}
	c.Introspection.resolvePaths(abs)
}

// ParseConfig strictly decodes YAML (unknown keys are errors), with
// defaults for absent keys, and validates.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	if err := config.DecodeStrict(b, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Defaults.
const (
	DefaultListen              = "127.0.0.1:8750"
	DefaultMaxBodyBytes        = 64 << 10
	DefaultMaxHeaderBytes      = 32 << 10
	DefaultMaxAttestationBytes = 16 << 10
	DefaultClockSkew           = 30 * time.Second
	MaxClockSkew               = 5 * time.Minute
	DefaultMaxTokenAge         = 24 * time.Hour

	DefaultAuthFailuresPerMinute       = 10
	DefaultAuthFailureRecordsPerMinute = 30
)

// DefaultConfig returns a configuration with every default set and nothing
// else: the starting point for a configuration built in Go. Lists (issuers,
// roles, webhooks) are empty; build their elements with Defaulted.
func DefaultConfig() *Config {
	var c Config
	c.SetDefaults()
	return &c
}

// SetDefaults sets every default of the top level and of its sections,
// overwriting what was there.
func (c *Config) SetDefaults() {
	c.Listen = DefaultListen
	c.PublicURL = "http://" + DefaultListen
	c.Limits.SetDefaults()
	c.Leases.SetDefaults()
	c.Console.SetDefaults()
	c.Log.SetDefaults()
	c.Policy.SetDefaults()
}

// SetDefaults sets the policy section's defaults: on_error deny.
func (p *PolicyConfig) SetDefaults() { p.OnError = PolicyOnErrorDeny }

// UnmarshalYAML decodes on top of the defaults.
func (p *PolicyConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type policy PolicyConfig
	return config.DecodeOnDefaults(p.SetDefaults, (*policy)(p), unmarshal)
}

// UnmarshalYAML decodes on top of the defaults. public_url, when absent,
// is http://<listen>; console.oidc.redirect_url, when absent, is
// <public_url>/ui/auth/callback.
func (c *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type file Config
	if err := config.DecodeOnDefaults(c.SetDefaults, (*file)(c), unmarshal); err != nil {
		return err
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if !keys.Has("public_url") {
		c.PublicURL = "http://" + c.Listen
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.Console.OIDC != nil && !keys.Has("console", "oidc", "redirect_url") {
		c.Console.OIDC.RedirectURL = c.PublicURL + "/ui/auth/callback"
	}
	return nil
}

// SetDefaults sets the issuer's defaults: type oidc, algorithms RS256 and
// ES256, clock_skew 30s, max_token_age 24h, subject_claim sub,
// jwks_refresh_interval 1m and jwks_cache_ttl 1h.
func (ic *IssuerConfig) SetDefaults() {
	ic.Type = IssuerOIDC
	ic.Algorithms = []string{"RS256", "ES256"}
	ic.ClockSkew = config.Duration(DefaultClockSkew)
	ic.MaxTokenAge = config.Duration(DefaultMaxTokenAge)
	ic.SubjectClaim = "sub"
	ic.JWKSRefreshInterval = config.Duration(time.Minute)
	ic.JWKSCacheTTL = config.Duration(time.Hour)
}

// UnmarshalYAML decodes on top of the defaults and applies the type's
// preset: a github issuer defaults issuer to GitHubActionsIssuer and, with
// none of jwks_file, jwks_url and discovery given, uses discovery.
func (ic *IssuerConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type issuer IssuerConfig
	if err := config.DecodeOnDefaults(ic.SetDefaults, (*issuer)(ic), unmarshal); err != nil {
		return err
	}
	return ic.applyPreset(unmarshal)
}

// applyPreset sets the defaults of the issuer's type for the keys absent
// from the mapping being unmarshalled.
func (ic *IssuerConfig) applyPreset(unmarshal func(any) error) error {
	if ic.Type != IssuerGitHub {
		return nil
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if !keys.Has("issuer") {
		ic.Issuer = GitHubActionsIssuer
	}
	if !keys.Has("jwks_file") && !keys.Has("jwks_url") && !keys.Has("discovery") {
		ic.Discovery = true
	}
	return nil
}

// SetDefaults sets the defaults of both parts.
func (oi *OperatorIssuerConfig) SetDefaults() {
	oi.IssuerConfig.SetDefaults()
	oi.OperatorIdentityConfig.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults and applies the issuer
// type's preset, as IssuerConfig.UnmarshalYAML does. The two parts are
// decoded inline through types without methods: the embedded
// IssuerConfig's own UnmarshalYAML would see the identity keys as unknown.
func (oi *OperatorIssuerConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type issuer IssuerConfig
	type operatorIssuer struct {
		*issuer                 `yaml:",inline"`
		*OperatorIdentityConfig `yaml:",inline"`
	}
	plain := &operatorIssuer{(*issuer)(&oi.IssuerConfig), &oi.OperatorIdentityConfig}
	if err := config.DecodeOnDefaults(oi.SetDefaults, plain, unmarshal); err != nil {
		return err
	}
	return oi.IssuerConfig.applyPreset(unmarshal)
}

// SetDefaults sets name_claim email and groups_claim groups. The type is
// only ever inline (in operators.issuers[] and console.oidc), so it has no
// UnmarshalYAML of its own: yaml would hand that the whole mapping, keys
// of the enclosing section included. The enclosing section's SetDefaults
// calls this one.
func (oc *OperatorIdentityConfig) SetDefaults() {
	oc.NameClaim = "email"
	oc.GroupsClaim = "groups"
}

// SetDefaults sets the role's defaults: ttl 15m, max_ttl 1h and the
// approval defaults. Renewable stays nil, which means true.
func (r *Role) SetDefaults() {
	r.TTL = config.Duration(15 * time.Minute)
	r.MaxTTL = config.Duration(time.Hour)
	r.Approval.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults. max_ttl, when absent, is
// the greater of 1h and ttl; approval.break_glass.max_ttl, when absent, is
// the lesser of 15m and max_ttl.
func (r *Role) UnmarshalYAML(unmarshal func(any) error) error {
	type role Role
	if err := config.DecodeOnDefaults(r.SetDefaults, (*role)(r), unmarshal); err != nil {
		return err
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if !keys.Has("max_ttl") {
		r.MaxTTL = max(r.MaxTTL, r.TTL)
	}
	if !keys.Has("approval", "break_glass", "max_ttl") {
		r.Approval.BreakGlass.MaxTTL = min(r.Approval.BreakGlass.MaxTTL, r.MaxTTL)
	}
	return nil
}

// SetDefaults sets request_ttl 1h, redeem_within 15m, requester_claims
// [email, actor, owner] and the break-glass defaults.
func (a *ApprovalConfig) SetDefaults() {
	a.RequestTTL = config.Duration(time.Hour)
	a.RedeemWithin = config.Duration(15 * time.Minute)
	a.RequesterClaims = []string{"email", "actor", "owner"}
	a.BreakGlass.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (a *ApprovalConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type approval ApprovalConfig
	return config.DecodeOnDefaults(a.SetDefaults, (*approval)(a), unmarshal)
}

// SetDefaults sets max_ttl 15m.
func (bg *BreakGlassConfig) SetDefaults() {
	bg.MaxTTL = config.Duration(15 * time.Minute)
}

// UnmarshalYAML decodes on top of the defaults.
func (bg *BreakGlassConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type breakGlass BreakGlassConfig
	return config.DecodeOnDefaults(bg.SetDefaults, (*breakGlass)(bg), unmarshal)
}

// SetDefaults sets the limits' defaults (see LimitsConfig).
func (l *LimitsConfig) SetDefaults() {
	l.MaxBodyBytes = DefaultMaxBodyBytes
	l.MaxHeaderBytes = DefaultMaxHeaderBytes
	l.MaxAttestationBytes = DefaultMaxAttestationBytes
	l.AgentRate = 10
	l.AgentBurst = 20
	l.MintTimeout = config.Duration(10 * time.Second)
	l.AttestationCache = 10000
	l.AuthFailuresPerMinute = DefaultAuthFailuresPerMinute
	l.AuthFailureRecordsPerMinute = DefaultAuthFailureRecordsPerMinute
}

// UnmarshalYAML decodes on top of the defaults.
func (l *LimitsConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type limits LimitsConfig
	return config.DecodeOnDefaults(l.SetDefaults, (*limits)(l), unmarshal)
}

// SetDefaults sets the revocation defaults (see LeasesConfig).
func (lc *LeasesConfig) SetDefaults() {
	lc.RevokeAttempts = 8
	lc.RevokeBackoff = config.Duration(time.Second)
	lc.RevokeMaxBackoff = config.Duration(5 * time.Minute)
	lc.RevokeConcurrency = 16
	lc.Retention = config.Duration(7 * 24 * time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (lc *LeasesConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type leases LeasesConfig
	return config.DecodeOnDefaults(lc.SetDefaults, (*leases)(lc), unmarshal)
}

// SetDefaults sets session_idle 15m, session_max 8h and fresh_login 10m.
// TokenLogin stays nil, which means true.
func (cc *ConsoleConfig) SetDefaults() {
	cc.SessionIdle = config.Duration(15 * time.Minute)
	cc.SessionMax = config.Duration(8 * time.Hour)
	cc.FreshLogin = config.Duration(10 * time.Minute)
}

// UnmarshalYAML decodes on top of the defaults.
func (cc *ConsoleConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type console ConsoleConfig
	return config.DecodeOnDefaults(cc.SetDefaults, (*console)(cc), unmarshal)
}

// SetDefaults sets scopes [openid, email, profile, groups] and the
// operator identity defaults. RedirectURL depends on public_url and is set
// by Config.UnmarshalYAML.
func (o *ConsoleOIDCConfig) SetDefaults() {
	o.Scopes = []string{"openid", "email", "profile", "groups"}
	o.OperatorIdentityConfig.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (o *ConsoleOIDCConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type oidc ConsoleOIDCConfig
	return config.DecodeOnDefaults(o.SetDefaults, (*oidc)(o), unmarshal)
}

// SetDefaults sets format json, timeout 5s and max_attempts 8.
func (w *WebhookConfig) SetDefaults() {
	w.Format = "json"
	w.Timeout = config.Duration(5 * time.Second)
	w.MaxAttempts = 8
}

// UnmarshalYAML decodes on top of the defaults.
func (w *WebhookConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type webhook WebhookConfig
	return config.DecodeOnDefaults(w.SetDefaults, (*webhook)(w), unmarshal)
}

// SetDefaults sets level info.
func (lc *LogConfig) SetDefaults() { lc.Level = "info" }

// UnmarshalYAML decodes on top of the defaults.
func (lc *LogConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type logConfig LogConfig
	return config.DecodeOnDefaults(lc.SetDefaults, (*logConfig)(lc), unmarshal)
}

// allowedAlgorithms are the asymmetric JWS algorithms an issuer may allow.
var allowedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// Validate checks the whole configuration and names the offending field in
// each error, e.g. "issuers[1].audiences must not be empty".
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen %q must be host:port", c.Listen)
	}
	if c.DataDir == "" {
		add("data_dir must be set")
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("public_url %q must be an absolute http(s) URL", c.PublicURL)
	}
	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			add("tls.cert_file and tls.key_file must both be set")
		}
		switch c.TLS.ClientAuth {
		case "", "none":
		case "verify_if_given", "require":
			if c.TLS.ClientCAFile == "" {
				add("tls.client_ca_file must be set when tls.client_auth is %q", c.TLS.ClientAuth)
			}
		default:
			add("tls.client_auth %q must be none, verify_if_given or require", c.TLS.ClientAuth)
		}
	}

	for i, p := range c.TrustedProxies {
		if _, err := clientip.ParsePrefix(p); err != nil {
			add("trusted_proxies[%d] %q %v", i, p, err)
		}
	}

	if len(c.Issuers) == 0 {
		add("issuers must list at least one trusted attestation issuer")
	}
	errs = append(errs, validateIssuers("issuers", c.Issuers)...)
	errs = append(errs, validateIssuers("operators.issuers", c.Operators.IssuerConfigs())...)
	for i, oi := range c.Operators.Issuers {
		errs = append(errs, oi.OperatorIdentityConfig.validate(fmt.Sprintf("operators.issuers[%d]", i))...)
		for _, ai := range c.Issuers {
			if oi.Name == ai.Name {
				// Replay protection keys consumed ids by issuer name.
				add("operators.issuers[%d].name %q is also an attestation issuer's name; use distinct names", i, oi.Name)
			}
			if oi.Issuer != "" && oi.Issuer == ai.Issuer {
				add("operators.issuers[%d].issuer %q is also trusted for agents; an agent token must never be an operator credential", i, oi.Issuer)
			}
		}
	}

	backends := map[string]bool{}
	for i, b := range c.Backends {
		f := fmt.Sprintf("backends[%d]", i)
		if !config.ValidName(b.Name) {
			add("%s.name %q must be lower-case letters, digits, '.', '_' or '-' (at most 63)", f, b.Name)
		}
		if backends[b.Name] {
			add("%s.name %q is used twice", f, b.Name)
		}
		backends[b.Name] = true
		if b.Type == "" {
			add("%s.type must be set", f)
		}
	}

	roles := map[string]bool{}
	for i, r := range c.Roles {
		f := fmt.Sprintf("roles[%d]", i)
		if !config.ValidName(r.Name) {
			add("%s.name %q must be lower-case letters, digits, '.', '_' or '-' (at most 63)", f, r.Name)
		}
		if roles[r.Name] {
			add("%s.name %q is used twice", f, r.Name)
		}
		roles[r.Name] = true
		if !backends[r.Backend] {
			add("%s.backend %q is not one of the configured backends", f, r.Backend)
		}
		if r.TTL <= 0 {
			add("%s.ttl must be positive; it is %s", f, r.TTL)
		}
		if r.MaxTTL < r.TTL {
			add("%s.max_ttl (%s) must not be less than ttl (%s)", f, r.MaxTTL, r.TTL)
		}
		if r.Approval.Required < 0 || r.Approval.Required > 10 {
			add("%s.approval.required must be between 0 and 10; it is %d", f, r.Approval.Required)
		}
		if r.Approval.RequestTTL < config.Duration(time.Minute) {
			add("%s.approval.request_ttl must be at least 1m; it is %s", f, r.Approval.RequestTTL)
		}
		if r.Approval.RedeemWithin < config.Duration(10*time.Second) {
			add("%s.approval.redeem_within must be at least 10s; it is %s", f, r.Approval.RedeemWithin)
		}
		if bg := r.Approval.BreakGlass; bg.Allowed && (bg.MaxTTL <= 0 || bg.MaxTTL > r.MaxTTL) {
			add("%s.approval.break_glass.max_ttl must be positive and at most max_ttl (%s); it is %s", f, r.MaxTTL, bg.MaxTTL)
		}
		for j, s := range r.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\n\"\\") {
				add("%s.scopes[%d] %q must be a non-empty token without spaces or quotes", f, j, s)
			}
		}
		errs = append(errs, validateIdentities(f+".approval.approvers.operators", r.Approval.Approvers.Operators)...)
		errs = append(errs, validateIdentities(f+".approval.approvers.groups", r.Approval.Approvers.Groups)...)
	}

	if c.Policy.Dir == "" {
		add("policy.dir must be set (a directory of *.cedar files)")
	}
	if c.Policy.OnError != PolicyOnErrorDeny && c.Policy.OnError != PolicyOnErrorSkip {
		add("policy.on_error %q must be deny or skip", c.Policy.OnError)
	}

	var opNames []string
	seenSums := map[string]int{}
	for i, t := range c.Operators.Tokens {
		f := fmt.Sprintf("operators.tokens[%d]", i)
		if t.Name == "" {
			add("%s.name must be set", f)
		}
		opNames = append(opNames, t.Name)
		if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != 32 {
			add("%s.sha256 must be the hex SHA-256 of the token (64 hex digits); `valet token hash` prints it", f)
		} else if j, dup := seenSums[strings.ToLower(t.SHA256)]; dup {
			add("%s.sha256 is the token of operators.tokens[%d] too; a token must name one operator", f, j)
		} else {
			seenSums[strings.ToLower(t.SHA256)] = i
		}
		errs = append(errs, validateIdentities(f+".groups", t.Groups)...)
	}
	errs = append(errs, validateIdentityList("operators.tokens", ".name", opNames)...)

	l := c.Limits
	if l.MaxBodyBytes < 1024 || l.MaxBodyBytes > 16<<20 {
		add("limits.max_body_bytes must be between 1024 and 16777216; it is %d", l.MaxBodyBytes)
	}
	if l.MaxHeaderBytes < 4096 || l.MaxHeaderBytes > 1<<20 {
		add("limits.max_header_bytes must be between 4096 and 1048576; it is %d", l.MaxHeaderBytes)
	}
	if l.MaxAttestationBytes < 1024 || l.MaxAttestationBytes > 1<<20 {
		add("limits.max_attestation_bytes must be between 1024 and 1048576; it is %d", l.MaxAttestationBytes)
	}
	if !(l.AgentRate > 0) {
		add("limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is %g", l.AgentRate)
	}
	if l.AgentBurst < 1 {
		add("limits.agent_burst must be at least 1; it is %d", l.AgentBurst)
	}
	if l.MintTimeout < config.Duration(100*time.Millisecond) || l.MintTimeout > config.Duration(5*time.Minute) {
		add("limits.mint_timeout must be between 100ms and 5m; it is %s", l.MintTimeout)
	}
	if l.AttestationCache < 0 {
		add("limits.attestation_cache must not be negative (0 turns the cache off); it is %d", l.AttestationCache)
	}
	if n := l.AuthFailuresPerMinute; n < 1 || n > 100000 {
		add("limits.auth_failures_per_minute must be between 1 and 100000, not %d", n)
	}
	if n := l.AuthFailureRecordsPerMinute; n < 0 || n > 100000 {
		add("limits.auth_failure_records_per_minute must be between 0 and 100000, not %d", n)
	}
	lc := c.Leases
	if lc.RevokeAttempts < 1 {
		add("leases.revoke_attempts must be at least 1; it is %d", lc.RevokeAttempts)
	}
	if lc.RevokeBackoff <= 0 {
		add("leases.revoke_backoff must be positive; it is %s", lc.RevokeBackoff)
	}
	if lc.RevokeMaxBackoff < lc.RevokeBackoff || lc.RevokeMaxBackoff <= 0 {
		add("leases.revoke_max_backoff must be positive and not less than revoke_backoff (%s); it is %s", lc.RevokeBackoff, lc.RevokeMaxBackoff)
	}
	if lc.RevokeConcurrency < 1 || lc.RevokeConcurrency > 1024 {
		add("leases.revoke_concurrency must be between 1 and 1024; it is %d", lc.RevokeConcurrency)
	}
	if lc.Retention < 0 {
		add("leases.retention must not be negative; it is %s", lc.Retention)
	}
	if o := c.Console.OIDC; o != nil {
		if u, err := url.Parse(o.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("console.oidc.issuer %q must be an absolute http(s) URL", o.Issuer)
		}
		if o.ClientID == "" {
			add("console.oidc.client_id must be set")
		}
		if !slices.Contains(o.Scopes, "openid") {
			add("console.oidc.scopes %v must include openid", o.Scopes)
		}
		errs = append(errs, o.OperatorIdentityConfig.validate("console.oidc")...)
	}
	cc := c.Console
	if cc.SessionIdle <= 0 {
		add("console.session_idle must be positive; it is %s", cc.SessionIdle)
	}
	if cc.SessionMax < cc.SessionIdle || cc.SessionMax <= 0 {
		add("console.session_max must be positive and not less than session_idle (%s); it is %s", cc.SessionIdle, cc.SessionMax)
	}
	if cc.FreshLogin <= 0 {
		add("console.fresh_login must be positive; it is %s", cc.FreshLogin)
	}
	hooks := map[string]bool{}
	for i, w := range c.Notifications.Webhooks {
		f := fmt.Sprintf("notifications.webhooks[%d]", i)
		if w.Name == "" || hooks[w.Name] {
			add("%s.name must be set and unique", f)
		} else if !config.ValidName(w.Name) {
			add("%s.name %q must be %s", f, w.Name, config.NameRule)
		}
		hooks[w.Name] = true
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("%s.url %q must be an absolute http(s) URL", f, w.URL)
		}
		switch w.Format {
		case "json", "slack":
		default:
			add("%s.format %q must be json or slack", f, w.Format)
		}
		if w.Timeout <= 0 {
			add("%s.timeout must be positive; it is %s", f, w.Timeout)
		}
		if w.MaxAttempts < 1 {
			add("%s.max_attempts must be at least 1 (1 sends once, without retries); it is %d", f, w.MaxAttempts)
		}
		for j, ev := range w.Events {
			if !NotificationEvents[ev] {
				add("%s.events[%d] %q is not an event valet sends", f, j, ev)
			}
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	errs = append(errs, c.Introspection.validate(roles, c.TLS)...)
	return errors.Join(errs...)
}

func validateIssuers(field string, issuers []IssuerConfig) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	isses := map[string]bool{}
	for i, ic := range issuers {
		f := fmt.Sprintf("%s[%d]", field, i)
		if !config.ValidName(ic.Name) {
			add("%s.name %q must be lower-case letters, digits, '.', '_' or '-' (at most 63)", f, ic.Name)
		}
		if names[ic.Name] {
			add("%s.name %q is used twice", f, ic.Name)
		}
		names[ic.Name] = true
		switch ic.Type {
		case IssuerOIDC, IssuerKubernetes, IssuerGitHub:
			if ic.Issuer == "" {
				add("%s.issuer must be set (the exact iss claim of its tokens)", f)
			}
			if ic.TrustDomain != "" {
				add("%s.trust_domain is only for type spiffe", f)
			}
		case IssuerSPIFFE:
			if ic.Issuer == "" && ic.TrustDomain == "" {
				add("%s: a spiffe issuer needs issuer or trust_domain", f)
			}
		default:
			add("%s.type %q must be oidc, kubernetes, github or spiffe", f, ic.Type)
		}
		if strings.ContainsRune(ic.Issuer, '#') || strings.IndexFunc(ic.Issuer, unicode.IsControl) >= 0 {
			// Lineage ids are "jti:<issuer>#<jti>": a '#' in the issuer
			// would let two attestations share one.
			add("%s.issuer %q must not contain '#' or control characters", f, ic.Issuer)
		}
		if ic.Issuer != "" {
			if isses[ic.Issuer] {
				add("%s.issuer %q is trusted twice; each iss must map to one issuer", f, ic.Issuer)
			}
			isses[ic.Issuer] = true
		}
		if len(ic.Audiences) == 0 {
			add("%s.audiences must not be empty", f)
		}
		for j, a := range ic.Audiences {
			if a == "" {
				add("%s.audiences[%d] must not be empty", f, j)
			}
		}
		sources := 0
		for _, s := range []bool{ic.JWKSFile != "", ic.JWKSURL != "", ic.Discovery} {
			if s {
				sources++
			}
		}
		if sources != 1 {
			add("%s needs exactly one of jwks_file, jwks_url or discovery: true", f)
		}
		if ic.JWKSURL != "" {
			if u, err := url.Parse(ic.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				add("%s.jwks_url %q must be an absolute http(s) URL", f, ic.JWKSURL)
			}
		}
		if ic.Discovery {
			if u, err := url.Parse(ic.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				add("%s.issuer %q must be an http(s) URL when discovery is true", f, ic.Issuer)
			}
		}
		if len(ic.Algorithms) == 0 {
			add("%s.algorithms must not be empty", f)
		}
		for j, a := range ic.Algorithms {
			if !allowedAlgorithms[a] {
				add("%s.algorithms[%d] %q is not allowed; use RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA", f, j, a)
			}
		}
		if ic.ClockSkew < 0 || ic.ClockSkew.D() > MaxClockSkew {
			add("%s.clock_skew must be between 0 and %s; it is %s", f, MaxClockSkew, ic.ClockSkew)
		}
		if ic.MaxTokenAge < 0 {
			add("%s.max_token_age must not be negative (0 sets no limit); it is %s", f, ic.MaxTokenAge)
		}
		if ic.SubjectClaim == "" {
			add("%s.subject_claim must not be empty", f)
		}
		if ic.JWKSRefreshInterval < config.Duration(time.Second) {
			add("%s.jwks_refresh_interval must be at least 1s; it is %s", f, ic.JWKSRefreshInterval)
		}
		if ic.JWKSCacheTTL < ic.JWKSRefreshInterval || ic.JWKSCacheTTL <= 0 {
			add("%s.jwks_cache_ttl must be positive and not less than jwks_refresh_interval (%s); it is %s", f, ic.JWKSRefreshInterval, ic.JWKSCacheTTL)
		}
		for k, v := range ic.ClaimMappings {
			if k == "" || v == "" {
				add("%s.claim_mappings: attribute names and claim paths must not be empty", f)
			}
		}
	}
	return errs
}

// validate checks an issuer's operator identity keys; field is the
// issuer's key path.
func (oc OperatorIdentityConfig) validate(field string) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if oc.NameClaim == "" || oc.GroupsClaim == "" {
		add("%s.name_claim and groups_claim must not be empty", field)
	}
	switch {
	case oc.AllowAll && len(oc.AllowedGroups) > 0:
		add("%s: set allowed_groups or allow_all: true, not both", field)
	case !oc.AllowAll && len(oc.AllowedGroups) == 0:
		add("%s.allowed_groups must list the groups whose members are operators, or set allow_all: true "+
			"to make every account this issuer signs in an operator", field)
	}
	errs = append(errs, validateIdentities(field+".allowed_groups", oc.AllowedGroups)...)
	if oc.EmailVerifiedDefault && oc.NameClaim != "email" {
		add("%s.email_verified_default applies only when name_claim is email (it is %q)", field, oc.NameClaim)
	}
	return errs
}

// validateIdentities checks a list of operator or group names: each must
// be a valid name written in its normalized form, and no two may be the
// same identity.
func validateIdentities(field string, names []string) []error {
	return validateIdentityList(field, "", names)
}

// validateIdentityList is validateIdentities for names kept in a list of
// structs: entry i is field[i]+suffix.
func validateIdentityList(field, suffix string, names []string) []error {
	var errs []error
	for i, n := range names {
		if n == "" {
			continue // reported by the caller where a name is required
		}
		norm, err := identity.Normalize(n)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s[%d]%s: %w", field, i, suffix, err))
		case norm != n:
			errs = append(errs, fmt.Errorf("%s[%d]%s %q must be written %q", field, i, suffix, n, norm))
		}
	}
	if i, j, ok := identity.Duplicate(names); ok {
		errs = append(errs, fmt.Errorf("%s[%d]%s %q is the same name as %s[%d]%s %q (names compare case-insensitively)",
			field, j, suffix, names[j], field, i, suffix, names[i]))
	}
	return errs
}

// Role returns the role named name, or nil.
func (c *Config) Role(name string) *Role {
	for i := range c.Roles {
		if c.Roles[i].Name == name {
			return &c.Roles[i]
		}
	}
	return nil
}

// NotificationEvents are the event types valet sends to webhooks.
var NotificationEvents = map[string]bool{
	"grant.requested": true, "grant.approved": true, "grant.denied": true, "grant.expired": true,
	"grant.redeemed": true, "break_glass": true, "break_glass.reviewed": true,
}

// ParseKEK decodes a hex key-encryption key (64 hex digits, AES-256).
func ParseKEK(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 32 {
		return nil, errors.New("the key-encryption key must be 64 hex digits (32 bytes); generate one with `openssl rand -hex 32`")
	}
	return b, nil
}

// NameRule is the syntax of configured names (config.NameRule), which a
// request naming a role must match.
const NameRule = config.NameRule

// ValidName reports whether s has the syntax of a configured name
// (config.ValidName).
func ValidName(s string) bool { return config.ValidName(s) }
