package attest_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// openBolt opens a bbolt file at path, closed when the test ends.
func openBolt(tb testing.TB, path string) *bbolt.DB {
	tb.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

func newReplayCache(tb testing.TB, db *bbolt.DB, clk clock.Clock) *attest.BoltReplayCache {
	tb.Helper()
	c, err := attest.NewBoltReplayCache(db, clk)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Rule 8: jti replay through Verify.
func TestVerifyReplay(t *testing.T) {
	setup := func(t *testing.T) (*env, *attest.Verifier) {
		t.Helper()
		e := newEnv(t, nil)
		cache := newReplayCache(t, openBolt(t, filepath.Join(t.TempDir(), "valet.db")), e.clk)
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
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
		_, err := v.Verify(ctx, tok)
		wantErr(t, err, broker.EUNAUTHORIZED, "attestation was already used (jti replay)")
		// A different token with the same jti is the same attestation.
		_, err = v.Verify(ctx, sign(t, e.dev, claims(map[string]any{"jti": "once", "sub": "other"})))
		wantErr(t, err, broker.EUNAUTHORIZED, "jti replay")
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
	cache := newReplayCache(t, openBolt(t, filepath.Join(t.TempDir(), "valet.db")), clk)
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

func TestBoltReplayCache(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "valet.db")
	clk := clock.NewFake(start)
	db := openBolt(t, path)
	c := newReplayCache(t, db, clk)
	exp := start.Add(time.Minute)

	if err := c.Consume(ctx, "iss/a", exp); err != nil {
		t.Fatal(err)
	}
	if err := c.Consume(ctx, "iss/a", exp); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("second consume: %v, want ErrReplay", err)
	}
	if err := c.Consume(ctx, "iss/b", exp); err != nil {
		t.Fatalf("another key: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Consume(cancelled, "iss/c", exp); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}

	// The record survives a restart.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	c = newReplayCache(t, openBolt(t, path), clk)
	if err := c.Consume(ctx, "iss/a", exp); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("after reopen: %v, want ErrReplay", err)
	}

	// Once expired, the key can be consumed again (an expired entry
	// that Purge has not removed yet does not count).
	clk.Set(exp)
	if err := c.Consume(ctx, "iss/a", start.Add(time.Hour)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := c.Consume(ctx, "iss/a", start.Add(time.Hour)); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("re-consumed key: %v, want ErrReplay", err)
	}
}

func TestBoltReplayCacheConcurrent(t *testing.T) {
	clk := clock.NewFake(start)
	c := newReplayCache(t, openBolt(t, filepath.Join(t.TempDir(), "valet.db")), clk)
	const n = 64
	var wg sync.WaitGroup
	results := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- c.Consume(context.Background(), "iss/same-jti", start.Add(time.Minute))
		}()
	}
	wg.Wait()
	close(results)
	ok, replays := 0, 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, attest.ErrReplay):
			replays++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || replays != n-1 {
		t.Fatalf("%d succeeded and %d were replays; want 1 and %d", ok, replays, n-1)
	}

	// Through Verify: N agents presenting the same token at once.
	e := newEnv(t, nil)
	cfg := e.cfg
	cfg.RequireJTI = true
	cache := newReplayCache(t, openBolt(t, filepath.Join(t.TempDir(), "v.db")), e.clk)
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
	ok = 0
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

func TestBoltReplayCachePurge(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(start)
	db := openBolt(t, filepath.Join(t.TempDir(), "valet.db"))
	c := newReplayCache(t, db, clk)

	// More expired entries than one purge transaction takes, consumed
	// concurrently so bbolt batches them.
	const expired, live = 2500, 10
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for i := 0; i < expired+live; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			exp := start.Add(time.Minute)
			if i >= expired {
				exp = start.Add(time.Hour)
			}
			if err := c.Consume(ctx, fmt.Sprintf("iss/%d", i), exp); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	// A key consumed, expired and consumed again: its old index entry
	// must not make Purge delete the new record.
	if err := c.Consume(ctx, "iss/again", start.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if err := c.Consume(ctx, "iss/again", start.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	n, err := c.Purge(start.Add(2 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if n != expired {
		t.Fatalf("Purge deleted %d, want %d", n, expired)
	}
	if n, err := c.Purge(start.Add(2 * time.Minute)); err != nil || n != 0 {
		t.Fatalf("second Purge: %d, %v; want 0", n, err)
	}
	keys, index := bucketSizes(t, db)
	if keys != live+1 || index != live+1 {
		t.Fatalf("after purge: %d keys and %d index entries, want %d each", keys, index, live+1)
	}
	for _, k := range []string{"iss/2500", "iss/2509", "iss/again"} {
		if err := c.Consume(ctx, k, start.Add(time.Hour)); !errors.Is(err, attest.ErrReplay) {
			t.Errorf("%s after purge: %v, want ErrReplay", k, err)
		}
	}
	if err := c.Consume(ctx, "iss/0", start.Add(time.Hour)); err != nil {
		t.Errorf("purged key: %v", err)
	}
	if n, err := c.Purge(start.Add(2 * time.Hour)); err != nil || n != live+2 {
		t.Fatalf("final Purge: %d, %v; want %d", n, err, live+2)
	}
}

// bucketSizes counts the entries of the replay cache's two buckets.
// TestBoltReplayCachePurgePastAMalformedIndexEntry: an expiry index entry
// too short to hold an expiry, sorted before every real one, must not stop
// every later purge.
func TestBoltReplayCachePurgePastAMalformedIndexEntry(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(start)
	db := openBolt(t, filepath.Join(t.TempDir(), "valet.db"))
	c := newReplayCache(t, db, clk)
	for i := range 3 {
		if err := c.Consume(ctx, fmt.Sprintf("iss/%d", i), start.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("attest.jti")).Bucket([]byte("expiry")).Put([]byte{0, 0}, nil)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Purge(start.Add(2 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	if keys, index := bucketSizes(t, db); keys != 0 || index != 0 {
		t.Fatalf("after purge: %d keys and %d index entries left, want none", keys, index)
	}
}

func bucketSizes(t *testing.T, db *bbolt.DB) (keys, index int) {
	t.Helper()
	err := db.View(func(tx *bbolt.Tx) error {
		root := tx.Bucket([]byte("attest.jti"))
		if root == nil {
			return errors.New("no attest.jti bucket")
		}
		keys = root.Bucket([]byte("keys")).Stats().KeyN
		index = root.Bucket([]byte("expiry")).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys, index
}
