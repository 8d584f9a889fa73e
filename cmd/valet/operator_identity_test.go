package main

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/config"
)

// withOperatorIssuer trusts a dev OpenID provider (https://sso.test,
// audience valet-console) for operator ID tokens. edit may change its
// configuration; the config is validated again.
func withOperatorIssuer(t *testing.T, e *testEnv, edit func(*attest.OperatorIssuerConfig)) *attest.DevIssuer {
	t.Helper()
	sso, err := attest.NewDevIssuer("https://sso.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(e.Dir, "sso-jwks.json")
	if err := sso.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	ic := config.Defaulted(func(ic *attest.OperatorIssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "sso", "https://sso.test", []string{"valet-console"}, jwks, []string{"ES256"}
		ic.AllowedGroups = []string{"approvers", "staff"}
		if edit != nil {
			edit(ic)
		}
	})
	e.Config.Operators.Issuers = []attest.OperatorIssuerConfig{ic}
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	return sso
}

// idToken signs an operator ID token with the given claims.
func idToken(t *testing.T, sso *attest.DevIssuer, claims map[string]any) string {
	t.Helper()
	c := map[string]any{"aud": "valet-console"}
	for k, v := range claims {
		c[k] = v
	}
	tok, err := sso.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// addRole adds a role, with the role defaults and then edit applied, to
// the test server's configuration before Start.
func addRole(t *testing.T, e *testEnv, edit func(*broker.Role)) {
	t.Helper()
	e.Config.Roles = append(e.Config.Roles, config.Defaulted(edit))
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestOperatorUnverifiedEmailCannotApprove(t *testing.T) {
	e := newTestEnv(t)
	addRole(t, e, func(r *broker.Role) {
		r.Name, r.Backend, r.Approval.Required = "carols", "tokens", 1
		r.Approval.Approvers = broker.ApproversConfig{Operators: []string{"carol@example.com"}}
	})
	sso := withOperatorIssuer(t, e, nil)
	e.Start()

	agent := e.Attest("carols-agent", nil)
	id := requestGrant(t, e, agent, "carols", "needs carol")
	cases := []struct {
		name   string
		claims map[string]any
	}{
		{"email_verified false", map[string]any{"sub": "u-carol", "email": "carol@example.com", "email_verified": false, "groups": []string{"staff"}}},
		{"email_verified absent", map[string]any{"sub": "u-carol", "email": "carol@example.com", "groups": []string{"staff"}}},
		{"email_verified a string other than true", map[string]any{"sub": "u-carol", "email": "carol@example.com", "email_verified": "yes", "groups": []string{"staff"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Do("POST", "/v1/grants/"+id+"/approve", idToken(t, sso, c.claims), map[string]any{"comment": "lgtm"})
			p := assertProblem(t, r, http.StatusUnauthorized)
			if !strings.Contains(p.Detail, "carol@example.com") || !strings.Contains(p.Detail, "not verified") {
				t.Fatalf("problem detail %q does not name the unverified email", p.Detail)
			}
			if g := e.Do("GET", "/v1/grants/"+id, testOperatorToken, nil).JSON(t); g["state"] != "pending" || len(g["approvals"].([]any)) != 0 {
				t.Fatalf("grant after an unverified approval: %v", g)
			}
			if r := e.Do("POST", "/v1/grants/"+id+"/redeem", e.Attest("carols-agent", nil), nil); r.Status != http.StatusConflict {
				t.Fatalf("redeem after an unverified approval: %d %s", r.Status, r.Body)
			}
		})
	}
	// The same person with a verified email ("true" as a string, as some
	// providers send it) approves.
	verified := idToken(t, sso, map[string]any{"sub": "u-carol", "email": "carol@example.com", "email_verified": "true", "groups": []string{"staff"}})
	if g := decide(t, e, verified, id, "approve", http.StatusOK); g["state"] != "approved" {
		t.Fatalf("verified approval: %v", g)
	}
}

func TestOperatorCaseVariantIsOneApprover(t *testing.T) {
	e := newTestEnv(t)
	e.Config.Operators.Tokens = append(e.Config.Operators.Tokens,
		broker.OperatorToken{Name: "alice@example.com", SHA256: broker.HashToken(opToken("alice@example.com")), Groups: []string{"approvers"}})
	sso := withOperatorIssuer(t, e, nil)
	e.Start()

	agent := e.Attest("two-keys-agent", nil)
	id := requestGrant(t, e, agent, "two-keys", "drop the staging database")
	if g := decide(t, e, opToken("alice@example.com"), id, "approve", http.StatusOK); g["state"] != "pending" {
		t.Fatalf("first approval: %v", g)
	}
	upper := idToken(t, sso, map[string]any{"sub": "u-alice", "email": "ALICE@example.com", "email_verified": true, "groups": []string{"approvers"}})
	r := e.Do("POST", "/v1/grants/"+id+"/approve", upper, map[string]any{"comment": "again"})
	p := assertProblem(t, r, http.StatusConflict)
	if !strings.Contains(p.Detail, "already approved") {
		t.Fatalf("problem detail %q", p.Detail)
	}
	g := e.Do("GET", "/v1/grants/"+id, testOperatorToken, nil).JSON(t)
	if g["state"] != "pending" || len(g["approvals"].([]any)) != 1 {
		t.Fatalf("grant after the same person approved twice: %v", g)
	}
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil); r.Status != http.StatusConflict {
		t.Fatalf("redeem with one person's two approvals: %d %s", r.Status, r.Body)
	}
	// A second person completes it.
	if g := decide(t, e, opToken("bob"), id, "approve", http.StatusOK); g["state"] != "approved" {
		t.Fatalf("second person: %v", g)
	}
}

func TestOperatorIDTokenIdentity(t *testing.T) {
	e := newTestEnv(t)
	sso := withOperatorIssuer(t, e, func(ic *attest.OperatorIssuerConfig) {
		ic.GroupsClaim = "roles"
	})
	e.Start()
	cases := []struct {
		name   string
		claims map[string]any
		status int
		detail string
	}{
		{"a member of an allowed group (a single string, in another case)",
			map[string]any{"sub": "u-1", "email": "dana@example.com", "email_verified": true, "roles": "Staff"}, http.StatusOK, ""},
		{"outside the allowed groups",
			map[string]any{"sub": "u-2", "email": "eve@example.com", "email_verified": true, "roles": []string{"contractors"}}, http.StatusForbidden,
			"eve@example.com is not a member of a group allowed to act as an operator (approvers, staff)"},
		{"groups under another claim than the configured one",
			map[string]any{"sub": "u-2", "email": "eve@example.com", "email_verified": true, "groups": []string{"staff"}}, http.StatusForbidden,
			"is not a member of a group allowed to act as an operator"},
		{"no email: the subject does not name an operator",
			map[string]any{"sub": "alice", "roles": []string{"staff"}}, http.StatusUnauthorized,
			"the ID token carries no email claim, which names operators on this server"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Do("GET", "/v1/grants", idToken(t, sso, c.claims), nil)
			if c.status == http.StatusOK {
				if r.Status != http.StatusOK {
					t.Fatalf("status %d: %s", r.Status, r.Body)
				}
				return
			}
			if p := assertProblem(t, r, c.status); !strings.Contains(p.Detail, c.detail) {
				t.Fatalf("detail %q, want %q", p.Detail, c.detail)
			}
		})
	}
}
