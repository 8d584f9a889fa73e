package broker

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestOperatorFromClaims(t *testing.T) {
	groups := OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups", AllowedGroups: []string{"SRE"}}
	all := OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups", AllowAll: true}
	cases := []struct {
		name       string
		cfg        OperatorIdentityConfig
		claims     map[string]any
		wantName   string
		wantGroups string
		wantCode   string
		wantMsg    string
	}{
		{"verified email in an allowed group", groups,
			map[string]any{"email": "Dana@Example.com", "email_verified": true, "groups": []any{"sre", "staff"}}, "Dana@Example.com", "sre,staff", "", ""},
		{"email_verified as the string true", groups,
			map[string]any{"email": "dana@example.com", "email_verified": "true", "groups": "sre"}, "dana@example.com", "sre", "", ""},
		{"email_verified false", all,
			map[string]any{"email": "carol@example.com", "email_verified": false}, "", "", EUNAUTHORIZED,
			"the email address carol@example.com is not verified by the identity provider (email_verified is false)"},
		{"email_verified absent", all,
			map[string]any{"email": "carol@example.com"}, "", "", EUNAUTHORIZED,
			"the email address carol@example.com is not verified by the identity provider (the ID token has no email_verified claim)"},
		{"email_verified some other string", all,
			map[string]any{"email": "carol@example.com", "email_verified": "1"}, "", "", EUNAUTHORIZED, `(email_verified is "1", not true)`},
		{"email_verified a number", all,
			map[string]any{"email": "carol@example.com", "email_verified": 1.0}, "", "", EUNAUTHORIZED, "(email_verified is 1, not true)"},
		{"email_verified absent at an issuer that vouches for its emails",
			OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups", AllowAll: true, EmailVerifiedDefault: true},
			map[string]any{"email": "carol@example.com"}, "carol@example.com", "", "", ""},
		{"email_verified false at an issuer that vouches for its emails",
			OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups", AllowAll: true, EmailVerifiedDefault: true},
			map[string]any{"email": "carol@example.com", "email_verified": false}, "", "", EUNAUTHORIZED, "email_verified is false"},
		{"no name claim, a subject only", all,
			map[string]any{"sub": "alice"}, "", "", EUNAUTHORIZED, "the ID token carries no email claim, which names operators on this server"},
		{"a name with a control character", all,
			map[string]any{"email": "alice@example.com\n", "email_verified": true}, "", "", EUNAUTHORIZED, "the ID token's email claim is not a valid operator name"},
		{"another name claim needs no verified email",
			OperatorIdentityConfig{NameClaim: "preferred_username", GroupsClaim: "roles", AllowedGroups: []string{"ops"}},
			map[string]any{"preferred_username": " dana ", "roles": []any{"ops", 7, "", "OPS"}}, "dana", "ops", "", ""},
		{"groups at a nested path (Keycloak's realm roles)",
			OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "realm_access.roles", AllowedGroups: []string{"approvers"}},
			map[string]any{"email": "dana@example.com", "email_verified": true, "realm_access": map[string]any{"roles": []any{"approvers", "offline_access"}}},
			"dana@example.com", "approvers,offline_access", "", ""},
		{"a name at a nested path",
			OperatorIdentityConfig{NameClaim: "ext.login", GroupsClaim: "groups", AllowAll: true},
			map[string]any{"ext": map[string]any{"login": "dana"}}, "dana", "", "", ""},
		{"outside the allowed groups", groups,
			map[string]any{"email": "eve@example.com", "email_verified": true, "groups": []any{"staff"}}, "", "", EFORBIDDEN,
			"eve@example.com is not a member of a group allowed to act as an operator (SRE)"},
		{"no groups claim", groups,
			map[string]any{"email": "eve@example.com", "email_verified": true}, "", "", EFORBIDDEN, "is not a member of a group"},
		{"neither allowed_groups nor allow_all admits nobody", OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups"},
			map[string]any{"email": "dana@example.com", "email_verified": true, "groups": []any{"sre"}}, "", "", EFORBIDDEN, "neither allowed_groups nor allow_all"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			op, err := OperatorFromClaims(c.cfg, "https://sso.example.com", c.claims)
			if c.wantCode != "" {
				if op != nil || ErrorCode(err) != c.wantCode || !strings.Contains(ErrorMessage(err), c.wantMsg) {
					t.Fatalf("got %+v, %v; want %s saying %q", op, err, c.wantCode, c.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if op.Name != c.wantName || strings.Join(op.Groups, ",") != c.wantGroups || op.Method != "sso:https://sso.example.com" {
				t.Fatalf("operator %+v, want name %q, groups %q", op, c.wantName, c.wantGroups)
			}
		})
	}
}

func TestOperatorFromClaimsAuthTime(t *testing.T) {
	cfg := OperatorIdentityConfig{NameClaim: "email", GroupsClaim: "groups", AllowAll: true}
	at := time.Unix(1767225600, 0)
	cases := []struct {
		name  string
		value any
		want  time.Time
	}{
		{"a float, as encoding/json decodes it", float64(at.Unix()), at},
		{"a json.Number, as the attestation verifier decodes it", json.Number("1767225600"), at},
		{"absent", nil, time.Time{}},
		{"a string", "1767225600", time.Time{}},
		{"zero", float64(0), time.Time{}},
		{"negative", json.Number("-5"), time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims := map[string]any{"email": "dana@example.com", "email_verified": true}
			if c.value != nil {
				claims["auth_time"] = c.value
			}
			op, err := OperatorFromClaims(cfg, "https://sso.example.com", claims)
			if err != nil {
				t.Fatal(err)
			}
			if !op.AuthTime.Equal(c.want) {
				t.Fatalf("AuthTime = %v, want %v", op.AuthTime, c.want)
			}
		})
	}
}
