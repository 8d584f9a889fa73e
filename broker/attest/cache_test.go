package attest_test

import (
	"context"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

func newCachedEnv(t testing.TB, mod func(*attest.IssuerConfig)) *env {
	t.Helper()
	clk := clock.NewFake(start)
	dev := newDev(t, testIss, clk)
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSFile = "oidc", testIss, writeJWKS(t, dev) })
	if mod != nil {
		mod(&cfg)
	}
	opts := attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk, CacheSize: 16}
	if cfg.RequireJTI {
		opts.Replay = newReplayCache(t, clk)
	}
	return &env{clk: clk, dev: dev, cfg: cfg, v: newVerifier(t, opts)}
}

func TestCachedTokenStillExpires(t *testing.T) {
	e := newCachedEnv(t, nil)
	tok := sign(t, e.dev, claims(map[string]any{"exp": start.Add(5 * time.Minute).Unix()}))
	for i := 0; i < 2; i++ {
		if _, err := e.v.Verify(context.Background(), tok); err != nil {
			t.Fatalf("use %d: %v", i, err)
		}
	}
	e.clk.Advance(5*time.Minute + e.cfg.ClockSkew.D())
	_, err := e.v.Verify(context.Background(), tok)
	wantErr(t, err, broker.EUNAUTHORIZED, "attestation expired at")
}

func TestCachedTokenStillTooOld(t *testing.T) {
	e := newCachedEnv(t, func(ic *attest.IssuerConfig) { ic.MaxTokenAge = config.Duration(time.Minute) })
	tok := sign(t, e.dev, claims(map[string]any{"exp": start.Add(time.Hour).Unix()}))
	if _, err := e.v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Minute)
	_, err := e.v.Verify(context.Background(), tok)
	wantErr(t, err, broker.EUNAUTHORIZED, "too old")
}

func TestCacheNeverServesSingleUseTokens(t *testing.T) {
	e := newCachedEnv(t, func(ic *attest.IssuerConfig) { ic.RequireJTI = true })
	tok := sign(t, e.dev, claims(map[string]any{"jti": "once"}))
	if _, err := e.v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	_, err := e.v.Verify(context.Background(), tok)
	wantErr(t, err, broker.EUNAUTHORIZED, "already used")
}

func TestCachedTokenDroppedWhenItsKeyIsRotatedOut(t *testing.T) {
	clk := clock.NewFake(start)
	old := newDev(t, testIss, clk)
	ks := newKeyServer(t, mustPublicJWKS(t, old))
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSURL = "remote", testIss, ks.url("/jwks") })
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk, CacheSize: 16})
	oldTok := sign(t, old, claims(map[string]any{"exp": start.Add(time.Hour).Unix()}))
	if _, err := v.Verify(context.Background(), oldTok); err != nil {
		t.Fatal(err)
	}
	// The issuer drops the old key; a token of the new key makes valet
	// fetch the new set.
	next := newDev(t, testIss, clk)
	ks.set(func(ks *keyServer) { ks.jwks = mustPublicJWKS(t, next) })
	clk.Advance(cfg.JWKSRefreshInterval.D())
	if _, err := v.Verify(context.Background(), sign(t, next, claims(nil))); err != nil {
		t.Fatalf("token of the new key: %v", err)
	}
	_, err := v.Verify(context.Background(), oldTok)
	wantErr(t, err, broker.EUNAUTHORIZED, "has no key with kid")
}

func TestCachedPrincipalIsACopy(t *testing.T) {
	e := newCachedEnv(t, nil)
	tok := sign(t, e.dev, claims(nil))
	p1, err := e.v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	p1.ID = "changed by a caller"
	p2, err := e.v.Verify(context.Background(), tok)
	if err != nil || p2.ID != "oidc/agent-1" {
		t.Fatalf("second use: %v, %v", p2, err)
	}
}

func BenchmarkVerifyCached(b *testing.B) {
	e := newCachedEnv(b, nil)
	tok := sign(b, e.dev, claims(map[string]any{"exp": start.Add(time.Hour).Unix()}))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.v.Verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
}
