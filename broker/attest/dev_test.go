package attest_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

func TestLoadOrCreateDevIssuer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "valet-dev-data")
	d1, err := attest.LoadOrCreateDevIssuer(dir, "http://127.0.0.1:8750/dev")
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, attest.DevIssuerKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if d1.JWKSPath() != filepath.Join(dir, attest.DevIssuerJWKSFile) {
		t.Errorf("JWKSPath = %q", d1.JWKSPath())
	}
	if d1.Issuer() != "http://127.0.0.1:8750/dev" {
		t.Errorf("Issuer = %q", d1.Issuer())
	}
	pub, err := os.ReadFile(d1.JWKSPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(pub), `"d"`) {
		t.Fatalf("the public JWKS holds a private key: %s", pub)
	}

	// A second start loads the same key and rewrites the JWKS.
	if err := os.Remove(d1.JWKSPath()); err != nil {
		t.Fatal(err)
	}
	d2, err := attest.LoadOrCreateDevIssuer(dir, "http://127.0.0.1:8750/dev")
	if err != nil {
		t.Fatal(err)
	}
	if d2.KeyID() != d1.KeyID() || d1.KeyID() == "" {
		t.Fatalf("kid changed across loads: %q then %q", d1.KeyID(), d2.KeyID())
	}
	clk := clock.NewFake(time.Now())
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) {
		ic.Name = "dev"
		ic.Issuer = d2.Issuer()
		ic.JWKSFile = d2.JWKSPath()
		ic.Algorithms = []string{"ES256"}
	})
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
	tok, err := d1.Sign(map[string]any{"sub": "demo-agent", "aud": testAud})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("token of the first load against the JWKS of the second: %v", err)
	}
	if p.ID != "dev/demo-agent" {
		t.Errorf("ID = %q", p.ID)
	}

	// Another dev data dir is another key.
	d3, err := attest.LoadOrCreateDevIssuer(t.TempDir(), d1.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	if d3.KeyID() == d1.KeyID() {
		t.Fatal("two dev issuers share a key")
	}
}

func TestLoadOrCreateDevIssuerBadKey(t *testing.T) {
	rsaPriv, err := jwk.FromRaw(rsaKey())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		key  []byte
		want string
	}{
		{"not JSON", []byte("garbage"), attest.DevIssuerKeyFile},
		{"RSA key", mustJSON(t, rsaPriv), "not an ES256"},
		{"public key only", func() []byte {
			d := newDev(t, testIss, clock.Real{})
			pub, err := d.Key().PublicKey()
			if err != nil {
				t.Fatal(err)
			}
			return mustJSON(t, pub)
		}(), "not an ES256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, attest.DevIssuerKeyFile), tc.key, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := attest.LoadOrCreateDevIssuer(dir, testIss)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestDevIssuerSign(t *testing.T) {
	clk := clock.NewFake(start)
	d := newDev(t, testIss, clk)
	if d.JWKSPath() != "" {
		t.Errorf("JWKSPath before WriteJWKS = %q", d.JWKSPath())
	}
	in := map[string]any{"sub": "a"}
	before := maps.Clone(in)
	tok := sign(t, d, in)
	if !maps.Equal(in, before) {
		t.Errorf("Sign modified its argument: %v", in)
	}
	hdr, pay := decodeParts(t, tok)
	if hdr["alg"] != "ES256" || hdr["typ"] != "JWT" || hdr["kid"] != d.KeyID() {
		t.Errorf("header = %v", hdr)
	}
	want := map[string]any{"sub": "a", "iss": testIss, "iat": float64(start.Unix()), "exp": float64(start.Add(10 * time.Minute).Unix())}
	if !maps.Equal(pay, want) {
		t.Errorf("claims:\n got %v\nwant %v", pay, want)
	}

	// Explicit values win, nil leaves a claim out, and bogus values are
	// signed as given.
	_, pay = decodeParts(t, sign(t, d, map[string]any{"iss": "x", "iat": nil, "exp": "soon"}))
	want = map[string]any{"iss": "x", "exp": "soon"}
	if !maps.Equal(pay, want) {
		t.Errorf("claims:\n got %v\nwant %v", pay, want)
	}

	// Headers replace defaults or add to them.
	hdr, _ = decodeParts(t, signHeaders(t, d, nil, map[string]any{"typ": nil, "alg": "RS256", "x": "y"}))
	if _, ok := hdr["typ"]; ok || hdr["alg"] != "RS256" || hdr["x"] != "y" {
		t.Errorf("header = %v", hdr)
	}

	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := d.WriteJWKS(p); err != nil {
		t.Fatal(err)
	}
	if d.JWKSPath() != p {
		t.Errorf("JWKSPath = %q, want %q", d.JWKSPath(), p)
	}
}

// decodeParts decodes a token's header and claims without verifying.
func decodeParts(t *testing.T, tok string) (hdr, claims map[string]any) {
	t.Helper()
	h, p, _ := splitToken(t, tok)
	for _, part := range []struct {
		seg string
		dst *map[string]any
	}{{h, &hdr}, {p, &claims}} {
		b, err := base64.RawURLEncoding.DecodeString(part.seg)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, part.dst); err != nil {
			t.Fatal(err)
		}
	}
	return hdr, claims
}
