package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// fuzzBodyLimit stands in for limits.max_body_bytes.
const fuzzBodyLimit = 4096

// newBodyRequest is a request as handlers see it: the body bounded the way
// withLimits bounds it.
func newBodyRequest(contentType string, body []byte) *http.Request {
	r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	(&Server{limits: broker.LimitsConfig{MaxBodyBytes: fuzzBodyLimit}}).withLimits(http.HandlerFunc(func(_ http.ResponseWriter, req *http.Request) {
		r = req
	})).ServeHTTP(rec, r)
	return r
}

// clientError fails unless err is a client error: EINVALID or ETOOLARGE,
// with a message. Malformed input must never look like a server fault.
func clientError(t *testing.T, err error) {
	t.Helper()
	var be *broker.Error
	if !errors.As(err, &be) || (be.Code != broker.EINVALID && be.Code != broker.ETOOLARGE) || be.Message == "" {
		t.Fatalf("error %v (%T) is not an EINVALID or ETOOLARGE *broker.Error", err, err)
	}
}

func FuzzDecodeCredentialRequest(f *testing.F) {
	for _, s := range []string{
		`{"role":"demo"}`,
		`{"role":"demo","ttl":"90s","reason":"nightly report","scope":{"scopes":["read"],"audience":["demo-api"]}}`,
		`{"role":"demo","ttl":90}`,
		`{"role":"demo","ttl":1e3}`,
		`{"role":"demo","ttl":-0}`,
		`{"role":"demo","ttl":null}`,
		`{"role":"demo","ttl":"8760h"}`,
		`{"role":"demo","ttl":31536000}`,
		`{"role":"demo","ttl":"9223372036854775807ns"}`,
		`{"role":"demo","reason":"a\u0000b"}`,
		`{"role":"demo","reason":"\ud800"}`,
		`{"ROLE":"demo"}`,
		`{"role":"demo","ROLE":"demo-elevated"}`,
		`{"role":"demo","role":"demo-elevated"}`,
		"{\"role\":\"demo\",\"reason\":\"ok\xff\"}",
		`{"role":"x\n2026-11-29 FAKE mint allow\u001b[2J"}`,
		`{"role":"demo"} {"role":"demo"}`,
		`{"role":"demo","scope":{"a":{"b":{"c":[1,2,{"d":null}]}}}}`,
		`[{"role":"demo"}]`,
		`null`,
		``,
		`{"role":"` + strings.Repeat("r", 70) + `"}`,
		`{"role":"demo","reason":"` + strings.Repeat("x", fuzzBodyLimit) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req credentialRequest
		err := decodeJSON(newBodyRequest("application/json", body), &req)
		if err != nil {
			clientError(t, err)
			return
		}
		if !broker.ValidName(req.Role) {
			t.Fatalf("accepted role %q", req.Role)
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted a body that is not UTF-8: %q", body)
		}
		if verr := req.Validate(); verr != nil {
			t.Fatalf("accepted a request that does not validate: %v", verr)
		}
		if req.TTL != nil && (req.TTL.D() < time.Second || req.TTL.D() > config.MaxDuration) {
			t.Fatalf("accepted ttl %v", req.TTL.D())
		}
		for _, c := range req.Reason {
			if unicode.IsControl(c) {
				t.Fatalf("accepted a reason with control character %U", c)
			}
		}
		if len(req.Scope) > 16 {
			t.Fatalf("accepted %d scope keys", len(req.Scope))
		}
	})
}

func FuzzParseTokenExchange(f *testing.F) {
	base := url.Values{
		"grant_type":         {grantTokenExchange},
		"subject_token":      {"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"},
		"subject_token_type": {tokenTypeJWT},
		"resource":           {"demo"},
	}
	f.Add(base.Encode())
	for _, change := range []func(url.Values){
		func(v url.Values) { v.Set("scope", "read write") },
		func(v url.Values) { v.Del("resource"); v.Set("audience", "demo") },
		func(v url.Values) { v.Set("audience", "demo") },
		func(v url.Values) { v.Set("grant_type", "client_credentials") },
		func(v url.Values) { v.Del("subject_token") },
		func(v url.Values) { v.Add("subject_token", "x") },
		func(v url.Values) { v.Set("subject_token_type", tokenTypeIDToken) },
		func(v url.Values) { v.Set("subject_token_type", "urn:x") },
		func(v url.Values) { v.Set("actor_token", "x") },
		func(v url.Values) { v.Set("requested_token_type", tokenTypeJWT) },
		func(v url.Values) { v.Set("requested_token_type", "urn:x") },
		func(v url.Values) { v.Set("subject_token", strings.Repeat("a", 2000)) },
		func(v url.Values) { v.Set("resource", strings.Repeat("r", 64)) },
	} {
		v := url.Values{}
		for k, vs := range base {
			v[k] = append([]string(nil), vs...)
		}
		change(v)
		f.Add(v.Encode())
	}
	f.Add("grant_type=%zz")
	f.Add("a=1;b=2")
	f.Add("")
	f.Add(strings.Repeat("a=b&", fuzzBodyLimit))
	f.Fuzz(func(t *testing.T, body string) {
		const maxToken = 1024
		req, oe := parseTokenExchange(newBodyRequest("application/x-www-form-urlencoded", []byte(body)), fuzzBodyLimit, maxToken)
		if oe != nil {
			switch oe.Error {
			case "invalid_request", "unsupported_grant_type", "invalid_target", "invalid_scope", "invalid_client":
			default:
				t.Fatalf("error %q is not one parseTokenExchange may give", oe.Error)
			}
			if oe.status < 400 || oe.status > 499 || oe.Description == "" {
				t.Fatalf("error %+v: want a 4xx status and a description", oe)
			}
			if _, err := json.Marshal(oe); err != nil {
				t.Fatal(err)
			}
			return
		}
		if req == nil {
			t.Fatal("neither a request nor an error")
		}
		if req.SubjectToken == "" || len(req.SubjectToken) > maxToken {
			t.Fatalf("accepted subject_token of %d bytes", len(req.SubjectToken))
		}
		if err := validateRoleName(req.Role); err != nil {
			t.Fatalf("accepted role %q: %v", req.Role, err)
		}
		switch req.RequestedTokenType {
		case "", tokenTypeAccessToken, tokenTypeJWT:
		default:
			t.Fatalf("accepted requested_token_type %q", req.RequestedTokenType)
		}
		for _, s := range req.Scopes {
			if !validScopeToken(s) {
				t.Fatalf("scope list %q holds an empty or blank entry", req.Scopes)
			}
		}
	})
}

func FuzzIntrospectionRequest(f *testing.F) {
	f.Add("Basic ZGVtby1hcGk6c2VjcmV0", "token=abc")
	f.Add("", "token=abc&client_id=demo-api&client_secret=s")
	f.Add("", "token=abc&client_assertion_type="+url.QueryEscape(broker.ClientAssertionType)+"&client_assertion=a.b.c")
	f.Add("Basic %%%", "token=abc")
	f.Add("Basic "+base64.StdEncoding.EncodeToString([]byte("a%zz:b")), "token=abc")
	f.Add("Bearer x", "token=abc")
	f.Add("Basic ZGVtby1hcGk6c2VjcmV0", "token=abc&client_secret=s&client_id=x")
	f.Add("", "token=a&token=b")
	f.Add("", "client_assertion=x")
	f.Fuzz(func(t *testing.T, auth, body string) {
		r := newBodyRequest("application/x-www-form-urlencoded", []byte(body))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		form, oe := parseForm(r, fuzzBodyLimit)
		if oe == nil {
			var cc broker.ClientCredentials
			cc, oe = clientCredentials(r, form)
			if oe == nil {
				switch cc.Method {
				case "", broker.AuthClientSecretBasic, broker.AuthClientSecretPost, broker.AuthPrivateKeyJWT:
				default:
					t.Fatalf("method %q from a plain HTTP request", cc.Method)
				}
				if cc.Method == broker.AuthClientSecretPost && cc.ClientID == "" {
					t.Fatal("client_secret_post without a client_id")
				}
				return
			}
		}
		switch {
		case oe.Error == "invalid_request" && (oe.status == 400 || oe.status == 413):
		case oe.Error == "invalid_client" && oe.status == 401:
		default:
			t.Fatalf("error %+v: want invalid_request (400, 413) or invalid_client (401)", oe)
		}
		if oe.Description == "" {
			t.Fatal("no description")
		}
	})
}
