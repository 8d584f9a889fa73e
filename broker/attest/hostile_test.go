package attest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
)

// Rule 4: keys named or embedded in the token (jku, x5u, jwk, x5c) are never
// fetched or used. The attacker signs with its own key and points the
// header at that key every way JOSE allows; the trusted issuer's keys come
// from its own jwks_url, and the attacker's server must never be asked.
func TestVerifyIgnoresKeysFromTheToken(t *testing.T) {
	e := newEnv(t, nil)
	legit := newKeyServer(t, mustPublicJWKS(t, e.dev))
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSURL = "oidc", testIss, legit.url("/jwks") })
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: e.clk})

	// The attacker claims to be the trusted issuer.
	attacker := newDev(t, testIss, e.clk)
	var attackerHits atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attackerHits.Add(1)
		b, _ := attacker.PublicJWKS()
		_, _ = w.Write(b)
	}))
	t.Cleanup(evil.Close)

	var attackerJWK map[string]any
	pub, err := attacker.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(pub, &set); err != nil {
		t.Fatal(err)
	}
	attackerJWK = set.Keys[0]
	x5c := []string{base64.StdEncoding.EncodeToString(selfSignedCert(t, attacker))}

	cases := []struct {
		name   string
		header map[string]any
		msg    string
	}{
		{"embedded jwk with attacker kid", map[string]any{"jwk": attackerJWK}, "has no key with kid"},
		{"embedded jwk without kid", map[string]any{"jwk": attackerJWK, "kid": nil}, "signature does not verify"},
		{"embedded jwk with the trusted kid", map[string]any{"jwk": attackerJWK, "kid": e.dev.KeyID()}, "signature does not verify"},
		{"x5c with attacker kid", map[string]any{"x5c": x5c}, "has no key with kid"},
		{"x5c without kid", map[string]any{"x5c": x5c, "kid": nil}, "signature does not verify"},
		{"jku with attacker kid", map[string]any{"jku": evil.URL + "/jwks"}, "has no key with kid"},
		{"jku with the trusted kid", map[string]any{"jku": evil.URL + "/jwks", "kid": e.dev.KeyID()}, "signature does not verify"},
		{"x5u", map[string]any{"x5u": evil.URL + "/cert.pem", "kid": nil}, "signature does not verify"},
		{"all at once", map[string]any{"jku": evil.URL, "x5u": evil.URL, "jwk": attackerJWK, "x5c": x5c}, "has no key with kid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := signHeaders(t, attacker, claims(nil), tc.header)
			_, err := v.Verify(context.Background(), tok)
			wantErr(t, err, broker.EUNAUTHORIZED, tc.msg)
			// Even after the refresh interval, a refetch goes to the
			// configured URL only.
			e.clk.Advance(2 * time.Minute)
		})
	}
	if n := attackerHits.Load(); n != 0 {
		t.Errorf("the attacker's server got %d requests, want 0", n)
	}
	if legit.jwksHits.Load() == 0 {
		t.Errorf("the trusted jwks_url was never fetched")
	}
	// The trusted issuer's own tokens still pass, with the same headers.
	tok := signHeaders(t, e.dev, claims(nil), map[string]any{"jku": evil.URL, "jwk": attackerJWK, "x5c": x5c})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("trusted token with ignored headers: %v", err)
	}
	if n := attackerHits.Load(); n != 0 {
		t.Errorf("the attacker's server got %d requests, want 0", n)
	}
}

// selfSignedCert returns a DER certificate for d's key, signed by itself.
func selfSignedCert(t *testing.T, d *attest.DevIssuer) []byte {
	t.Helper()
	var priv ecdsa.PrivateKey
	if err := d.Key().Raw(&priv); err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer.test"},
		NotBefore:    start.Add(-time.Hour),
		NotAfter:     start.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, &priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustPublicJWKS(t testing.TB, d *attest.DevIssuer) []byte {
	t.Helper()
	b, err := d.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
