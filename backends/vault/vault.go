// Package vault is valet's HashiCorp Vault backend. It hands agents two
// kinds of credential:
//
//   - Vault tokens, created through a Vault token role with policies from
//     the valet role (templated from the agent's attributes), a TTL equal to
//     the lease's and an explicit max TTL at the lease's maximum, so each
//     token dies on its own. The lease's handle is the token's accessor.
//   - Dynamic secrets read from any path that returns a leased secret
//     (database/creds/<role>, aws/creds/<role>, ...). Each is read with a
//     fresh orphan child token whose TTL is the lease's, so Vault revokes
//     the secret when that token expires even if valet never asks. The
//     lease's handle is Vault's lease id; the child token's accessor is kept
//     in the lease's details.
//
// Every token valet creates carries the lease id in its metadata
// (valet_lease_id), so a token created by a mint that crashed before its
// lease was recorded is found by listing accessors and revoked.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Type is the backend type name in configuration.
const Type = "vault"

// Options are the vault backend's configuration keys.
type Options struct {
	// Address of the Vault server, e.g. https://vault.example.com:8200.
	Address string `yaml:"address"`
	// Namespace (Vault Enterprise); empty for none.
	Namespace string `yaml:"namespace"`
	// TLS: a CA bundle to verify Vault, and a client certificate.
	CAFile         string `yaml:"ca_file"`
	ClientCertFile string `yaml:"client_cert_file"`
	ClientKeyFile  string `yaml:"client_key_file"`
	TLSServerName  string `yaml:"tls_server_name"`
	// Timeout bounds each request to Vault (default 10s; positive).
	Timeout config.Duration `yaml:"timeout"`
	// Auth is how valet itself logs in to Vault.
	Auth AuthOptions `yaml:"auth"`
	// RecoveryScan lets recovery list token accessors to find tokens of
	// interrupted mints (needs list and sudo on auth/token/accessors;
	// default true). Without it such a token is not found and expires on
	// its own, no later than its lease.
	RecoveryScan *bool `yaml:"recovery_scan"`
}

// SetDefaults sets timeout 10s; New decodes the options on top of it, so
// only an absent key takes the default. RecoveryScan stays nil, which means
// true.
func (o *Options) SetDefaults() {
	o.Timeout = config.Duration(10 * time.Second)
}

// RoleParams are a role's vault-specific parameters.
type RoleParams struct {
	// TokenRole is the Vault token role tokens are created through
	// (auth/token/create/<token_role>). It should be orphan (so a credential
	// does not die with valet's own token) and allow the policies below.
	TokenRole string `yaml:"token_role"`
	// Policies of the token; "{{name}}" is replaced by the agent's
	// attribute name (e.g. {{namespace}}), {{agent}} by the agent id and
	// {{role}} by the role. The result must be a plain policy name.
	Policies []string `yaml:"policies"`
	// NoDefaultPolicy leaves out Vault's default policy.
	NoDefaultPolicy bool `yaml:"no_default_policy"`
	// NumUses limits how many requests the token may make (0: unlimited).
	NumUses int `yaml:"num_uses"`
	// Path, when set, makes the credential a dynamic secret read from this
	// path with a child token holding Policies.
	Path string `yaml:"path"`
	// Data, when set, is written to Path (a POST) instead of reading it,
	// for engines that take parameters (aws/sts/<role>, ...).
	Data map[string]any `yaml:"data"`
}

// Backend talks to one Vault.
type Backend struct {
	name   string
	opts   Options
	client *api.Client
	auth   *authenticator
	clock  clock.Clock
	log    *slog.Logger

	roles sync.Map // role name -> *RoleParams

	scanMu   sync.Mutex
	scan     *accessorScan // the last finished recovery scan (see scanFor)
	scanning *accessorScan // the scan in progress, if any

	life    context.Context // ends with Close: stops a recovery scan
	endLife context.CancelFunc
}

var (
	_ backends.Backend       = (*Backend)(nil)
	_ backends.Renewer       = (*Backend)(nil)
	_ backends.RoleChecker   = (*Backend)(nil)
	_ backends.ExpiryRevoker = (*Backend)(nil)
)

// RevokeAtExpiry: a renewable Vault token can renew itself (Vault's
// default policy allows renew-self), so valet revokes vault credentials
// when their leases expire instead of trusting them to have died.
func (b *Backend) RevokeAtExpiry() {}

// New builds a vault backend and logs valet in to Vault. If Vault cannot be
// reached yet, New succeeds and keeps trying in the background: mints fail
// with 503 until it can.
func New(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	var o Options
	o.SetDefaults()
	if err := config.DecodeOptions(options, &o); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if o.Address == "" {
		return nil, fmt.Errorf("backend %s: address is required", name)
	}
	if o.Timeout <= 0 {
		// The api client would wait forever on a Vault that hangs.
		return nil, fmt.Errorf("backend %s: timeout must be positive; it is %s", name, o.Timeout)
	}
	if o.RecoveryScan == nil {
		t := true
		o.RecoveryScan = &t
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && deps.ConfigDir != "" {
			*p = filepath.Join(deps.ConfigDir, *p)
		}
	}
	for _, p := range []*string{&o.CAFile, &o.ClientCertFile, &o.ClientKeyFile, &o.Auth.TokenFile, &o.Auth.RoleIDFile, &o.Auth.SecretIDFile, &o.Auth.JWTFile} {
		abs(p)
	}
	if err := o.Auth.validate(); err != nil {
		return nil, fmt.Errorf("backend %s: auth: %w", name, err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = o.Address
	cfg.Timeout = o.Timeout.D()
	// Fail fast: a mint must answer 503 while Vault is down or sealed, and
	// the revocation queue does its own retrying with backoff.
	cfg.MaxRetries = 0
	if o.CAFile != "" || o.ClientCertFile != "" || o.TLSServerName != "" {
		if err := cfg.ConfigureTLS(&api.TLSConfig{
			CACert: o.CAFile, ClientCert: o.ClientCertFile, ClientKey: o.ClientKeyFile, TLSServerName: o.TLSServerName,
		}); err != nil {
			return nil, fmt.Errorf("backend %s: tls: %w", name, err)
		}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	// The api package reads VAULT_* from the environment; valet's config is
	// the only source of truth.
	client.ClearToken()
	client.SetNamespace(o.Namespace)
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	b := &Backend{name: name, opts: o, client: client, clock: deps.Clock, log: deps.Logger.With("backend", name)}
	b.life, b.endLife = context.WithCancel(context.Background())
	b.auth = newAuthenticator(client, o.Auth, b.log, deps.Clock)
	if err := b.auth.start(); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	return b, nil
}

// Close stops the background login renewal and any recovery scan.
func (b *Backend) Close() error {
	b.endLife()
	b.auth.stop()
	return nil
}

// CheckRole validates a role's params at start-up.
func (b *Backend) CheckRole(r backends.RoleSpec) error {
	var p RoleParams
	if err := config.DecodeOptions(r.Params, &p); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	if p.TokenRole == "" {
		return errors.New("params.token_role is required: the Vault token role valet creates tokens through")
	}
	if !pathPattern.MatchString(p.TokenRole) {
		return fmt.Errorf("params.token_role %q is not a valid token role name", p.TokenRole)
	}
	if p.Path != "" && (strings.HasPrefix(p.Path, "/") || strings.Contains(p.Path, "..") || !pathPattern.MatchString(p.Path)) {
		return fmt.Errorf("params.path %q must be a Vault path such as database/creds/readonly", p.Path)
	}
	if p.Path == "" && len(p.Data) > 0 {
		return errors.New("params.data needs params.path")
	}
	if p.NumUses < 0 {
		return errors.New("params.num_uses must not be negative")
	}
	for i, pol := range p.Policies {
		if _, err := expandPolicy(pol, nil, "agent", r.Name, true); err != nil {
			return fmt.Errorf("params.policies[%d]: %w", i, err)
		}
	}
	if err := b.checkTokenRole(p.TokenRole, r); err != nil {
		return err
	}
	b.roles.Store(r.Name, &p)
	return nil
}

// checkTokenRole reads the Vault token role and refuses settings that would
// let a credential outlive its lease. Vault 1.13 caps renewals of a token
// created through a role at the role's token_explicit_max_ttl, not at the
// token's own explicit_max_ttl, so a renewable valet role needs the token
// role's cap at or below its max_ttl. If the role cannot be read (Vault
// down, no permission) valet warns and starts anyway.
func (b *Backend) checkTokenRole(name string, r backends.RoleSpec) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.auth.ready(ctx); err != nil {
		b.log.Warn("cannot check the Vault token role now", "token_role", name, "err", err)
		return nil
	}
	sec, err := b.client.Logical().ReadWithContext(ctx, "auth/token/roles/"+name)
	if err != nil || sec == nil {
		if err == nil {
			return fmt.Errorf("params.token_role: Vault has no token role %q (create it with: vault write auth/token/roles/%s orphan=true allowed_policies=...)", name, name)
		}
		b.log.Warn("cannot read the Vault token role to check it", "token_role", name, "err", err)
		return nil
	}
	seconds := func(k string) int64 {
		n, _ := sec.Data[k].(json.Number).Int64()
		return n
	}
	if seconds("token_period") > 0 || seconds("period") > 0 {
		return fmt.Errorf("params.token_role: Vault token role %s issues periodic tokens, which renew forever; valet credentials must expire on their own", name)
	}
	if orphan, _ := sec.Data["orphan"].(bool); !orphan {
		b.log.Warn("the Vault token role is not orphan: its tokens die when valet's own token is revoked or expires", "token_role", name)
	}
	if r.Renewable && r.MaxTTL > r.TTL {
		maxTTL := seconds("token_explicit_max_ttl")
		if maxTTL == 0 {
			maxTTL = seconds("explicit_max_ttl")
		}
		if maxTTL <= 0 || time.Duration(maxTTL)*time.Second > r.MaxTTL {
			return fmt.Errorf("params.token_role: role %s is renewable up to %s, but Vault token role %s caps renewals at %ds (token_explicit_max_ttl; 0 is none); set token_explicit_max_ttl=%d on it, or make the role renewable: false",
				r.Name, r.MaxTTL, name, maxTTL, int64(r.MaxTTL/time.Second))
		}
	}
	return nil
}

var (
	pathPattern   = regexp.MustCompile(`^[A-Za-z0-9_.\-/]+$`)
	policyPattern = regexp.MustCompile(`^[A-Za-z0-9_.\-]+$`)
	placeholder   = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}`)
)

// expandPolicy fills a policy template. With check set it only validates
// the template (attributes unknown yet).
func expandPolicy(tmpl string, attrs map[string]string, agent, role string, check bool) (string, error) {
	var missing string
	out := placeholder.ReplaceAllStringFunc(tmpl, func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		switch {
		case check:
			return "x"
		case name == "agent":
			return sanitizeAgent(agent)
		case name == "role":
			return role
		}
		v, ok := attrs[name]
		if !ok && missing == "" {
			missing = name
		}
		return v
	})
	if missing != "" {
		return "", backends.Errorf(backends.ErrForbidden, "the role's Vault policy %q needs the agent attribute %q, which this agent's attestation does not carry", tmpl, missing)
	}
	if !policyPattern.MatchString(out) {
		if check {
			return "", fmt.Errorf("%q does not make a valid policy name", tmpl)
		}
		return "", backends.Errorf(backends.ErrForbidden, "the role's Vault policy %q expands to %q for this agent, which is not a valid policy name", tmpl, out)
	}
	return out, nil
}

// sanitizeAgent makes an agent id usable in policy names and display names.
func sanitizeAgent(agent string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '-'
	}, agent)
}

func (b *Backend) params(role string) (*RoleParams, error) {
	p, ok := b.roles.Load(role)
	if !ok {
		return nil, fmt.Errorf("role %s was not checked by backend %s", role, b.name)
	}
	return p.(*RoleParams), nil
}

// Credential detail keys (stored in the lease, shown to operators).
const (
	detailKind          = "kind" // "token" or "secret"
	detailAccessor      = "accessor"
	detailChildAccessor = "child_accessor"
	detailLeaseID       = "vault_lease_id"
	detailTTL           = "vault_ttl"
	detailPolicies      = "policies"
	detailPath          = "path"
)

// Mint creates the token (and reads the secret) for req.
func (b *Backend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	p, err := b.params(req.Role.Name)
	if err != nil {
		return nil, err
	}
	if len(req.Scope) > 0 {
		return nil, backends.Errorf(backends.ErrInvalid, "the vault backend does not narrow credentials by scope")
	}
	tok, err := b.createToken(ctx, p, req)
	if err != nil {
		return nil, err
	}
	if p.Path == "" {
		return &backends.Credential{
			Handle:    tok.accessor,
			ExpiresAt: tok.expiresAt,
			Data: map[string]any{
				"vault_token":    tok.token,
				"vault_accessor": tok.accessor,
				"vault_addr":     b.opts.Address,
				"policies":       tok.policies,
			},
			Details: map[string]string{
				detailKind: "token", detailAccessor: tok.accessor,
				detailTTL: tok.ttl.String(), detailPolicies: strings.Join(tok.policies, ","),
			},
		}, nil
	}
	return b.readSecret(ctx, p, req, tok)
}

// issuedToken is a token Vault created.
type issuedToken struct {
	token, accessor string
	policies        []string
	ttl             time.Duration
	expiresAt       time.Time // an upper bound of its real expiry
}

// createToken creates a token through the role's token role. Its TTL is
// the whole seconds left until the lease's expiry, minus one: Vault counts
// the TTL from when it creates the token, a little after valet sent the
// request, and the token must not outlive the lease.
func (b *Backend) createToken(ctx context.Context, p *RoleParams, req backends.MintRequest) (*issuedToken, error) {
	policies := make([]string, 0, len(p.Policies))
	for _, tmpl := range p.Policies {
		pol, err := expandPolicy(tmpl, req.Attributes, req.AgentID, req.Role.Name, false)
		if err != nil {
			return nil, err
		}
		policies = append(policies, pol)
	}
	sent := b.clock.Now()
	ttl := secondsUntil(sent, req.ExpiresAt)
	if ttl < 1 {
		return nil, backends.Errorf(backends.ErrInvalid, "the lease is too short for a Vault token (at least 2s)")
	}
	maxTTL := ttl
	renewable := false
	if !req.MaxExpiresAt.IsZero() {
		if m := secondsUntil(sent, req.MaxExpiresAt); m > ttl {
			maxTTL, renewable = m, true
		}
	}
	body := map[string]any{
		"policies":          policies,
		"ttl":               fmt.Sprintf("%ds", ttl),
		"explicit_max_ttl":  fmt.Sprintf("%ds", maxTTL),
		"renewable":         renewable,
		"no_default_policy": p.NoDefaultPolicy,
		"display_name":      "valet-" + sanitizeAgent(req.AgentID),
		"meta": map[string]string{
			"valet_lease_id": req.CorrelationID,
			"valet_agent_id": req.AgentID,
			"valet_role":     req.Role.Name,
		},
	}
	if p.NumUses > 0 && p.Path == "" {
		body["num_uses"] = p.NumUses
	}
	sec, err := b.write(ctx, "auth/token/create/"+p.TokenRole, body)
	if err != nil {
		return nil, b.vaultError(err, "create a token through token role "+p.TokenRole)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, fmt.Errorf("vault answered the token creation without a token")
	}
	t := &issuedToken{
		token: sec.Auth.ClientToken, accessor: sec.Auth.Accessor, policies: sec.Auth.Policies,
		ttl: time.Duration(sec.Auth.LeaseDuration) * time.Second,
	}
	t.expiresAt = b.clock.Now().Add(t.ttl)
	if sec.Auth.LeaseDuration <= 0 || t.ttl > time.Duration(ttl)*time.Second {
		// A token without a TTL (root-like token role) or longer than asked
		// would break invariant 2: take it back.
		b.revokeAccessor(context.WithoutCancel(ctx), t.accessor)
		return nil, backends.Errorf(backends.ErrBadResponse, "Vault token role %s issued a token with TTL %ds, not the %ds asked for; check its token_ttl / token_period settings", p.TokenRole, sec.Auth.LeaseDuration, ttl)
	}
	return t, nil
}

// secondsUntil is the whole seconds from now to t, minus one second of
// margin for the request's flight to Vault.
func secondsUntil(now, t time.Time) int64 {
	return int64(t.Sub(now)/time.Second) - 1
}

// readSecret reads the dynamic secret with the child token tok.
func (b *Backend) readSecret(ctx context.Context, p *RoleParams, req backends.MintRequest, tok *issuedToken) (*backends.Credential, error) {
	child, err := b.client.Clone()
	if err != nil {
		return nil, err
	}
	child.SetToken(tok.token)
	child.SetNamespace(b.opts.Namespace)
	sent := b.clock.Now()
	var sec *api.Secret
	if len(p.Data) > 0 {
		sec, err = child.Logical().WriteWithContext(ctx, p.Path, p.Data)
	} else {
		sec, err = child.Logical().ReadWithContext(ctx, p.Path)
	}
	fail := func(e error) (*backends.Credential, error) {
		// Revoking the child token revokes anything read with it.
		b.revokeAccessor(context.WithoutCancel(ctx), tok.accessor)
		return nil, e
	}
	if err != nil {
		return fail(b.vaultError(err, "read "+p.Path))
	}
	if sec == nil || sec.LeaseID == "" || sec.LeaseDuration <= 0 {
		return fail(backends.Errorf(backends.ErrBadResponse, "Vault path %s did not return a leased secret; only dynamic secrets (with a lease) can be valet credentials", p.Path))
	}
	// A Vault TTL equal to the lease's is accepted: Vault counts it from a
	// moment after valet sent the request, and the child token (whose TTL
	// is a second shorter) takes the secret with it when it expires.
	allowed := int64((req.ExpiresAt.Sub(sent) + time.Second - 1) / time.Second)
	if int64(sec.LeaseDuration) > allowed {
		// Invariant 2: the secret (and, for PostgreSQL, its VALID UNTIL)
		// would outlive the lease.
		b.revokeLease(context.WithoutCancel(ctx), sec.LeaseID)
		return fail(backends.Errorf(backends.ErrBadResponse,
			"Vault issues secrets at %s with a TTL of %ds, longer than this lease's %ds; lower the Vault role's default_ttl to at most %ds (valet role %s) — what Vault issued was revoked",
			p.Path, sec.LeaseDuration, allowed, allowed, req.Role.Name))
	}
	data := make(map[string]any, len(sec.Data)+1)
	for k, v := range sec.Data {
		data[k] = v
	}
	data["vault_lease_duration"] = sec.LeaseDuration
	expires := b.clock.Now().Add(time.Duration(sec.LeaseDuration) * time.Second)
	if tok.expiresAt.Before(expires) {
		// Vault revokes the secret when the child token expires.
		expires = tok.expiresAt
	}
	return &backends.Credential{
		Handle:    sec.LeaseID,
		ExpiresAt: expires,
		Data:      data,
		Details: map[string]string{
			detailKind: "secret", detailLeaseID: sec.LeaseID, detailChildAccessor: tok.accessor,
			detailTTL: (time.Duration(sec.LeaseDuration) * time.Second).String(), detailPath: p.Path,
			detailPolicies: strings.Join(tok.policies, ","),
		},
	}, nil
}

// Revoke ends a credential: the token by accessor, or the secret's Vault
// lease and its child token. Both are idempotent at Vault. With no handle
// (a mint interrupted before its lease was recorded) it looks for a token
// carrying the lease id in its metadata.
func (b *Backend) Revoke(ctx context.Context, ref backends.Ref) error {
	if ref.Handle == "" {
		return b.recover(ctx, ref)
	}
	switch ref.Details[detailKind] {
	case "secret":
		if err := b.revokeLease(ctx, ref.Handle); err != nil {
			return err
		}
		if acc := ref.Details[detailChildAccessor]; acc != "" {
			return b.revokeAccessor(ctx, acc)
		}
		return nil
	default:
		return b.revokeAccessor(ctx, ref.Handle)
	}
}

func (b *Backend) revokeAccessor(ctx context.Context, accessor string) error {
	_, err := b.write(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": accessor})
	if err != nil && !notFound(err) {
		return b.vaultError(err, "revoke a token")
	}
	return nil
}

func (b *Backend) revokeLease(ctx context.Context, leaseID string) error {
	_, err := b.write(ctx, "sys/leases/revoke", map[string]any{"lease_id": leaseID})
	if err != nil && !notFound(err) {
		return b.vaultError(err, "revoke a lease")
	}
	return nil
}

// Renew extends the token (and the secret's lease) to req.ExpiresAt at the
// most.
func (b *Backend) Renew(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
	sent := b.clock.Now()
	until := req.ExpiresAt
	if !req.MaxExpiresAt.IsZero() && req.MaxExpiresAt.Before(until) {
		until = req.MaxExpiresAt
	}
	inc := secondsUntil(sent, until)
	if inc < 1 {
		return nil, backends.Errorf(backends.ErrConflict, "too little time left to renew")
	}
	accessor := ref.Handle
	if ref.Details[detailKind] == "secret" {
		accessor = ref.Details[detailChildAccessor]
	}
	sec, err := b.write(ctx, "auth/token/renew-accessor", map[string]any{"accessor": accessor, "increment": fmt.Sprintf("%ds", inc)})
	if err != nil {
		return nil, b.vaultError(err, "renew a token")
	}
	if sec == nil || sec.Auth == nil {
		return nil, fmt.Errorf("vault answered the renewal without token information")
	}
	expires := b.clock.Now().Add(time.Duration(sec.Auth.LeaseDuration) * time.Second)
	if ref.Details[detailKind] == "secret" {
		ls, err := b.write(ctx, "sys/leases/renew", map[string]any{"lease_id": ref.Handle, "increment": inc})
		if err != nil {
			return nil, b.vaultError(err, "renew a lease")
		}
		if ls != nil {
			if e := b.clock.Now().Add(time.Duration(ls.LeaseDuration) * time.Second); e.Before(expires) {
				expires = e
			}
		}
	}
	return &backends.Renewal{ExpiresAt: expires}, nil
}

// write sends a write with valet's token, logging in again once if the
// token has expired or been revoked.
func (b *Backend) write(ctx context.Context, path string, data map[string]any) (*api.Secret, error) {
	if err := b.auth.ready(ctx); err != nil {
		return nil, err
	}
	token := b.client.Token()
	sec, err := b.client.Logical().WriteWithContext(ctx, path, data)
	if err != nil && isPermissionDenied(err) && b.auth.relogin(ctx, token) == nil {
		sec, err = b.client.Logical().WriteWithContext(ctx, path, data)
	}
	return sec, err
}

// vaultError classifies a Vault failure: unreachable, sealed, standby or
// rate limited is backends.ErrUnavailable (503 to the client); anything
// else is a backend error whose details go to the log.
func (b *Backend) vaultError(err error, what string) error {
	var be *backends.Error
	if errors.As(err, &be) {
		return err
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusBadGateway, http.StatusGatewayTimeout:
			return fmt.Errorf("vault %s: %w (%s)", what, backends.ErrUnavailable, strings.Join(re.Errors, "; "))
		case http.StatusForbidden:
			return fmt.Errorf("vault refused to %s: permission denied for valet's token; check its policies", what)
		default:
			return fmt.Errorf("vault %s: %d %s", what, re.StatusCode, strings.Join(re.Errors, "; "))
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("vault %s: %w: %w", what, backends.ErrUnavailable, err)
	}
	// Anything else is a transport failure: connection refused, DNS, TLS.
	return fmt.Errorf("vault %s: %w: %v", what, backends.ErrUnavailable, err)
}

func isPermissionDenied(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// notFound reports Vault's answers for a token or lease that no longer
// exists: revoking it is then done.
func notFound(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	if re.StatusCode == http.StatusNotFound {
		return true
	}
	if re.StatusCode == http.StatusBadRequest {
		for _, e := range re.Errors {
			l := strings.ToLower(e)
			if strings.Contains(l, "invalid accessor") || strings.Contains(l, "invalid lease") || strings.Contains(l, "lease not found") || strings.Contains(l, "invalid token") {
				return true
			}
		}
	}
	return false
}
