package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/audit"
)

// basicAuth is an Authorization header for client_secret_basic, encoded as
// RFC 6749 section 2.3.1 says: each part form-urlencoded first.
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// rsSpecialID and rsSpecialSecret need form-urlencoding in HTTP Basic.
const (
	rsSpecialID     = "rs:special id"
	rsSpecialSecret = "s3cr3t +/:%é"
)

// introspectionEnv is a test server with introspection clients of every
// method but tls_client_auth (see TestIntrospectionTLSClientAuth): the
// harness's demo-api (basic) and other-api (post, role other only), plus
// jwt-api (private_key_jwt, keys of the returned issuer), aud-api (basic,
// audience billing-api only) and rsSpecialID (basic).
func introspectionEnv(t *testing.T) (*testEnv, *attest.DevIssuer) {
	t.Helper()
	e := newTestEnv(t)
	rsKey, jwks := newKeyedIssuer(t, e, "jwt-api")
	e.Config.Introspection.Clients = append(e.Config.Introspection.Clients,
		broker.IntrospectionClientConfig{ClientID: "jwt-api", AuthMethod: broker.AuthPrivateKeyJWT, JWKSFile: jwks, Algorithms: []string{"ES256"}},
		broker.IntrospectionClientConfig{ClientID: "aud-api", AuthMethod: broker.AuthClientSecretBasic, ClientSecretSHA256: broker.HashToken(rsSecret("aud-api")),
			Audiences: []string{"billing-api"}},
		broker.IntrospectionClientConfig{ClientID: rsSpecialID, AuthMethod: broker.AuthClientSecretBasic, ClientSecretSHA256: broker.HashToken(rsSpecialSecret)},
	)
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	return e.Start(), rsKey
}

// newKeyedIssuer returns a dev issuer with iss and the path of its public
// JWKS, written into e's directory.
func newKeyedIssuer(t *testing.T, e *testEnv, iss string) (*attest.DevIssuer, string) {
	t.Helper()
	d, err := attest.NewDevIssuer(iss)
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(e.Dir, strings.NewReplacer(":", "_", "/", "_").Replace(iss)+"-jwks.json")
	if err := d.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	return d, jwks
}

var assertionSeq atomic.Int64

// clientAssertion signs a private_key_jwt assertion for jwt-api; claims
// override the defaults (a nil value removes one).
func clientAssertion(t *testing.T, e *testEnv, key *attest.DevIssuer, claims map[string]any) string {
	t.Helper()
	c := map[string]any{"sub": "jwt-api", "aud": e.Config.PublicURL + "/v1/introspect", "jti": fmt.Sprintf("a-%d-%d", time.Now().UnixNano(), assertionSeq.Add(1))}
	maps.Copy(c, claims)
	tok, err := key.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestIntrospectionClientAuthentication(t *testing.T) {
	e, rsKey := introspectionEnv(t)
	demoTok := accessToken(t, e.Mint(e.Attest("agent-1", nil), "demo")["credential"].(map[string]any))
	otherTok := accessToken(t, e.Mint(e.Attest("agent-1", nil), "other")["credential"].(map[string]any))
	leasesBefore := e.LeaseCounts()
	otherKey, err := attest.NewDevIssuer("jwt-api")
	if err != nil {
		t.Fatal(err)
	}
	assertion := func(claims map[string]any) url.Values {
		return url.Values{"client_assertion_type": {broker.ClientAssertionType}, "client_assertion": {clientAssertion(t, e, rsKey, claims)}}
	}
	with := func(v url.Values, kv ...string) url.Values {
		out := url.Values{}
		for k, vs := range v {
			out[k] = slices.Clone(vs)
		}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	tokenForm := func(tok string) url.Values { return url.Values{"token": {tok}} }
	post := func(id, tok string) url.Values {
		return url.Values{"token": {tok}, "client_id": {id}, "client_secret": {rsSecret(id)}}
	}
	demoBasic := map[string]string{"Authorization": basicAuth("demo-api", rsSecret("demo-api"))}

	cases := []struct {
		name      string
		header    map[string]string
		form      url.Values
		body      string // instead of form
		ctype     string // instead of the form content type; "-" for none
		query     string
		status    int
		wantError string
		active    bool // for 200s
	}{
		// Anonymous callers learn nothing, however good their token.
		{name: "anonymous", form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "anonymous with a bad token", form: tokenForm("garbage"), status: 401, wantError: "invalid_client"},
		{name: "anonymous with client_id only", form: with(tokenForm(demoTok), "client_id", "demo-api"), status: 401, wantError: "invalid_client"},

		// client_secret_basic
		{name: "basic", header: demoBasic, form: tokenForm(demoTok), status: 200, active: true},
		{name: "basic, inactive token", header: demoBasic, form: tokenForm("garbage"), status: 200, active: false},
		{name: "basic with an unknown token_type_hint", header: demoBasic, form: with(tokenForm(demoTok), "token_type_hint", "refresh_token"), status: 200, active: true},
		{name: "basic with the matching client_id", header: demoBasic, form: with(tokenForm(demoTok), "client_id", "demo-api"), status: 200, active: true},
		{name: "basic, form-urlencoded id and secret", header: map[string]string{"Authorization": basicAuth(rsSpecialID, rsSpecialSecret)}, form: tokenForm(demoTok), status: 200, active: true},
		{name: "basic, id and secret not form-urlencoded", header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(rsSpecialID+":"+rsSpecialSecret))}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic, wrong secret", header: map[string]string{"Authorization": basicAuth("demo-api", "wrong")}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic, another client's secret", header: map[string]string{"Authorization": basicAuth("demo-api", rsSecret("aud-api"))}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic, unknown client", header: map[string]string{"Authorization": basicAuth("nobody", rsSecret("demo-api"))}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic for a client_secret_post client", header: map[string]string{"Authorization": basicAuth("other-api", rsSecret("other-api"))}, form: tokenForm(otherTok), status: 401, wantError: "invalid_client"},
		{name: "basic, not base64", header: map[string]string{"Authorization": "Basic %%%"}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic without a colon", header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("demo-api"))}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "bearer token", header: map[string]string{"Authorization": "Bearer " + testOperatorToken}, form: tokenForm(demoTok), status: 401, wantError: "invalid_client"},
		{name: "basic with another client_id in the body", header: demoBasic, form: with(tokenForm(demoTok), "client_id", "other-api"), status: 400, wantError: "invalid_request"},
		{name: "basic and client_secret_post at once", header: demoBasic, form: post("other-api", otherTok), status: 400, wantError: "invalid_request"},

		// client_secret_post, and the client's role restriction
		{name: "post", form: post("other-api", otherTok), status: 200, active: true},
		{name: "post, token of a role the client may not see", form: post("other-api", demoTok), status: 200, active: false},
		{name: "post, wrong secret", form: with(tokenForm(otherTok), "client_id", "other-api", "client_secret", "wrong"), status: 401, wantError: "invalid_client"},
		{name: "post for a client_secret_basic client", form: post("demo-api", demoTok), status: 401, wantError: "invalid_client"},
		{name: "post without client_id", form: with(tokenForm(otherTok), "client_secret", rsSecret("other-api")), status: 400, wantError: "invalid_request"},
		{name: "post with client_secret twice", form: with(post("other-api", otherTok), "client_secret", "x"), status: 400, wantError: "invalid_request"},

		// audience restriction
		{name: "token for another audience", header: map[string]string{"Authorization": basicAuth("aud-api", rsSecret("aud-api"))}, form: tokenForm(demoTok), status: 200, active: false},

		// private_key_jwt
		{name: "private_key_jwt", form: with(assertion(nil), "token", demoTok), status: 200, active: true},
		{name: "private_key_jwt, aud the issuer", form: with(assertion(map[string]any{"aud": e.Config.PublicURL}), "token", demoTok), status: 200, active: true},
		{name: "private_key_jwt with its client_id", form: with(assertion(nil), "token", demoTok, "client_id", "jwt-api"), status: 200, active: true},
		{name: "private_key_jwt with another client_id", form: with(assertion(nil), "token", demoTok, "client_id", "demo-api"), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, expired", form: with(assertion(map[string]any{"iat": time.Now().Add(-time.Hour).Unix(), "exp": time.Now().Add(-30 * time.Minute).Unix()}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, exp too far", form: with(assertion(map[string]any{"exp": time.Now().Add(3 * time.Hour).Unix()}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, wrong aud", form: with(assertion(map[string]any{"aud": "https://elsewhere"}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, sub is not the client", form: with(assertion(map[string]any{"sub": "demo-api"}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, no jti", form: with(assertion(map[string]any{"jti": nil}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, another key", form: url.Values{"token": {demoTok}, "client_assertion_type": {broker.ClientAssertionType}, "client_assertion": {clientAssertion(t, e, otherKey, nil)}}, status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, iss of a secret client", form: with(assertion(map[string]any{"iss": "demo-api", "sub": "demo-api"}), "token", demoTok), status: 401, wantError: "invalid_client"},
		{name: "private_key_jwt, agent attestation", form: url.Values{"token": {demoTok}, "client_assertion_type": {broker.ClientAssertionType}, "client_assertion": {e.Attest("agent-1", nil)}}, status: 401, wantError: "invalid_client"},
		{name: "client_assertion_type unsupported", form: url.Values{"token": {demoTok}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:saml2-bearer"}, "client_assertion": {"x"}}, status: 401, wantError: "invalid_client"},
		{name: "client_assertion without its type", form: url.Values{"token": {demoTok}, "client_assertion": {clientAssertion(t, e, rsKey, nil)}}, status: 400, wantError: "invalid_request"},
		{name: "private_key_jwt and basic at once", header: demoBasic, form: with(assertion(nil), "token", demoTok), status: 400, wantError: "invalid_request"},

		// the form itself
		{name: "no token", header: demoBasic, form: url.Values{}, status: 400, wantError: "invalid_request"},
		{name: "empty token", header: demoBasic, form: url.Values{"token": {""}}, status: 400, wantError: "invalid_request"},
		{name: "token twice", header: demoBasic, form: with(tokenForm(demoTok), "token", otherTok), status: 400, wantError: "invalid_request"},
		{name: "token_type_hint twice", header: demoBasic, form: with(tokenForm(demoTok), "token_type_hint", "access_token", "token_type_hint", "access_token"), status: 400, wantError: "invalid_request"},
		{name: "client_id twice", form: with(post("other-api", otherTok), "client_id", "other-api"), status: 400, wantError: "invalid_request"},
		{name: "token in the URL query", header: demoBasic, form: url.Values{}, query: "token=" + url.QueryEscape(demoTok), status: 400, wantError: "invalid_request"},
		{name: "JSON body", header: demoBasic, body: `{"token":"` + demoTok + `"}`, ctype: "application/json", status: 400, wantError: "invalid_request"},
		{name: "no Content-Type", header: demoBasic, body: tokenForm(demoTok).Encode(), ctype: "-", status: 400, wantError: "invalid_request"},
		{name: "malformed form body", header: demoBasic, body: "token=%zz", status: 400, wantError: "invalid_request"},
		{name: "huge body", header: demoBasic, body: tokenForm(demoTok).Encode() + "&pad=" + strings.Repeat("a", int(e.Config.Limits.MaxBodyBytes)), status: 413, wantError: "invalid_request"},
	}
	auditBefore := len(e.auditRecords())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.postForm("/v1/introspect", formRequest{c.form, c.body, c.ctype, c.query, c.header})
			if r.Status != c.status {
				t.Fatalf("status = %d, want %d: %s", r.Status, c.status, r.Body)
			}
			if r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", r.Header.Get("Cache-Control"))
			}
			if c.status != http.StatusOK {
				oe := assertOAuthError(t, r, c.wantError)
				if strings.Contains(strings.ToLower(oe.Description), "json") {
					t.Errorf("error_description %q speaks of JSON; the endpoint takes a form body", oe.Description)
				}
				if c.status == http.StatusUnauthorized && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic ") {
					t.Errorf("WWW-Authenticate = %q, want a Basic challenge", r.Header.Get("WWW-Authenticate"))
				}
				return
			}
			m := r.JSON(t)
			if !c.active {
				if m["active"] != false || len(m) != 1 {
					t.Fatalf("answer %v, want only active:false", m)
				}
				return
			}
			if m["active"] != true || m["jti"] == nil || m["sub"] != "test/agent-1" {
				t.Fatalf("answer %v, want the active token's claims", m)
			}
		})
	}
	// Introspection changes nothing: no lease ended, and no audit record
	// but the denials of client credentials that did not verify (kept as
	// every refused credential is, see TestFailedCredentialsThrottledValidOnesPass).
	if got := e.LeaseCounts(); !maps.Equal(got, leasesBefore) {
		t.Errorf("leases after introspection = %v, want %v", got, leasesBefore)
	}
	for _, rec := range e.auditRecords()[auditBefore:] {
		if rec.Kind != audit.KindIntrospection || rec.Decision != audit.Deny || rec.Details["credential"] != broker.CredentialIntrospectionClient {
			t.Errorf("introspection left audit record %+v", rec)
		}
	}

	t.Run("replayed client assertion", func(t *testing.T) {
		form := with(assertion(nil), "token", demoTok)
		h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
		if r := e.raw("POST", "/v1/introspect", h, strings.NewReader(form.Encode())); r.Status != http.StatusOK {
			t.Fatalf("first use: %d %s", r.Status, r.Body)
		}
		r := e.raw("POST", "/v1/introspect", h, strings.NewReader(form.Encode()))
		if r.Status != http.StatusUnauthorized {
			t.Fatalf("second use of the same assertion: %d %s", r.Status, r.Body)
		}
		assertOAuthError(t, r, "invalid_client")
	})
}

// TestIntrospectionDiscovery checks that both metadata documents advertise
// exactly the methods the introspection endpoint accepts, and the token
// endpoint's none.
func TestIntrospectionDiscovery(t *testing.T) {
	e, _ := introspectionEnv(t)
	for _, path := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		t.Run(path, func(t *testing.T) {
			r := e.Do("GET", path, "", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			m := r.JSON(t)
			strs := func(k string) []string {
				var out []string
				for _, v := range m[k].([]any) {
					out = append(out, v.(string))
				}
				return out
			}
			if m["issuer"] != e.Config.PublicURL || m["introspection_endpoint"] != e.Config.PublicURL+"/v1/introspect" {
				t.Errorf("issuer %v, introspection_endpoint %v", m["issuer"], m["introspection_endpoint"])
			}
			if got := strs("introspection_endpoint_auth_methods_supported"); !slices.Equal(got, []string{"client_secret_basic", "client_secret_post", "private_key_jwt"}) {
				t.Errorf("introspection_endpoint_auth_methods_supported = %v", got)
			}
			if got := strs("introspection_endpoint_auth_signing_alg_values_supported"); !slices.Equal(got, []string{"ES256"}) {
				t.Errorf("introspection_endpoint_auth_signing_alg_values_supported = %v", got)
			}
			if got := strs("token_endpoint_auth_methods_supported"); !slices.Equal(got, []string{"none"}) {
				t.Errorf("token_endpoint_auth_methods_supported = %v", got)
			}
			if _, ok := m["id_token_signing_alg_values_supported"]; ok != (path == "/.well-known/openid-configuration") {
				t.Errorf("id_token_signing_alg_values_supported present: %v", ok)
			} else if ok && !slices.Equal(strs("id_token_signing_alg_values_supported"), []string{"ES256"}) {
				t.Errorf("id_token_signing_alg_values_supported = %v, want the one algorithm valet signs with", m["id_token_signing_alg_values_supported"])
			}
		})
	}

	t.Run("no introspection clients", func(t *testing.T) {
		e := newTestEnv(t)
		e.Config.Introspection.Clients = nil
		e.Start()
		m := e.Do("GET", "/.well-known/openid-configuration", "", nil).JSON(t)
		for _, k := range []string{"introspection_endpoint", "introspection_endpoint_auth_methods_supported"} {
			if v, ok := m[k]; ok {
				t.Errorf("%s = %v advertised, but no client can use the endpoint", k, v)
			}
		}
		tok := accessToken(t, e.Mint(e.Attest("agent-1", nil), "demo")["credential"].(map[string]any))
		r := e.raw("POST", "/v1/introspect", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": basicAuth("demo-api", rsSecret("demo-api"))},
			strings.NewReader(url.Values{"token": {tok}}.Encode()))
		if r.Status != http.StatusUnauthorized {
			t.Fatalf("introspection without configured clients: %d %s", r.Status, r.Body)
		}
		assertOAuthError(t, r, "invalid_client")
	})
}

// issueClientCert returns a client certificate of ca for cn with the
// given URI SANs, as a tls.Certificate.
func (ca *testCA) issueClientCert(t *testing.T, cn string, uris ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: []string{"Acme"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestIntrospectionTLSClientAuth checks RFC 8705 tls_client_auth: a
// certificate from tls.client_ca_file whose subject DN or URI SAN matches
// the client named by client_id.
func TestIntrospectionTLSClientAuth(t *testing.T) {
	e := newTestEnv(t)
	ca := serveTLS(t, e, "verify_if_given")
	e.Config.Introspection.Clients = append(e.Config.Introspection.Clients,
		broker.IntrospectionClientConfig{ClientID: "mtls-api", AuthMethod: broker.AuthTLSClientAuth, TLSClientAuthSubjectDN: "CN=mtls-api,O=Acme"},
		broker.IntrospectionClientConfig{ClientID: "spiffe-api", AuthMethod: broker.AuthTLSClientAuth, TLSClientAuthSANURI: "spiffe://example.org/rs"},
	)
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	e.Start()
	e.URL = "https://" + e.Server.Addr()
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}, Timeout: 10 * time.Second}
	}
	// Mint over TLS, without a client certificate (verify_if_given).
	req, _ := http.NewRequest("POST", e.URL+"/v1/credentials", strings.NewReader(`{"role":"demo"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.Attest("agent-1", nil))
	resp, err := client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var minted struct {
		Credential map[string]any `json:"credential"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&minted); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("mint over TLS: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	tok := accessToken(t, minted.Credential)

	mtls := ca.issueClientCert(t, "mtls-api")
	spiffe := ca.issueClientCert(t, "workload", "spiffe://example.org/rs")
	foreign := newTestCA(t).issueClientCert(t, "mtls-api")
	cases := []struct {
		name   string
		certs  []tls.Certificate
		form   url.Values
		header map[string]string
		status int
		active bool
	}{
		{"subject DN", []tls.Certificate{mtls}, url.Values{"token": {tok}, "client_id": {"mtls-api"}}, nil, 200, true},
		{"URI SAN", []tls.Certificate{spiffe}, url.Values{"token": {tok}, "client_id": {"spiffe-api"}}, nil, 200, true},
		{"certificate of another client", []tls.Certificate{spiffe}, url.Values{"token": {tok}, "client_id": {"mtls-api"}}, nil, 401, false},
		{"certificate for a secret client", []tls.Certificate{mtls}, url.Values{"token": {tok}, "client_id": {"demo-api"}}, nil, 401, false},
		{"no certificate", nil, url.Values{"token": {tok}, "client_id": {"mtls-api"}}, nil, 401, false},
		{"certificate without client_id", []tls.Certificate{mtls}, url.Values{"token": {tok}}, nil, 401, false},
		{"basic alongside a certificate", []tls.Certificate{mtls}, url.Values{"token": {tok}}, map[string]string{"Authorization": basicAuth("demo-api", rsSecret("demo-api"))}, 200, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.URL+"/v1/introspect", strings.NewReader(c.form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			resp, err := client(c.certs...).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			r := response{Status: resp.StatusCode, Header: resp.Header, Body: b}
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, b)
			}
			if c.status != 200 {
				assertOAuthError(t, r, "invalid_client")
				return
			}
			if m := r.JSON(t); m["active"] != c.active {
				t.Fatalf("answer %v, want active %v", m, c.active)
			}
		})
	}
	// A certificate from another CA does not even complete the handshake.
	req, _ = http.NewRequest("POST", e.URL+"/v1/introspect", strings.NewReader(url.Values{"token": {tok}, "client_id": {"mtls-api"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := client(foreign).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a certificate of a foreign CA got %d", resp.StatusCode)
	}
}

// TestDevIntrospection runs the dev configuration and follows the banner's
// introspection instructions: the curl line's client and secret work, and
// an anonymous call does not.
func TestDevIntrospection(t *testing.T) {
	t.Setenv("VALET_KEK", "")
	dir := filepath.Join(t.TempDir(), "dev")
	cfg, opTok, err := prepareDev(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, devResourceServerSecret)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, want mode 0600", devResourceServerSecret, err)
	}
	kek, err := loadKEK(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Config: cfg, KEK: kek, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var banner bytes.Buffer
	printDevBanner(&banner, s, cfg, opTok, dir, "")
	m := regexp.MustCompile(`curl -s -u ([^:\s]+):(\S+) -d token=\$TOKEN (\S+)/v1/introspect`).FindStringSubmatch(banner.String())
	if m == nil {
		t.Fatalf("the banner shows no introspection call:\n%s", banner.String())
	}
	id, secret, base := m[1], m[2], m[3]

	iss, err := attest.LoadOrCreateDevIssuer(dir, devIssuer)
	if err != nil {
		t.Fatal(err)
	}
	att, err := iss.Sign(map[string]any{"sub": "my-agent", "aud": devAudience})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, URL: base}
	tok := accessToken(t, e.Mint(att, "demo")["credential"].(map[string]any))
	form := url.Values{"token": {tok}}.Encode()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	if r := e.raw("POST", "/v1/introspect", h, strings.NewReader(form)); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous introspection on valet dev: %d %s", r.Status, r.Body)
	}
	h["Authorization"] = "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
	r := e.raw("POST", "/v1/introspect", h, strings.NewReader(form))
	if r.Status != http.StatusOK || r.JSON(t)["active"] != true {
		t.Fatalf("introspection as the banner says: %d %s", r.Status, r.Body)
	}
}
