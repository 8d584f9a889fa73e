package attest_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases/clock"
)

// newReplayCache is the replay cache of a fresh store in tb.TempDir(),
// closed when the test ends.
func newReplayCache(tb testing.TB, clk clock.Clock) attest.ReplayCache {
	tb.Helper()
	s, err := bolt.Open(filepath.Join(tb.TempDir(), "valet.db"), bolt.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s.ReplayCache(clk)
}

// Rule 8: jti replay through Verify.
func TestVerifyReplay(t *testing.T) {
	setup := func(t *testing.T) (*env, *attest.Verifier) {
		t.Helper()
		e := newEnv(t, nil)
		cache := newReplayCache(t, e.clk)
		cfg := e.cfg
		cfg.RequireJTI = true
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: e.clk, Replay: cache})
		e.v = v
		return e, v
	}
	ctx := context.Background()

	t.Run("second use is rejected", func(t *testing.T) {
		e, v := setup(t)
		tok := sign(t, e.dev, claims(map[string]any{"jti": "once"}))
		first, err := v.Verify(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(ctx, tok)
		wantErr(t, err, broker.EUNAUTHORIZED, "attestation was already used (jti replay)")
		// The refusal names whose attestation it was, for the detectors.
		var rep *broker.ReplayedAttestation
		if !errors.As(err, &rep) || rep.AgentID != first.ID || rep.Lineage != first.Lineage || rep.Lineage.JTI != "once" {
			t.Fatalf("replay error %v carries %+v, want the agent %s and its lineage %+v", err, rep, first.ID, first.Lineage)
		}
		// A different token with the same jti is the same attestation.
		_, err = v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "once", "sub": "other"})))
		wantErr(t, err, broker.EUNAUTHORIZED, "jti replay")
		if !errors.As(err, &rep) || rep.AgentID == first.ID {
			t.Fatalf("replay error %v carries %+v, want the other subject's agent", err, rep)
		}
	})
	t.Run("jti required", func(t *testing.T) {
		e, v := setup(t)
		_, err := v.Verify(ctx, sign(t, e.dev, claims(nil)))
		wantErr(t, err, broker.EUNAUTHORIZED, "has no jti claim; issuer oidc requires one (require_jti)")
	})
	t.Run("a token failing another rule does not use up its jti", func(t *testing.T) {
		e, v := setup(t)
		_, err := v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "j", "aud": "elsewhere"})))
		wantErr(t, err, broker.EUNAUTHORIZED, "does not include")
		_, err = v.Verify(ctx, signFull(t, e.dev, map[string]any{"jti": "j", "exp": nil}))
		wantErr(t, err, broker.EUNAUTHORIZED, "has no exp")
		if _, err := v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "j"}))); err != nil {
			t.Fatalf("first valid use: %v", err)
		}
	})
	t.Run("reusable after the token expired", func(t *testing.T) {
		e, v := setup(t)
		tok := sign(t, e.dev, claims(map[string]any{"jti": "r", "exp": start.Add(time.Minute).Unix()}))
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
		// Still remembered within the clock skew after exp.
		e.clk.Advance(time.Minute + 10*time.Second)
		_, err := v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "r"})))
		wantErr(t, err, broker.EUNAUTHORIZED, "jti replay")
		e.clk.Advance(time.Minute)
		if _, err := v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "r"}))); err != nil {
			t.Fatalf("after expiry plus skew: %v", err)
		}
	})
	t.Run("cache failure is unavailable", func(t *testing.T) {
		e := newEnv(t, nil)
		cfg := e.cfg
		cfg.RequireJTI = true
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: e.clk, Replay: failingCache{}})
		_, err := v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "x"})))
		wantErr(t, err, broker.EUNAVAILABLE, "cannot record the attestation's jti")
	})
}

// The same jti at two issuers are two attestations.
func TestVerifyReplayIsPerIssuer(t *testing.T) {
	clk := clock.NewFake(start)
	a, b := newDev(t, "https://a.test", clk), newDev(t, "https://b.test", clk)
	cache := newReplayCache(t, clk)
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Clock: clk, Replay: cache, Issuers: []attest.IssuerConfig{
		issuerConfig(t, func(ic *attest.IssuerConfig) {
			ic.Name = "a"
			ic.Issuer = a.Issuer()
			ic.JWKSFile = writeJWKS(t, a)
			ic.RequireJTI = true
		}),
		issuerConfig(t, func(ic *attest.IssuerConfig) {
			ic.Name = "b"
			ic.Issuer = b.Issuer()
			ic.JWKSFile = writeJWKS(t, b)
			ic.RequireJTI = true
		}),
	}})
	for _, d := range []*attest.DevIssuer{a, b} {
		if _, err := v.Verify(context.Background(), sign(t, d, claims(map[string]any{"jti": "same"}))); err != nil {
			t.Fatalf("%s: %v", d.Issuer(), err)
		}
	}
	for _, d := range []*attest.DevIssuer{a, b} {
		_, err := v.Verify(context.Background(), sign(t, d, claims(map[string]any{"jti": "same"})))
		wantErr(t, err, broker.EUNAUTHORIZED, "jti replay")
	}
}

type failingCache struct{}

func (failingCache) Consume(context.Context, string, time.Time) error {
	return errors.New("disk on fire")
}

// N agents presenting the same single-use token at once: one verifies.
func TestVerifyReplayConcurrent(t *testing.T) {
	const n = 64
	var wg sync.WaitGroup
	e := newEnv(t, nil)
	cfg := e.cfg
	cfg.RequireJTI = true
	cache := newReplayCache(t, e.clk)
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: e.clk, Replay: cache})
	tok := sign(t, e.dev, claims(map[string]any{"jti": "race"}))
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Verify(context.Background(), tok)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		if err == nil {
			ok++
			continue
		}
		wantErr(t, err, broker.EUNAUTHORIZED, "jti replay")
	}
	if ok != 1 {
		t.Fatalf("%d verifications of the same jti succeeded, want 1", ok)
	}
}
