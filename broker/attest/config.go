package attest

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

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

// Issuer defaults and bounds.
const (
	DefaultClockSkew   = 30 * time.Second
	MaxClockSkew       = 5 * time.Minute
	DefaultMaxTokenAge = 24 * time.Hour
)

// IssuerConfig is one trusted attestation issuer (issuers[] in the
// configuration file), or the issuer part of an operator SSO issuer.
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

// OperatorIssuerConfig is an issuer of operator ID tokens
// (operators.issuers[]): the keys of an attestation issuer plus those of
// the operator's identity.
type OperatorIssuerConfig struct {
	IssuerConfig                  `yaml:",inline"`
	broker.OperatorIdentityConfig `yaml:",inline"`
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

// OperatorIssuer is what broker.Operators needs to know of the issuer.
func (oi *OperatorIssuerConfig) OperatorIssuer() broker.OperatorIssuer {
	return broker.OperatorIssuer{Name: oi.Name, Issuer: oi.Issuer, Identity: oi.OperatorIdentityConfig}
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
		*issuer                        `yaml:",inline"`
		*broker.OperatorIdentityConfig `yaml:",inline"`
	}
	plain := &operatorIssuer{(*issuer)(&oi.IssuerConfig), &oi.OperatorIdentityConfig}
	if err := config.DecodeOnDefaults(oi.SetDefaults, plain, unmarshal); err != nil {
		return err
	}
	return oi.IssuerConfig.applyPreset(unmarshal)
}

// ValidateIssuers checks a list of issuers whose key path is field
// ("issuers", "operators.issuers") and names the full key path of the
// offending key in each error, e.g. "issuers[1].audiences must not be
// empty".
func ValidateIssuers(field string, issuers []IssuerConfig) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	isses := map[string]bool{}
	for i, ic := range issuers {
		f := fmt.Sprintf("%s[%d]", field, i)
		errs = append(errs, config.CheckName(f+".name", ic.Name, names)...)
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
			if !broker.AllowedAlgorithm(a) {
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
	return errors.Join(errs...)
}

// ClientAssertionIssuers returns, for the private_key_jwt clients of the
// introspection section, the trusted-issuer settings that verify their
// client assertions (RFC 7523 section 3, OpenID Connect Core section 9):
// iss and sub are the client_id, aud names valet (its public URL, or the
// URL of the endpoint the assertion is sent to), exp is required, and jti
// is single-use. Each issuer's name is "introspection:<client_id>", which
// no attestation issuer can have, so their jti values never collide in the
// replay cache.
func ClientAssertionIssuers(c broker.IntrospectionConfig, publicURL string) []IssuerConfig {
	var out []IssuerConfig
	for _, cl := range c.Clients {
		if cl.AuthMethod != broker.AuthPrivateKeyJWT {
			continue
		}
		out = append(out, config.Defaulted(func(ic *IssuerConfig) {
			ic.Name, ic.Issuer = "introspection:"+cl.ClientID, cl.ClientID
			ic.Audiences = []string{publicURL, publicURL + "/v1/introspect", publicURL + "/v1/oauth/token"}
			ic.JWKSFile, ic.JWKSURL, ic.CAFile, ic.Algorithms = cl.JWKSFile, cl.JWKSURL, cl.CAFile, cl.Algorithms
			ic.RequireJTI = true
			// RFC 7523 does not require iat: no age limit beyond exp.
			ic.MaxTokenAge = 0
		}))
	}
	return out
}
