package gcp

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/config"
)

// RoleParams are a role's gcp-specific parameters. A role hands out access
// tokens (scopes, lifetime) or, with audience, ID tokens.
type RoleParams struct {
	// ServiceAccount is the service account whose tokens the role hands
	// out: its email (NAME@PROJECT.iam.gserviceaccount.com) or numeric
	// unique id. "{{attribute}}" is replaced by the agent's attribute:
	// inside a longer value it must be letters, digits, - or _ (it cannot
	// change the domain); as the whole value, a service account's email.
	ServiceAccount string `yaml:"service_account"`
	// Delegates is an optional delegation chain: service accounts (emails
	// or unique ids), valet's identity holding
	// roles/iam.serviceAccountTokenCreator on the first, each on the next,
	// the last on ServiceAccount.
	Delegates []string `yaml:"delegates"`
	// Scopes of an access token (default: cloud-platform; at least one).
	// Agents may narrow them with scope {"scopes": [...]}.
	Scopes []string `yaml:"scopes"`
	// Lifetime is the longest access token the role may ask for (default
	// 1h; at most 1h, or 12h with the backend's extended_lifetime). Every
	// token lives exactly as long as its lease, so the role's max_ttl must
	// not exceed it.
	Lifetime *config.Duration `yaml:"lifetime"`
	// Audience, when set, makes the role hand out OpenID Connect ID tokens
	// for it (the URL of the service that verifies them) instead of access
	// tokens. Google gives every ID token one hour, whatever the lease.
	Audience string `yaml:"audience"`
	// IncludeEmail puts the service account's email in the ID token
	// (email and email_verified claims).
	IncludeEmail bool `yaml:"include_email"`
}

// role is a checked role.
type role struct {
	RoleParams
	lifetime time.Duration // the longest access token
}

func (r *role) idToken() bool { return r.Audience != "" }

var (
	// placeholder is {{name}}: an agent attribute.
	placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}`)
	// accountPattern is a service account's email or numeric unique id.
	accountPattern = regexp.MustCompile(`^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,62}@[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+|[0-9]{1,30})$`)
	// partPattern is what an attribute may be inside a longer value.
	partPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	// scopePattern is an OAuth 2.0 scope for Google APIs.
	scopePattern = regexp.MustCompile(`^(?:https://www\.googleapis\.com/auth/[a-z0-9._-]+(?:/[a-z0-9._-]+)*|openid|email|profile)$`)
)

// CheckRole validates a role's params at start-up: the service account
// (template), delegates, scopes or audience, and lifetimes within Google's
// limits and the lease's: an access token never outlives its lease nor the
// lease its token (max_ttl at most the role's lifetime, itself at most an
// hour without the backend's extended_lifetime), and an ID token's lease
// is at most its hour. Google cannot revoke these tokens: it warns when a
// role's leases may last longer than 15 minutes.
func (b *Backend) CheckRole(r backends.RoleSpec) error {
	ro, err := b.parseRole(r)
	if err != nil {
		return err
	}
	switch {
	case ro.idToken():
		b.log.Warn("Google cannot revoke the ID tokens of this role, and gives each one hour whatever the lease: a released or revoked lease's token stays valid until then",
			"role", r.Name, "audience", ro.Audience)
	case r.MaxTTL > ShortTTL:
		b.log.Warn("Google cannot revoke the access tokens of this role: a released or revoked lease's token stays valid until its expiry, up to max_ttl; prefer a max_ttl of 15 minutes or less",
			"role", r.Name, "max_ttl", r.MaxTTL)
	}
	b.roles.Store(r.Name, ro)
	return nil
}

// parseRole checks a role's params.
func (b *Backend) parseRole(r backends.RoleSpec) (*role, error) {
	var p RoleParams
	if err := config.DecodeOptions(r.Params, &p); err != nil {
		return nil, fmt.Errorf("params: %w", err)
	}
	if len(r.Scopes) > 0 || len(r.Audience) > 0 {
		return nil, errors.New("scopes and audience of a role are the jwt backend's: give a gcp role's Google scopes in params.scopes, or its ID token audience in params.audience")
	}
	ro := &role{RoleParams: p, lifetime: MaxLifetime}
	if p.ServiceAccount == "" {
		return nil, errors.New("params.service_account is required: the service account whose tokens the role hands out (an email or unique id)")
	}
	if err := checkAccountTemplate(p.ServiceAccount); err != nil {
		return nil, fmt.Errorf("params.service_account: %w", err)
	}
	for i, d := range p.Delegates {
		if !accountPattern.MatchString(d) {
			return nil, fmt.Errorf("params.delegates[%d] %q is not a service account email or unique id", i, d)
		}
	}
	_, scopesGiven := r.Params["scopes"]
	if ro.idToken() {
		switch {
		case scopesGiven:
			return nil, errors.New("params.scopes are for access tokens; a role with params.audience hands out ID tokens, which have none")
		case p.Lifetime != nil:
			return nil, fmt.Errorf("params.lifetime is for access tokens; Google gives every ID token %s", IDTokenLifetime)
		case r.MaxTTL > IDTokenLifetime:
			return nil, fmt.Errorf("max_ttl %s is longer than Google's ID tokens live (%s): a lease must not outlive its token", r.MaxTTL, IDTokenLifetime)
		}
		return ro, nil
	}
	if p.IncludeEmail {
		return nil, errors.New("params.include_email is for ID tokens (params.audience)")
	}
	if !scopesGiven {
		ro.Scopes = []string{CloudPlatformScope}
	}
	if len(ro.Scopes) == 0 {
		return nil, errors.New("params.scopes must name at least one OAuth scope, e.g. https://www.googleapis.com/auth/cloud-platform")
	}
	for i, s := range ro.Scopes {
		if !scopePattern.MatchString(s) {
			return nil, fmt.Errorf("params.scopes[%d] %q is not an OAuth scope for Google APIs (https://www.googleapis.com/auth/..., openid, email or profile)", i, s)
		}
	}
	most := MaxLifetime
	if b.opts.ExtendedLifetime {
		most = MaxExtendedLifetime
	}
	if p.Lifetime != nil {
		ro.lifetime = p.Lifetime.D()
		switch {
		case ro.lifetime < time.Second || ro.lifetime%time.Second != 0:
			return nil, fmt.Errorf("params.lifetime must be whole seconds, at least 1s; it is %s", ro.lifetime)
		case ro.lifetime > most && !b.opts.ExtendedLifetime:
			return nil, fmt.Errorf("params.lifetime %s is longer than Google's %s: longer tokens need the organization policy constraints/iam.allowServiceAccountCredentialLifetimeExtension for the service account, and extended_lifetime: true on backend %s", ro.lifetime, MaxLifetime, b.name)
		case ro.lifetime > most:
			return nil, fmt.Errorf("params.lifetime %s is longer than Google's longest token (%s)", ro.lifetime, MaxExtendedLifetime)
		}
	}
	if r.MaxTTL > ro.lifetime {
		return nil, fmt.Errorf("max_ttl %s is longer than the role's tokens may live (params.lifetime %s): a lease must not outlive its token; lower max_ttl, or raise params.lifetime", r.MaxTTL, ro.lifetime)
	}
	return ro, nil
}

// checkAccountTemplate checks a service account that may hold
// placeholders: a sample in each place must give a valid account.
func checkAccountTemplate(v string) error {
	if m := placeholder.FindStringSubmatchIndex(v); m != nil && m[0] == 0 && m[1] == len(v) {
		return nil // the whole account comes from the attribute: checked at mint
	}
	sample := placeholder.ReplaceAllString(v, "x")
	if strings.Contains(sample, "{{") || strings.Contains(sample, "}}") {
		return fmt.Errorf("%q has a malformed placeholder; write {{attribute}}", v)
	}
	if !accountPattern.MatchString(sample) {
		return fmt.Errorf("%q is not a service account email or unique id", v)
	}
	return nil
}

// account fills the role's service account from the agent's attributes.
// A missing or unfit attribute refuses the mint for this agent.
func (r *role) account(attrs map[string]string) (string, error) {
	whole := placeholder.FindStringSubmatchIndex(r.ServiceAccount)
	var bad error
	out := placeholder.ReplaceAllStringFunc(r.ServiceAccount, func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		v, ok := attrs[name]
		switch {
		case bad != nil:
		case !ok:
			bad = clientError(kindForbidden, "the role's service_account %q needs the agent attribute %q, which this agent's attestation does not carry", r.ServiceAccount, name)
		case whole != nil && whole[0] == 0 && whole[1] == len(r.ServiceAccount):
			// The whole account: checked below.
		case !partPattern.MatchString(v):
			bad = clientError(kindForbidden, "the role's service_account %q takes attribute %q only as letters, digits, - and _ (at most 63); this agent's is not", r.ServiceAccount, name)
		}
		return v
	})
	if bad != nil {
		return "", bad
	}
	if !accountPattern.MatchString(out) {
		return "", clientError(kindForbidden, "the role's service_account %q gives %q for this agent, which is not a service account email or unique id", r.ServiceAccount, out)
	}
	return out, nil
}

// narrow applies a client's scope request to the role: {"scopes": [...]},
// a non-empty subset of the role's scopes, for access tokens only.
func (r *role) narrow(scope map[string]any) ([]string, error) {
	scopes := r.Scopes
	for k, v := range scope {
		if k != "scopes" || r.idToken() {
			what := "scopes (a subset of the role's)"
			if r.idToken() {
				what = "nothing: an ID token's audience is the role's"
			}
			return nil, clientError(kindInvalid, "scope.%s is not understood by the gcp backend; it takes %s", k, what)
		}
		list, ok := backends.ScopeStrings(v)
		if !ok || len(list) == 0 {
			return nil, clientError(kindInvalid, "scope.scopes must be a non-empty list of the role's OAuth scopes")
		}
		for _, s := range list {
			if !slices.Contains(r.Scopes, s) {
				return nil, clientError(kindInvalid, "scope.scopes: %q is not one of the role's scopes (%s)", s, strings.Join(r.Scopes, ", "))
			}
		}
		scopes = list
	}
	return scopes, nil
}

// CheckScope reports, with the error Mint would return, whether scope is
// an acceptable narrowing of role.
func (b *Backend) CheckScope(rs backends.RoleSpec, scope map[string]any) error {
	r, err := b.role(rs.Name)
	if err != nil {
		return err
	}
	_, err = r.narrow(scope)
	return err
}

func (b *Backend) role(name string) (*role, error) {
	r, ok := b.roles.Load(name)
	if !ok {
		return nil, fmt.Errorf("role %s was not checked by backend %s", name, b.name)
	}
	return r.(*role), nil
}
