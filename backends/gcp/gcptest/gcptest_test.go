package gcptest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/api/googleapi"
	iamcredentials "google.golang.org/api/iamcredentials/v1"
	"google.golang.org/api/option"

	"github.com/valet-broker/valet/backends/gcp/gcptest"
)

// fakeNow is a settable clock for the server.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeNow) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeNow) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// service is the real IAM Credentials client on the server, with valet's
// identity from Application Default Credentials (the server's key file).
func service(t *testing.T, srv *gcptest.Server, opts ...option.ClientOption) *iamcredentials.Service {
	t.Helper()
	svc, err := iamcredentials.NewService(context.Background(), append([]option.ClientOption{option.WithEndpoint(srv.URL + "/")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func name(email string) string { return "projects/-/serviceAccounts/" + email }

// googleStatus returns the HTTP code and the google.rpc status name of an
// error answer, as the client library received them.
func googleStatus(t *testing.T, err error) (int, string) {
	t.Helper()
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		t.Fatalf("error %v is not a Google API error", err)
	}
	var body struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(ge.Body), &body) != nil || body.Error.Code != ge.Code || body.Error.Message == "" {
		t.Fatalf("error body %q is not Google's JSON error shape", ge.Body)
	}
	return ge.Code, body.Error.Status
}

// TestGenerateAccessToken: the server answers generateAccessToken as
// Google documents it, through the real client and ADC, and refuses what
// Google refuses with its codes.
func TestGenerateAccessToken(t *testing.T) {
	clk := &fakeNow{t: time.Now()}
	srv := gcptest.Start(t, gcptest.Config{Now: clk.now})
	srv.SetEnv(t)
	agent := srv.CreateServiceAccount("agent", gcptest.ServiceAccountOptions{})
	long := srv.CreateServiceAccount("long-lived", gcptest.ServiceAccountOptions{ExtendedLifetime: true})
	relay := srv.CreateServiceAccount("relay", gcptest.ServiceAccountOptions{})
	behind := srv.CreateServiceAccount("behind-relay", gcptest.ServiceAccountOptions{TokenCreators: []string{relay}})
	other := srv.CreateServiceAccount("other", gcptest.ServiceAccountOptions{TokenCreators: []string{}})
	svc := service(t, srv)
	cloud := []string{gcptest.CloudPlatformScope}
	cases := []struct {
		name     string
		account  string // name of the request
		req      iamcredentials.GenerateAccessTokenRequest
		svc      *iamcredentials.Service
		lifetime time.Duration // of the token issued
		code     int
		status   string
	}{
		{name: "default lifetime", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud}, lifetime: time.Hour},
		{name: "short lifetime", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "90s"}, lifetime: 90 * time.Second},
		{name: "by unique id", account: name(srv.UniqueID(agent)), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "60s"}, lifetime: time.Minute},
		{name: "an hour is the most", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "3601s"}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "twelve hours with the organization policy", account: name(long), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "43200s"}, lifetime: 12 * time.Hour},
		{name: "not more even with it", account: name(long), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "43201s"}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "zero lifetime", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "0s"}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "lifetime not in seconds", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "1h"}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "no scope", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "not a scope", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: []string{"cloud-platform"}}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "a project instead of the wildcard", account: "projects/p/serviceAccounts/" + agent, req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "unknown account", account: name("nobody@valet-test.iam.gserviceaccount.com"), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud}, code: 404, status: "NOT_FOUND"},
		{name: "not a token creator", account: name(other), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud}, code: 403, status: "PERMISSION_DENIED"},
		{name: "through a delegate", account: name(behind), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Delegates: []string{name(relay)}}, lifetime: time.Hour},
		{name: "without the delegate", account: name(behind), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud}, code: 403, status: "PERMISSION_DENIED"},
		{name: "a malformed delegate", account: name(behind), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Delegates: []string{relay}}, code: 400, status: "INVALID_ARGUMENT"},
		{name: "no bearer token", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud},
			svc: service(t, srv, option.WithoutAuthentication()), code: 401, status: "UNAUTHENTICATED"},
		{name: "a bearer token without the cloud-platform scope", account: name(agent), req: iamcredentials.GenerateAccessTokenRequest{Scope: cloud},
			svc: service(t, srv, option.WithScopes("https://www.googleapis.com/auth/userinfo.email")), code: 403, status: "PERMISSION_DENIED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := svc
			if c.svc != nil {
				s = c.svc
			}
			resp, err := s.Projects.ServiceAccounts.GenerateAccessToken(c.account, &c.req).Do()
			if c.code != 0 {
				if code, status := googleStatus(t, err); code != c.code || status != c.status {
					t.Fatalf("answer %d %s (%v); want %d %s", code, status, err, c.code, c.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			exp, err := time.Parse(time.RFC3339, resp.ExpireTime)
			if want := clk.now().Add(c.lifetime).Truncate(time.Second); err != nil || !exp.Equal(want) || !strings.HasPrefix(resp.AccessToken, "ya29.") {
				t.Fatalf("answer %+v; want a token expiring at %s", resp, want)
			}
			info, err := gcptest.TokenInfo(srv.URL, resp.AccessToken)
			if err != nil || info["scope"] != gcptest.CloudPlatformScope || !strings.HasSuffix(info["email"], ".iam.gserviceaccount.com") {
				t.Fatalf("tokeninfo %v, %v", info, err)
			}
		})
	}

	// Nothing revokes a token: it works until its expiry, and not after.
	resp, err := svc.Projects.ServiceAccounts.GenerateAccessToken(name(agent), &iamcredentials.GenerateAccessTokenRequest{Scope: cloud, Lifetime: "120s"}).Do()
	if err != nil {
		t.Fatal(err)
	}
	clk.add(119 * time.Second)
	if _, err := gcptest.TokenInfo(srv.URL, resp.AccessToken); err != nil {
		t.Fatalf("a second before its expiry: %v", err)
	}
	clk.add(time.Second)
	if _, err := gcptest.TokenInfo(srv.URL, resp.AccessToken); !errors.Is(err, gcptest.ErrInvalidToken) {
		t.Fatalf("at its expiry the token is still valid (%v)", err)
	}
}

// TestGenerateIDToken: an ID token for an audience, signed with the key of
// the server's JWKS, living one hour.
func TestGenerateIDToken(t *testing.T) {
	srv := gcptest.Start(t, gcptest.Config{})
	srv.SetEnv(t)
	agent := srv.CreateServiceAccount("agent", gcptest.ServiceAccountOptions{})
	svc := service(t, srv)
	resp, err := svc.Projects.ServiceAccounts.GenerateIdToken(name(agent), &iamcredentials.GenerateIdTokenRequest{Audience: "https://api.example.com", IncludeEmail: true}).Do()
	if err != nil {
		t.Fatal(err)
	}
	claims, err := srv.IDTokenClaims(resp.Token)
	if err != nil {
		t.Fatal(err)
	}
	iat, _ := claims["iat"].(time.Time)
	exp, _ := claims["exp"].(time.Time)
	if aud, _ := claims["aud"].([]string); len(aud) != 1 || aud[0] != "https://api.example.com" || claims["email"] != agent || claims["sub"] != srv.UniqueID(agent) || exp.Sub(iat) != time.Hour {
		t.Fatalf("claims %v", claims)
	}
	if info, err := gcptest.TokenInfo(srv.URL, resp.Token); err != nil || info["aud"] != "https://api.example.com" {
		t.Fatalf("tokeninfo %v, %v", info, err)
	}
	_, err = svc.Projects.ServiceAccounts.GenerateIdToken(name(agent), &iamcredentials.GenerateIdTokenRequest{}).Do()
	if code, status := googleStatus(t, err); code != 400 || status != "INVALID_ARGUMENT" {
		t.Fatalf("without an audience: %d %s", code, status)
	}
}

// TestRawRequests: what the client library never sends is still refused
// as Google refuses it, in Google's JSON error shape.
func TestRawRequests(t *testing.T) {
	srv := gcptest.Start(t, gcptest.Config{})
	srv.SetEnv(t)
	agent := srv.CreateServiceAccount("agent", gcptest.ServiceAccountOptions{})
	// A bearer token of valet's own, through the token endpoint.
	tok, err := service(t, srv).Projects.ServiceAccounts.GenerateAccessToken(name(srv.CallerEmail), &iamcredentials.GenerateAccessTokenRequest{Scope: []string{gcptest.CloudPlatformScope}}).Do()
	if code, _ := googleStatus(t, err); tok != nil || code != 403 {
		t.Fatalf("valet may not impersonate itself: %v %v", tok, err)
	}
	cases := []struct {
		name, path, body, bearer string
		code                     int
		says                     string
	}{
		{name: "an unknown field", path: "/v1/" + name(agent) + ":generateAccessToken", body: `{"scope":["` + gcptest.CloudPlatformScope + `"],"lifetme":"60s"}`,
			code: 400, says: `Unknown name \"lifetme\"`},
		{name: "not JSON", path: "/v1/" + name(agent) + ":generateAccessToken", body: `scope=x`, code: 400, says: "Invalid JSON payload"},
		{name: "an unknown method", path: "/v1/" + name(agent) + ":signJwt", body: `{}`, code: 404, says: "was not found"},
		{name: "a made-up bearer token", path: "/v1/" + name(agent) + ":generateAccessToken", body: `{}`, bearer: "ya29.made-up", code: 401, says: "invalid authentication credentials"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bearer := c.bearer
			if bearer == "" {
				bearer = ownToken(t, srv)
			}
			req, _ := http.NewRequest("POST", srv.URL+c.path, strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+bearer)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var e struct {
				Error struct {
					Code   int    `json:"code"`
					Status string `json:"status"`
				} `json:"error"`
			}
			if resp.StatusCode != c.code || json.Unmarshal(b, &e) != nil || e.Error.Code != c.code || e.Error.Status == "" || !strings.Contains(string(b), c.says) {
				t.Fatalf("answer %d %s; want %d saying %q", resp.StatusCode, b, c.code, c.says)
			}
		})
	}
}

// ownToken is valet's own bearer token, as ADC gets it from the key file
// (through the server's token endpoint).
func ownToken(t *testing.T, srv *gcptest.Server) string {
	t.Helper()
	n := len(srv.Tokens(srv.CallerEmail))
	// Any authenticated call makes the client fetch its token.
	service(t, srv).Projects.ServiceAccounts.GenerateAccessToken(name("x@y.iam.gserviceaccount.com"), &iamcredentials.GenerateAccessTokenRequest{Scope: []string{gcptest.CloudPlatformScope}}).Do()
	toks := srv.Tokens(srv.CallerEmail)
	if len(toks) <= n {
		t.Fatal("the client fetched no token from the token endpoint")
	}
	return toks[len(toks)-1].Token
}

// TestInjectedFailures: Fail makes a method answer Google's error for the
// status, until cleared.
func TestInjectedFailures(t *testing.T) {
	srv := gcptest.Start(t, gcptest.Config{})
	srv.SetEnv(t)
	agent := srv.CreateServiceAccount("agent", gcptest.ServiceAccountOptions{})
	svc := service(t, srv)
	req := &iamcredentials.GenerateAccessTokenRequest{Scope: []string{gcptest.CloudPlatformScope}}
	srv.Fail("generateAccessToken", 429)
	_, err := svc.Projects.ServiceAccounts.GenerateAccessToken(name(agent), req).Do()
	if code, status := googleStatus(t, err); code != 429 || status != "RESOURCE_EXHAUSTED" {
		t.Fatalf("answer %d %s", code, status)
	}
	srv.Fail("generateAccessToken", 0)
	if _, err := svc.Projects.ServiceAccounts.GenerateAccessToken(name(agent), req).Do(); err != nil {
		t.Fatalf("after clearing the failure: %v", err)
	}
	if n := srv.Calls("generateAccessToken"); n != 2 {
		t.Fatalf("calls %d, want 2", n)
	}
}
