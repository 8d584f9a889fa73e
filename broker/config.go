package broker

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/config"
)

// Config is what the broker reads of the configuration file: its own
// sections (roles, limits) and the keys of others that its flows need.
// cmd/valet decodes the file, validates every section and builds it;
// Validate checks the broker's own sections. Defaults come only from absent
// keys (see leases/config); DefaultConfig and config.Defaulted build a
// configuration in Go the same way.
type Config struct {
	// PublicURL is valet's public URL (public_url), without a trailing
	// slash; grant notifications link to the console under it.
	PublicURL string
	// Roles are the roles agents can ask for (roles).
	Roles []Role
	// Limits bound what a client can make valet do (limits).
	Limits LimitsConfig
	// Leases is the leases section; its revoke_concurrency bounds bulk
	// revocations too.
	Leases leases.Config
	// Signals is the broker's part of the signals section.
	Signals SignalsConfig
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

// Limit defaults.
const (
	DefaultMaxBodyBytes        = 64 << 10
	DefaultMaxHeaderBytes      = 32 << 10
	DefaultMaxAttestationBytes = 16 << 10

	DefaultAuthFailuresPerMinute       = 10
	DefaultAuthFailureRecordsPerMinute = 30
)

// DefaultConfig returns a broker configuration with every default set and
// nothing else: the starting point for one built in Go. Roles is empty;
// build its elements with config.Defaulted.
func DefaultConfig() *Config {
	var c Config
	c.SetDefaults()
	return &c
}

// SetDefaults sets the defaults of the limits and leases sections,
// overwriting what was there.
func (c *Config) SetDefaults() {
	c.Limits.SetDefaults()
	c.Leases.SetDefaults()
	c.Signals.SetDefaults()
}

// Validate checks the broker's sections (roles, limits, leases and its
// keys of signals) and names the full key path of the offending key in
// each error, e.g. "roles[0].max_ttl (1h0m0s) must not be less than ttl
// (2h0m0s)". backends are the names of the configured backends; signal
// sources may name no signals issuer here.
func (c *Config) Validate(backends map[string]bool) error {
	return errors.Join(ValidateRoles(c.Roles, backends), c.Limits.Validate(), c.Leases.Validate(), c.Signals.Validate(nil))
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

// ValidateRoles checks the roles section and names the full key path in
// each error ("roles[0].ttl must be positive"). backends are the names of
// the configured backends.
func ValidateRoles(roles []Role, backends map[string]bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	for i, r := range roles {
		f := fmt.Sprintf("roles[%d]", i)
		errs = append(errs, config.CheckName(f+".name", r.Name, names)...)
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
	return errors.Join(errs...)
}

// ValidateOperatorTokens checks operators.tokens and names the full key
// path in each error.
func ValidateOperatorTokens(tokens []OperatorToken) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var opNames []string
	seenSums := map[string]int{}
	for i, t := range tokens {
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
	return errors.Join(errs...)
}

// Validate checks the limits section and names the full key path in each
// error.
func (l *LimitsConfig) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
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
	return errors.Join(errs...)
}

// Validate checks an issuer's operator identity keys; field is the
// issuer's key path ("operators.issuers[0]", "console.oidc").
func (oc OperatorIdentityConfig) Validate(field string) error {
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
	return errors.Join(errs...)
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

// allowedAlgorithms are the asymmetric JWS algorithms an issuer or a client
// may be allowed.
var allowedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// AllowedAlgorithm reports whether a is a JWS algorithm the configuration
// may allow for tokens valet verifies (attestations, operator ID tokens,
// client assertions): asymmetric algorithms only, never none or HMAC (RFC
// 8725 section 3.1).
func AllowedAlgorithm(a string) bool { return allowedAlgorithms[a] }

// NameRule is the syntax of configured names (config.NameRule), which a
// request naming a role must match.
const NameRule = config.NameRule

// ValidName reports whether s has the syntax of a configured name
// (config.ValidName).
func ValidName(s string) bool { return config.ValidName(s) }
