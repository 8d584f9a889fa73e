package jwt

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
)

const testIssuer = "https://valet.test"

var testKEK = bytes.Repeat([]byte{0x42}, 32)

// t0 is the fake time every test starts at.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

// fixture is a backend under test with what it was built from, so a test
// can build it again ("restart") or change one input.
type fixture struct {
	b     *Backend
	dir   string
	name  string
	opts  map[string]any
	clock *clock.Fake
}

func newFixture(t testing.TB, opts map[string]any) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), name: "tokens", opts: opts, clock: clock.NewFake(t0)}
	f.b = f.open(t, testKEK, testIssuer)
	return f
}

// open builds the backend (again) over the fixture's data dir.
func (f *fixture) open(t testing.TB, kek []byte, issuer string) *Backend {
	t.Helper()
	be, err := New(f.name, f.opts, backends.Deps{DataDir: f.dir, KEK: kek, PublicURL: issuer, Clock: f.clock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return be.(*Backend)
}

func (f *fixture) keyPath() string { return filepath.Join(f.dir, f.name, "keys.json") }

// role registers a role with the backend the way the broker does at start.
func (f *fixture) role(t testing.TB, r backends.RoleSpec) backends.RoleSpec {
	t.Helper()
	if err := f.b.CheckRole(r); err != nil {
		t.Fatalf("CheckRole(%s): %v", r.Name, err)
	}
	return r
}

// mintReq is a request for role r with a lease of ttl (plus sub-second
// noise, so the floor of exp is exercised).
func (f *fixture) mintReq(r backends.RoleSpec, ttl time.Duration) backends.MintRequest {
	now := f.clock.Now()
	return backends.MintRequest{
		CorrelationID: "01JTESTLEASE000000000000AA", AgentID: "test/agent-1", Role: r,
		IssuedAt: now, ExpiresAt: now.Add(ttl + 987*time.Millisecond),
	}
}

func mint(t testing.TB, b *Backend, req backends.MintRequest) (string, *backends.Credential) {
	t.Helper()
	c, err := b.Mint(context.Background(), req)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	tok, _ := c.Data["access_token"].(string)
	if tok == "" {
		t.Fatalf("Mint returned no access_token: %v", c.Data)
	}
	return tok, c
}

// publicKey rebuilds a public key from one of the backend's published JWKs,
// without any of valet's code.
func publicKey(t testing.TB, jwks []map[string]any, kid string) crypto.PublicKey {
	t.Helper()
	for _, k := range jwks {
		if k["kid"] != kid {
			continue
		}
		if k["use"] != "sig" {
			t.Errorf("jwk %s: use = %v, want sig", kid, k["use"])
		}
		coord := func(name string) []byte {
			s, _ := k[name].(string)
			b, err := base64.RawURLEncoding.DecodeString(s)
			if err != nil {
				t.Fatalf("jwk %s: %s: %v", kid, name, err)
			}
			return b
		}
		switch {
		case k["kty"] == "EC" && k["crv"] == "P-256" && k["alg"] == "ES256":
			x, y := coord("x"), coord("y")
			if len(x) != 32 || len(y) != 32 {
				t.Fatalf("jwk %s: x and y must be 32 bytes, got %d and %d", kid, len(x), len(y))
			}
			pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
			if err != nil {
				t.Fatalf("jwk %s: %v", kid, err)
			}
			return pub
		case k["kty"] == "OKP" && k["crv"] == "Ed25519" && k["alg"] == "EdDSA":
			x := coord("x")
			if len(x) != ed25519.PublicKeySize {
				t.Fatalf("jwk %s: x is %d bytes", kid, len(x))
			}
			return ed25519.PublicKey(x)
		default:
			t.Fatalf("jwk %s has an unexpected shape: %v", kid, k)
		}
	}
	t.Fatalf("kid %q is not in the published keys %v", kid, jwks)
	return nil
}

// verify checks tok with golang-jwt (not the library valet uses) against
// the published keys and returns its header and claims.
func verify(t testing.TB, b *Backend, now time.Time, alg, aud string, tok string) (map[string]any, gojwt.MapClaims) {
	t.Helper()
	opts := []gojwt.ParserOption{
		gojwt.WithValidMethods([]string{alg}), gojwt.WithIssuer(testIssuer), gojwt.WithExpirationRequired(),
		gojwt.WithIssuedAt(), gojwt.WithTimeFunc(func() time.Time { return now }), gojwt.WithStrictDecoding(),
	}
	if aud != "" {
		opts = append(opts, gojwt.WithAudience(aud))
	}
	jwks := b.PublicJWKs()
	parsed, err := gojwt.Parse(tok, func(tk *gojwt.Token) (any, error) {
		kid, _ := tk.Header["kid"].(string)
		return publicKey(t, jwks, kid), nil
	}, opts...)
	if err != nil {
		t.Fatalf("golang-jwt rejects the token: %v", err)
	}
	return parsed.Header, parsed.Claims.(gojwt.MapClaims)
}

// rawClaims decodes the payload as is, so JSON shapes (string vs array,
// integer vs float) can be checked.
func rawClaims(t testing.TB, tok string) map[string]json.RawMessage {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMintTokenShape(t *testing.T) {
	tests := []struct {
		name    string
		alg     string
		aud     []string
		scopes  []string
		wantAud string // raw JSON of aud; "" means absent
	}{
		{name: "ES256 one audience", alg: "ES256", aud: []string{"demo-api"}, scopes: []string{"read", "write"}, wantAud: `"demo-api"`},
		{name: "ES256 two audiences", alg: "ES256", aud: []string{"a-api", "b-api"}, scopes: []string{"read"}, wantAud: `["a-api","b-api"]`},
		{name: "ES256 no audience no scope", alg: "ES256"},
		{name: "EdDSA one audience", alg: "EdDSA", aud: []string{"demo-api"}, scopes: []string{"read"}, wantAud: `"demo-api"`},
		{name: "EdDSA two audiences", alg: "EdDSA", aud: []string{"a-api", "b-api"}, wantAud: `["a-api","b-api"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, map[string]any{"algorithm": tt.alg})
			role := f.role(t, backends.RoleSpec{Name: "demo", Audience: tt.aud, Scopes: tt.scopes})
			req := f.mintReq(role, 5*time.Minute)
			tok, cred := mint(t, f.b, req)

			aud := ""
			if len(tt.aud) > 0 {
				aud = tt.aud[len(tt.aud)-1]
			}
			hdr, c := verify(t, f.b, f.clock.Now(), tt.alg, aud, tok)

			kid := f.b.PublicJWKs()[0]["kid"]
			if hdr["alg"] != tt.alg || hdr["typ"] != "at+jwt" || hdr["kid"] != kid || len(hdr) != 3 {
				t.Errorf("header = %v, want alg %s, kid %v, typ at+jwt and nothing else", hdr, tt.alg, kid)
			}
			wantStr := map[string]string{
				"iss": testIssuer, "sub": req.AgentID, "jti": req.CorrelationID, "client_id": req.AgentID, "role": "demo",
			}
			for k, want := range wantStr {
				if got := c[k]; got != want {
					t.Errorf("claim %s = %v, want %q", k, got, want)
				}
			}
			raw := rawClaims(t, tok)
			for k, want := range map[string]int64{
				"exp": req.ExpiresAt.Unix(), // floor: the token never outlives its lease
				"iat": req.IssuedAt.Unix(),
				"nbf": req.IssuedAt.Unix(),
			} {
				if got := string(raw[k]); got != big.NewInt(want).String() {
					t.Errorf("claim %s = %s, want the integer %d", k, got, want)
				}
			}
			if time.Unix(req.ExpiresAt.Unix(), 0).After(req.ExpiresAt) {
				t.Fatal("test bug: exp must not be after the lease's expiry")
			}
			if got := string(raw["aud"]); got != tt.wantAud {
				t.Errorf("aud = %s, want %s", got, tt.wantAud)
			}
			wantScope := strings.Join(tt.scopes, " ")
			if got, _ := c["scope"].(string); got != wantScope {
				t.Errorf("scope = %q, want %q", got, wantScope)
			}
			if _, ok := raw["scope"]; !ok && wantScope != "" {
				t.Errorf("scope claim missing")
			}

			if cred.Handle != req.CorrelationID {
				t.Errorf("Handle = %q, want the correlation id %q", cred.Handle, req.CorrelationID)
			}
			if !cred.ExpiresAt.Equal(req.ExpiresAt) {
				t.Errorf("credential ExpiresAt = %v, want the lease's %v", cred.ExpiresAt, req.ExpiresAt)
			}
			if cred.Data["token_type"] != "Bearer" || cred.Data["expires_at"] != req.ExpiresAt.UTC().Format(time.RFC3339) {
				t.Errorf("credential data = %v", cred.Data)
			}
			if cred.Details["kid"] != kid {
				t.Errorf("details kid = %q, want %v", cred.Details["kid"], kid)
			}
			for k, v := range cred.Details {
				if strings.Contains(v, tok) {
					t.Errorf("details[%s] holds the token", k)
				}
			}
		})
	}
}

func TestMintScopeNarrowing(t *testing.T) {
	f := newFixture(t, nil)
	role := f.role(t, backends.RoleSpec{Name: "demo", Audience: []string{"a-api", "b-api"}, Scopes: []string{"read", "write"}})
	tests := []struct {
		name      string
		scope     map[string]any
		wantErr   bool
		wantScope string
		wantAud   string
	}{
		{name: "none", scope: nil, wantScope: "read write", wantAud: `["a-api","b-api"]`},
		{name: "scopes subset", scope: map[string]any{"scopes": []any{"read"}}, wantScope: "read", wantAud: `["a-api","b-api"]`},
		{name: "scopes equal", scope: map[string]any{"scopes": []any{"write", "read"}}, wantScope: "write read", wantAud: `["a-api","b-api"]`},
		{name: "audience subset", scope: map[string]any{"audience": []any{"b-api"}}, wantScope: "read write", wantAud: `"b-api"`},
		{name: "both subsets", scope: map[string]any{"scopes": []any{"write"}, "audience": []any{"a-api"}}, wantScope: "write", wantAud: `"a-api"`},
		{name: "scopes superset", scope: map[string]any{"scopes": []any{"read", "admin"}}, wantErr: true},
		{name: "audience superset", scope: map[string]any{"audience": []any{"a-api", "evil-api"}}, wantErr: true},
		{name: "unknown scope key", scope: map[string]any{"admin": true}, wantErr: true},
		{name: "scopes not a list", scope: map[string]any{"scopes": "read"}, wantErr: true},
		{name: "scopes list of numbers", scope: map[string]any{"scopes": []any{1.0}}, wantErr: true},
		// An empty audience list would mint a token without aud, which a
		// resource server that does not insist on aud accepts anywhere:
		// a widening, not a narrowing.
		{name: "empty audience", scope: map[string]any{"audience": []any{}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := f.mintReq(role, time.Minute)
			req.Scope = tt.scope
			if err := f.b.CheckScope(role, tt.scope); (err != nil) != tt.wantErr {
				t.Errorf("CheckScope error = %v, want error: %v", err, tt.wantErr)
			}
			c, err := f.b.Mint(context.Background(), req)
			if tt.wantErr {
				var be *backends.Error
				if !errors.As(err, &be) || !errors.Is(err, backends.ErrInvalid) {
					t.Fatalf("Mint error = %v, want a *backends.Error of kind ErrInvalid (EINVALID)", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			tok := c.Data["access_token"].(string)
			raw := rawClaims(t, tok)
			var scope string
			_ = json.Unmarshal(raw["scope"], &scope)
			if scope != tt.wantScope || string(raw["aud"]) != tt.wantAud {
				t.Errorf("scope %q aud %s, want %q %s", scope, raw["aud"], tt.wantScope, tt.wantAud)
			}
			if got, _ := c.Data["scope"].(string); got != tt.wantScope {
				t.Errorf("credential scope = %q, want %q", got, tt.wantScope)
			}
		})
	}
}

func TestRoleClaims(t *testing.T) {
	f := newFixture(t, nil)
	role := f.role(t, backends.RoleSpec{Name: "with-claims", Scopes: []string{"read"}, Params: map[string]any{
		"claims": map[string]any{"tenant": "acme", "tier": 3, "groups": []any{"a", "b"}},
	}})
	tok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
	_, c := verify(t, f.b, f.clock.Now(), "ES256", "", tok)
	if c["tenant"] != "acme" || c["tier"] != 3.0 || !slices.Equal(toStrings(c["groups"]), []string{"a", "b"}) {
		t.Errorf("role claims not merged: %v", c)
	}
	if c["sub"] != "test/agent-1" || c["role"] != "with-claims" || c["scope"] != "read" {
		t.Errorf("registered claims changed by the merge: %v", c)
	}

	t.Run("other roles do not get them", func(t *testing.T) {
		plain := f.role(t, backends.RoleSpec{Name: "plain"})
		tok, _ := mint(t, f.b, f.mintReq(plain, time.Minute))
		if _, ok := rawClaims(t, tok)["tenant"]; ok {
			t.Error("a role without claims got another role's claims")
		}
	})

	for _, k := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "client_id", "role"} {
		t.Run("reserved "+k, func(t *testing.T) {
			err := f.b.CheckRole(backends.RoleSpec{Name: "bad", Params: map[string]any{"claims": map[string]any{k: "x"}}})
			if err == nil || !strings.Contains(err.Error(), "params.claims."+k) {
				t.Fatalf("CheckRole with claim %s = %v, want an error naming params.claims.%s", k, err, k)
			}
		})
	}
	t.Run("unknown param", func(t *testing.T) {
		err := f.b.CheckRole(backends.RoleSpec{Name: "bad", Params: map[string]any{"claimz": map[string]any{}}})
		if err == nil || !strings.Contains(err.Error(), "claimz") {
			t.Fatalf("CheckRole with an unknown param = %v, want an error naming it", err)
		}
	})
}

func toStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func TestKeysEncryptedAtRest(t *testing.T) {
	for _, alg := range []string{"ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			f := newFixture(t, map[string]any{"algorithm": alg})
			if err := f.b.Rotate(t0.Add(time.Hour)); err != nil { // two keys on disk
				t.Fatal(err)
			}
			file, err := os.ReadFile(f.keyPath())
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(f.keyPath()); err != nil || fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("keys.json: %v, mode %v; want it readable by its owner only", err, fi.Mode())
			}
			for _, k := range f.b.keys {
				der, err := x509.MarshalPKCS8PrivateKey(k.priv)
				if err != nil {
					t.Fatal(err)
				}
				var scalar []byte
				switch p := k.priv.(type) {
				case *ecdsa.PrivateKey:
					scalar, err = p.Bytes()
					if err != nil {
						t.Fatal(err)
					}
				case ed25519.PrivateKey:
					scalar = p.Seed()
				}
				for name, secret := range map[string][]byte{"PKCS#8 DER": der, "private scalar": scalar} {
					for enc, s := range map[string][]byte{
						"raw":       secret,
						"base64":    []byte(base64.StdEncoding.EncodeToString(secret)),
						"base64url": []byte(base64.RawURLEncoding.EncodeToString(secret)),
						"hex":       []byte(hexString(secret)),
					} {
						if bytes.Contains(file, s) {
							t.Errorf("keys.json holds the %s of key %s in clear (%s)", name, k.kid, enc)
						}
					}
				}
			}

			// The right KEK opens every key (restart keeps them all).
			again := f.open(t, testKEK, testIssuer)
			if !slices.Equal(kids(again.PublicJWKs()), kids(f.b.PublicJWKs())) {
				t.Errorf("keys after reopening = %v, want %v", kids(again.PublicJWKs()), kids(f.b.PublicJWKs()))
			}

			t.Run("wrong KEK", func(t *testing.T) {
				_, err := New(f.name, f.opts, backends.Deps{DataDir: f.dir, KEK: bytes.Repeat([]byte{1}, 32), PublicURL: testIssuer, Clock: f.clock})
				if err == nil || !strings.Contains(err.Error(), "key-encryption key") {
					t.Fatalf("New with a wrong KEK = %v, want an error that names the key-encryption key", err)
				}
			})
			t.Run("tampered ciphertext", func(t *testing.T) {
				// Every key tampered with: nothing to sign with. (One
				// damaged key among good ones: TestOneDamagedKeyIsSkippedAndKept.)
				var kf keyFile
				if err := json.Unmarshal(file, &kf); err != nil {
					t.Fatal(err)
				}
				for _, k := range kf.Keys {
					k.Ciphertext[len(k.Ciphertext)/2] ^= 1
				}
				tampered, _ := json.Marshal(kf)
				g := &fixture{dir: t.TempDir(), name: f.name, opts: f.opts, clock: f.clock}
				if err := os.MkdirAll(filepath.Dir(g.keyPath()), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(g.keyPath(), tampered, 0o600); err != nil {
					t.Fatal(err)
				}
				_, err := New(g.name, g.opts, backends.Deps{DataDir: g.dir, KEK: testKEK, PublicURL: testIssuer, Clock: g.clock})
				if err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
					t.Fatalf("New with a tampered key file = %v, want a decrypt error", err)
				}
			})
			t.Run("key moved to another backend name", func(t *testing.T) {
				// The backend name is bound into the ciphertext (AAD), so a
				// key file copied to another backend does not open.
				g := &fixture{dir: t.TempDir(), name: "other", opts: f.opts, clock: f.clock}
				if err := os.MkdirAll(filepath.Dir(g.keyPath()), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(g.keyPath(), file, 0o600); err != nil {
					t.Fatal(err)
				}
				if _, err := New(g.name, g.opts, backends.Deps{DataDir: g.dir, KEK: testKEK, PublicURL: testIssuer, Clock: g.clock}); err == nil {
					t.Fatal("a key file sealed for backend tokens opened as backend other")
				}
			})
		})
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func kids(jwks []map[string]any) []string {
	var out []string
	for _, k := range jwks {
		s, _ := k["kid"].(string)
		out = append(out, s)
	}
	return out
}

func TestRestartKeepsKid(t *testing.T) {
	f := newFixture(t, nil)
	role := f.role(t, backends.RoleSpec{Name: "demo"})
	tok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
	before := kids(f.b.PublicJWKs())

	again := f.open(t, testKEK, testIssuer)
	if got := kids(again.PublicJWKs()); !slices.Equal(got, before) || len(got) != 1 {
		t.Fatalf("kids after restart = %v, want %v", got, before)
	}
	if _, err := again.Introspect(tok); err != nil {
		t.Errorf("a token signed before the restart does not introspect after it: %v", err)
	}
	if err := again.CheckRole(role); err != nil {
		t.Fatal(err)
	}
	tok2, _ := mint(t, again, f.mintReq(role, time.Minute))
	if h := header(t, tok2); h["kid"] != before[0] {
		t.Errorf("after a restart the backend signs with kid %v, want %s", h["kid"], before[0])
	}
}

func header(t testing.TB, tok string) map[string]any {
	t.Helper()
	seg, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRotate(t *testing.T) {
	f := newFixture(t, map[string]any{"key_retention": "24h"})
	role := f.role(t, backends.RoleSpec{Name: "demo"})
	first := kids(f.b.PublicJWKs())[0]
	oldTok, _ := mint(t, f.b, f.mintReq(role, time.Minute))

	f.clock.Advance(time.Hour)
	if err := f.b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	got := kids(f.b.PublicJWKs())
	if len(got) != 2 || got[1] != first || got[0] == first {
		t.Fatalf("kids after rotation = %v, want [new %s]", got, first)
	}
	second := got[0]
	newTok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
	if h := header(t, newTok); h["kid"] != second {
		t.Errorf("after rotation tokens are signed with kid %v, want the new %s", h["kid"], second)
	}
	verify(t, f.b, f.clock.Now(), "ES256", "", newTok)
	verify(t, f.b, t0, "ES256", "", oldTok) // the old key is still published
	if _, err := f.b.Introspect(oldTok); err != nil {
		t.Errorf("token of the retained old key: %v", err)
	}
	if got := kids(f.open(t, testKEK, testIssuer).PublicJWKs()); !slices.Equal(got, []string{second, first}) {
		t.Errorf("rotation was not saved: kids after restart = %v", got)
	}

	// Just under the retention since the first key stopped signing: it stays.
	f.clock.Advance(24*time.Hour - time.Second)
	if err := f.b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := kids(f.b.PublicJWKs()); len(got) != 3 || got[2] != first || got[1] != second {
		t.Fatalf("kids = %v, want [third %s %s]", got, second, first)
	}
	// Past it: the first key is dropped, the second (replaced 1s ago) stays.
	f.clock.Advance(2 * time.Second)
	if err := f.b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	got = kids(f.b.PublicJWKs())
	if len(got) != 3 || slices.Contains(got, first) || got[2] != second {
		t.Fatalf("kids = %v, want [fourth third %s] without %s", got, second, first)
	}
	if _, err := f.b.Introspect(oldTok); !errors.Is(err, ErrNotOurs) {
		t.Errorf("token of a dropped key introspects: %v", err)
	}
}

// resign replaces a token's header (and signs again with key, if given).
func resign(t testing.TB, tok string, hdr map[string]any, key *signingKey) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	hb, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + parts[1]
	if key == nil {
		return input + "." + parts[2]
	}
	sig, err := signJWS(key, []byte(input))
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestIntrospect(t *testing.T) {
	f := newFixture(t, nil)
	role := f.role(t, backends.RoleSpec{Name: "demo", Audience: []string{"demo-api"}, Scopes: []string{"read"}})
	req := f.mintReq(role, time.Minute)
	tok, _ := mint(t, f.b, req)

	info, err := f.b.Introspect(tok)
	if err != nil {
		t.Fatalf("own token: %v", err)
	}
	if info.LeaseID != req.CorrelationID || info.Claims["sub"] != req.AgentID || info.Claims["iss"] != testIssuer {
		t.Errorf("introspection = %+v", info)
	}

	// Same keys, other issuer URL: a token it signs is not this issuer's.
	otherIss := f.open(t, testKEK, "https://other.test")
	if err := otherIss.CheckRole(role); err != nil {
		t.Fatal(err)
	}
	otherIssTok, _ := mint(t, otherIss, req)
	// Other keys altogether.
	stranger := newFixture(t, nil)
	stranger.role(t, role)
	strangerTok, _ := mint(t, stranger.b, req)
	// Another backend's EdDSA key presented under our kid.
	ed := newFixture(t, map[string]any{"algorithm": "EdDSA"})
	key := f.b.keys[0]

	parts := strings.Split(tok, ".")
	var claims map[string]any
	pb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	_ = json.Unmarshal(pb, &claims)
	claims["role"] = "admin"
	tamperedPayload, _ := json.Marshal(claims)
	hs := hmac.New(sha256.New, []byte(publicJWKString(t, f.b)))
	hsInput := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"`+key.kid+`","typ":"at+jwt"}`)) + "." + parts[1]
	hs.Write([]byte(hsInput))

	tests := []struct {
		name string
		tok  string
	}{
		{"other issuer", otherIssTok},
		{"other keys", strangerTok},
		{"tampered payload", parts[0] + "." + base64.RawURLEncoding.EncodeToString(tamperedPayload) + "." + parts[2]},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flipLast(parts[2])},
		{"wrong kid", resign(t, tok, map[string]any{"alg": "ES256", "kid": "not-a-kid", "typ": "at+jwt"}, nil)},
		{"wrong kid re-signed", resign(t, tok, map[string]any{"alg": "ES256", "kid": "not-a-kid", "typ": "at+jwt"}, key)},
		{"alg mismatch EdDSA", resign(t, tok, map[string]any{"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}, ed.b.keys[0])},
		{"alg none", b64(fmt.Appendf(nil, `{"alg":"none","kid":%q,"typ":"at+jwt"}`, key.kid)) + "." + parts[1] + "."},
		{"alg HS256 keyed with the public key", hsInput + "." + base64.RawURLEncoding.EncodeToString(hs.Sum(nil))},
		{"header with extra member", resign(t, tok, map[string]any{"alg": "ES256", "kid": key.kid, "typ": "at+jwt", "jku": "https://evil.test"}, key)},
		{"signature stripped", parts[0] + "." + parts[1] + "."},
		{"two parts", parts[0] + "." + parts[1]},
		{"four parts", tok + ".x"},
		{"not base64", "!!!." + parts[1] + "." + parts[2]},
		{"empty", ""},
		{"garbage", "garbage"},
		{"JSON", `{"payload":"` + parts[1] + `","signatures":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if info, err := f.b.Introspect(tt.tok); !errors.Is(err, ErrNotOurs) {
				t.Fatalf("Introspect = %+v, %v; want ErrNotOurs", info, err)
			}
		})
	}
}

func flipLast(s string) string {
	b := []byte(s)
	if b[len(b)-2] == 'A' {
		b[len(b)-2] = 'B'
	} else {
		b[len(b)-2] = 'A'
	}
	return string(b)
}

func publicJWKString(t testing.TB, b *Backend) string {
	t.Helper()
	j, err := json.Marshal(b.PublicJWKs()[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(j)
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts map[string]any
		kek  []byte
		want string
	}{
		{"RSA", map[string]any{"algorithm": "RS256"}, testKEK, "must be ES256 or EdDSA"},
		{"HMAC", map[string]any{"algorithm": "HS256"}, testKEK, "must be ES256 or EdDSA"},
		{"unknown option", map[string]any{"algoritm": "ES256"}, testKEK, "algoritm"},
		// A key set to its zero value keeps it; it never falls back to the
		// default.
		{"empty algorithm", map[string]any{"algorithm": ""}, testKEK, `algorithm "" must be ES256 or EdDSA`},
		{"zero key_retention", map[string]any{"key_retention": "0s"}, testKEK, "key_retention must be positive (how long a rotated-out key stays published); it is 0s"},
		{"zero key_retention as a number", map[string]any{"key_retention": 0}, testKEK, "key_retention must be positive"},
		{"no KEK", nil, nil, "key-encryption key"},
		{"short KEK", nil, []byte("0123456789abcdef"), "key-encryption key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New("tokens", tt.opts, backends.Deps{DataDir: t.TempDir(), KEK: tt.kek, PublicURL: testIssuer, Clock: clock.NewFake(t0)})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestOptionDefaults: absent keys take their defaults; present keys keep
// their values.
func TestOptionDefaults(t *testing.T) {
	tests := []struct {
		name          string
		opts          map[string]any
		wantAlg       string
		wantRetention time.Duration
	}{
		{"absent", nil, "ES256", 24 * time.Hour},
		{"set", map[string]any{"algorithm": "EdDSA", "key_retention": "2h"}, "EdDSA", 2 * time.Hour},
		{"retention only", map[string]any{"key_retention": 3600}, "ES256", time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.opts)
			if f.b.opts.Algorithm != tt.wantAlg || f.b.opts.KeyRetention.D() != tt.wantRetention {
				t.Fatalf("algorithm %q, key_retention %s; want %q, %s", f.b.opts.Algorithm, f.b.opts.KeyRetention, tt.wantAlg, tt.wantRetention)
			}
		})
	}
}

func TestNewWithoutClock(t *testing.T) {
	be, err := New("tokens", nil, backends.Deps{DataDir: t.TempDir(), KEK: testKEK, PublicURL: testIssuer})
	if err != nil {
		t.Fatalf("New without a clock: %v", err)
	}
	if ks := be.(*Backend).keys; len(ks) != 1 || ks[0].createdAt.IsZero() {
		t.Fatalf("keys = %v, want one with a creation time", ks)
	}
}

func BenchmarkMint(b *testing.B) {
	for _, bc := range []struct {
		name   string
		alg    string
		params map[string]any
	}{
		{"ES256", "ES256", map[string]any{"claims": map[string]any{"tenant": "acme"}}},
		{"EdDSA", "EdDSA", map[string]any{"claims": map[string]any{"tenant": "acme"}}},
		{"ES256-no-role-claims", "ES256", nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b, map[string]any{"algorithm": bc.alg})
			role := f.role(b, backends.RoleSpec{Name: "demo", Audience: []string{"demo-api"}, Scopes: []string{"read", "write"}, Params: bc.params})
			req := f.mintReq(role, 5*time.Minute)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.b.Mint(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The claims are a contract with resource servers: their exact bytes
// (order, escaping, integer times, aud as a string or a list, the role's
// claims merged and sorted) are fixed here.
func TestMintClaimsBytes(t *testing.T) {
	tests := []struct {
		name   string
		role   backends.RoleSpec
		scope  map[string]any
		agent  string
		want   string
		wantSc string // the credential's scope
	}{
		{
			name: "one audience, two scopes",
			role: backends.RoleSpec{Name: "demo", Audience: []string{"demo-api"}, Scopes: []string{"read", "write"}},
			want: `{"iss":"https://valet.test","sub":"test/agent-1","aud":"demo-api","exp":1773501266,"nbf":1773500966,"iat":1773500966,` +
				`"jti":"01JTESTLEASE000000000000AA","client_id":"test/agent-1","scope":"read write","role":"demo"}`,
			wantSc: "read write",
		},
		{
			name:  "two audiences, no scope, escaped agent",
			role:  backends.RoleSpec{Name: "demo", Audience: []string{"a-api", "b-api"}},
			agent: "test/<a&b>\"é\u2028",
			want: `{"iss":"https://valet.test","sub":"test/\u003ca\u0026b\u003e\"é\u2028","aud":["a-api","b-api"],"exp":1773501266,"nbf":1773500966,"iat":1773500966,` +
				`"jti":"01JTESTLEASE000000000000AA","client_id":"test/\u003ca\u0026b\u003e\"é\u2028","role":"demo"}`,
		},
		{
			name:  "narrowed, with role claims",
			role:  backends.RoleSpec{Name: "demo", Audience: []string{"a-api", "b-api"}, Scopes: []string{"read", "write"}, Params: map[string]any{"claims": map[string]any{"tenant": "acme", "tier": 2}}},
			scope: map[string]any{"scopes": []any{"write"}, "audience": []any{"b-api"}},
			want: `{"aud":"b-api","client_id":"test/agent-1","exp":1773501266,"iat":1773500966,"iss":"https://valet.test","jti":"01JTESTLEASE000000000000AA",` +
				`"nbf":1773500966,"role":"demo","scope":"write","sub":"test/agent-1","tenant":"acme","tier":2}`,
			wantSc: "write",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			req := f.mintReq(f.role(t, tt.role), 5*time.Minute)
			req.Scope = tt.scope
			if tt.agent != "" {
				req.AgentID = tt.agent
			}
			tok, cred := mint(t, f.b, req)
			payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
			if err != nil {
				t.Fatal(err)
			}
			if string(payload) != tt.want {
				t.Errorf("claims\n got %s\nwant %s", payload, tt.want)
			}
			if cred.Details["scope"] != tt.wantSc {
				t.Errorf("details scope = %q, want %q", cred.Details["scope"], tt.wantSc)
			}
			if sc, ok := cred.Data["scope"]; ok != (tt.wantSc != "") || (ok && sc != tt.wantSc) {
				t.Errorf("data scope = %v (present %v), want %q", sc, ok, tt.wantSc)
			}
		})
	}
}

// The broker writes jwt leases once, active, because minting has no effect
// outside valet; losing this marker would silently double the writes.
func TestBackendIsSelfContained(t *testing.T) {
	var b any = &Backend{}
	if _, ok := b.(backends.SelfContained); !ok {
		t.Fatal("the jwt backend must implement backends.SelfContained")
	}
}

// TestKeyPrepublication: a rotated-in key is published at once and signs
// only from its activation; the key it replaces signs until then and
// stays published for key_retention after it.
func TestKeyPrepublication(t *testing.T) {
	f := newFixture(t, map[string]any{"key_retention": "2h"})
	role := f.role(t, backends.RoleSpec{Name: "demo", MaxTTL: time.Hour})
	first := kids(f.b.PublicJWKs())[0]

	r, err := f.b.RotateKey(f.clock.Now(), f.clock.Now().Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !r.ActiveFrom.Equal(t0.Add(10*time.Minute)) || !slices.Equal(r.Published, []string{r.KeyID, first}) || len(r.Dropped) != 0 {
		t.Fatalf("rotation %+v", r)
	}
	if got := kids(f.b.PublicJWKs()); !slices.Equal(got, []string{r.KeyID, first}) {
		t.Fatalf("published %v: want the new key at once", got)
	}
	steps := []struct {
		name    string
		advance time.Duration
		signer  string
	}{
		{"before activation the old key signs", 9 * time.Minute, first},
		{"from activation the new key signs", time.Minute, r.KeyID},
	}
	for _, s := range steps {
		f.clock.Advance(s.advance)
		tok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
		if h := header(t, tok); h["kid"] != s.signer {
			t.Errorf("%s: signed by %v, want %s", s.name, h["kid"], s.signer)
		}
	}
	if got := kids(f.open(t, testKEK, testIssuer).PublicJWKs()); !slices.Equal(got, []string{r.KeyID, first}) {
		t.Errorf("after restart published %v", got)
	}
	// A second rotation before the first key's retention passed keeps it;
	// one after drops it.
	f.clock.Advance(time.Hour)
	r2, err := f.b.RotateKey(f.clock.Now(), f.clock.Now().Add(10*time.Minute))
	if err != nil || len(r2.Dropped) != 0 || len(r2.Published) != 3 {
		t.Fatalf("rotation within retention: %+v, %v", r2, err)
	}
	f.clock.Advance(time.Hour)
	r3, err := f.b.RotateKey(f.clock.Now(), f.clock.Now().Add(10*time.Minute))
	if err != nil || !slices.Equal(r3.Dropped, []string{first}) || !slices.Equal(r3.Published, []string{r3.KeyID, r2.KeyID, r.KeyID}) {
		t.Fatalf("rotation past retention: %+v, %v; want %s dropped", r3, err, first)
	}
}

// A role whose tokens could outlive the retention of the key that signed
// them is refused.
func TestRoleMaxTTLBeyondKeyRetention(t *testing.T) {
	f := newFixture(t, map[string]any{"key_retention": "2h"})
	err := f.b.CheckRole(backends.RoleSpec{Name: "long", MaxTTL: 3 * time.Hour})
	if err == nil || !strings.Contains(err.Error(), "max_ttl (3h0m0s) is longer than backend tokens's key_retention (2h0m0s)") {
		t.Fatalf("CheckRole = %v", err)
	}
	if err := f.b.CheckRole(backends.RoleSpec{Name: "ok", MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatalf("max_ttl equal to key_retention: %v", err)
	}
}
