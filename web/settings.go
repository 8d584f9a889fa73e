package web

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// ConsoleConfig is the console section of the configuration file: the
// operator web console at /ui/.
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
	// RedirectURL defaults to <public_url>/ui/auth/callback (set by
	// whoever decodes the whole file, which knows public_url).
	RedirectURL string   `yaml:"redirect_url"`
	Scopes      []string `yaml:"scopes"` // default openid, email, profile, groups
	// CAFile verifies the provider's TLS certificate.
	CAFile string `yaml:"ca_file"`
	// The operator's name and groups come from the ID token as for
	// operators.issuers (see broker.OperatorFromClaims).
	broker.OperatorIdentityConfig `yaml:",inline"`
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
// by whoever decodes the whole file.
func (o *ConsoleOIDCConfig) SetDefaults() {
	o.Scopes = []string{"openid", "email", "profile", "groups"}
	o.OperatorIdentityConfig.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (o *ConsoleOIDCConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type oidc ConsoleOIDCConfig
	return config.DecodeOnDefaults(o.SetDefaults, (*oidc)(o), unmarshal)
}

// Validate checks the section and names the full key path in each error
// ("console.session_idle must be positive").
func (cc *ConsoleConfig) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o := cc.OIDC; o != nil {
		if u, err := url.Parse(o.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("console.oidc.issuer %q must be an absolute http(s) URL", o.Issuer)
		}
		if o.ClientID == "" {
			add("console.oidc.client_id must be set")
		}
		if !slices.Contains(o.Scopes, "openid") {
			add("console.oidc.scopes %v must include openid", o.Scopes)
		}
		errs = append(errs, o.OperatorIdentityConfig.Validate("console.oidc"))
	}
	if cc.SessionIdle <= 0 {
		add("console.session_idle must be positive; it is %s", cc.SessionIdle)
	}
	if cc.SessionMax < cc.SessionIdle || cc.SessionMax <= 0 {
		add("console.session_max must be positive and not less than session_idle (%s); it is %s", cc.SessionIdle, cc.SessionMax)
	}
	if cc.FreshLogin <= 0 {
		add("console.fresh_login must be positive; it is %s", cc.FreshLogin)
	}
	return errors.Join(errs...)
}
