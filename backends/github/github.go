// Package github is valet's GitHub backend. valet authenticates as one of
// several GitHub Apps, with an app JWT (RFC 7519, RS256, signed with the
// app's private key), and hands agents installation access tokens
// (POST /app/installations/{installation_id}/access_tokens) narrowed to a
// role's repositories and permissions, through go-github against GitHub or
// GitHub Enterprise Server.
//
// GitHub gives every installation token one hour, whatever the lease asks
// (backends.FixedLifetime): valet refuses roles whose leases could last
// longer, and revokes each token when its lease ends, its expiry included,
// with DELETE /installation/token. That call authenticates with the token
// itself, so valet keeps a copy of each token sealed under the
// key-encryption key (AES-256-GCM) in data_dir/<backend>/tokens.db, keyed by
// lease id, solely to revoke it; the copy is erased as soon as GitHub has
// confirmed the revocation, or when the token has expired. This is the one
// place valet keeps a secret it handed out (invariant 6's exception).
//
// GitHub cannot list installation tokens: a token created by a mint that
// crashed before its sealed copy was written cannot be found, and lives
// until its hour is over. Its lease says so (it stays revoking, then
// irrevocable, until the token has expired).
package github

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	gh "github.com/google/go-github/v93/github"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Type is the backend type name in configuration.
const Type = "github"

// TokenLifetime is how long GitHub's installation access tokens live
// ("Installation tokens expire one hour from the time you create them").
const TokenLifetime = time.Hour

// DefaultBaseURL is GitHub's REST API.
const DefaultBaseURL = "https://api.github.com/"

// Options are the github backend's configuration keys.
type Options struct {
	// BaseURL is the REST API: https://api.github.com/ (default), or
	// https://HOST/api/v3/ for GitHub Enterprise Server (api/v3/ is added
	// to a bare host).
	BaseURL string `yaml:"base_url"`
	// CAFile is a PEM bundle to verify a GitHub Enterprise Server with
	// (default: the system's roots).
	CAFile string `yaml:"ca_file"`
	// Timeout bounds each request to GitHub (default 10s; positive).
	Timeout config.Duration `yaml:"timeout"`
	// InstallationCache is how long valet reuses what it read about an
	// installation (its id for an owner, its permissions) before reading
	// it again (default 1m; 0 reads it at every mint).
	InstallationCache config.Duration `yaml:"installation_cache"`
	// Apps valet can act as; roles name one in params.app.
	Apps []AppOptions `yaml:"apps"`
}

// AppOptions configure one GitHub App.
type AppOptions struct {
	// Name is how roles refer to the app.
	Name string `yaml:"name"`
	// AppID is the app's numeric id (its settings page, or GET /app).
	AppID int64 `yaml:"app_id"`
	// ClientID, when set, is the app JWT's iss (GitHub recommends it);
	// otherwise the iss is the app id.
	ClientID string `yaml:"client_id"`
	// PrivateKeyFile is the app's private key as GitHub hands it out
	// (PEM, PKCS#1 or PKCS#8 RSA). valet seals it under the KEK into
	// data_dir/<backend>/apps.json at start-up; afterwards the file may be
	// removed and valet uses the sealed copy.
	PrivateKeyFile string `yaml:"private_key_file"`
}

// SetDefaults sets base_url, timeout 10s and installation_cache 1m; New
// decodes the options on top of them, so only absent keys take a default.
func (o *Options) SetDefaults() {
	o.BaseURL = DefaultBaseURL
	o.Timeout = config.Duration(10 * time.Second)
	o.InstallationCache = config.Duration(time.Minute)
}

// Backend talks to one GitHub (or GitHub Enterprise Server).
type Backend struct {
	name   string
	opts   Options
	base   *url.URL
	httpc  *http.Client // without credentials; each app and token adds its own
	apps   map[string]*app
	order  []string // app names as configured
	tokens *tokenStore
	clock  clock.Clock
	log    *slog.Logger
	// kek seals the app keys (in appKeys) and the tokens kept for
	// revocation; during a switch of KEK it opens under the previous too.
	kek     kek.Ring
	appKeys string

	roles sync.Map // role name -> *roleParams

	cacheMu sync.Mutex
	cache   map[string]cachedInstallation

	// settled holds lease ids whose mint is known to have created no token
	// (refused before GitHub was asked, or refused by GitHub), so that the
	// revocation of their abandoned leases has nothing to look for.
	// unsealed holds tokens whose sealed copy could not be written and
	// whose immediate revocation failed, for the revocation queue's next
	// attempt. Both live in memory only: after a restart, a pending lease
	// comes from a crash, which neither can explain.
	pendingMu sync.Mutex
	settled   map[string]time.Time
	unsealed  map[string]unsealedToken

	stop chan struct{}
	done chan struct{}
}

type unsealedToken struct {
	token   string
	expires time.Time
}

var (
	_ backends.Backend       = (*Backend)(nil)
	_ backends.RoleChecker   = (*Backend)(nil)
	_ backends.ScopeChecker  = (*Backend)(nil)
	_ backends.FixedLifetime = (*Backend)(nil)
	_ backends.KEKRewrapper  = (*Backend)(nil)
)

// CredentialLifetime is GitHub's hour, whatever the lease's ttl.
func (b *Backend) CredentialLifetime(backends.RoleSpec, time.Duration) time.Duration {
	return TokenLifetime
}

// New builds a github backend: it checks the options, loads each app's key
// (sealing it into data_dir/<name>/apps.json) and opens the sealed token
// store data_dir/<name>/tokens.db. It does not call GitHub: roles are
// checked against their installations by CheckRole.
func New(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	var o Options
	o.SetDefaults()
	if err := decodeOptions(options, &o); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	ring := kek.Ring{Current: deps.KEK, Previous: deps.PreviousKEK}
	if err := ring.Check(); err != nil {
		return nil, fmt.Errorf("backend %s: app keys and the tokens kept for revocation are sealed at rest: %w (set VALET_KEK or kek_file)", name, err)
	}
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	abs := func(p string) string {
		if p != "" && !filepath.IsAbs(p) && deps.ConfigDir != "" {
			return filepath.Join(deps.ConfigDir, p)
		}
		return p
	}
	o.CAFile = abs(o.CAFile)
	for i := range o.Apps {
		o.Apps[i].PrivateKeyFile = abs(o.Apps[i].PrivateKeyFile)
	}
	base, err := url.Parse(o.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("backend %s: base_url: %w", name, err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil // valet's config is the only source of truth
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("backend %s: ca_file: %w", name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("backend %s: ca_file %s holds no PEM certificate", name, o.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	b := &Backend{
		name: name, opts: o, base: base, clock: deps.Clock, log: deps.Logger.With("backend", name),
		httpc: &http.Client{Transport: transport, Timeout: o.Timeout.D()},
		apps:  map[string]*app{}, cache: map[string]cachedInstallation{},
		settled: map[string]time.Time{}, unsealed: map[string]unsealedToken{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	dir := filepath.Join(deps.DataDir, name)
	b.appKeys = filepath.Join(dir, "apps.json")
	keys, err := loadAppKeys(b.appKeys, ring, name, o.Apps)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	for i, ao := range o.Apps {
		a, err := b.newApp(ao, keys[i])
		if err != nil {
			return nil, fmt.Errorf("backend %s: apps[%d]: %w", name, i, err)
		}
		b.apps[ao.Name] = a
		b.order = append(b.order, ao.Name)
	}
	b.kek = ring
	if b.tokens, err = openTokenStore(filepath.Join(dir, "tokens.db"), ring, name); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	go b.sweepLoop()
	return b, nil
}

// validate checks the options; every message names the key.
func (o *Options) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if u, err := url.Parse(o.BaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		add("base_url %q must be an http(s) URL such as %s or https://github.example.com/api/v3/", o.BaseURL, DefaultBaseURL)
	}
	if o.Timeout <= 0 {
		// An http.Client without a timeout waits forever on a GitHub that hangs.
		add("timeout must be positive; it is %s", o.Timeout)
	}
	if o.InstallationCache < 0 {
		add("installation_cache must not be negative (0 reads the installation at every mint); it is %s", o.InstallationCache)
	}
	if len(o.Apps) == 0 {
		add("apps must name at least one GitHub App (name, app_id, private_key_file)")
	}
	seen := map[string]bool{}
	for i, a := range o.Apps {
		switch {
		case a.Name == "":
			add("apps[%d].name must not be empty", i)
		case seen[a.Name]:
			add("apps[%d].name %q is used twice", i, a.Name)
		}
		seen[a.Name] = true
		if a.AppID <= 0 {
			add("apps[%d].app_id must be the app's positive numeric id; it is %d", i, a.AppID)
		}
	}
	return errors.Join(errs...)
}

// Close stops the sweeper and closes the token store.
func (b *Backend) Close() error {
	select {
	case <-b.stop:
		return nil
	default:
	}
	close(b.stop)
	<-b.done
	return b.tokens.close()
}

// sweepLoop erases, every minute, the sealed copies of tokens that have
// expired (their leases ended without a revocation: the token died with
// the lease, or the revocation was never confirmed) and forgets settled
// mints after an hour.
func (b *Backend) sweepLoop() {
	defer close(b.done)
	for {
		b.sweep()
		t := b.clock.NewTimer(time.Minute)
		select {
		case <-b.stop:
			t.Stop()
			return
		case <-t.C():
		}
	}
}

func (b *Backend) sweep() {
	now := b.clock.Now()
	if n, err := b.tokens.sweep(now); err != nil {
		b.log.Error("sweeping expired tokens from the sealed store failed", "err", err)
	} else if n > 0 {
		b.log.Info("erased the sealed copies of expired tokens", "count", n)
	}
	b.pendingMu.Lock()
	for id, at := range b.settled {
		if now.Sub(at) > TokenLifetime {
			delete(b.settled, id)
		}
	}
	for id, u := range b.unsealed {
		if !now.Before(u.expires) {
			delete(b.unsealed, id)
		}
	}
	b.pendingMu.Unlock()
}

// decodeOptions decodes a backend's or role's options strictly (unknown
// keys are errors). It is the backend's one use of the broker's decoder.
func decodeOptions(m map[string]any, v any) error { return config.DecodeOptions(m, v) }

// newContext bounds a call that has no deadline of its own (start-up
// checks) by the request timeout.
func (b *Backend) newContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.opts.Timeout.D())
}

// client returns a go-github client for the configured base URL with the
// given transport.
func (b *Backend) client(rt http.RoundTripper) (*gh.Client, error) {
	hc := &http.Client{Transport: rt, Timeout: b.httpc.Timeout}
	u := b.base.String()
	return gh.NewClient(gh.WithHTTPClient(hc), gh.WithEnterpriseURLs(u, u), gh.WithUserAgent("valet"))
}

// tokenClient returns a client that authenticates with an installation
// token (for DELETE /installation/token).
func (b *Backend) tokenClient(token string) (*gh.Client, error) {
	hc := &http.Client{Transport: b.httpc.Transport, Timeout: b.httpc.Timeout}
	u := b.base.String()
	return gh.NewClient(gh.WithHTTPClient(hc), gh.WithEnterpriseURLs(u, u), gh.WithUserAgent("valet"), gh.WithAuthToken(token))
}

// RewrapKEK implements backends.KEKRewrapper: the app keys (apps.json, one
// atomic write) and then the tokens kept for revocation (tokens.db, one
// transaction) that only the previous KEK opens are sealed again under
// the current one.
func (b *Backend) RewrapKEK(ctx context.Context) (kek.Report, error) {
	rep, err := kek.RewrapFile(b.appKeys, b.kek, appKeyValues(b.name))
	if err != nil {
		return rep, fmt.Errorf("app keys: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	tok, err := b.tokens.rewrap()
	if err != nil {
		return rep, fmt.Errorf("tokens kept for revocation: %w", err)
	}
	rep.Add(tok)
	return rep, nil
}
