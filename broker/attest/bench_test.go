package attest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// benchToken is a Kubernetes-like ES256 attestation and a verifier that
// trusts its issuer through a static JWKS.
func benchToken(b *testing.B) (*attest.Verifier, string) {
	b.Helper()
	clk := clock.NewFake(start)
	d := newDev(b, "https://kubernetes.default.svc", clk)
	cfg := issuerConfig(b, func(ic *attest.IssuerConfig) {
		ic.Name = "k8s"
		ic.Type = attest.IssuerKubernetes
		ic.Issuer = d.Issuer()
		ic.JWKSFile = writeJWKS(b, d)
		ic.ClaimMappings = map[string]string{"team": "kubernetes.io.pod.name"}
	})
	v := newVerifier(b, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
	tok := sign(b, d, map[string]any{
		"sub": "system:serviceaccount:agents:builder",
		"aud": []string{"valet"},
		"nbf": start.Unix(),
		"jti": "5f1c3a9e-2b7d-4c1e-9a3f-0d8e6b2c4a71",
		"kubernetes.io": map[string]any{
			"namespace":      "agents",
			"serviceaccount": map[string]any{"name": "builder", "uid": "0f6a3a35-8c0a-4a7b-9b1e-2f4d6c8e0a12"},
			"pod":            map[string]any{"name": "builder-7d9f8c6b5-x2x4q", "uid": "6b2c4a71-5f1c-3a9e-2b7d-4c1e9a3f0d8e"},
			"node":           map[string]any{"name": "node-1", "uid": "9a3f0d8e-6b2c-4a71-5f1c-3a9e2b7d4c1e"},
		},
	})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		b.Fatal(err)
	}
	return v, tok
}

// BenchmarkVerify is one full verification: parsing, issuer and key
// selection, the ES256 signature, claims and the kubernetes preset.
func BenchmarkVerify(b *testing.B) {
	v, tok := benchToken(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyParallel is BenchmarkVerify on every core.
func BenchmarkVerifyParallel(b *testing.B) {
	v, tok := benchToken(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Verify(ctx, tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkECDSAVerify is the crypto floor: SHA-256 and a P-256 signature
// check with the standard library, nothing else.
func BenchmarkECDSAVerify(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 900) // about the signing input of benchToken
	h := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, key, h[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(&key.PublicKey, h[:], sig) {
			b.Fatal("signature does not verify")
		}
	}
}

// BenchmarkJWSVerify is jwx's own jws.Verify of the same token with the key
// given, for comparison: signature only, no claim checks.
func BenchmarkJWSVerify(b *testing.B) {
	clk := clock.NewFake(start)
	d := newDev(b, testIss, clk)
	tok := []byte(sign(b, d, claims(nil)))
	pub, err := d.Key().PublicKey()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := jws.Verify(tok, jws.WithKey(jwa.ES256, pub)); err != nil {
			b.Fatal(err)
		}
	}
}
