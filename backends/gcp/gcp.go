// Package gcp is valet's Google Cloud backend: each credential is a
// short-lived token of a service account, made by the IAM Service Account
// Credentials API (iamcredentials.googleapis.com v1) through
// google.golang.org/api/iamcredentials/v1: an OAuth 2.0 access token
// (generateAccessToken) for the role's scopes, living exactly as long as
// its lease, or an OpenID Connect ID token for an audience
// (generateIdToken), which Google makes live one hour. valet's own identity
// comes from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
// gcloud's application-default login, or the attached service account on
// Google Cloud); it needs roles/iam.serviceAccountTokenCreator on each
// service account it hands out tokens of (or on the first account of a
// delegation chain, each account holding it on the next).
//
// Google offers no way to revoke these tokens: Revoke answers
// backends.ErrUnrevocable, and a released or revoked lease reads revoking,
// to end expired, until its token has expired (see leases.ErrUnrevocable).
// Nor can Google find the token of a mint interrupted by a crash: its
// lease likewise reads revoking until any such token is dead. Roles should
// keep their max_ttl short; valet warns at start-up above 15 minutes.
package gcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	iamcredentials "google.golang.org/api/iamcredentials/v1"
	"google.golang.org/api/option"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Type is the backend type name in configuration.
const Type = "gcp"

// Google's documented limits (generateAccessToken, generateIdToken).
const (
	// MaxLifetime is the longest access token Google issues by default.
	MaxLifetime = time.Hour
	// MaxExtendedLifetime is the longest access token of a service account
	// that the organization policy
	// constraints/iam.allowServiceAccountCredentialLifetimeExtension lists.
	MaxExtendedLifetime = 12 * time.Hour
	// IDTokenLifetime is the life of every ID token, whatever is asked.
	IDTokenLifetime = time.Hour
	// CloudPlatformScope is the default scope of access tokens.
	CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"
)

// ShortTTL is the longest max_ttl valet accepts without a warning for a
// role whose tokens cannot be revoked.
const ShortTTL = 15 * time.Minute

// Options are the gcp backend's configuration keys.
type Options struct {
	// Endpoint is the base URL of the IAM Service Account Credentials API
	// (default: Google's, https://iamcredentials.googleapis.com/); set it
	// for a private endpoint or a test server.
	Endpoint string `yaml:"endpoint"`
	// Timeout bounds each request to Google (default 10s; positive).
	Timeout config.Duration `yaml:"timeout"`
	// ExtendedLifetime says that the organization policy
	// constraints/iam.allowServiceAccountCredentialLifetimeExtension lists
	// the service accounts of this backend's roles, so that roles may ask
	// for access tokens of up to 12 hours (params.lifetime); without it
	// (default false) a role's tokens live at most an hour.
	ExtendedLifetime bool `yaml:"extended_lifetime"`
}

// SetDefaults sets timeout 10s; New decodes the options on top, so only an
// absent key takes its default.
func (o *Options) SetDefaults() {
	o.Timeout = config.Duration(10 * time.Second)
}

// Backend hands out service-account tokens.
type Backend struct {
	name  string
	opts  Options
	svc   *iamcredentials.ProjectsServiceAccountsService
	clock clock.Clock
	log   *slog.Logger

	roles sync.Map // valet role name -> *role

	// notIssued holds the lease ids of mints that Google refused or never
	// received (nothing was issued), so that their abandoned leases end
	// without claiming a live token.
	notIssued sync.Map // lease id -> time.Time
}

var (
	_ backends.Backend       = (*Backend)(nil)
	_ backends.RoleChecker   = (*Backend)(nil)
	_ backends.ScopeChecker  = (*Backend)(nil)
	_ backends.FixedLifetime = (*Backend)(nil)
)

// New builds a gcp backend: it checks the options and finds valet's
// Application Default Credentials, without calling Google. It fails when
// there are none.
func New(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	var o Options
	o.SetDefaults()
	if err := config.DecodeOptions(options, &o); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if o.Timeout <= 0 {
		return nil, fmt.Errorf("backend %s: timeout must be positive; it is %s", name, o.Timeout)
	}
	if o.Endpoint != "" {
		if u, err := url.Parse(o.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("backend %s: endpoint %q must be an http(s) URL such as https://iamcredentials.googleapis.com/", name, o.Endpoint)
		}
	}
	b := &Backend{name: name, opts: o, clock: deps.Clock, log: deps.Logger}
	if b.clock == nil {
		b.clock = clock.Real{}
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.log = b.log.With("backend", name)
	clientOpts := []option.ClientOption{
		// The client library's own logging would show tokens in request
		// and response bodies at debug level: it never logs.
		option.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		option.WithTelemetryDisabled(),
		option.WithUserAgent("valet"),
	}
	if o.Endpoint != "" {
		// The client resolves v1/... against it, as against a directory.
		clientOpts = append(clientOpts, option.WithEndpoint(strings.TrimSuffix(o.Endpoint, "/")+"/"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := iamcredentials.NewService(ctx, clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("backend %s: find valet's Google credentials (Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, "+
			"gcloud auth application-default login, or the service account of a Google Cloud workload): %w", name, err)
	}
	b.svc = svc.Projects.ServiceAccounts
	return b, nil
}

// CredentialLifetime is how long a token of role lives at Google: an ID
// token its hour, whatever the lease; an access token the lease's ttl
// (Mint asks for the whole seconds left of the lease).
func (b *Backend) CredentialLifetime(role backends.RoleSpec, ttl time.Duration) time.Duration {
	if r, err := b.role(role.Name); err == nil && r.idToken() {
		return IDTokenLifetime
	}
	return ttl
}

// errorKind is what a failure the client is told about means to it.
type errorKind int

const (
	kindInvalid     errorKind = iota // the request cannot be served as asked (400)
	kindForbidden                    // not for this agent (403)
	kindBadResponse                  // Google refused what the role's configuration asks (502)
)

// clientError is a failure whose message the client reads: the one place
// the backend's error kinds become valet's.
func clientError(k errorKind, format string, args ...any) error {
	kind := map[errorKind]error{kindInvalid: backends.ErrInvalid, kindForbidden: backends.ErrForbidden, kindBadResponse: backends.ErrBadResponse}[k]
	return backends.Errorf(kind, format, args...)
}

// isClientError reports whether err is already a clientError.
func isClientError(err error) bool {
	var be *backends.Error
	return errors.As(err, &be)
}
