package attest_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// Rule 9: only public asymmetric signing keys are taken from a JWKS; every
// other entry is skipped (not an error for the whole set).
func TestJWKSKeepsOnlyPublicSigningKeys(t *testing.T) {
	clk := clock.NewFake(start)
	set := func(t *testing.T, k jwk.Key, kv ...any) jwk.Key {
		t.Helper()
		for i := 0; i < len(kv); i += 2 {
			if err := k.Set(kv[i].(string), kv[i+1]); err != nil {
				t.Fatal(err)
			}
		}
		return k
	}
	good := ecKey(t, elliptic.P256())
	priv := ecKey(t, elliptic.P256())
	enc := ecKey(t, elliptic.P256())
	ops := ecKey(t, elliptic.P256())
	badAlg := ecKey(t, elliptic.P256())
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privJWK, err := jwk.FromRaw(priv)
	if err != nil {
		t.Fatal(err)
	}
	octJWK, err := jwk.FromRaw([]byte("a shared secret of thirty-two b."))
	if err != nil {
		t.Fatal(err)
	}
	keys := []jwk.Key{
		publicJWK(t, &good.PublicKey, "good", ""),
		set(t, privJWK, jwk.KeyIDKey, "private"),
		set(t, octJWK, jwk.KeyIDKey, "oct"),
		set(t, publicJWK(t, &enc.PublicKey, "enc", ""), jwk.KeyUsageKey, "enc"),
		set(t, publicJWK(t, &ops.PublicKey, "ops", ""), jwk.KeyOpsKey, jwk.KeyOperationList{jwk.KeyOpEncrypt}),
		publicJWK(t, &small.PublicKey, "small", ""),
		publicJWK(t, &badAlg.PublicKey, "rsa-alg-on-ec", "RS256"),
		publicJWK(t, edPub, "ed", "EdDSA"),
	}
	path := writeFile(t, "jwks.json", jwksOf(t, keys...))
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) {
		ic.Name = "mixed"
		ic.Issuer = testIss
		ic.JWKSFile = path
		ic.Algorithms = []string{"ES256", "RS256", "EdDSA"}
	})
	var logs bytes.Buffer
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// Each skipped key is logged with its reason, and never with key
	// material.
	for _, reason := range []string{
		"private keys do not belong in a JWKS", "symmetric (oct) keys are never used", `use is \"enc\", not sig`,
		"key_ops does not include verify", "RSA key has 1024 bits", `alg \"RS256\" does not fit the key`,
	} {
		if !strings.Contains(logs.String(), reason) {
			t.Errorf("log lacks %q:\n%s", reason, logs.String())
		}
	}
	if d := b64(privJWK.(jwk.ECDSAPrivateKey).D()); strings.Contains(logs.String(), d) {
		t.Errorf("the log holds a private key")
	}

	pay := mustJSON(t, claims(map[string]any{"iss": testIss, "iat": start.Unix(), "exp": start.Add(time.Minute).Unix()}))
	hdr := func(alg, kid string) []byte { return mustJSON(t, map[string]any{"alg": alg, "kid": kid}) }
	cases := []struct {
		name string
		tok  string
		msg  string
	}{
		{"public EC key", signRaw(t, jwa.ES256, good, hdr("ES256", "good"), pay), ""},
		{"Ed25519 key", signRaw(t, jwa.EdDSA, edPriv, hdr("EdDSA", "ed"), pay), ""},
		{"private key in the set", signRaw(t, jwa.ES256, priv, hdr("ES256", "private"), pay), `no key with kid "private"`},
		{"encryption key", signRaw(t, jwa.ES256, enc, hdr("ES256", "enc"), pay), `no key with kid "enc"`},
		{"key_ops without verify", signRaw(t, jwa.ES256, ops, hdr("ES256", "ops"), pay), `no key with kid "ops"`},
		{"RSA-1024", signRaw(t, jwa.RS256, small, hdr("RS256", "small"), pay), `no key with kid "small"`},
		{"alg that does not fit the key", signRaw(t, jwa.ES256, badAlg, hdr("ES256", "rsa-alg-on-ec"), pay), `no key with kid "rsa-alg-on-ec"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tc.tok)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, broker.EUNAUTHORIZED, tc.msg)
		})
	}
}
