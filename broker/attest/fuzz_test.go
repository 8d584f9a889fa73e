package attest_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// Fixed test-only keys, so that every fuzzing process (the coordinator and
// each worker) trusts the same keys and the seeds stay valid in all of them.
const (
	fuzzKeyA = `{"alg":"ES256","crv":"P-256","d":"swgqzledmEU4cW9U1IFIWvkreTYyLQ0nwtvheUd-RA4","kid":"iqxffgj_knHZ9sLCnQYiBKbUsMAmINHXZVIS9MMxanI","kty":"EC","use":"sig","x":"zezce4qByrwQhHEEMWLeDq9mXimOJbqmWsgqaAy-LPc","y":"bdrXp7trJpvogWTXQ1q8vEpobkat-tPdUJHVSx76ABg"}`
	fuzzKeyB = `{"alg":"ES256","crv":"P-256","d":"mMn-gubk-BXPvbbuyTf6tp6p_lkHzDHxtPR7Lfhosh4","kid":"H5mkfvh3tm_xOAvKTf7JoLgIXnSCiUUyvqMHSq1VC6g","kty":"EC","use":"sig","x":"KigoCcS0hUiFG4pzBoyRx3R2lG42M47xTfjzwfvLWFQ","y":"9AAiOXWaboO4njGv72guicOzbyX4rqr3xz6ifRtYRpA"}`
)

// fixedDev loads a dev issuer with one of the fixed keys.
func fixedDev(tb testing.TB, key, iss string, clk clock.Clock) *attest.DevIssuer {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, attest.DevIssuerKeyFile), []byte(key), 0o600); err != nil {
		tb.Fatal(err)
	}
	d, err := attest.LoadOrCreateDevIssuer(dir, iss)
	if err != nil {
		tb.Fatal(err)
	}
	d.SetClock(clk)
	return d
}

// FuzzVerify checks that Verify never panics, that every error is an
// *broker.Error with a client code and no copy of the token, and that only
// tokens whose signed content is exactly that of a genuine valid token are
// ever accepted.
func FuzzVerify(f *testing.F) {
	clk := clock.NewFake(start)
	a := fixedDev(f, fuzzKeyA, testIss, clk)
	k8s := fixedDev(f, fuzzKeyA, "https://kubernetes.default.svc", clk)
	gha := fixedDev(f, fuzzKeyB, attest.GitHubActionsIssuer, clk)
	spire := fixedDev(f, fuzzKeyB, "", clk)
	v := newVerifier(f, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Clock: clk, Issuers: []attest.IssuerConfig{
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "oidc"
			ic.Issuer = a.Issuer()
			ic.JWKSFile = a.JWKSPath()
			ic.ClaimMappings = map[string]string{"team": "ext.team", "n": "ext.n"}
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "k8s"
			ic.Type = attest.IssuerKubernetes
			ic.Issuer = k8s.Issuer()
			ic.JWKSFile = k8s.JWKSPath()
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name, ic.Type, ic.Issuer, ic.JWKSFile = "gha", attest.IssuerGitHub, attest.GitHubActionsIssuer, gha.JWKSPath()
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "spire"
			ic.Type = attest.IssuerSPIFFE
			ic.TrustDomain = "example.org"
			ic.JWKSFile = spire.JWKSPath()
		}),
	}})

	// genuine holds the signed content (header.payload) of every token
	// that is meant to pass.
	genuine := map[string]bool{}
	add := func(tok string, valid bool) {
		if valid {
			genuine[tok[:strings.LastIndexByte(tok, '.')]] = true
		}
		f.Add(tok)
	}
	signed := func(d *attest.DevIssuer, extra map[string]any) string { return signFull(f, d, extra) }

	valids := []string{
		signed(a, map[string]any{"jti": "j1", "ext": map[string]any{"team": "blue", "n": 7}}),
		signed(k8s, map[string]any{"sub": "system:serviceaccount:ns:sa", "kubernetes.io": map[string]any{
			"namespace": "ns", "serviceaccount": map[string]any{"name": "sa", "uid": "u1"}, "pod": map[string]any{"name": "p", "uid": "u2"},
		}}),
		signed(gha, map[string]any{"sub": "repo:o/r:ref:refs/heads/main", "repository": "o/r", "run_id": "42", "run_attempt": 1}),
		signed(spire, map[string]any{"iss": nil, "sub": "spiffe://example.org/ns/prod/sa/agent"}),
	}
	for _, tok := range valids {
		add(tok, true)
	}

	// Header variants: valid ones (the key is chosen without kid, or
	// headers valet ignores) and invalid ones.
	for _, h := range []map[string]any{{"kid": nil}, {"jku": "http://127.0.0.1:1/jwks"}, {"jwk": map[string]any{"kty": "EC"}}, {"x5c": []string{"AAAA"}}, {"b64": true}} {
		add(signHeaders(f, a, claims(nil), h), true)
	}
	for _, h := range []map[string]any{
		{"alg": "none"}, {"alg": "HS256"}, {"alg": "ES384"}, {"alg": nil}, {"kid": "other"}, {"kid": 12},
		{"crit": []string{"b64"}, "b64": false}, {"b64": false}, {"crit": []string{}}, {"alg": strings.Repeat("A", 300)},
	} {
		add(signHeaders(f, a, claims(nil), h), false)
	}
	add(signed(a, map[string]any{"nested": deepJSON(2000)}), true)
	// Payload variants, all genuinely signed, all invalid.
	for _, c := range []map[string]any{
		{"exp": json.Number("1e999")}, {"exp": "tomorrow"}, {"exp": 1e300}, {"exp": -5}, {"iat": 9e15}, {"nbf": 1e18}, {"aud": []any{1, nil}},
		{"aud": nil}, {"sub": strings.Repeat("ü", 300)}, {"sub": "a\u0000b"}, {"iss": 5}, {"iss": "https://x"},
		{"ext": map[string]any{"team": []any{}}}, {"exp": start.Add(-time.Hour).Unix()},
	} {
		add(signed(a, c), false)
	}
	add(signed(k8s, map[string]any{"sub": "system:serviceaccount:a:b", "kubernetes.io": map[string]any{"namespace": "c"}}), false)
	add(signed(spire, map[string]any{"iss": nil, "sub": "spiffe://example.org/../x"}), false)

	// Raw payloads a JSON encoder would never produce.
	hdrA := mustJSON(f, map[string]any{"alg": "ES256", "kid": a.KeyID()})
	var rawKey any = a.Key()
	for _, p := range []string{
		`{"iss":"` + testIss + `","sub":"a` + "\xff\xfe" + `","aud":"valet","exp":1772367000}`,
		`{"iss":"` + testIss + `","iss":"https://evil","sub":"a","aud":"valet","exp":1772367000}`,
		`{"iss":"` + testIss + `","sub":"a","aud":"valet","exp":1772367000,"n":123456789012345678901234567890}`,
		`null`, `[]`, `{}`, `"x"`, `{"a":1}{"b":2}`, strings.Repeat(`[`, 5000),
	} {
		add(signRaw(f, "ES256", rawKey, hdrA, []byte(p)), false)
	}

	// Shape variants of a valid token.
	v0 := valids[0]
	h, p, s := splitTokenTB(f, v0)
	for _, tok := range []string{
		"", ".", "..", "...", "....", h, h + "." + p, h + "." + p + ".", "." + p + "." + s, h + ".." + s,
		h + "." + p + "." + s + "=", h + "." + p + "." + s[:len(s)-1], h + "." + p + "." + s[1:] + s[:1],
		h + "." + p + "." + flipPaddingBit(s), " " + v0, v0 + "\n", `{"payload":"` + p + `"}`,
		v0 + "." + s + "." + s, strings.Repeat("A", 16<<10+1), h + "." + p + "." + strings.Repeat("A", 86),
		"\xff\xfe", "eyJ.eyJ.AAAA",
	} {
		add(tok, false)
	}

	ctx := context.Background()
	f.Fuzz(func(t *testing.T, tok string) {
		pr, err := v.Verify(ctx, tok)
		if err == nil {
			if pr == nil || pr.ID == "" || pr.Issuer == "" {
				t.Fatalf("accepted with principal %+v", pr)
			}
			i := strings.LastIndexByte(tok, '.')
			if i < 0 || !genuine[tok[:i]] {
				t.Fatalf("accepted a token whose signed content is not that of a genuine valid token: %q", tok)
			}
			return
		}
		if pr != nil {
			t.Fatalf("principal with error %v", err)
		}
		var be *broker.Error
		if !errors.As(err, &be) {
			t.Fatalf("error %T (%v) is not a *broker.Error", err, err)
		}
		if be.Code != broker.EUNAUTHORIZED && be.Code != broker.ETOOLARGE {
			t.Fatalf("code %s for %v", be.Code, err)
		}
		if len(tok) > 80 && strings.Contains(err.Error(), tok) {
			t.Fatalf("the error repeats the token")
		}
	})
}

func splitTokenTB(tb testing.TB, tok string) (h, p, s string) {
	tb.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		tb.Fatalf("token has %d parts", len(parts))
	}
	return parts[0], parts[1], parts[2]
}

// deepJSON is an array nested n deep.
func deepJSON(n int) any {
	var v any = "bottom"
	for i := 0; i < n; i++ {
		v = []any{v}
	}
	return v
}

// FuzzVerifyClaims signs arbitrary header and payload bytes with a trusted
// key, so that the fuzzer explores everything after the signature check:
// claim decoding, times, audience, subject, presets and mappings. Anything
// accepted must satisfy the rules that Verify promises.
func FuzzVerifyClaims(f *testing.F) {
	clk := clock.NewFake(start)
	a := fixedDev(f, fuzzKeyA, testIss, clk)
	k8s := fixedDev(f, fuzzKeyA, "https://kubernetes.default.svc", clk)
	spire := fixedDev(f, fuzzKeyA, "", clk)
	cfgs := []attest.IssuerConfig{
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "oidc"
			ic.Issuer = a.Issuer()
			ic.JWKSFile = a.JWKSPath()
			ic.ClaimMappings = map[string]string{"team": "ext.team", "n": "ext.n", "k": "kubernetes.io.namespace"}
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "k8s"
			ic.Type = attest.IssuerKubernetes
			ic.Issuer = k8s.Issuer()
			ic.JWKSFile = k8s.JWKSPath()
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "gha"
			ic.Type = attest.IssuerGitHub
			ic.Issuer = attest.GitHubActionsIssuer
			ic.JWKSFile = a.JWKSPath()
		}),
		issuerConfig(f, func(ic *attest.IssuerConfig) {
			ic.Name = "spire"
			ic.Type = attest.IssuerSPIFFE
			ic.TrustDomain = "example.org"
			ic.JWKSFile = spire.JWKSPath()
		}),
	}
	v := newVerifier(f, attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Clock: clk, Issuers: cfgs})
	key := a.Key()
	hdr := mustJSON(f, map[string]any{"alg": "ES256", "kid": a.KeyID()})

	for _, p := range []map[string]any{
		claims(map[string]any{"iss": testIss, "exp": start.Unix() + 60, "iat": start.Unix(), "ext": map[string]any{"team": "x", "n": 1.5}}),
		claims(map[string]any{"iss": k8s.Issuer(), "exp": start.Unix() + 60, "iat": start.Unix(), "sub": "system:serviceaccount:a:b",
			"kubernetes.io": map[string]any{"namespace": "a", "pod": map[string]any{"uid": "p"}}}),
		claims(map[string]any{"iss": attest.GitHubActionsIssuer, "exp": start.Unix() + 60, "iat": start.Unix(), "run_id": 5, "repository": "o/r"}),
		claims(map[string]any{"exp": start.Unix() + 60, "iat": start.Unix(), "sub": "spiffe://example.org/w"}),
	} {
		f.Add(hdr, mustJSON(f, p))
	}
	f.Add(mustJSON(f, map[string]any{"alg": "ES256"}), []byte(`{"iss":"https://issuer.test","aud":["valet"],"sub":"s","exp":1772366460.25,"iat":1772366400,"nbf":1772366400}`))
	f.Add(hdr, []byte(`{"iss":"https://issuer.test","aud":"valet","sub":"s","exp":1e400}`))

	ctx := context.Background()
	now := start
	f.Fuzz(func(t *testing.T, header, payload []byte) {
		if len(header)+len(payload) > 12<<10 {
			return
		}
		tok := signRaw(t, "ES256", key, header, payload)
		p, err := v.Verify(ctx, tok)
		if err != nil {
			var be *broker.Error
			if !errors.As(err, &be) || (be.Code != broker.EUNAUTHORIZED && be.Code != broker.ETOOLARGE) {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		var cfg *attest.IssuerConfig
		for i := range cfgs {
			if cfgs[i].Name == p.Issuer {
				cfg = &cfgs[i]
			}
		}
		switch {
		case cfg == nil:
			t.Fatalf("unknown issuer %q", p.Issuer)
		case p.ID != p.Issuer+"/"+p.Subject || p.Subject == "" || len([]rune(p.Subject)) > 256:
			t.Fatalf("bad identity %q / %q", p.ID, p.Subject)
		case !now.Before(p.ExpiresAt.Add(cfg.ClockSkew.D())):
			t.Fatalf("accepted a token that expired at %s", p.ExpiresAt)
		case p.IssuedAt.IsZero() && cfg.MaxTokenAge > 0:
			t.Fatalf("accepted a token without iat")
		case !p.IssuedAt.IsZero() && (p.IssuedAt.After(now.Add(cfg.ClockSkew.D())) || now.Sub(p.IssuedAt) > cfg.MaxTokenAge.D()+cfg.ClockSkew.D()):
			t.Fatalf("accepted iat %s", p.IssuedAt)
		case p.Claims == nil || p.Attributes == nil:
			t.Fatalf("nil claims or attributes")
		case cfg.Type == attest.IssuerSPIFFE && p.Lineage.SPIFFEID != p.Subject:
			t.Fatalf("spiffe lineage %+v for %q", p.Lineage, p.Subject)
		}
		if cfg.Issuer != "" && p.IssuerURL != cfg.Issuer {
			t.Fatalf("IssuerURL %q for issuer %s", p.IssuerURL, cfg.Name)
		}
	})
}
