// Package attest verifies workload attestations: signed JWTs from Kubernetes,
// GitHub Actions, SPIFFE or any OIDC issuer. A Verifier picks the trusted
// issuer by the token's iss claim, checks the signature with that issuer's
// keys only (a static JWKS file, a JWKS URL or OIDC discovery), applies the
// attestation rules of RFC 8725 listed in DESIGN.md, and turns the token into
// a *broker.Principal.
//
// Every rejected token yields a *broker.Error whose message says which rule
// failed and is safe to show to the client. The raw token never appears in an
// error or a log line.
//
// Claims are decoded with encoding/json's UseNumber: in Principal.Claims
// every JSON number is a json.Number (its exact text), never a float64, so
// large integer ids survive intact. Strings, bools, nil, []any and
// map[string]any are as encoding/json produces them.
package attest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
)

// Options configures a Verifier.
type Options struct {
	// Issuers are the trusted issuers, as validated by ValidateIssuers. Their
	// settings are used as given: clock_skew 0 tolerates no skew and
	// max_token_age 0 sets no age limit.
	Issuers []IssuerConfig
	// MaxTokenBytes is checked before any parsing (limits.max_attestation_bytes;
	// positive).
	MaxTokenBytes int
	// Clock is the source of time for expiry checks and key caching; nil
	// means clock.Real{}.
	Clock clock.Clock
	// HTTPClient fetches jwks_url and discovery documents; nil means a
	// client with a 10s timeout. An issuer's ca_file replaces the client's
	// TLS roots for that issuer only.
	HTTPClient *http.Client
	// Replay remembers consumed jti values. It is required when any issuer
	// has RequireJTI.
	Replay ReplayCache
	// CacheSize is how many verified attestations are remembered so a
	// repeated token skips the signature check (limits.attestation_cache;
	// 0 turns the cache off, negative is refused).
	CacheSize int
	// Logger receives warnings about key fetches and skipped keys; nil
	// means slog.Default().
	Logger *slog.Logger
}

// fetchTimeout bounds one key fetch (discovery plus JWKS) when the caller
// gives no HTTP client of its own.
const fetchTimeout = 10 * time.Second

// Verifier verifies attestations against the trusted issuers. It is safe for
// concurrent use; keys fetched from a URL are cached and shared.
type Verifier struct {
	byIss         map[string]*trustedIssuer // by exact iss claim
	byTrustDomain map[string]*trustedIssuer // spiffe issuers without iss, by trust domain
	maxBytes      int
	clock         clock.Clock
	replay        ReplayCache
	log           *slog.Logger
	cache         *verifiedCache
}

var _ broker.Verifier = (*Verifier)(nil)

// trustedIssuer is one configured issuer with everything Verify needs
// prepared once: the allowed algorithms with their jwx verifiers, and the
// source of its keys.
type trustedIssuer struct {
	cfg      IssuerConfig
	algs     map[string]jws.Verifier
	skew     time.Duration
	maxAge   time.Duration
	mappings []claimMapping // sorted by attribute
	keys     keySource
}

// New prepares a Verifier. Keys of jwks_file issuers are loaded at once, and
// New fails (naming the issuer) if a file is unreadable or holds no usable
// public key. Keys of jwks_url and discovery issuers are fetched on first use
// (or by Prefetch), so valet can start while an issuer is down. New also
// fails if an issuer allows an algorithm valet never accepts (none, HS*), if
// two issuers share a name, an iss or a trust domain, if a ca_file cannot
// be read, if an issuer has RequireJTI and opts.Replay is nil, or if a
// number is out of range (MaxTokenBytes not positive, CacheSize negative, a
// negative clock_skew or max_token_age, a jwks_url or discovery issuer's
// jwks_refresh_interval or jwks_cache_ttl not positive): settings are never
// replaced by defaults here. New makes no network request, so it does not
// use ctx today.
func New(_ context.Context, opts Options) (*Verifier, error) {
	if opts.MaxTokenBytes <= 0 {
		return nil, fmt.Errorf("attest: limits.max_attestation_bytes must be positive; it is %d", opts.MaxTokenBytes)
	}
	if opts.CacheSize < 0 {
		return nil, fmt.Errorf("attest: limits.attestation_cache must not be negative; it is %d", opts.CacheSize)
	}
	v := &Verifier{
		byIss:         map[string]*trustedIssuer{},
		byTrustDomain: map[string]*trustedIssuer{},
		maxBytes:      opts.MaxTokenBytes,
		clock:         opts.Clock,
		replay:        opts.Replay,
		log:           opts.Logger,
		cache:         newVerifiedCache(opts.CacheSize),
	}
	if v.clock == nil {
		v.clock = clock.Real{}
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout}
	}
	if len(opts.Issuers) == 0 {
		return nil, errors.New("attest: no trusted issuers configured")
	}
	names := map[string]bool{}
	for i := range opts.Issuers {
		// Names make agent ids and replay keys; they must be unique.
		if names[opts.Issuers[i].Name] {
			return nil, fmt.Errorf("attest: issuer name %q is used twice", opts.Issuers[i].Name)
		}
		names[opts.Issuers[i].Name] = true
		ti, err := v.newIssuer(opts.Issuers[i], client)
		if err != nil {
			return nil, fmt.Errorf("attest: issuer %s: %w", opts.Issuers[i].Name, err)
		}
		if ti.cfg.RequireJTI && v.replay == nil {
			return nil, fmt.Errorf("attest: issuer %s has require_jti but no replay cache was given", ti.cfg.Name)
		}
		switch {
		case ti.cfg.Issuer != "":
			if _, dup := v.byIss[ti.cfg.Issuer]; dup {
				return nil, fmt.Errorf("attest: issuer %s: iss %q is trusted twice", ti.cfg.Name, ti.cfg.Issuer)
			}
			v.byIss[ti.cfg.Issuer] = ti
		case ti.cfg.Type == IssuerSPIFFE && ti.cfg.TrustDomain != "":
			if _, dup := v.byTrustDomain[ti.cfg.TrustDomain]; dup {
				return nil, fmt.Errorf("attest: issuer %s: trust domain %q is trusted twice without iss", ti.cfg.Name, ti.cfg.TrustDomain)
			}
			v.byTrustDomain[ti.cfg.TrustDomain] = ti
		default:
			return nil, fmt.Errorf("attest: issuer %s: issuer (iss) must be set", ti.cfg.Name)
		}
	}
	return v, nil
}

func (v *Verifier) newIssuer(cfg IssuerConfig, client *http.Client) (*trustedIssuer, error) {
	if cfg.Name == "" {
		return nil, errors.New("name must be set")
	}
	if cfg.SubjectClaim == "" {
		return nil, errors.New("subject_claim must not be empty")
	}
	if cfg.ClockSkew < 0 {
		return nil, fmt.Errorf("clock_skew must not be negative; it is %s", cfg.ClockSkew)
	}
	if cfg.MaxTokenAge < 0 {
		return nil, fmt.Errorf("max_token_age must not be negative; it is %s", cfg.MaxTokenAge)
	}
	ti := &trustedIssuer{
		cfg:    cfg,
		algs:   map[string]jws.Verifier{},
		skew:   cfg.ClockSkew.D(),
		maxAge: cfg.MaxTokenAge.D(),
	}
	for attr, path := range cfg.ClaimMappings {
		if attr == "" || path == "" {
			return nil, errors.New("claim_mappings: attribute names and claim paths must not be empty")
		}
		ti.mappings = append(ti.mappings, claimMapping{attr: attr, path: path})
	}
	slices.SortFunc(ti.mappings, func(a, b claimMapping) int { return strings.Compare(a.attr, b.attr) })
	if len(cfg.Algorithms) == 0 {
		return nil, errors.New("algorithms must not be empty")
	}
	for _, alg := range cfg.Algorithms {
		if !asymmetricAlgorithm(alg) {
			return nil, fmt.Errorf("algorithm %q is not allowed; only asymmetric algorithms (RS*, PS*, ES256/384/512, EdDSA) are", alg)
		}
		jv, err := jws.NewVerifier(jwa.SignatureAlgorithm(alg))
		if err != nil {
			return nil, fmt.Errorf("algorithm %q: %w", alg, err)
		}
		ti.algs[alg] = jv
	}

	sources := 0
	for _, set := range []bool{cfg.JWKSFile != "", cfg.JWKSURL != "", cfg.Discovery} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("needs exactly one of jwks_file, jwks_url or discovery")
	}
	if cfg.JWKSFile != "" {
		b, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("read jwks_file: %w", err)
		}
		ks, err := parseJWKS(b, v.clock.Now(), cfg.Name, v.log)
		if err != nil {
			return nil, fmt.Errorf("jwks_file %s: %w", cfg.JWKSFile, err)
		}
		ti.keys = staticKeys{ks}
		return ti, nil
	}

	// Zero intervals would turn every unknown kid into a fetch.
	if cfg.JWKSRefreshInterval <= 0 || cfg.JWKSCacheTTL <= 0 {
		return nil, fmt.Errorf("jwks_refresh_interval (%s) and jwks_cache_ttl (%s) must be positive", cfg.JWKSRefreshInterval, cfg.JWKSCacheTTL)
	}
	if cfg.CAFile != "" {
		c, err := clientWithRoots(client, cfg.CAFile)
		if err != nil {
			return nil, err
		}
		client = c
	}
	rk := &remoteKeys{
		issuerName:  cfg.Name,
		issuerURL:   cfg.Issuer,
		jwksURL:     cfg.JWKSURL,
		discovery:   cfg.Discovery,
		client:      client,
		clock:       v.clock,
		log:         v.log,
		ttl:         cfg.JWKSCacheTTL.D(),
		minInterval: cfg.JWKSRefreshInterval.D(),
	}
	ti.keys = rk
	return ti, nil
}

// clientWithRoots returns a copy of base whose transport trusts only the
// certificates in caFile.
func clientWithRoots(base *http.Client, caFile string) (*http.Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_file %s holds no PEM certificate", caFile)
	}
	var tr *http.Transport
	if t, ok := base.Transport.(*http.Transport); ok {
		tr = t.Clone()
	} else {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr.TLSClientConfig.RootCAs = pool
	c := *base
	c.Transport = tr
	return &c, nil
}

// asymmetricAlgorithm reports whether alg is one valet may verify. "none"
// and HMAC are excluded on purpose: an HMAC "verified" with a public key as
// the secret is the classic algorithm-confusion forgery.
func asymmetricAlgorithm(alg string) bool {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA":
		return true
	}
	return false
}

// Prefetch fetches the keys of every jwks_url and discovery issuer now,
// instead of on first use. valet calls it in the background at start-up so
// the first verification does not wait; the error joins every issuer whose
// keys could not be fetched (each an *broker.Error with code EUNAVAILABLE).
// A failure is not fatal: verification retries later.
func (v *Verifier) Prefetch(ctx context.Context) error {
	var errs []error
	for _, ti := range v.issuers() {
		if rk, ok := ti.keys.(*remoteKeys); ok {
			if _, err := rk.get(ctx, false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (v *Verifier) issuers() []*trustedIssuer {
	out := make([]*trustedIssuer, 0, len(v.byIss)+len(v.byTrustDomain))
	for _, ti := range v.byIss {
		out = append(out, ti)
	}
	for _, ti := range v.byTrustDomain {
		out = append(out, ti)
	}
	return out
}

// unauthorized is the error of every failed attestation rule.
func unauthorized(format string, args ...any) error {
	return broker.Errorf(broker.EUNAUTHORIZED, format, args...)
}

// clip quotes s for a client message, shortened so a hostile token cannot
// make an error message (and the log line that carries it) arbitrarily long.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q...", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// clipList renders a few values of a list for a client message.
func clipList(ss []string) string {
	const max = 4
	parts := make([]string, 0, min(len(ss), max)+1)
	for i, s := range ss {
		if i == max {
			parts = append(parts, fmt.Sprintf("and %d more", len(ss)-max))
			break
		}
		parts = append(parts, clip(s))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
