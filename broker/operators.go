package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/valet-broker/valet/broker/claimpath"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/identity"
)

// Operator is an authenticated human (or automation) with operator rights.
type Operator struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups,omitempty"`
	// Method is "token" for a static operator token or "sso:<issuer>" for
	// an ID token from an operator issuer.
	Method string `json:"method"`
	// AuthTime is when the operator last authenticated at the identity
	// provider: the ID token's auth_time (OpenID Connect Core 1.0, 2).
	// It is zero for static tokens and for ID tokens without auth_time.
	AuthTime time.Time `json:"-"`
}

// Operators authenticates operator bearer tokens: static tokens (compared
// by SHA-256 in constant time) and ID tokens from operator issuers.
type Operators struct {
	tokens   []opToken
	issuers  map[string]bool                   // iss values of operator issuers
	identity map[string]OperatorIdentityConfig // by issuer name
	verifier Verifier                          // verifies operator ID tokens; nil if none configured
}

type opToken struct {
	name   string
	sum    [sha256.Size]byte
	groups []string
}

// OperatorIssuer is what Operators needs to know of an operator issuer
// (operators.issuers[]): its name in the configuration, its iss, and how
// an operator's identity is read from its ID tokens.
type OperatorIssuer struct {
	Name     string
	Issuer   string
	Identity OperatorIdentityConfig
}

// NewOperators builds the authenticator from the static operator tokens
// (validated by ValidateOperatorTokens) and the operator issuers. verifier
// verifies the issuers' ID tokens and may be nil when there are none.
func NewOperators(tokens []OperatorToken, issuers []OperatorIssuer, verifier Verifier) *Operators {
	o := &Operators{issuers: map[string]bool{}, identity: map[string]OperatorIdentityConfig{}, verifier: verifier}
	for _, t := range tokens {
		var ot opToken
		ot.name, ot.groups = t.Name, t.Groups
		b, _ := hex.DecodeString(t.SHA256) // validated by ValidateOperatorTokens
		copy(ot.sum[:], b)
		o.tokens = append(o.tokens, ot)
	}
	for _, ic := range issuers {
		o.issuers[ic.Issuer] = true
		o.identity[ic.Name] = ic.Identity
	}
	return o
}

// HashToken returns the hex SHA-256 of an operator token, the form stored
// in operators.tokens[].sha256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Authenticate returns the operator a bearer token belongs to. ok is false
// when the token is not an operator credential at all (so the caller may
// try it as an agent attestation); err is set when it is one but does not
// verify (the verifier's errors), or when its verified claims do not make
// an operator (the errors of OperatorFromClaims).
func (o *Operators) Authenticate(ctx context.Context, token string) (op *Operator, ok bool, err error) {
	sum := sha256.Sum256([]byte(token))
	var match *opToken
	// Compare against every token so the time taken does not depend on
	// which one (if any) matched.
	for i := range o.tokens {
		if subtle.ConstantTimeCompare(sum[:], o.tokens[i].sum[:]) == 1 {
			match = &o.tokens[i]
		}
	}
	if match != nil {
		return &Operator{Name: match.name, Groups: match.groups, Method: "token"}, true, nil
	}
	if o.verifier == nil || !o.issuers[peekIssuer(token)] {
		return nil, false, nil
	}
	p, err := o.verifier.Verify(ctx, token)
	if err != nil {
		return nil, true, err
	}
	ic, ok := o.identity[p.Issuer]
	if !ok {
		return nil, true, Errorf(EUNAUTHORIZED, "the token's issuer %s is not an operator issuer", p.IssuerURL)
	}
	op, err = OperatorFromClaims(ic, p.IssuerURL, p.Claims)
	return op, true, err
}

// OperatorFromClaims turns the verified claims of an operator's OpenID
// Connect ID token into an operator, as ic says. It is the one place an
// SSO operator's identity is derived, for the API (operators.issuers) and
// the console (console.oidc) alike:
//
//   - the name is the ic.NameClaim claim, a non-empty string that
//     identity.Normalize accepts, recorded in its normalized form. When
//     the name claim is email, the token's email_verified must be true
//     (the JSON boolean, or the string "true" some providers send); a
//     token without email_verified counts as unverified unless
//     ic.EmailVerifiedDefault is set (OpenID Connect Core 1.0, 5.1);
//   - the groups are the ic.GroupsClaim claim: an array of strings or a
//     single string; entries that are not valid names are dropped;
//   - the operator must be a member of one of ic.AllowedGroups (compared
//     as identity.Equal does), unless ic.AllowAll.
//
// issuer is the token's iss; the operator's Method is "sso:<issuer>" and
// its AuthTime the token's auth_time, when it has one.
// Errors: EUNAUTHORIZED when the token names nobody valet can trust (no
// name claim, an invalid name, an unverified email: the message names
// the claim and the email), EFORBIDDEN when the operator is not in an
// allowed group.
func OperatorFromClaims(ic OperatorIdentityConfig, issuer string, claims map[string]any) (*Operator, error) {
	nameValue, _ := claimpath.Lookup(claims, ic.NameClaim)
	raw, _ := nameValue.(string)
	if raw == "" {
		return nil, Errorf(EUNAUTHORIZED, "the ID token carries no %s claim, which names operators on this server", ic.NameClaim)
	}
	name, err := identity.Normalize(raw)
	if err != nil {
		return nil, Errorf(EUNAUTHORIZED, "the ID token's %s claim is not a valid operator name: %v", ic.NameClaim, err)
	}
	if ic.NameClaim == "email" {
		if ok, why := emailVerified(claims, ic.EmailVerifiedDefault); !ok {
			return nil, Errorf(EUNAUTHORIZED, "the email address %s is not verified by the identity provider (%s), so it cannot name an operator", name, why)
		}
	}
	var groups []string
	addGroup := func(v any) {
		if s, ok := v.(string); ok {
			if g, err := identity.Normalize(s); err == nil && !identity.Contains(groups, g) {
				groups = append(groups, g)
			}
		}
	}
	groupsValue, _ := claimpath.Lookup(claims, ic.GroupsClaim)
	switch g := groupsValue.(type) {
	case []any:
		for _, v := range g {
			addGroup(v)
		}
	case string:
		addGroup(g)
	}
	switch {
	case ic.AllowAll:
	case len(ic.AllowedGroups) == 0:
		// Not reachable with a validated configuration; fail closed.
		return nil, Errorf(EFORBIDDEN, "no account of %s is admitted as an operator: the issuer has neither allowed_groups nor allow_all", issuer)
	case !identity.Intersects(groups, ic.AllowedGroups):
		return nil, Errorf(EFORBIDDEN, "%s is not a member of a group allowed to act as an operator (%s)", name, strings.Join(ic.AllowedGroups, ", "))
	}
	return &Operator{Name: name, Groups: groups, Method: "sso:" + issuer, AuthTime: numericDate(claims["auth_time"])}, nil
}

// numericDate reads a JWT NumericDate (RFC 7519, 2: seconds since the
// epoch) as decoded by encoding/json, as a float64 or, with UseNumber, a
// json.Number. Anything else, and dates not after the epoch or absurdly
// far ahead, read as the zero time.
func numericDate(v any) time.Time {
	var sec float64
	switch v := v.(type) {
	case float64:
		sec = v
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return time.Time{}
		}
		sec = f
	default:
		return time.Time{}
	}
	if sec <= 0 || sec >= 1<<40 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

// emailVerified reads the email_verified claim: true only for the JSON
// boolean true or the string "true"; dflt when the claim is absent. why
// describes a refusal.
func emailVerified(claims map[string]any, dflt bool) (ok bool, why string) {
	v, present := claims["email_verified"]
	if !present {
		return dflt, "the ID token has no email_verified claim"
	}
	switch v := v.(type) {
	case bool:
		return v, "email_verified is false"
	case string:
		return strings.EqualFold(v, "true"), fmt.Sprintf("email_verified is %q, not true", v)
	}
	return false, fmt.Sprintf("email_verified is %v, not true", v)
}

// peekIssuer reads the iss claim of a compact JWT without verifying it, only
// to choose which verifier to hand the token to. It returns "" for anything
// that is not a small, well-formed JWT.
func peekIssuer(token string) string {
	if len(token) > 64<<10 {
		return ""
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	return c.Iss
}
