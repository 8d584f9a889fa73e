package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// Operator is an authenticated human (or automation) with operator rights.
type Operator struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups,omitempty"`
	// Method is "token" for a static operator token or "sso:<issuer>" for
	// an ID token from an operator issuer.
	Method string `json:"method"`
}

// Operators authenticates operator bearer tokens: static tokens (compared
// by SHA-256 in constant time) and ID tokens from operator issuers.
type Operators struct {
	tokens   []opToken
	issuers  map[string]bool // iss values of operator issuers
	verifier Verifier        // verifies operator ID tokens; nil if none configured
}

type opToken struct {
	name   string
	sum    [sha256.Size]byte
	groups []string
}

// NewOperators builds the authenticator. verifier verifies ID tokens of
// cfg.Issuers and may be nil when there are none.
func NewOperators(cfg OperatorsConfig, verifier Verifier) *Operators {
	o := &Operators{issuers: map[string]bool{}, verifier: verifier}
	for _, t := range cfg.Tokens {
		var ot opToken
		ot.name, ot.groups = t.Name, t.Groups
		b, _ := hex.DecodeString(t.SHA256) // validated by Config.Validate
		copy(ot.sum[:], b)
		o.tokens = append(o.tokens, ot)
	}
	for _, ic := range cfg.Issuers {
		o.issuers[ic.Issuer] = true
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
// verify.
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
	op = &Operator{Name: p.Subject, Method: "sso:" + p.Issuer}
	if email, ok := p.Claims["email"].(string); ok && email != "" {
		op.Name = email
	}
	if groups, ok := p.Claims["groups"].([]any); ok {
		for _, g := range groups {
			if s, ok := g.(string); ok {
				op.Groups = append(op.Groups, s)
			}
		}
	}
	return op, true, nil
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
