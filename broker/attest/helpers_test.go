package attest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// start is the fake time every test begins at.
var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testIss = "https://issuer.test"
	testAud = "valet"
)

// issuerConfig returns an issuer config with valet's defaults and audience
// testAud, then edit applied: what the issuers section hands attest.New for an
// issuer whose file sets only what edit sets.
func issuerConfig(tb testing.TB, edit func(*attest.IssuerConfig)) attest.IssuerConfig {
	tb.Helper()
	return config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Audiences = []string{testAud}
		edit(ic)
	})
}

// newDev returns an in-memory dev issuer whose tokens use clk's time.
func newDev(tb testing.TB, iss string, clk clock.Clock) *attest.DevIssuer {
	tb.Helper()
	d, err := attest.NewDevIssuer(iss)
	if err != nil {
		tb.Fatal(err)
	}
	d.SetClock(clk)
	return d
}

// writeJWKS writes d's public JWKS into a temp dir and returns its path.
func writeJWKS(tb testing.TB, d *attest.DevIssuer) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "jwks.json")
	if err := d.WriteJWKS(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// writeFile writes b to a new file in a temp dir and returns its path.
func writeFile(tb testing.TB, name string, b []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// newVerifier builds a Verifier or fails the test.
func newVerifier(tb testing.TB, opts attest.Options) *attest.Verifier {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	v, err := attest.New(context.Background(), opts)
	if err != nil {
		tb.Fatalf("attest.New: %v", err)
	}
	return v
}

// env is a verifier trusting one static-JWKS oidc issuer, with a fake clock.
type env struct {
	clk *clock.Fake
	dev *attest.DevIssuer
	cfg attest.IssuerConfig
	v   *attest.Verifier
}

// newEnv builds an env; mod may change the issuer config before New.
func newEnv(tb testing.TB, mod func(*attest.IssuerConfig)) *env {
	tb.Helper()
	clk := clock.NewFake(start)
	dev := newDev(tb, testIss, clk)
	cfg := issuerConfig(tb, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSFile = "oidc", testIss, writeJWKS(tb, dev) })
	if mod != nil {
		mod(&cfg)
	}
	v := newVerifier(tb, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
	return &env{clk: clk, dev: dev, cfg: cfg, v: v}
}

// claims returns the claims of a valid token, with extra merged in; a nil
// value in extra deletes the claim.
func claims(extra map[string]any) map[string]any {
	c := map[string]any{"sub": "agent-1", "aud": testAud}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// sign signs claims with d or fails the test.
func sign(tb testing.TB, d *attest.DevIssuer, c map[string]any) string {
	tb.Helper()
	tok, err := d.Sign(c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// signFull signs the claims of a valid token with extra merged in; unlike
// claims, a nil value in extra makes Sign leave that claim out even if it
// is iss, iat or exp.
func signFull(tb testing.TB, d *attest.DevIssuer, extra map[string]any) string {
	tb.Helper()
	c := claims(nil)
	for k, v := range extra {
		c[k] = v
	}
	return sign(tb, d, c)
}

func signHeaders(tb testing.TB, d *attest.DevIssuer, c, h map[string]any) string {
	tb.Helper()
	tok, err := d.SignWithHeaders(c, h)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// signRaw builds a compact JWS from raw header and payload bytes, signed
// with key under alg, for tokens the dev issuer cannot express (invalid
// UTF-8, non-object payloads, ...).
func signRaw(tb testing.TB, alg jwa.SignatureAlgorithm, key any, header, payload []byte) string {
	tb.Helper()
	input := b64(header) + "." + b64(payload)
	s, err := jws.NewSigner(alg)
	if err != nil {
		tb.Fatal(err)
	}
	sig, err := s.Sign([]byte(input), key)
	if err != nil {
		tb.Fatal(err)
	}
	return input + "." + b64(sig)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// wantErr checks that err is an *broker.Error with code whose message
// contains want.
func wantErr(tb testing.TB, err error, code, want string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("got no error, want %s containing %q", code, want)
	}
	var be *broker.Error
	if !errors.As(err, &be) {
		tb.Fatalf("got %T %v, want *broker.Error", err, err)
	}
	if be.Code != code {
		tb.Fatalf("got code %s (%v), want %s", be.Code, err, code)
	}
	if !strings.Contains(be.Message, want) {
		tb.Fatalf("got message %q, want it to contain %q", be.Message, want)
	}
}

// rsaKey returns a 2048-bit RSA key shared by the tests (generating one is
// slow).
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// ecKey returns a fresh ECDSA key on curve.
func ecKey(tb testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// publicJWK returns the public JWK of raw with kid and (if not "") alg set.
func publicJWK(tb testing.TB, raw any, kid, alg string) jwk.Key {
	tb.Helper()
	k, err := jwk.PublicKeyOf(raw)
	if err != nil {
		tb.Fatal(err)
	}
	if err := k.Set(jwk.KeyIDKey, kid); err != nil {
		tb.Fatal(err)
	}
	if alg != "" {
		if err := k.Set(jwk.AlgorithmKey, jwa.SignatureAlgorithm(alg)); err != nil {
			tb.Fatal(err)
		}
	}
	return k
}

// jwksOf marshals keys as a JWK Set.
func jwksOf(tb testing.TB, keys ...jwk.Key) []byte {
	tb.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		if err := set.AddKey(k); err != nil {
			tb.Fatal(err)
		}
	}
	return mustJSON(tb, set)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// verifyCase is one named case of a rule table: a token built against a
// fresh env (whose issuer config mod may change), and either the error
// code and message part it must fail with, or (code "") a check of the
// principal it must yield.
type verifyCase struct {
	name  string
	mod   func(*attest.IssuerConfig)
	token func(t *testing.T, e *env) string
	code  string
	msg   string
	check func(t *testing.T, p *broker.Principal)
}

func runCases(t *testing.T, cases []verifyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.mod)
			p, err := e.v.Verify(context.Background(), tc.token(t, e))
			if tc.code != "" {
				wantErr(t, err, tc.code, tc.msg)
				if p != nil {
					t.Fatalf("got a principal with the error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if p == nil || p.Issuer != e.cfg.Name {
				t.Fatalf("got principal %+v", p)
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}
