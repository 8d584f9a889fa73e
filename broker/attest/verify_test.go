package attest_test

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/config"
)

// valid returns a valid token for e.
func valid(t *testing.T, e *env) string { return sign(t, e.dev, claims(nil)) }

// splitToken returns the three parts of a compact JWS.
func splitToken(t *testing.T, tok string) (h, p, s string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	return parts[0], parts[1], parts[2]
}

// flipPaddingBit changes the unused low bit of the last base64url character
// of seg: the decoded bytes are the same, only a lenient decoder accepts it.
func flipPaddingBit(seg string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[i^1])
}

func TestVerifyValid(t *testing.T) {
	e := newEnv(t, nil)
	tok := sign(t, e.dev, claims(map[string]any{"jti": "j-1", "team": "blue"}))
	p, err := e.v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "oidc/agent-1" || p.Issuer != "oidc" || p.IssuerURL != testIss || p.Subject != "agent-1" {
		t.Errorf("identity: %+v", p)
	}
	if !p.IssuedAt.Equal(start) || !p.ExpiresAt.Equal(start.Add(10*time.Minute)) {
		t.Errorf("times: iat %s exp %s", p.IssuedAt, p.ExpiresAt)
	}
	if p.Lineage.Issuer != testIss || p.Lineage.JTI != "j-1" {
		t.Errorf("lineage: %+v", p.Lineage)
	}
	// Claims keep every claim; numbers are json.Number.
	if p.Claims["team"] != "blue" {
		t.Errorf("claims: %v", p.Claims)
	}
	if n, ok := p.Claims["exp"].(json.Number); !ok || n.String() != "1772367000" {
		t.Errorf("exp claim is %T %v, want json.Number 1772367000", p.Claims["exp"], p.Claims["exp"])
	}
	if p.Attributes == nil {
		t.Error("attributes are nil")
	}
}

// Rule 1: size limit first, compact JWS only.
func TestVerifyShape(t *testing.T) {
	runCases(t, []verifyCase{
		{name: "valid compact JWS", token: valid},
		{
			name: "over the size limit",
			token: func(t *testing.T, e *env) string {
				return sign(t, e.dev, claims(map[string]any{"pad": strings.Repeat("x", 16<<10)}))
			},
			code: broker.ETOOLARGE, msg: "the limit is 16384",
		},
		{
			name:  "size checked before parsing",
			token: func(*testing.T, *env) string { return strings.Repeat("{", 16<<10+1) },
			code:  broker.ETOOLARGE, msg: "attestation is 16385 bytes",
		},
		{
			name:  "empty",
			token: func(*testing.T, *env) string { return "" },
			code:  broker.EUNAUTHORIZED, msg: "no attestation given",
		},
		{
			name: "JSON serialization",
			token: func(t *testing.T, e *env) string {
				h, p, s := splitToken(t, valid(t, e))
				return string(mustJSON(t, map[string]any{"protected": h, "payload": p, "signature": s}))
			},
			code: broker.EUNAUTHORIZED, msg: "JSON serialization is not accepted",
		},
		{
			name:  "JWE with five parts",
			token: func(*testing.T, *env) string { return "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn" },
			code:  broker.EUNAUTHORIZED, msg: "is a JWE",
		},
		{
			name: "two parts",
			token: func(t *testing.T, e *env) string {
				h, p, _ := splitToken(t, valid(t, e))
				return h + "." + p
			},
			code: broker.EUNAUTHORIZED, msg: "it has 2",
		},
		{
			name:  "leading whitespace",
			token: func(t *testing.T, e *env) string { return " " + valid(t, e) },
			code:  broker.EUNAUTHORIZED, msg: "contains whitespace",
		},
		{
			name: "newline inside a part",
			token: func(t *testing.T, e *env) string {
				h, p, s := splitToken(t, valid(t, e))
				return h + "." + p[:10] + "\n" + p[10:] + "." + s
			},
			code: broker.EUNAUTHORIZED, msg: "contains whitespace",
		},
		{
			name: "padded base64",
			token: func(t *testing.T, e *env) string {
				h, p, s := splitToken(t, valid(t, e))
				return h + "." + p + "." + s + "=="
			},
			code: broker.EUNAUTHORIZED, msg: "unpadded base64url",
		},
		{
			name: "standard base64 alphabet",
			token: func(t *testing.T, e *env) string {
				h, p, s := splitToken(t, valid(t, e))
				return h + "." + p + "." + "+" + s[1:]
			},
			code: broker.EUNAUTHORIZED, msg: "unpadded base64url",
		},
		{
			name:  "non-ASCII byte",
			token: func(t *testing.T, e *env) string { return valid(t, e) + "\xff" },
			code:  broker.EUNAUTHORIZED, msg: "not base64url (byte 0xff",
		},
		{
			name: "empty signature",
			token: func(t *testing.T, e *env) string {
				h, p, _ := splitToken(t, valid(t, e))
				return h + "." + p + "."
			},
			code: broker.EUNAUTHORIZED, msg: "signature is empty",
		},
		{
			name: "empty header",
			token: func(t *testing.T, e *env) string {
				_, p, s := splitToken(t, valid(t, e))
				return "." + p + "." + s
			},
			code: broker.EUNAUTHORIZED, msg: "header is empty",
		},
		{
			// Same signature bytes, different text: a lenient decoder
			// (and jws.Verify, which re-encodes) would accept it.
			name: "non-canonical base64 in the signature",
			token: func(t *testing.T, e *env) string {
				h, p, s := splitToken(t, valid(t, e))
				return h + "." + p + "." + flipPaddingBit(s)
			},
			code: broker.EUNAUTHORIZED, msg: "signature is not valid base64url",
		},
		{
			name: "header not JSON",
			token: func(t *testing.T, e *env) string {
				_, p, s := splitToken(t, valid(t, e))
				return b64([]byte("not json")) + "." + p + "." + s
			},
			code: broker.EUNAUTHORIZED, msg: "header is not a JSON object",
		},
		{
			name: "payload an array",
			token: func(t *testing.T, e *env) string {
				return signRaw(t, jwa.ES256, e.dev.Key(), mustJSON(t, map[string]any{"alg": "ES256", "kid": e.dev.KeyID()}), []byte(`[1,2]`))
			},
			code: broker.EUNAUTHORIZED, msg: "payload is not a JSON object",
		},
		{
			name: "payload with trailing data",
			token: func(t *testing.T, e *env) string {
				pay := string(mustJSON(t, claims(map[string]any{"iss": testIss, "exp": start.Add(time.Minute).Unix()})))
				return signRaw(t, jwa.ES256, e.dev.Key(), mustJSON(t, map[string]any{"alg": "ES256", "kid": e.dev.KeyID()}), []byte(pay+`{}`))
			},
			code: broker.EUNAUTHORIZED, msg: "data after the JSON object",
		},
		{
			name: "payload not UTF-8",
			token: func(t *testing.T, e *env) string {
				pay := `{"iss":"` + testIss + `","aud":"valet","sub":"a` + "\xff" + `b","exp":1772367000}`
				return signRaw(t, jwa.ES256, e.dev.Key(), mustJSON(t, map[string]any{"alg": "ES256", "kid": e.dev.KeyID()}), []byte(pay))
			},
			code: broker.EUNAUTHORIZED, msg: "invalid UTF-8",
		},
		{
			name: "payload with a lone surrogate",
			token: func(t *testing.T, e *env) string {
				pay := `{"iss":"` + testIss + `","aud":"valet","sub":"a\ud800b","exp":1772367000}`
				return signRaw(t, jwa.ES256, e.dev.Key(), mustJSON(t, map[string]any{"alg": "ES256", "kid": e.dev.KeyID()}), []byte(pay))
			},
			code: broker.EUNAUTHORIZED, msg: "payload is not a JSON object: malformed JSON in \"sub\"",
		},
		{
			// RFC 7519 section 4: a parser must reject duplicate claims or
			// take the last; taking one silently lets two readers of the
			// token disagree on its subject.
			name: "payload with a duplicate claim",
			token: func(t *testing.T, e *env) string {
				pay := `{"iss":"` + testIss + `","aud":"valet","sub":"agent-1","sub":"admin","exp":1772367000}`
				return signRaw(t, jwa.ES256, e.dev.Key(), mustJSON(t, map[string]any{"alg": "ES256", "kid": e.dev.KeyID()}), []byte(pay))
			},
			code: broker.EUNAUTHORIZED, msg: `payload is not a JSON object: duplicate key "sub" at byte`,
		},
		{
			name: "header with a duplicate member",
			token: func(t *testing.T, e *env) string {
				pay := mustJSON(t, claims(map[string]any{"iss": testIss, "exp": start.Add(time.Minute).Unix()}))
				return signRaw(t, jwa.ES256, e.dev.Key(), []byte(`{"alg":"none","alg":"ES256","kid":"`+e.dev.KeyID()+`"}`), pay)
			},
			code: broker.EUNAUTHORIZED, msg: `header is not a JSON object: duplicate key "alg" at byte`,
		},
	})
}

// Rule 2: the issuer is chosen by iss, and only its keys are used.
func TestVerifyIssuerSelection(t *testing.T) {
	runCases(t, []verifyCase{
		{name: "trusted iss", token: valid},
		{
			name: "untrusted iss",
			token: func(t *testing.T, e *env) string {
				return sign(t, e.dev, claims(map[string]any{"iss": "https://evil.example"}))
			},
			code: broker.EUNAUTHORIZED, msg: `issuer "https://evil.example" is not trusted`,
		},
		{
			name:  "iss not a string",
			token: func(t *testing.T, e *env) string { return sign(t, e.dev, claims(map[string]any{"iss": 7})) },
			code:  broker.EUNAUTHORIZED, msg: "iss claim must be a string",
		},
		{
			name:  "no iss",
			token: func(t *testing.T, e *env) string { return signFull(t, e.dev, map[string]any{"iss": nil}) },
			code:  broker.EUNAUTHORIZED, msg: "has no iss claim",
		},
		{
			name: "long untrusted iss is clipped",
			token: func(t *testing.T, e *env) string {
				return sign(t, e.dev, claims(map[string]any{"iss": strings.Repeat("a", 500)}))
			},
			code: broker.EUNAUTHORIZED, msg: `aaaa"... is not trusted`,
		},
	})

	t.Run("another trusted issuer's key does not verify", func(t *testing.T) {
		e := newEnv(t, nil)
		other := newDev(t, "https://other.test", e.clk)
		cfgs := []attest.IssuerConfig{
			e.cfg,
			issuerConfig(t, func(ic *attest.IssuerConfig) {
				ic.Name, ic.Issuer, ic.JWKSFile = "other", other.Issuer(), writeJWKS(t, other)
			}),
		}
		v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: cfgs, Clock: e.clk})
		// Signed by "other", but claiming to be from testIss.
		tok := sign(t, other, claims(map[string]any{"iss": testIss}))
		_, err := v.Verify(context.Background(), tok)
		wantErr(t, err, broker.EUNAUTHORIZED, "issuer oidc has no key with kid")
		// Without a kid the one key of testIss is tried, and fails.
		tok = signHeaders(t, other, claims(map[string]any{"iss": testIss}), map[string]any{"kid": nil})
		_, err = v.Verify(context.Background(), tok)
		wantErr(t, err, broker.EUNAUTHORIZED, "signature does not verify")
		// Both issuers work for their own tokens.
		for _, d := range []*attest.DevIssuer{e.dev, other} {
			if _, err := v.Verify(context.Background(), sign(t, d, claims(nil))); err != nil {
				t.Errorf("%s: %v", d.Issuer(), err)
			}
		}
	})
}

// Rule 3: per-issuer algorithms, never none or HMAC, key alg must match.
func TestVerifyAlgorithms(t *testing.T) {
	hdr := func(t *testing.T, e *env, h map[string]any) []byte {
		t.Helper()
		return mustJSON(t, h)
	}
	payload := func(t *testing.T, e *env) []byte {
		t.Helper()
		return mustJSON(t, claims(map[string]any{"iss": testIss, "iat": start.Unix(), "exp": start.Add(time.Minute).Unix()}))
	}
	runCases(t, []verifyCase{
		{name: "ES256 allowed", token: valid},
		{
			name:  "ES256 not in the issuer's list",
			mod:   func(c *attest.IssuerConfig) { c.Algorithms = []string{"RS256"} },
			token: valid,
			code:  broker.EUNAUTHORIZED, msg: "algorithm ES256 is not allowed for issuer oidc (allowed: RS256)",
		},
		{
			name: "none with a signature",
			token: func(t *testing.T, e *env) string {
				return b64(hdr(t, e, map[string]any{"alg": "none"})) + "." + b64(payload(t, e)) + ".AAAA"
			},
			code: broker.EUNAUTHORIZED, msg: "algorithm none is not allowed for issuer oidc",
		},
		{
			name: "none without a signature",
			token: func(t *testing.T, e *env) string {
				return b64(hdr(t, e, map[string]any{"alg": "none"})) + "." + b64(payload(t, e)) + "."
			},
			code: broker.EUNAUTHORIZED, msg: "signature is empty",
		},
		{
			// The classic confusion: HMAC keyed with the issuer's public
			// key, which anyone can download.
			name: "HS256 keyed with the public JWKS",
			token: func(t *testing.T, e *env) string {
				pub, err := e.dev.PublicJWKS()
				if err != nil {
					t.Fatal(err)
				}
				return signRaw(t, jwa.HS256, pub, hdr(t, e, map[string]any{"alg": "HS256", "kid": e.dev.KeyID()}), payload(t, e))
			},
			code: broker.EUNAUTHORIZED, msg: "algorithm HS256 is not allowed for issuer oidc; HMAC is never accepted",
		},
		{
			name: "no alg",
			token: func(t *testing.T, e *env) string {
				return signHeaders(t, e.dev, claims(nil), map[string]any{"alg": nil})
			},
			code: broker.EUNAUTHORIZED, msg: "header has no alg",
		},
		{
			name: "hostile alg is quoted",
			token: func(t *testing.T, e *env) string {
				return signHeaders(t, e.dev, claims(nil), map[string]any{"alg": "ES256 \n"})
			},
			code: broker.EUNAUTHORIZED, msg: `algorithm "ES256 \n" is not allowed`,
		},
		{
			name: "header alg differs from the key's alg",
			mod:  func(c *attest.IssuerConfig) { c.Algorithms = []string{"ES256", "ES384"} },
			token: func(t *testing.T, e *env) string {
				return signHeaders(t, e.dev, claims(nil), map[string]any{"alg": "ES384"})
			},
			code: broker.EUNAUTHORIZED, msg: "is for algorithm ES256, not ES384",
		},
		{
			name:  "kid not a string",
			token: func(t *testing.T, e *env) string { return signHeaders(t, e.dev, claims(nil), map[string]any{"kid": 1}) },
			code:  broker.EUNAUTHORIZED, msg: "kid must be a string",
		},
		{
			name: "unknown kid",
			token: func(t *testing.T, e *env) string {
				return signHeaders(t, e.dev, claims(nil), map[string]any{"kid": "nope"})
			},
			code: broker.EUNAUTHORIZED, msg: `issuer oidc has no key with kid "nope"`,
		},
		{
			name: "no kid and one key",
			token: func(t *testing.T, e *env) string {
				return signHeaders(t, e.dev, claims(nil), map[string]any{"kid": nil})
			},
		},
		{
			name: "tampered payload",
			token: func(t *testing.T, e *env) string {
				h, _, s := splitToken(t, valid(t, e))
				_, p, _ := splitToken(t, sign(t, e.dev, claims(map[string]any{"sub": "admin"})))
				return h + "." + p + "." + s
			},
			code: broker.EUNAUTHORIZED, msg: "signature does not verify with key",
		},
	})
}

// Rule 3: key selection by kid and by fit, across key types.
func TestVerifyKeySelection(t *testing.T) {
	clk := newEnv(t, nil).clk
	ec1, ec2 := ecKey(t, elliptic.P256()), ecKey(t, elliptic.P256())
	ec384 := ecKey(t, elliptic.P384())
	rsaK := rsaKey()
	jwksPath := writeFile(t, "jwks.json", jwksOf(t,
		publicJWK(t, &ec1.PublicKey, "ec1", ""),
		publicJWK(t, &ec2.PublicKey, "ec2", "ES256"),
		publicJWK(t, &ec384.PublicKey, "ec384", ""),
		publicJWK(t, &rsaK.PublicKey, "rsa", ""),
	))
	cfg := issuerConfig(t, func(ic *attest.IssuerConfig) {
		ic.Name = "multi"
		ic.Issuer = testIss
		ic.JWKSFile = jwksPath
		ic.Algorithms = []string{"ES256", "ES384", "RS256", "PS256"}
	})
	v := newVerifier(t, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{cfg}, Clock: clk})
	pay := mustJSON(t, claims(map[string]any{"iss": testIss, "iat": start.Unix(), "exp": start.Add(time.Minute).Unix()}))
	h := func(alg, kid string) []byte {
		m := map[string]any{"alg": alg}
		if kid != "" {
			m["kid"] = kid
		}
		return mustJSON(t, m)
	}
	cases := []struct {
		name string
		tok  string
		msg  string // "" = accepted
	}{
		{"ES256 by kid without key alg", signRaw(t, jwa.ES256, ec1, h("ES256", "ec1"), pay), ""},
		{"ES256 by kid with key alg", signRaw(t, jwa.ES256, ec2, h("ES256", "ec2"), pay), ""},
		{"ES384 on P-384", signRaw(t, jwa.ES384, ec384, h("ES384", "ec384"), pay), ""},
		{"RS256", signRaw(t, jwa.RS256, rsaK, h("RS256", "rsa"), pay), ""},
		{"PS256", signRaw(t, jwa.PS256, rsaK, h("PS256", "rsa"), pay), ""},
		{"ES384 only one key fits, no kid", signRaw(t, jwa.ES384, ec384, h("ES384", ""), pay), ""},
		{"RS256 only one key fits, no kid", signRaw(t, jwa.RS256, rsaK, h("RS256", ""), pay), ""},
		{"ES256 with the wrong curve", signRaw(t, jwa.ES384, ec384, h("ES256", "ec384"), pay), `key "ec384" of issuer multi cannot verify ES256 signatures`},
		{"ES256 against an RSA kid", signRaw(t, jwa.ES256, ec1, h("ES256", "rsa"), pay), `key "rsa" of issuer multi cannot verify ES256 signatures`},
		{"no kid and two ES256 keys", signRaw(t, jwa.ES256, ec1, h("ES256", ""), pay), "has 2 keys for ES256"},
		{"right kid, wrong signer", signRaw(t, jwa.ES256, ec2, h("ES256", "ec1"), pay), `signature does not verify with key "ec1"`},
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

// Rule 5: crit and b64.
func TestVerifyCritAndB64(t *testing.T) {
	withHeader := func(h map[string]any) func(t *testing.T, e *env) string {
		return func(t *testing.T, e *env) string { return signHeaders(t, e.dev, claims(nil), h) }
	}
	runCases(t, []verifyCase{
		{name: "no crit", token: valid},
		{name: "b64 true", token: withHeader(map[string]any{"b64": true})},
		{name: "crit lists a name", token: withHeader(map[string]any{"crit": []string{"exp"}, "exp": 1}),
			code: broker.EUNAUTHORIZED, msg: `critical extensions (crit ["exp"])`},
		{name: "crit empty", token: withHeader(map[string]any{"crit": []string{}}),
			code: broker.EUNAUTHORIZED, msg: "critical extensions"},
		{name: "crit not a list", token: withHeader(map[string]any{"crit": "b64"}),
			code: broker.EUNAUTHORIZED, msg: "crit (not a list)"},
		{name: "b64 false", token: withHeader(map[string]any{"b64": false, "crit": []string{"b64"}}),
			code: broker.EUNAUTHORIZED, msg: "critical extensions"},
		{name: "b64 false without crit", token: withHeader(map[string]any{"b64": false}),
			code: broker.EUNAUTHORIZED, msg: "b64 to false"},
	})
}

// Rule 6: exp, nbf, iat, skew and maximum age.
func TestVerifyTimes(t *testing.T) {
	at := func(d time.Duration) int64 { return start.Add(d).Unix() }
	tok := func(extra map[string]any) func(t *testing.T, e *env) string {
		return func(t *testing.T, e *env) string { return signFull(t, e.dev, extra) }
	}
	runCases(t, []verifyCase{
		{name: "fresh", token: tok(nil)},
		{name: "no exp", token: tok(map[string]any{"exp": nil}),
			code: broker.EUNAUTHORIZED, msg: "has no exp claim"},
		{name: "expired", token: tok(map[string]any{"iat": at(-time.Hour), "exp": at(-time.Minute)}),
			code: broker.EUNAUTHORIZED, msg: "attestation expired at 2026-03-01T11:59:00Z (valet's time is 2026-03-01T12:00:00Z; allowed clock skew 30s)"},
		{name: "expired within skew", token: tok(map[string]any{"iat": at(-time.Hour), "exp": at(-29 * time.Second)})},
		{name: "expired exactly at skew", token: tok(map[string]any{"iat": at(-time.Hour), "exp": at(-30 * time.Second)}),
			code: broker.EUNAUTHORIZED, msg: "expired at"},
		{name: "fractional exp", token: tok(map[string]any{"exp": json.Number("1772366400.5")})},
		{name: "exp a string", token: tok(map[string]any{"exp": "tomorrow"}),
			code: broker.EUNAUTHORIZED, msg: "exp claim must be a number"},
		{name: "exp huge", token: tok(map[string]any{"exp": json.Number("1e400")}),
			code: broker.EUNAUTHORIZED, msg: "exp claim is out of range"},
		{name: "exp negative", token: tok(map[string]any{"exp": -1}),
			code: broker.EUNAUTHORIZED, msg: "exp claim is out of range"},
		{name: "nbf in the future", token: tok(map[string]any{"nbf": at(time.Minute)}),
			code: broker.EUNAUTHORIZED, msg: "not valid before 2026-03-01T12:01:00Z"},
		{name: "nbf within skew", token: tok(map[string]any{"nbf": at(20 * time.Second)})},
		{name: "nbf a string", token: tok(map[string]any{"nbf": "now"}),
			code: broker.EUNAUTHORIZED, msg: "nbf claim must be a number"},
		{name: "iat in the future", token: tok(map[string]any{"iat": at(time.Minute)}),
			code: broker.EUNAUTHORIZED, msg: "issued in the future, at 2026-03-01T12:01:00Z"},
		{name: "iat within skew", token: tok(map[string]any{"iat": at(25 * time.Second)})},
		{name: "too old", token: tok(map[string]any{"iat": at(-25 * time.Hour)}),
			code: broker.EUNAUTHORIZED, msg: "too old: issued at 2026-02-28T11:00:00Z, and issuer oidc accepts tokens for 24h0m0s"},
		{name: "old but within max age", token: tok(map[string]any{"iat": at(-23 * time.Hour)})},
		{name: "no iat with max age", token: tok(map[string]any{"iat": nil}),
			code: broker.EUNAUTHORIZED, msg: "has no iat claim; issuer oidc requires one"},
		{name: "no iat without max age", token: tok(map[string]any{"iat": nil}),
			mod: func(c *attest.IssuerConfig) { c.MaxTokenAge = 0 },
			check: func(t *testing.T, p *broker.Principal) {
				if !p.IssuedAt.IsZero() {
					t.Errorf("IssuedAt = %s, want zero", p.IssuedAt)
				}
			}},
		{name: "custom skew", token: tok(map[string]any{"iat": at(-time.Hour), "exp": at(-time.Minute)}),
			mod: func(c *attest.IssuerConfig) { c.ClockSkew = config.Duration(2 * time.Minute) }},
	})
}

// Rule 7: aud as a string or an array.
func TestVerifyAudience(t *testing.T) {
	tok := func(aud any) func(t *testing.T, e *env) string {
		return func(t *testing.T, e *env) string { return sign(t, e.dev, claims(map[string]any{"aud": aud})) }
	}
	twoAuds := func(c *attest.IssuerConfig) { c.Audiences = []string{"valet", "valet-staging"} }
	runCases(t, []verifyCase{
		{name: "string", token: tok("valet")},
		{name: "array", token: tok([]string{"other", "valet"})},
		{name: "second configured audience", mod: twoAuds, token: tok("valet-staging")},
		{name: "missing", token: tok(nil),
			code: broker.EUNAUTHORIZED, msg: `has no aud claim; issuer oidc expects one of ["valet"]`},
		{name: "other string", token: tok("vault"),
			code: broker.EUNAUTHORIZED, msg: `audience ["vault"] does not include any of ["valet"]`},
		{name: "other array", token: tok([]string{"a", "b"}),
			code: broker.EUNAUTHORIZED, msg: `audience ["a" "b"] does not include`},
		{name: "empty array", token: tok([]string{}),
			code: broker.EUNAUTHORIZED, msg: "does not include"},
		{name: "number", token: tok(5),
			code: broker.EUNAUTHORIZED, msg: "aud claim must be a string or an array of strings"},
		{name: "array with a number", token: tok([]any{"valet", 5}),
			code: broker.EUNAUTHORIZED, msg: "aud claim must be a string or an array of strings"},
		{name: "case matters", token: tok("Valet"),
			code: broker.EUNAUTHORIZED, msg: "does not include"},
	})
}

// Rule 10: the subject.
func TestVerifySubject(t *testing.T) {
	tok := func(extra map[string]any) func(t *testing.T, e *env) string {
		return func(t *testing.T, e *env) string { return sign(t, e.dev, claims(extra)) }
	}
	runCases(t, []verifyCase{
		{name: "sub", token: tok(nil), check: func(t *testing.T, p *broker.Principal) {
			if p.ID != "oidc/agent-1" {
				t.Errorf("ID = %q", p.ID)
			}
		}},
		{name: "custom subject claim", mod: func(c *attest.IssuerConfig) { c.SubjectClaim = "email" },
			token: tok(map[string]any{"email": "bot@example.com"}),
			check: func(t *testing.T, p *broker.Principal) {
				if p.ID != "oidc/bot@example.com" || p.Subject != "bot@example.com" {
					t.Errorf("ID = %q, Subject = %q", p.ID, p.Subject)
				}
			}},
		{name: "custom subject claim missing", mod: func(c *attest.IssuerConfig) { c.SubjectClaim = "email" },
			token: tok(nil), code: broker.EUNAUTHORIZED, msg: `has no "email" claim`},
		{name: "no sub", token: tok(map[string]any{"sub": nil}),
			code: broker.EUNAUTHORIZED, msg: `has no "sub" claim`},
		{name: "sub a number", token: tok(map[string]any{"sub": 42}),
			code: broker.EUNAUTHORIZED, msg: `subject claim "sub" must be a string`},
		{name: "sub empty", token: tok(map[string]any{"sub": ""}),
			code: broker.EUNAUTHORIZED, msg: `subject claim "sub" is empty`},
		{name: "sub of 256 characters", token: tok(map[string]any{"sub": strings.Repeat("é", 256)})},
		{name: "sub of 257 characters", token: tok(map[string]any{"sub": strings.Repeat("a", 257)}),
			code: broker.EUNAUTHORIZED, msg: "longer than 256 characters"},
		{name: "sub with NUL", token: tok(map[string]any{"sub": "a\x00b"}),
			code: broker.EUNAUTHORIZED, msg: "control characters"},
		{name: "sub with newline", token: tok(map[string]any{"sub": "a\nb"}),
			code: broker.EUNAUTHORIZED, msg: "control characters"},
		{name: "sub with C1 control", token: tok(map[string]any{"sub": "a\u0085b"}),
			code: broker.EUNAUTHORIZED, msg: "control characters"},
		{name: "jti not a string", token: tok(map[string]any{"jti": 5}),
			code: broker.EUNAUTHORIZED, msg: "jti claim must be a string"},
		{name: "jti too long", token: tok(map[string]any{"jti": strings.Repeat("j", 257)}),
			code: broker.EUNAUTHORIZED, msg: "jti claim is longer than 256 bytes"},
		{name: "jti with NUL", token: tok(map[string]any{"jti": "J1\x00zz"}),
			code: broker.EUNAUTHORIZED, msg: "attestation jti claim contains control characters"},
		{name: "jti with newline", token: tok(map[string]any{"jti": "J1\nzz"}),
			code: broker.EUNAUTHORIZED, msg: "attestation jti claim contains control characters"},
		{name: "jti with an escape sequence", token: tok(map[string]any{"jti": "\x1b[2J"}),
			code: broker.EUNAUTHORIZED, msg: "attestation jti claim contains control characters"},
		{name: "jti with C1 control", token: tok(map[string]any{"jti": "J1\u009bzz"}),
			code: broker.EUNAUTHORIZED, msg: "attestation jti claim contains control characters"},
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	clk := newEnv(t, nil).clk
	dev := newDev(t, testIss, clk)
	jwks := writeJWKS(t, dev)
	base := func() attest.IssuerConfig {
		return issuerConfig(t, func(ic *attest.IssuerConfig) { ic.Name, ic.Issuer, ic.JWKSFile = "k8s", testIss, jwks })
	}
	cases := []struct {
		name string
		mod  func(o *attest.Options)
		want string
	}{
		{"no issuers", func(o *attest.Options) { o.Issuers = nil }, "no trusted issuers"},
		{"HMAC algorithm", func(o *attest.Options) { o.Issuers[0].Algorithms = []string{"HS256"} }, `issuer k8s: algorithm "HS256" is not allowed`},
		{"none algorithm", func(o *attest.Options) { o.Issuers[0].Algorithms = []string{"none"} }, `algorithm "none" is not allowed`},
		{"missing jwks_file", func(o *attest.Options) { o.Issuers[0].JWKSFile = "/nonexistent/jwks.json" }, "issuer k8s: read jwks_file"},
		{"invalid jwks_file", func(o *attest.Options) { o.Issuers[0].JWKSFile = writeFile(t, "bad.json", []byte("{")) }, "issuer k8s: jwks_file"},
		{"jwks_file without usable keys", func(o *attest.Options) {
			o.Issuers[0].JWKSFile = writeFile(t, "oct.json", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`))
		}, "no usable public signing key"},
		{"require_jti without a replay cache", func(o *attest.Options) { o.Issuers[0].RequireJTI = true }, "no replay cache"},
		{"same iss twice", func(o *attest.Options) {
			second := base()
			second.Name = "k8s-2"
			o.Issuers = append(o.Issuers, second)
		}, "trusted twice"},
		{"same name twice", func(o *attest.Options) {
			second := base()
			second.Issuer = "https://other.test"
			o.Issuers = append(o.Issuers, second)
		}, `issuer name "k8s" is used twice`},
		{"unreadable ca_file", func(o *attest.Options) {
			o.Issuers[0].JWKSFile, o.Issuers[0].JWKSURL, o.Issuers[0].CAFile = "", "https://keys.test/jwks", "/nonexistent/ca.pem"
		}, "read ca_file"},
		{"two key sources", func(o *attest.Options) { o.Issuers[0].JWKSURL = "https://keys.test/jwks" }, "exactly one of"},
		// Settings are taken as given, never replaced by defaults: what
		// cannot be used is refused.
		{"zero max token bytes", func(o *attest.Options) { o.MaxTokenBytes = 0 }, "limits.max_attestation_bytes must be positive; it is 0"},
		{"negative cache size", func(o *attest.Options) { o.CacheSize = -1 }, "limits.attestation_cache must not be negative; it is -1"},
		{"negative clock skew", func(o *attest.Options) { o.Issuers[0].ClockSkew = -1 }, "issuer k8s: clock_skew must not be negative"},
		{"negative max token age", func(o *attest.Options) { o.Issuers[0].MaxTokenAge = -1 }, "issuer k8s: max_token_age must not be negative"},
		{"empty subject claim", func(o *attest.Options) { o.Issuers[0].SubjectClaim = "" }, "issuer k8s: subject_claim must not be empty"},
		{"zero jwks refresh interval", func(o *attest.Options) {
			o.Issuers[0].JWKSFile, o.Issuers[0].JWKSURL, o.Issuers[0].JWKSRefreshInterval = "", "https://keys.test/jwks", 0
		}, "issuer k8s: jwks_refresh_interval (0s) and jwks_cache_ttl (1h0m0s) must be positive"},
		{"zero jwks cache ttl", func(o *attest.Options) {
			o.Issuers[0].JWKSFile, o.Issuers[0].JWKSURL, o.Issuers[0].JWKSCacheTTL = "", "https://keys.test/jwks", 0
		}, "issuer k8s: jwks_refresh_interval (1m0s) and jwks_cache_ttl (0s) must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: []attest.IssuerConfig{base()}, Clock: clk, Logger: discardLogger()}
			tc.mod(&o)
			_, err := attest.New(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
