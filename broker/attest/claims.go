package attest

import (
	"encoding/json"
	"github.com/valet-broker/valet/broker/claimpath"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on claims valet keeps: the subject becomes part of the agent id,
// and the jti, pod UID and run id become lineage ids, keys in the replay
// cache and the lease index.
const (
	maxSubjectChars  = 256
	maxIdentityBytes = 256
)

// maxNumericDate is 9999-12-31T23:59:59Z; later dates are nonsense and would
// overflow time arithmetic.
const maxNumericDate = 253402300799

// checkedClaims are the registered claims of a token whose signature has been
// verified and whose times and audience have been checked.
type checkedClaims struct {
	iss     string
	subject string
	exp     time.Time
	iat     time.Time // zero if the token has none
	jti     string
}

// checkClaims applies the time, audience, subject and jti rules at now. It
// returns the claims by value: a re-presented token is checked on every
// use, and only needs the error.
func (ti *trustedIssuer) checkClaims(claims map[string]any, now time.Time) (checkedClaims, error) {
	var c checkedClaims
	c.iss, _ = claims["iss"].(string) // selectIssuer checked its type

	exp, ok, err := numericDate(claims, "exp")
	switch {
	case err != nil:
		return checkedClaims{}, err
	case !ok:
		return checkedClaims{}, unauthorized("attestation has no exp claim; tokens without an expiry are never accepted")
	case !now.Before(exp.Add(ti.skew)):
		return checkedClaims{}, unauthorized("attestation expired at %s (valet's time is %s; allowed clock skew %s)", rfc3339(exp), rfc3339(now), ti.skew)
	}
	c.exp = exp

	nbf, ok, err := numericDate(claims, "nbf")
	switch {
	case err != nil:
		return checkedClaims{}, err
	case ok && now.Add(ti.skew).Before(nbf):
		return checkedClaims{}, unauthorized("attestation is not valid before %s (valet's time is %s; allowed clock skew %s)", rfc3339(nbf), rfc3339(now), ti.skew)
	}

	iat, ok, err := numericDate(claims, "iat")
	switch {
	case err != nil:
		return checkedClaims{}, err
	case ok && iat.After(now.Add(ti.skew)):
		return checkedClaims{}, unauthorized("attestation was issued in the future, at %s (valet's time is %s; allowed clock skew %s)", rfc3339(iat), rfc3339(now), ti.skew)
	case !ok && ti.maxAge > 0:
		return checkedClaims{}, unauthorized("attestation has no iat claim; issuer %s requires one because its max_token_age is %s", ti.cfg.Name, ti.maxAge)
	case ok && ti.maxAge > 0 && now.Sub(iat) > ti.maxAge+ti.skew:
		return checkedClaims{}, unauthorized("attestation is too old: issued at %s, and issuer %s accepts tokens for %s after issue", rfc3339(iat), ti.cfg.Name, ti.maxAge)
	}
	if ok {
		c.iat = iat
	}

	if err := ti.checkAudience(claims["aud"]); err != nil {
		return checkedClaims{}, err
	}

	sub, err := subject(claims, ti.cfg.SubjectClaim)
	if err != nil {
		return checkedClaims{}, err
	}
	c.subject = sub

	if raw, ok := claims["jti"]; ok {
		jti, ok := raw.(string)
		switch {
		case !ok:
			return checkedClaims{}, unauthorized("attestation jti claim must be a string")
		case jti == "":
			return checkedClaims{}, unauthorized("attestation jti claim is empty")
		}
		if err := checkIdentity("jti claim", jti); err != nil {
			return checkedClaims{}, err
		}
		c.jti = jti
	}
	return c, nil
}

// checkIdentity checks a claim value that identifies a token or a workload
// and becomes part of a lineage id (jti, Kubernetes pod UID, GitHub run
// id): valet keys its indexes by it and shows it to operators, so it must
// be at most maxIdentityBytes bytes without control characters. RFC 7519
// allows any string; no issuer puts control characters in these. what
// names the claim in the error ("jti claim", "claim run_id").
func checkIdentity(what, v string) error {
	switch {
	case len(v) > maxIdentityBytes:
		return unauthorized("attestation %s is longer than %d bytes", what, maxIdentityBytes)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return unauthorized("attestation %s contains control characters", what)
	}
	return nil
}

// numericDate reads a NumericDate claim (RFC 7519 section 2): a JSON number
// of seconds since 1970, possibly with a fraction.
func numericDate(claims map[string]any, name string) (t time.Time, ok bool, err error) {
	raw, ok := claims[name]
	if !ok {
		return time.Time{}, false, nil
	}
	n, isNum := raw.(json.Number)
	if !isNum {
		return time.Time{}, false, unauthorized("attestation %s claim must be a number of seconds since 1970-01-01", name)
	}
	f, perr := strconv.ParseFloat(string(n), 64)
	if perr != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, false, unauthorized("attestation %s claim is out of range", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true, nil
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// checkAudience requires aud, a string or an array of strings, to contain
// one of the issuer's audiences, so a token minted for another service
// cannot be replayed against valet.
func (ti *trustedIssuer) checkAudience(raw any) error {
	var auds []string
	switch aud := raw.(type) {
	case nil:
		return unauthorized("attestation has no aud claim; issuer %s expects one of %s", ti.cfg.Name, clipList(ti.cfg.Audiences))
	case string:
		auds = []string{aud}
	case []any:
		auds = make([]string, 0, len(aud))
		for _, a := range aud {
			s, ok := a.(string)
			if !ok {
				return unauthorized("attestation aud claim must be a string or an array of strings")
			}
			auds = append(auds, s)
		}
	default:
		return unauthorized("attestation aud claim must be a string or an array of strings")
	}
	for _, a := range auds {
		if slices.Contains(ti.cfg.Audiences, a) {
			return nil
		}
	}
	return unauthorized("attestation audience %s does not include any of %s accepted by issuer %s", clipList(auds), clipList(ti.cfg.Audiences), ti.cfg.Name)
}

// subject reads the subject claim: a non-empty string of at most
// maxSubjectChars characters without control characters, because it becomes
// the agent id that operators read in logs and the UI.
func subject(claims map[string]any, name string) (string, error) {
	raw, ok := claimpath.Lookup(claims, name)
	if !ok {
		return "", unauthorized("attestation has no %s claim (the subject)", clip(name))
	}
	s, ok := raw.(string)
	switch {
	case !ok:
		return "", unauthorized("attestation subject claim %s must be a string", clip(name))
	case s == "":
		return "", unauthorized("attestation subject claim %s is empty", clip(name))
	case utf8.RuneCountInString(s) > maxSubjectChars:
		return "", unauthorized("attestation subject claim %s is longer than %d characters", clip(name), maxSubjectChars)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return "", unauthorized("attestation subject claim %s contains control characters", clip(name))
	}
	return s, nil
}

// scalarString formats a claim value for an attribute: strings as they are,
// numbers in decimal (integers without exponent or fraction), booleans as
// true or false. Other values (objects, arrays, null) are not scalars.
func scalarString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case json.Number:
		// An integer literal is kept digit for digit, however long; JSON
		// forbids leading zeros, so it is already canonical.
		if isIntegerLiteral(string(v)) {
			return string(v), true
		}
		if f, err := strconv.ParseFloat(string(v), 64); err == nil && !math.IsInf(f, 0) {
			return strconv.FormatFloat(f, 'f', -1, 64), true
		}
		return string(v), true
	}
	return "", false
}

func isIntegerLiteral(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
