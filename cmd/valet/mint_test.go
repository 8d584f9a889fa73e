package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// introspect asks POST /v1/introspect about token as the resource server
// demo-api (client_secret_basic).
func introspect(t *testing.T, e *testEnv, token string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("POST", e.URL+"/v1/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("demo-api", rsSecret("demo-api"))
	r := e.send(req)
	if r.Status != http.StatusOK {
		t.Fatalf("introspect: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)
}

func TestMintReleaseIntrospect(t *testing.T) {
	e := newTestEnv(t).Start()
	tok := e.Attest("agent-1", nil)
	res := e.Mint(tok, "demo")
	id := res["lease_id"].(string)
	access := res["credential"].(map[string]any)["access_token"].(string)
	if got := e.LeaseCounts(); got["active"] != 1 || len(got) != 1 {
		t.Fatalf("lease counts after mint = %v, want one active", got)
	}
	if in := introspect(t, e, access); in["active"] != true || in["jti"] != id || in["sub"] != "test/agent-1" {
		t.Fatalf("introspection of a fresh token = %v", in)
	}
	r := e.Do("DELETE", "/v1/leases/"+id, e.Attest("agent-1", nil), nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "released" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	if in := introspect(t, e, access); in["active"] != false || len(in) != 1 {
		t.Fatalf("introspection after release = %v, want only active:false", in)
	}
}
