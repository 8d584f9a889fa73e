package main

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// This file tests how the API reads its input: every JSON body by the same
// strict rules (no case-variant, duplicate or unknown keys, valid UTF-8),
// every query parameter at most once and known, enumerated values exactly,
// and names checked against their syntax before anything stores them.

// grantsOf lists the grants of agent (all states) through the API.
func grantsOf(t *testing.T, e *testEnv, agent string) []map[string]any {
	t.Helper()
	r := e.Do("GET", "/v1/grants?agent_id="+url.QueryEscape(agent), testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("list grants: %d %s", r.Status, r.Body)
	}
	var out struct {
		Grants []map[string]any `json:"grants"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Grants
}

func TestJSONBodiesAreStrict(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("strict-agent", nil)
	lease := e.mint(t, "strict-agent", map[string]any{"role": "demo"})
	grant := requestGrant(t, e, e.Attest("strict-requester", nil), "elevated", "needs it")

	type endpoint struct {
		name, method, path, bearer string
	}
	credentials := endpoint{"credentials", "POST", "/v1/credentials", agent}
	renew := endpoint{"renew", "POST", "/v1/leases/" + lease.LeaseID + "/renew", agent}
	revoke := endpoint{"revoke matching", "POST", "/v1/leases/revoke", testOperatorToken}
	approve := endpoint{"approve", "POST", "/v1/grants/" + grant + "/approve", testOperatorToken}
	deny := endpoint{"deny", "POST", "/v1/grants/" + grant + "/deny", testOperatorToken}
	cases := []struct {
		ep   endpoint
		name string
		body string
		// detail holds parts the problem's detail must contain.
		detail []string
	}{
		{credentials, "case-variant key", `{"role":"demo","ROLE":"elevated"}`, []string{`unknown key "ROLE"`, `did you mean "role"?`}},
		{credentials, "case-variant key alone", `{"Role":"elevated","reason":"x"}`, []string{`unknown key "Role"`}},
		{credentials, "duplicate key", `{"role":"elevated","role":"demo"}`, []string{`duplicate key "role" at byte 19`}},
		{credentials, "duplicate key in scope", `{"role":"demo","scope":{"scopes":["read"],"scopes":["write"]}}`, []string{`duplicate key "scopes" in "scope"`}},
		{credentials, "unknown key", `{"role":"demo","admin":true}`, []string{`unknown key "admin"`, "role, ttl, reason, scope, break_glass"}},
		{credentials, "invalid UTF-8 in reason", "{\"role\":\"demo\",\"reason\":\"ok\xff\"}", []string{"invalid UTF-8 at byte 27"}},
		{credentials, "lone surrogate in reason", `{"role":"demo","reason":"\udc00"}`, []string{`"reason"`, "surrogate"}},
		{credentials, "role of the wrong type", `{"role":7}`, []string{`key "role" at byte 8 must be a string, not a number`}},
		{credentials, "ttl garbage", `{"role":"demo","ttl":"soon"}`, []string{`key "ttl"`, "invalid duration"}},
		{credentials, "trailing data", `{"role":"demo"} x`, []string{"data after the JSON object at byte 16"}},
		{credentials, "not an object", `["demo"]`, []string{"must be an object, not an array"}},
		{renew, "case-variant key", `{"ttl":"2m","TTL":"59m"}`, []string{`unknown key "TTL"`}},
		{renew, "duplicate key", `{"ttl":"59m","ttl":"2m"}`, []string{`duplicate key "ttl"`}},
		{revoke, "case-variant key", `{"agent_id":"test/nobody","AGENT_ID":"test/strict-agent"}`, []string{`unknown key "AGENT_ID"`}},
		{revoke, "duplicate key", `{"agent_id":"test/strict-agent","agent_id":"test/nobody"}`, []string{`duplicate key "agent_id"`}},
		{revoke, "invalid UTF-8 in reason", "{\"agent_id\":\"test/strict-agent\",\"reason\":\"\xc3\"}", []string{"invalid UTF-8 at byte"}},
		{approve, "case-variant key", `{"comment":"ok","Comment":"x"}`, []string{`unknown key "Comment"`}},
		{approve, "invalid UTF-8 in comment", "{\"comment\":\"ok\xff\"}", []string{"invalid UTF-8 at byte 14"}},
		{deny, "duplicate key", `{"comment":"a","comment":"b"}`, []string{`duplicate key "comment"`}},
	}
	for _, tc := range cases {
		t.Run(tc.ep.name+" "+tc.name, func(t *testing.T) {
			r := e.raw(tc.ep.method, tc.ep.path, map[string]string{"Authorization": "Bearer " + tc.ep.bearer, "Content-Type": "application/json"},
				strings.NewReader(tc.body))
			p := assertProblem(t, r, http.StatusBadRequest)
			for _, d := range tc.detail {
				if !strings.Contains(p.Detail, d) {
					t.Errorf("detail %q does not contain %q", p.Detail, d)
				}
			}
		})
	}
	// Nothing changed: no grant for the agent that tried the case variant,
	// the lease was neither renewed nor revoked, the grant is undecided.
	if gs := grantsOf(t, e, "test/strict-agent"); len(gs) != 0 {
		t.Errorf("refused requests left grants %v", gs)
	}
	l := decode[leaseJSON](t, e.Do("GET", "/v1/leases/"+lease.LeaseID, testOperatorToken, nil))
	if l.State != "active" || l.RenewCount != 0 {
		t.Errorf("lease after refused requests: %+v, want active and never renewed", l)
	}
	g := e.Do("GET", "/v1/grants/"+grant, testOperatorToken, nil).JSON(t)
	if g["state"] != "pending" || len(g["approvals"].([]any)) != 0 {
		t.Errorf("grant after refused decisions: %v, want pending without approvals", g)
	}
}

func TestQueryParametersAreStrict(t *testing.T) {
	e := newTestEnv(t).Start()
	lease := e.mint(t, "query-agent", map[string]any{"role": "demo"})
	grant := requestGrant(t, e, e.Attest("query-requester", nil), "elevated", "needs it")
	cases := []struct {
		name, method, path string
		detail             []string
	}{
		{"leases: repeated state", "GET", "/v1/leases?state=active&state=revoked", []string{`"state" is given 2 times`}},
		{"leases: repeated agent", "GET", "/v1/leases?agent_id=test/a&agent_id=test/query-agent", []string{`"agent_id" is given 2 times`}},
		{"leases: unknown parameter", "GET", "/v1/leases?agent=test/query-agent", []string{`unknown query parameter "agent"`, "agent_id"}},
		{"leases: state in upper case", "GET", "/v1/leases?state=Active", []string{`state "Active" is not one of`, `did you mean "active"?`}},
		{"leases: role not a role name", "GET", "/v1/leases?role=Demo", []string{"role must be"}},
		{"leases: backend not a backend name", "GET", "/v1/leases?backend=" + url.QueryEscape("x\ny"), []string{"backend must be"}},
		{"leases: agent with a control character", "GET", "/v1/leases?agent_id=" + url.QueryEscape("test/a\x00b"), []string{"agent_id", "control characters"}},
		{"leases: lineage of no kind", "GET", "/v1/leases?lineage=J1", []string{"lineage must start with jti:, pod:, run: or spiffe:"}},
		{"leases: invalid UTF-8", "GET", "/v1/leases?agent_id=test/%FF", []string{"invalid UTF-8"}},
		{"leases: malformed query", "GET", "/v1/leases?agent_id=%zz", []string{"malformed query"}},
		{"lease delete: repeated reason", "DELETE", "/v1/leases/" + lease.LeaseID + "?reason=a&reason=b", []string{`"reason" is given 2 times`}},
		{"lease delete: unknown parameter", "DELETE", "/v1/leases/" + lease.LeaseID + "?why=x", []string{`unknown query parameter "why"`}},
		{"grants: repeated state", "GET", "/v1/grants?state=pending&state=approved", []string{`"state" is given 2 times`}},
		{"grants: kind in upper case", "GET", "/v1/grants?kind=APPROVAL", []string{`kind "APPROVAL" is not one of approval, break_glass`, `did you mean "approval"?`}},
		{"grants: unknown kind", "GET", "/v1/grants?kind=other", []string{`kind "other" is not one of approval, break_glass`}},
		{"grants: review in upper case", "GET", "/v1/grants?review=PENDING", []string{`review "PENDING" is not one of pending`}},
		{"grants: bad cursor", "GET", "/v1/grants?before=x", []string{"before must be a grant id"}},
		{"grants: role not a role name", "GET", "/v1/grants?role=" + url.QueryEscape("x\n2026-11-29 FAKE"), []string{"role must be"}},
		{"grant: repeated wait", "GET", "/v1/grants/" + grant + "?wait=1s&wait=50s", []string{`"wait" is given 2 times`}},
		{"audit: repeated kind", "GET", "/v1/audit?kind=mint&kind=lease.revoke", []string{`"kind" is given 2 times`}},
		{"audit: kind in upper case", "GET", "/v1/audit?kind=MINT", []string{`kind "MINT" is not one of`, `did you mean "mint"?`}},
		{"audit: newest in upper case", "GET", "/v1/audit?newest=TRUE", []string{`newest "TRUE" is not one of true, false`}},
		{"audit: bad lease id", "GET", "/v1/audit?lease_id=x", []string{"lease_id must be a lease id"}},
		{"audit: repeated limit", "GET", "/v1/audit?limit=1&limit=1000", []string{`"limit" is given 2 times`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := assertProblem(t, e.Do(tc.method, tc.path, testOperatorToken, nil), http.StatusBadRequest)
			for _, d := range tc.detail {
				if !strings.Contains(p.Detail, d) {
					t.Errorf("detail %q does not contain %q", p.Detail, d)
				}
			}
		})
	}
	if st := leaseState(t, e, lease.LeaseID); st != "active" {
		t.Errorf("lease is %s after refused deletes, want active", st)
	}
	// A repeated form parameter at introspection is an RFC 6749 error;
	// TestIntrospectionClientAuthentication covers it.
	t.Run("accepted values still work", func(t *testing.T) {
		for _, path := range []string{
			"/v1/leases?state=active&agent_id=test/query-agent&role=demo&backend=tokens&limit=5",
			"/v1/leases?lineage=" + url.QueryEscape("jti:https://issuer.test#x"),
			"/v1/grants?state=pending&kind=approval&role=elevated", "/v1/grants?review=pending",
			"/v1/audit?kind=mint&newest=true&lease_id=" + lease.LeaseID, "/v1/audit?newest=false&after=1",
			"/v1/grants/" + grant + "?wait=1ms",
		} {
			if r := e.Do("GET", path, testOperatorToken, nil); r.Status != http.StatusOK {
				t.Errorf("GET %s: %d %s", path, r.Status, r.Body)
			}
		}
	})
}

// hostileRole would forge a log row and clear an operator's screen if it
// reached an audit record raw.
const hostileRole = "x\n2026-11-29 FAKE mint allow\u001b[2J"

func TestNamesAreCheckedBeforeTheyAreStored(t *testing.T) {
	e := newTestEnv(t).Start()
	for _, who := range []struct{ name, bearer string }{
		{"anonymous", ""}, {"bad attestation", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"}, {"agent", e.Attest("namer", nil)},
	} {
		for _, role := range []string{hostileRole, "Demo", "demo\u202e", strings.Repeat("r", 64)} {
			t.Run(who.name+" "+role, func(t *testing.T) {
				r := e.Do("POST", "/v1/credentials", who.bearer, map[string]any{"role": role})
				p := assertProblem(t, r, http.StatusBadRequest)
				if !strings.Contains(p.Detail, "role must be 1 to 63 lower-case letters, digits") {
					t.Errorf("detail %q does not give the rule", p.Detail)
				}
				if strings.Contains(p.Detail, "FAKE") {
					t.Errorf("detail %q repeats the refused value", p.Detail)
				}
			})
		}
	}
	t.Run("token exchange", func(t *testing.T) {
		r := e.exchange(exchangeForm(e.Attest("namer", nil), hostileRole))
		body := r.JSON(t)
		if r.Status != http.StatusBadRequest || body["error"] != "invalid_target" || !strings.Contains(body["error_description"].(string), "role must be") {
			t.Errorf("exchange with a hostile role: %d %s", r.Status, r.Body)
		}
	})
	for _, rec := range e.auditRecords() {
		b, _ := json.Marshal(rec)
		if strings.Contains(string(b), "FAKE") || strings.Contains(string(b), "Demo") || strings.Contains(string(b), `\u202e`) {
			t.Errorf("audit record carries a refused role: %s", b)
		}
	}
}

func TestAttestationIdentityValuesAreChecked(t *testing.T) {
	e := newTestEnv(t).Start()
	for _, tc := range []struct {
		name   string
		claims map[string]any
		detail string
	}{
		{"jti with NUL", map[string]any{"jti": "J1\x00zz"}, "jti claim contains control characters"},
		{"jti with a newline", map[string]any{"jti": "J1\nzz"}, "jti claim contains control characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.Do("POST", "/v1/credentials", e.Attest("lineage-agent", tc.claims), map[string]any{"role": "demo"})
			p := assertProblem(t, r, http.StatusUnauthorized)
			if !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("detail %q does not contain %q", p.Detail, tc.detail)
			}
		})
	}
	// The victim's lease, whose jti the hostile ones extended, is listed
	// and revoked by its lineage.
	r := e.Do("POST", "/v1/credentials", e.Attest("lineage-victim", map[string]any{"jti": "J1"}), map[string]any{"role": "demo"})
	if r.Status != http.StatusCreated {
		t.Fatalf("victim's mint: %d %s", r.Status, r.Body)
	}
	id := r.JSON(t)["lease_id"].(string)
	lineage := "jti:https://issuer.test#J1"
	l := decode[leaseList](t, e.Do("GET", "/v1/leases?lineage="+url.QueryEscape(lineage), testOperatorToken, nil))
	if len(l.Leases) != 1 || l.Leases[0].ID != id {
		t.Fatalf("leases of lineage %s: %+v, want only %s", lineage, l.Leases, id)
	}
	r = e.Do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{"lineage": lineage})
	if r.Status != http.StatusOK || decode[map[string]int](t, r)["revoked"] != 1 || leaseState(t, e, id) != "revoked" {
		t.Fatalf("revoke by lineage: %d %s; lease %s", r.Status, r.Body, leaseState(t, e, id))
	}
}

// TestAuthorizationHeaderGivenOnce: a request with two Authorization
// headers is refused, whichever of them is valid and in either order:
// valet never picks one of two credentials (RFC 9110 section 11.6.2
// defines one credential per request).
func TestAuthorizationHeaderGivenOnce(t *testing.T) {
	e, _ := introspectionEnv(t)
	agent := e.Attest("twice", nil)
	tok := accessToken(t, e.Mint(agent, "demo")["credential"].(map[string]any))
	before := e.LeaseCounts()
	basic := basicAuth("demo-api", rsSecret("demo-api"))
	cases := []struct {
		name, method, path, ct, body string
		auth                         []string
		status                       int
		want                         string
	}{
		{"operator endpoint", "GET", "/v1/roles", "", "", []string{"Bearer " + testOperatorToken, "Bearer x"}, http.StatusBadRequest,
			"the Authorization header is given 2 times"},
		{"operator endpoint, the valid one last", "GET", "/v1/roles", "", "", []string{"Bearer x", "Bearer " + testOperatorToken}, http.StatusBadRequest,
			"the Authorization header is given 2 times"},
		{"agent mint", "POST", "/v1/credentials", "application/json", `{"role":"demo"}`, []string{"Bearer " + agent, "Bearer " + agent},
			http.StatusBadRequest, "the Authorization header is given 2 times"},
		{"introspection", "POST", "/v1/introspect", "application/x-www-form-urlencoded", "token=" + tok, []string{basic, "Basic eDp5"},
			http.StatusBadRequest, `"error":"invalid_request"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, e.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.ct != "" {
				req.Header.Set("Content-Type", tc.ct)
			}
			for _, a := range tc.auth {
				req.Header.Add("Authorization", a)
			}
			r := e.send(req)
			if r.Status != tc.status || !strings.Contains(string(r.Body), tc.want) {
				t.Fatalf("%d %s, want %d saying %q", r.Status, r.Body, tc.status, tc.want)
			}
		})
	}
	if after := e.LeaseCounts(); !maps.Equal(after, before) {
		t.Errorf("leases %v after refused requests, want %v", after, before)
	}
}
