package attest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
)

// remoteKeys are an issuer's keys fetched from jwks_url or through OIDC
// discovery, cached for ttl.
//
// Fetches are single-flight (concurrent verifications wait for one fetch)
// and rate-limited: after any attempt, successful or not, no other starts
// for minInterval. So a flood of tokens with unknown kids, or an issuer that
// is down, costs the issuer at most one request per minInterval. Stale keys
// (older than ttl) keep being used while a refresh runs in the background
// or while the issuer cannot be reached.
type remoteKeys struct {
	issuerName  string
	issuerURL   string
	jwksURL     string // for jwks_url issuers; discovery finds it per fetch
	discovery   bool
	client      *http.Client
	clock       clock.Clock
	log         *slog.Logger
	ttl         time.Duration
	minInterval time.Duration

	cur atomic.Pointer[keySet] // read without the lock on the hot path

	mu          sync.Mutex
	lastAttempt time.Time  // start of the last fetch; zero before the first
	lastErr     error      // of the last fetch; nil after a success
	inflight    *fetchCall // the running fetch, if any
}

// fetchCall is one fetch that any number of verifications may wait for.
type fetchCall struct {
	done chan struct{}
	ks   *keySet // the keys after the fetch (the old ones if it failed)
	err  error
}

// get returns the issuer's keys. refresh asks for a fresh copy because a
// token named a key the current copy lacks; it is honoured at most once per
// minInterval, and otherwise returns the current keys (or the last fetch
// error). Errors are *broker.Error with code EUNAVAILABLE.
func (r *remoteKeys) get(ctx context.Context, refresh bool) (*keySet, error) {
	now := r.clock.Now()
	ks := r.cur.Load()
	if ks != nil && !refresh && now.Sub(ks.fetchedAt) < r.ttl {
		return ks, nil
	}

	r.mu.Lock()
	ks = r.cur.Load()
	if ks != nil && !refresh && now.Sub(ks.fetchedAt) < r.ttl {
		r.mu.Unlock()
		return ks, nil
	}
	call := r.inflight
	if call == nil {
		if !r.lastAttempt.IsZero() && now.Sub(r.lastAttempt) < r.minInterval {
			// Rate-limited: answer with what the last fetch left.
			err := r.lastErr
			r.mu.Unlock()
			switch {
			case ks != nil && (!refresh || err == nil):
				return ks, nil
			case err != nil:
				return nil, err
			default:
				return nil, broker.Errorf(broker.EUNAVAILABLE, "cannot fetch keys for issuer %s; retry later", r.issuerName)
			}
		}
		r.lastAttempt = now
		call = &fetchCall{done: make(chan struct{})}
		r.inflight = call
		// The fetch outlives the request that started it: other
		// verifications wait for it, and a cancelled client must not
		// cancel their fetch.
		go r.run(context.WithoutCancel(ctx), call)
	}
	r.mu.Unlock()

	if ks != nil && !refresh {
		// Stale but usable: the refresh above runs in the background.
		return ks, nil
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, broker.Wrap(broker.EUNAVAILABLE, ctx.Err(), "cannot fetch keys for issuer %s: the request ended while waiting", r.issuerName)
	}
	if call.err != nil {
		return nil, call.err
	}
	return call.ks, nil
}

// run performs one fetch and publishes its result.
func (r *remoteKeys) run(ctx context.Context, call *fetchCall) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	ks, err := r.fetch(ctx)

	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.log.Warn("attest: cannot fetch keys", "issuer", r.issuerName, "err", err)
		call.err = broker.Wrap(broker.EUNAVAILABLE, err, "cannot fetch keys for issuer %s; retry later", r.issuerName)
		call.ks = r.cur.Load()
		r.lastErr = call.err
	} else {
		r.cur.Store(ks)
		call.ks = ks
		r.lastErr = nil
	}
	r.inflight = nil
	close(call.done)
}

// fetch gets the JWKS, first resolving its URL through discovery if the
// issuer uses it. Discovery is repeated on every fetch so a provider that
// moves its jwks_uri is followed.
func (r *remoteKeys) fetch(ctx context.Context) (*keySet, error) {
	jwksURL := r.jwksURL
	if r.discovery {
		u, err := r.discover(ctx)
		if err != nil {
			return nil, err
		}
		jwksURL = u
	}
	b, err := r.getLimited(ctx, jwksURL)
	if err != nil {
		return nil, err
	}
	ks, err := parseJWKS(b, r.clock.Now(), r.issuerName, r.log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", jwksURL, err)
	}
	return ks, nil
}

// discover reads the issuer's OpenID Provider metadata and returns its
// jwks_uri. The document must name exactly the configured issuer (OpenID
// Connect Discovery 1.0, section 4.3), or a misrouted or impersonating
// endpoint could hand valet someone else's keys.
func (r *remoteKeys) discover(ctx context.Context) (string, error) {
	docURL := strings.TrimRight(r.issuerURL, "/") + "/.well-known/openid-configuration"
	b, err := r.getLimited(ctx, docURL)
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("%s: not a discovery document: %w", docURL, err)
	}
	if doc.Issuer != r.issuerURL {
		return "", fmt.Errorf("%s: discovery document names issuer %q, not %q", docURL, doc.Issuer, r.issuerURL)
	}
	u, err := url.Parse(doc.JWKSURI)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("%s: jwks_uri %q is not an absolute http(s) URL", docURL, doc.JWKSURI)
	}
	// An https issuer must not downgrade its keys to plain http.
	if u.Scheme == "http" && strings.HasPrefix(r.issuerURL, "https:") {
		return "", fmt.Errorf("%s: jwks_uri %q is not https", docURL, doc.JWKSURI)
	}
	return doc.JWKSURI, nil
}

// getLimited GETs url and returns its body, refusing anything but 200 and
// bodies over maxJWKSBytes.
func (r *remoteKeys) getLimited(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(b) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: response is larger than %d bytes", u, maxJWKSBytes)
	}
	return b, nil
}
