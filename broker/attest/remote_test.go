package attest_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// keyServer serves a JWKS at /jwks and an OIDC discovery document at
// /.well-known/openid-configuration, and counts requests.
type keyServer struct {
	srv *httptest.Server

	mu        sync.Mutex
	jwks      []byte
	status    int    // 0 means 200
	issuer    string // discovery "issuer"; "" means the server's URL
	block     chan struct{}
	jwksHits  atomic.Int32
	discoHits atomic.Int32
	hits      chan string   // one entry per answered request, for tests that wait for a background fetch
	arrived   chan struct{} // one entry per request as it arrives
}

func newKeyServer(tb testing.TB, jwks []byte) *keyServer {
	tb.Helper()
	ks := &keyServer{jwks: jwks, hits: make(chan string, 1000), arrived: make(chan struct{}, 1000)}
	ks.srv = httptest.NewServer(http.HandlerFunc(ks.serve))
	tb.Cleanup(ks.srv.Close)
	return ks
}

func newTLSKeyServer(tb testing.TB, jwks []byte) *keyServer {
	tb.Helper()
	ks := &keyServer{jwks: jwks, hits: make(chan string, 1000), arrived: make(chan struct{}, 1000)}
	ks.srv = httptest.NewUnstartedServer(http.HandlerFunc(ks.serve))
	// A client that does not trust the test CA is an expected failure.
	ks.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	ks.srv.StartTLS()
	tb.Cleanup(ks.srv.Close)
	return ks
}

func (ks *keyServer) serve(w http.ResponseWriter, r *http.Request) {
	ks.mu.Lock()
	jwks, status, issuer, block := ks.jwks, ks.status, ks.issuer, ks.block
	ks.mu.Unlock()
	ks.arrived <- struct{}{}
	defer func() { ks.hits <- r.URL.Path }()
	if block != nil {
		<-block
	}
	switch r.URL.Path {
	case "/jwks":
		ks.jwksHits.Add(1)
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		_, _ = w.Write(jwks)
	case "/.well-known/openid-configuration":
		ks.discoHits.Add(1)
		if issuer == "" {
			issuer = ks.srv.URL
		}
		b, _ := json.Marshal(map[string]any{"issuer": issuer, "jwks_uri": ks.srv.URL + "/jwks"})
		_, _ = w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

func (ks *keyServer) url(path string) string { return ks.srv.URL + path }

func (ks *keyServer) set(f func(ks *keyServer)) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	f(ks)
}

// waitHit waits for the server to have answered a request.
func (ks *keyServer) waitHit(t *testing.T) {
	t.Helper()
	select {
	case <-ks.hits:
	case <-time.After(10 * time.Second):
		t.Fatal("the key server got no request")
	}
}

// remoteEnv is a verifier trusting one jwks_url issuer served by a
// keyServer.
type remoteEnv struct {
	clk *clock.Fake
	dev *attest.DevIssuer
	ks  *keyServer
	cfg attest.IssuerConfig
	v   *attest.Verifier
}

func newRemoteEnv(t *testing.T) *remoteEnv {
	t.Helper()
	clk := clock.NewFake(start)
	dev := newDev(t, testIss, clk)
	ks := newKeyServer(t, mustPublicJWKS(t, dev))
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSURL = "remote", testIss, ks.url("/jwks") })
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
	return &remoteEnv{clk: clk, dev: dev, ks: ks, cfg: cfg, v: v}
}

func (re *remoteEnv) verify(t *testing.T, d *attest.DevIssuer) error {
	t.Helper()
	_, err := re.v.Verify(context.Background(), sign(t, d, claims(nil)))
	return err
}

func TestRemoteKeysAreLazyAndCached(t *testing.T) {
	re := newRemoteEnv(t)
	if n := re.ks.jwksHits.Load(); n != 0 {
		t.Fatalf("New fetched keys %d times; it must not fetch", n)
	}
	for i := 0; i < 10; i++ {
		if err := re.verify(t, re.dev); err != nil {
			t.Fatal(err)
		}
	}
	if n := re.ks.jwksHits.Load(); n != 1 {
		t.Fatalf("10 verifications fetched %d times, want 1", n)
	}
	re.ks.waitHit(t)

	// Past the cache TTL the stale keys still answer at once, and a
	// refresh runs in the background.
	re.clk.Advance(time.Hour)
	if err := re.verify(t, re.dev); err != nil {
		t.Fatal(err)
	}
	re.ks.waitHit(t)
	if n := re.ks.jwksHits.Load(); n != 2 {
		t.Fatalf("after the TTL: %d fetches, want 2", n)
	}
}

func TestRemoteUnknownKidRefetchesOnce(t *testing.T) {
	re := newRemoteEnv(t)
	if err := re.verify(t, re.dev); err != nil {
		t.Fatal(err)
	}
	// The issuer adds a key.
	rotated := newDev(t, testIss, re.clk)
	re.ks.set(func(ks *keyServer) { ks.jwks = jwksUnion(t, re.dev, rotated) })

	// Within the refresh interval of the first fetch, no refetch.
	err := re.verify(t, rotated)
	wantErr(t, err, broker.EUNAUTHORIZED, "has no key with kid")
	if n := re.ks.jwksHits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}

	// After it, many concurrent verifications cause exactly one.
	re.clk.Advance(re.cfg.JWKSRefreshInterval.D())
	tok := sign(t, rotated, claims(nil))
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := re.v.Verify(context.Background(), tok)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent verification: %v", err)
		}
	}
	if got := re.ks.jwksHits.Load(); got != 2 {
		t.Fatalf("fetches after %d concurrent unknown-kid verifications = %d, want 2", n, got)
	}

	// Another unknown kid right away: rejected without a fetch.
	stranger := newDev(t, testIss, re.clk)
	for i := 0; i < 5; i++ {
		wantErr(t, re.verify(t, stranger), broker.EUNAUTHORIZED, "has no key with kid")
	}
	if got := re.ks.jwksHits.Load(); got != 2 {
		t.Fatalf("fetches = %d, want still 2", got)
	}
	re.clk.Advance(re.cfg.JWKSRefreshInterval.D())
	wantErr(t, re.verify(t, stranger), broker.EUNAUTHORIZED, "has no key with kid")
	if got := re.ks.jwksHits.Load(); got != 3 {
		t.Fatalf("fetches = %d, want 3", got)
	}
}

func TestRemoteKeyRotation(t *testing.T) {
	re := newRemoteEnv(t)
	if err := re.verify(t, re.dev); err != nil {
		t.Fatal(err)
	}
	next := newDev(t, testIss, re.clk)
	re.ks.set(func(ks *keyServer) { ks.jwks = mustPublicJWKS(t, next) })
	re.clk.Advance(re.cfg.JWKSRefreshInterval.D())
	if err := re.verify(t, next); err != nil {
		t.Fatalf("token of the new key: %v", err)
	}
	// The old key is gone from the fresh set.
	wantErr(t, re.verify(t, re.dev), broker.EUNAUTHORIZED, "has no key with kid")
	if n := re.ks.jwksHits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
}

func TestRemoteFetchFailure(t *testing.T) {
	t.Run("server error, then recovery", func(t *testing.T) {
		re := newRemoteEnv(t)
		re.ks.set(func(ks *keyServer) { ks.status = http.StatusInternalServerError })
		err := re.verify(t, re.dev)
		wantErr(t, err, broker.EUNAVAILABLE, "cannot fetch keys for issuer remote")
		if !strings.Contains(err.Error(), "500") {
			t.Errorf("the internal cause should name the status: %v", err)
		}
		// Failing fast, without hammering the issuer.
		wantErr(t, re.verify(t, re.dev), broker.EUNAVAILABLE, "cannot fetch keys for issuer remote")
		if n := re.ks.jwksHits.Load(); n != 1 {
			t.Fatalf("fetches = %d, want 1", n)
		}
		re.ks.set(func(ks *keyServer) { ks.status = 0 })
		re.clk.Advance(re.cfg.JWKSRefreshInterval.D())
		if err := re.verify(t, re.dev); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		re := newRemoteEnv(t)
		re.ks.srv.Close()
		wantErr(t, re.verify(t, re.dev), broker.EUNAVAILABLE, "cannot fetch keys for issuer remote")
	})
	t.Run("response too large", func(t *testing.T) {
		re := newRemoteEnv(t)
		re.ks.set(func(ks *keyServer) { ks.jwks = []byte(`{"keys":[],"pad":"` + strings.Repeat("x", 1<<20) + `"}`) })
		err := re.verify(t, re.dev)
		wantErr(t, err, broker.EUNAVAILABLE, "cannot fetch keys")
		if !strings.Contains(err.Error(), "larger than") {
			t.Errorf("cause: %v", err)
		}
	})
	t.Run("not a JWKS", func(t *testing.T) {
		re := newRemoteEnv(t)
		re.ks.set(func(ks *keyServer) { ks.jwks = []byte(`<html>`) })
		wantErr(t, re.verify(t, re.dev), broker.EUNAVAILABLE, "cannot fetch keys")
	})
	t.Run("stale keys are kept while the issuer is down", func(t *testing.T) {
		re := newRemoteEnv(t)
		if err := re.verify(t, re.dev); err != nil {
			t.Fatal(err)
		}
		re.ks.waitHit(t)
		re.ks.set(func(ks *keyServer) { ks.status = http.StatusServiceUnavailable })
		re.clk.Advance(2 * time.Hour)
		if err := re.verify(t, re.dev); err != nil {
			t.Fatalf("stale keys: %v", err)
		}
		re.ks.waitHit(t) // the failed background refresh
		if err := re.verify(t, re.dev); err != nil {
			t.Fatalf("stale keys after a failed refresh: %v", err)
		}
		// A kid that only a fresh copy could have: unavailable, not 401.
		re.clk.Advance(re.cfg.JWKSRefreshInterval.D())
		wantErr(t, re.verify(t, newDev(t, testIss, re.clk)), broker.EUNAVAILABLE, "cannot fetch keys")
	})
}

// A verification that gives up waiting does not cancel the shared fetch.
func TestRemoteFetchOutlivesCancelledRequest(t *testing.T) {
	re := newRemoteEnv(t)
	release := make(chan struct{})
	re.ks.set(func(ks *keyServer) { ks.block = release })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	tok := sign(t, re.dev, claims(nil))
	go func() {
		_, err := re.v.Verify(ctx, tok)
		done <- err
	}()
	// Wait until the fetch is at the server, then give up on it.
	<-re.ks.arrived
	cancel()
	wantErr(t, <-done, broker.EUNAVAILABLE, "the request ended while waiting")
	re.ks.set(func(ks *keyServer) { ks.block = nil })
	close(release)
	re.ks.waitHit(t)
	if _, err := re.v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("after the fetch finished: %v", err)
	}
	if n := re.ks.jwksHits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
}

func TestDiscovery(t *testing.T) {
	setup := func(t *testing.T, tls bool) (*keyServer, *attest.DevIssuer, *clock.Fake) {
		t.Helper()
		clk := clock.NewFake(start)
		var ks *keyServer
		if tls {
			ks = newTLSKeyServer(t, nil)
		} else {
			ks = newKeyServer(t, nil)
		}
		dev := newDev(t, ks.srv.URL, clk)
		ks.set(func(ks *keyServer) { ks.jwks = mustPublicJWKS(t, dev) })
		return ks, dev, clk
	}
	t.Run("follows jwks_uri", func(t *testing.T) {
		ks, dev, clk := setup(t, false)
		cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.Discovery = "idp", dev.Issuer(), true })
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
		if _, err := v.Verify(context.Background(), sign(t, dev, claims(nil))); err != nil {
			t.Fatal(err)
		}
		if ks.discoHits.Load() != 1 || ks.jwksHits.Load() != 1 {
			t.Fatalf("discovery %d, jwks %d fetches; want 1 and 1", ks.discoHits.Load(), ks.jwksHits.Load())
		}
	})
	t.Run("issuer mismatch", func(t *testing.T) {
		for _, other := range []string{"https://someone-else.example", "TRAILING/"} {
			ks, dev, clk := setup(t, false)
			if other == "TRAILING/" {
				other = ks.srv.URL + "/"
			}
			ks.set(func(ks *keyServer) { ks.issuer = other })
			cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.Discovery = "idp", dev.Issuer(), true })
			v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
			_, err := v.Verify(context.Background(), sign(t, dev, claims(nil)))
			wantErr(t, err, broker.EUNAVAILABLE, "cannot fetch keys for issuer idp")
			if !strings.Contains(err.Error(), "discovery document names issuer") {
				t.Errorf("cause: %v", err)
			}
			if ks.jwksHits.Load() != 0 {
				t.Errorf("the JWKS of a mismatched discovery document was fetched")
			}
		}
	})
	t.Run("TLS with ca_file", func(t *testing.T) {
		ks, dev, clk := setup(t, true)
		caFile := writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ks.srv.Certificate().Raw}))
		cfg := issuerConfig(t, func(ic *attest.IssuerConfig) {
			ic.Name, ic.Issuer, ic.Discovery, ic.CAFile = "idp", dev.Issuer(), true, caFile
		})
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
		if _, err := v.Verify(context.Background(), sign(t, dev, claims(nil))); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TLS without ca_file", func(t *testing.T) {
		_, dev, clk := setup(t, true)
		cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.Discovery = "idp", dev.Issuer(), true })
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
		_, err := v.Verify(context.Background(), sign(t, dev, claims(nil)))
		wantErr(t, err, broker.EUNAVAILABLE, "cannot fetch keys for issuer idp")
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("cause: %v", err)
		}
	})
}

func TestPrefetch(t *testing.T) {
	re := newRemoteEnv(t)
	if err := re.v.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := re.verify(t, re.dev); err != nil {
		t.Fatal(err)
	}
	if n := re.ks.jwksHits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}

	down := newRemoteEnv(t)
	down.ks.set(func(ks *keyServer) { ks.status = http.StatusBadGateway })
	err := down.v.Prefetch(context.Background())
	var be *broker.Error
	if !errors.As(err, &be) || be.Code != broker.EUNAVAILABLE {
		t.Fatalf("Prefetch of a failing issuer: %v", err)
	}
}

// jwksUnion is a JWKS with the public keys of all ds.
func jwksUnion(t *testing.T, ds ...*attest.DevIssuer) []byte {
	t.Helper()
	var keys []string
	for _, d := range ds {
		b := mustPublicJWKS(t, d)
		s := string(b)
		i, j := strings.Index(s, "["), strings.LastIndex(s, "]")
		keys = append(keys, s[i+1:j])
	}
	return []byte(`{"keys":[` + strings.Join(keys, ",") + `]}`)
}
