package api

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
)

// TestCredentialResponseJSON: the mint's body is what encoding/json's
// Encoder wrote before appendJSON (the same bytes, newline included), with
// every shape of credential a backend returns.
func TestCredentialResponseJSON(t *testing.T) {
	exp := time.Date(2026, 11, 30, 1, 2, 3, 456000000, time.FixedZone("x", 3600))
	for _, res := range []*broker.MintResult{
		{Lease: &leases.Lease{ID: "l1", Role: "reader", AgentID: "agent<&>\u2028", ExpiresAt: exp, Renewable: true},
			Credential: map[string]any{"access_token": "eyJ.a.b", "token_type": "Bearer", "expires_at": "2026-11-30T01:02:03Z", "scope": "r w"}},
		{Lease: &leases.Lease{ID: "l2", Role: "db", AgentID: "a\xff", ExpiresAt: exp},
			Credential: map[string]any{"username": "v-token-x", "password": "p\"\\\n", "lease_duration": 300, "ttl": 1.5, "renewable": false,
				"policies": []string{"a", "b"}, "nested": map[string]any{"z": nil, "a": []any{1, "<"}}}},
		{Lease: &leases.Lease{ID: "l3", Role: "r", AgentID: "a", ExpiresAt: exp}, Grant: &grants.Grant{ID: "g1"}},
		{Lease: &leases.Lease{ID: "l4", Role: "r", AgentID: "a", ExpiresAt: exp}, Credential: map[string]any{}},
	} {
		rec := httptest.NewRecorder()
		(&Server{}).writeCredential(rec, httptest.NewRequest("POST", "/v1/credentials", nil), res)
		out := credentialResponse{LeaseID: res.Lease.ID, Role: res.Lease.Role, AgentID: res.Lease.AgentID,
			ExpiresAt: res.Lease.ExpiresAt.UTC(), Renewable: res.Lease.Renewable, Credential: res.Credential}
		if res.Grant != nil {
			out.GrantID = res.Grant.ID
		}
		want, err := json.Marshal(out)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusCreated || rec.Body.String() != string(want)+"\n" {
			t.Fatalf("%d %s\nwant 201 %s", rec.Code, rec.Body, want)
		}
		for k, v := range map[string]string{"Location": "/v1/leases/" + res.Lease.ID, "Content-Type": "application/json", "Cache-Control": "no-store"} {
			if got := rec.Header().Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
	}
}

// TestCredentialThatCannotBeEncoded: a credential encoding/json refuses is
// a 500 problem naming the lease, not a 201 with a cut body.
func TestCredentialThatCannotBeEncoded(t *testing.T) {
	rec := httptest.NewRecorder()
	res := &broker.MintResult{Lease: &leases.Lease{ID: "l9", ExpiresAt: time.Now()},
		Credential: map[string]any{"password": "s3cr3t-value", "ttl": math.Inf(1)}}
	var logs bytes.Buffer
	srv := &Server{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	srv.writeCredential(rec, httptest.NewRequest("POST", "/v1/credentials", nil), res)
	if !strings.Contains(logs.String(), "l9") || !strings.Contains(logs.String(), `\"ttl\" (float64)`) {
		t.Errorf("the error log does not name the lease and the value that failed: %s", logs.String())
	}
	for _, secret := range []string{"s3cr3t-value", "Inf"} {
		if strings.Contains(logs.String()+rec.Body.String(), secret) {
			t.Errorf("a credential's value (%s) reached the log or the answer: %s %s", secret, logs.String(), rec.Body)
		}
	}
	if rec.Code != http.StatusInternalServerError || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if rec.Header().Get("Location") != "" {
		t.Errorf("Location %q on a failed answer", rec.Header().Get("Location"))
	}
}

// TestCredentialResponseAppendJSONCoversEveryField: appendJSON writes
// every field of credentialResponse as encoding/json does, each set and
// unset, found by reflection, so a field added to the response (and set
// by writeCredential) but not to appendJSON fails here rather than
// vanishing from the 201 body. TestCredentialResponseJSON builds its
// expected response field by field and cannot see such a field.
func TestCredentialResponseAppendJSONCoversEveryField(t *testing.T) {
	typ := reflect.TypeFor[credentialResponse]()
	for set := range 1 << typ.NumField() {
		var c credentialResponse
		v := reflect.ValueOf(&c).Elem()
		for i := range typ.NumField() {
			if set&(1<<i) == 0 {
				continue
			}
			switch f := v.Field(i); {
			case f.Type() == reflect.TypeFor[time.Time]():
				f.Set(reflect.ValueOf(time.Date(2026, 11, 30, 1, 2, 3, 4, time.FixedZone("x", 3600))))
			case f.Kind() == reflect.String:
				f.SetString("<" + typ.Field(i).Name + "\u2028>")
			case f.Kind() == reflect.Bool:
				f.SetBool(true)
			case f.Type() == reflect.TypeFor[map[string]any]():
				f.Set(reflect.ValueOf(map[string]any{"token": "t&k", "ttl": 300, "list": []any{"a", nil}}))
			default:
				t.Fatalf("credentialResponse.%s is a %s: teach this test and appendJSON about it", typ.Field(i).Name, f.Type())
			}
		}
		want, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := c.appendJSON(nil); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("fields %b set:\n got %s, %v\nwant %s", set, got, err, want)
		}
	}
}
