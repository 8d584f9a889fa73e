package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/strictjson"
)

// Verify checks token against the trusted issuers and returns the verified
// principal. Rules are checked in this order, and the first that fails is
// named in the error: size; compact JWS shape; protected header (no crit,
// no b64:false); the issuer chosen by the unverified iss (or, for spiffe
// issuers without iss, the trust domain of sub); the issuer's algorithm
// allow-list; the key (by kid); the signature; exp, nbf, iat and the
// maximum age; aud; the subject; the issuer type's preset (kubernetes,
// github, spiffe) and claim mappings; and last the jti replay check, so a
// token that fails any other rule does not use up its jti.
//
// The principal's Claims are every claim of the token, with JSON numbers as
// json.Number; its Attributes are never nil.
//
// Errors are *broker.Error: ETOOLARGE when the token is over the size limit,
// EUNAUTHORIZED for every other rule, EUNAVAILABLE when the issuer's keys
// cannot be fetched or the replay cache fails. No error or log line carries
// the token.
func (v *Verifier) Verify(ctx context.Context, token string) (*broker.Principal, error) {
	var sum [sha256.Size]byte
	if v.cache != nil && len(token) <= v.maxBytes {
		sum = sha256.Sum256(stringBytes(token))
		if p, ok, err := v.cached(ctx, sum); ok {
			return p, err
		}
	}
	tok, err := v.parse(token)
	if err != nil {
		return nil, err
	}
	ti, err := v.selectIssuer(tok.claims)
	if err != nil {
		return nil, err
	}
	jv, err := ti.algorithm(tok.alg)
	if err != nil {
		return nil, err
	}
	key, err := ti.key(ctx, tok.kid, tok.alg)
	if err != nil {
		return nil, err
	}
	// Verify over the exact bytes received rather than re-encoding what was
	// decoded (as jws.Verify does): a token whose base64 differs in any
	// way from what the issuer signed cannot pass.
	if err := jv.Verify(tok.signingInput, tok.signature, key.raw); err != nil {
		return nil, unauthorized("attestation signature does not verify with key %s of issuer %s", key.name(), ti.cfg.Name)
	}

	c, err := ti.checkClaims(tok.claims, v.clock.Now())
	if err != nil {
		return nil, err
	}
	p, err := ti.principal(tok.claims, &c)
	if err != nil {
		return nil, err
	}
	if ti.cfg.RequireJTI {
		if err := v.consume(ctx, ti, &c, p); err != nil {
			return nil, err
		}
	} else if v.cache != nil {
		v.cache.put(sum, &cachedToken{ti: ti, key: key, kid: tok.kid, alg: tok.alg, claims: tok.claims, p: p})
	}
	return copyPrincipal(p), nil
}

// cached answers from the verified-token cache. ok is false when the token
// is not cached or its entry no longer applies (the issuer's key changed),
// and the caller then verifies it in full. A cached token that now breaks a
// time rule gets the same error a fresh verification would give.
func (v *Verifier) cached(ctx context.Context, sum [sha256.Size]byte) (p *broker.Principal, ok bool, err error) {
	e := v.cache.get(sum)
	if e == nil {
		return nil, false, nil
	}
	if k, err := e.ti.key(ctx, e.kid, e.alg); err != nil || k != e.key {
		v.cache.drop(sum)
		return nil, false, nil
	}
	if _, err := e.ti.checkClaims(e.claims, v.clock.Now()); err != nil {
		v.cache.drop(sum)
		return nil, true, err
	}
	return copyPrincipal(e.p), true, nil
}

// consume spends the token's jti. It runs after every other check, so a
// token rejected for another reason can be fixed and retried, and a
// replay's error names p, whose attestation it is
// (broker.ReplayedAttestation), for valet's detectors.
func (v *Verifier) consume(ctx context.Context, ti *trustedIssuer, c *checkedClaims, p *broker.Principal) error {
	if c.jti == "" {
		return unauthorized("attestation has no jti claim; issuer %s requires one (require_jti) so each token is used once", ti.cfg.Name)
	}
	// The token is acceptable until exp plus the skew, so it must be
	// remembered at least that long.
	until := c.exp.Add(ti.skew)
	err := v.replay.Consume(ctx, ti.cfg.Name+"/"+c.jti, until)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrReplay):
		return broker.Wrap(broker.EUNAUTHORIZED, &broker.ReplayedAttestation{AgentID: p.ID, Lineage: p.Lineage},
			"attestation was already used (jti replay)")
	default:
		v.log.Error("attest: replay cache failed", "issuer", ti.cfg.Name, "err", err)
		return broker.Wrap(broker.EUNAVAILABLE, err, "cannot record the attestation's jti; retry later")
	}
}

// token is a compact JWS split and decoded once; nothing in it is trusted
// until the signature has been verified.
type token struct {
	signingInput []byte // "header.payload" exactly as received
	signature    []byte
	alg, kid     string
	typ          string // the header's typ, "" when absent
	claims       map[string]any
}

var b64 = base64.RawURLEncoding.Strict()

// parse checks the size and the compact shape, decodes the protected header
// and the claims, and applies the header rules that do not depend on the
// issuer (crit, b64).
func (v *Verifier) parse(s string) (*token, error) {
	if len(s) > v.maxBytes {
		return nil, broker.Errorf(broker.ETOOLARGE, "attestation is %d bytes; the limit is %d", len(s), v.maxBytes)
	}
	if s == "" {
		return nil, unauthorized("no attestation given")
	}
	d1, d2, err := splitCompact(s)
	if err != nil {
		return nil, err
	}
	hdrSeg, paySeg, sigSeg := s[:d1], s[d1+1:d2], s[d2+1:]
	switch {
	case hdrSeg == "":
		return nil, unauthorized("attestation header is empty")
	case paySeg == "":
		return nil, unauthorized("attestation payload is empty")
	case sigSeg == "":
		return nil, unauthorized("attestation signature is empty; unsigned tokens are never accepted")
	}

	hdrJSON, err := b64.DecodeString(hdrSeg)
	if err != nil {
		return nil, unauthorized("attestation header is not valid base64url")
	}
	payJSON, err := b64.DecodeString(paySeg)
	if err != nil {
		return nil, unauthorized("attestation payload is not valid base64url")
	}
	sig, err := b64.DecodeString(sigSeg)
	if err != nil {
		return nil, unauthorized("attestation signature is not valid base64url")
	}

	t := &token{signingInput: []byte(s[:d2]), signature: sig}
	if err := t.parseHeader(hdrJSON); err != nil {
		return nil, err
	}
	// The claims are decoded once, before the signature is checked: iss
	// must be read to choose the keys, and a valid token (the common case)
	// needs every claim afterwards anyway. The size limit bounds the work
	// an unsigned payload can cause, and it is small next to the signature
	// check that follows.
	if t.claims, err = decodeObject(payJSON); err != nil {
		return nil, unauthorized("attestation payload is not a JSON object: %s", err)
	}
	return t, nil
}

// splitCompact returns the positions of the two dots of a compact JWS, after
// checking that the token is nothing else: not the JSON serialization, not a
// JWE, and only base64url characters (no whitespace, no padding).
func splitCompact(s string) (dot1, dot2 int, err error) {
	if s[0] == '{' {
		return 0, 0, unauthorized("attestation must be a compact JWS (header.payload.signature); the JSON serialization is not accepted")
	}
	dots := 0
	dot1, dot2 = -1, -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			dots++
			if dots == 1 {
				dot1 = i
			} else if dots == 2 {
				dot2 = i
			}
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == ' ', c == '\t', c == '\n', c == '\r':
			return 0, 0, unauthorized("attestation contains whitespace; send the compact JWS alone")
		case c == '=', c == '+', c == '/':
			return 0, 0, unauthorized("attestation must use unpadded base64url; it contains %q", string(c))
		default:
			return 0, 0, unauthorized("attestation contains a character that is not base64url (byte 0x%02x at offset %d)", c, i)
		}
	}
	switch {
	case dots == 4:
		return 0, 0, unauthorized("attestation is a JWE (encrypted token); only a signed compact JWS is accepted")
	case dots != 2:
		return 0, 0, unauthorized("attestation must have three dot-separated parts (header.payload.signature); it has %d", dots+1)
	}
	return dot1, dot2, nil
}

// parseHeader decodes the protected header and applies the issuer-independent
// header rules. jku, x5u, jwk and x5c are deliberately never read: keys come
// only from the issuer's configuration, never from the token.
func (t *token) parseHeader(b []byte) error {
	if err := strictjson.Check(b); err != nil {
		return unauthorized("attestation header is not a JSON object: %s", err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil || h == nil {
		return unauthorized("attestation header is not a JSON object")
	}
	// jwx does not enforce crit; valet understands no extension, so any
	// crit at all means the issuer wants semantics valet cannot honour.
	if crit, ok := h["crit"]; ok {
		return unauthorized("attestation header lists critical extensions (crit %s); valet supports none", critString(crit))
	}
	if b64v, ok := h["b64"]; ok && b64v != true {
		return unauthorized("attestation header sets b64 to %v; unencoded payloads (RFC 7797) are not accepted", b64v)
	}
	alg, ok := h["alg"].(string)
	if !ok || alg == "" {
		return unauthorized("attestation header has no alg")
	}
	t.alg = alg
	if kid, ok := h["kid"]; ok {
		s, ok := kid.(string)
		if !ok {
			return unauthorized("attestation header kid must be a string")
		}
		t.kid = s
	}
	if typ, ok := h["typ"]; ok {
		s, ok := typ.(string)
		if !ok {
			return unauthorized("attestation header typ must be a string")
		}
		t.typ = s
	}
	return nil
}

func critString(v any) string {
	list, ok := v.([]any)
	if !ok {
		return "(not a list)"
	}
	names := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		names = append(names, s)
	}
	return clipList(names)
}

// decodeObject decodes a JSON object with numbers as json.Number, after
// strictjson.Check: invalid UTF-8 (lone surrogate escapes included) is
// rejected rather than silently replaced, so two different byte strings
// can never decode to the same subject, and a claim given twice is
// rejected (RFC 7519 section 4) rather than decided by the parser.
func decodeObject(b []byte) (map[string]any, error) {
	if err := strictjson.Check(b); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, errors.New("invalid JSON")
	}
	return m, nil
}

// selectIssuer picks the trusted issuer by the unverified iss claim, so the
// signature is checked with that issuer's keys and no other's.
func (v *Verifier) selectIssuer(claims map[string]any) (*trustedIssuer, error) {
	if raw, ok := claims["iss"]; ok {
		iss, ok := raw.(string)
		if !ok {
			return nil, unauthorized("attestation iss claim must be a string")
		}
		ti := v.byIss[iss]
		if ti == nil {
			return nil, unauthorized("issuer %s is not trusted", clip(iss))
		}
		return ti, nil
	}
	if len(v.byTrustDomain) == 0 {
		return nil, unauthorized("attestation has no iss claim")
	}
	// SPIFFE JWT-SVIDs may omit iss; their sub names the trust domain.
	sub, _ := claims["sub"].(string)
	rest, ok := strings.CutPrefix(sub, "spiffe://")
	if ok {
		td, _, _ := strings.Cut(rest, "/")
		if ti := v.byTrustDomain[td]; ti != nil {
			return ti, nil
		}
	}
	return nil, unauthorized("attestation has no iss claim, and its sub is not a SPIFFE ID in a trusted trust domain")
}

// algorithm returns the jwx verifier for alg if the issuer allows it.
func (ti *trustedIssuer) algorithm(alg string) (jws.Verifier, error) {
	switch {
	case alg == "none":
		return nil, unauthorized("algorithm none is not allowed for issuer %s; unsigned tokens are never accepted", ti.cfg.Name)
	case strings.HasPrefix(alg, "HS"):
		return nil, unauthorized("algorithm %s is not allowed for issuer %s; HMAC is never accepted", algName(alg), ti.cfg.Name)
	}
	jv, ok := ti.algs[alg]
	if !ok {
		return nil, unauthorized("algorithm %s is not allowed for issuer %s (allowed: %s)", algName(alg), ti.cfg.Name, strings.Join(ti.cfg.Algorithms, ", "))
	}
	return jv, nil
}

// algName prints a plausible algorithm name as is and anything else quoted
// and clipped.
func algName(alg string) string {
	if len(alg) > 16 {
		return clip(alg)
	}
	for i := 0; i < len(alg); i++ {
		c := alg[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return clip(alg)
		}
	}
	return alg
}
