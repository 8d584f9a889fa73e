package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// publicKey is one verification key of an issuer, parsed once when its JWKS
// is loaded so that Verify never touches JSON or big-number conversion of
// keys.
type publicKey struct {
	kid string
	alg string // the JWK's own alg; "" if it has none
	raw any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

func (k *publicKey) name() string {
	if k.kid == "" {
		return "(without kid)"
	}
	return clip(k.kid)
}

// fits reports whether the key can verify alg: the key type and, for ECDSA,
// the curve must be the one the algorithm is defined for (RFC 7518 3.4).
func (k *publicKey) fits(alg string) bool {
	switch raw := k.raw.(type) {
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return raw.Curve == elliptic.P256()
		case "ES384":
			return raw.Curve == elliptic.P384()
		case "ES512":
			return raw.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// keySet is an immutable set of an issuer's keys.
type keySet struct {
	keys      []*publicKey
	byKID     map[string][]*publicKey
	fetchedAt time.Time
}

// pick selects the key for a token: with a kid, only keys with that kid; with
// no kid, the single key that fits alg. The key's own alg, when set, must
// equal the token's. miss reports a failure that a fresh copy of the
// issuer's JWKS might cure: an unknown kid, or no key at all for alg.
func (ks *keySet) pick(issuer, kid, alg string) (k *publicKey, miss bool, err error) {
	if kid != "" {
		cands := ks.byKID[kid]
		if len(cands) == 0 {
			return nil, true, unauthorized("issuer %s has no key with kid %s", issuer, clip(kid))
		}
		var algMismatch string
		for _, k := range cands {
			if k.alg != "" && k.alg != alg {
				algMismatch = k.alg
				continue
			}
			if k.fits(alg) {
				return k, false, nil
			}
		}
		if algMismatch != "" {
			return nil, false, unauthorized("key %s of issuer %s is for algorithm %s, not %s", clip(kid), issuer, algMismatch, alg)
		}
		return nil, false, unauthorized("key %s of issuer %s cannot verify %s signatures", clip(kid), issuer, alg)
	}
	var found *publicKey
	n := 0
	for _, k := range ks.keys {
		if (k.alg == "" || k.alg == alg) && k.fits(alg) {
			found = k
			n++
		}
	}
	switch n {
	case 0:
		return nil, true, unauthorized("attestation has no kid and issuer %s has no key for %s", issuer, alg)
	case 1:
		return found, false, nil
	default:
		return nil, false, unauthorized("attestation has no kid and issuer %s has %d keys for %s; the token must name one with kid", issuer, n, alg)
	}
}

// keySource gives an issuer's current keys. refresh asks for a fresh copy
// because a token named a key the current copy lacks; a source may ignore it
// (static files) or rate-limit it (URLs).
type keySource interface {
	get(ctx context.Context, refresh bool) (*keySet, error)
}

// staticKeys are the keys of a jwks_file, loaded once by New.
type staticKeys struct{ ks *keySet }

func (s staticKeys) get(context.Context, bool) (*keySet, error) { return s.ks, nil }

// key finds the issuer's key for a token, asking the source once for a fresh
// copy (which it rate-limits) if the current copy does not have it.
func (ti *trustedIssuer) key(ctx context.Context, kid, alg string) (*publicKey, error) {
	ks, err := ti.keys.get(ctx, false)
	if err != nil {
		return nil, err
	}
	k, miss, err := ks.pick(ti.cfg.Name, kid, alg)
	if !miss {
		return k, err
	}
	fresh, ferr := ti.keys.get(ctx, true)
	if ferr != nil {
		return nil, ferr
	}
	if fresh == ks {
		return nil, err
	}
	k, _, err = fresh.pick(ti.cfg.Name, kid, alg)
	return k, err
}

// maxJWKSBytes bounds a JWKS or discovery document, from a file or a URL.
const maxJWKSBytes = 1 << 20

// minRSABits is the smallest RSA modulus accepted (NIST SP 800-131A).
const minRSABits = 2048

// parseJWKS parses a JWK Set and keeps only keys that can verify signatures:
// public, asymmetric, of a supported type and curve, with use "sig" and
// key_ops "verify" when those are given. Skipped keys are logged (by kid,
// never key material). A set with no usable key is an error, so a broken
// fetch can never replace working keys with nothing.
func parseJWKS(b []byte, fetchedAt time.Time, issuer string, log *slog.Logger) (*keySet, error) {
	if len(b) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS is larger than %d bytes", maxJWKSBytes)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`not a JWK Set: no "keys" array`)
	}
	ks := &keySet{byKID: map[string][]*publicKey{}, fetchedAt: fetchedAt}
	for i, raw := range doc.Keys {
		// Keys are parsed one by one so that one key of a type jwx does
		// not know does not make the whole set unusable.
		k, err := jwk.ParseKey(raw)
		if err != nil {
			log.Warn("attest: skipping unparseable key in JWKS", "issuer", issuer, "index", i, "err", err)
			continue
		}
		pk, reason := usableKey(k)
		if reason != "" {
			log.Warn("attest: skipping key in JWKS", "issuer", issuer, "index", i, "kid", k.KeyID(), "reason", reason)
			continue
		}
		ks.keys = append(ks.keys, pk)
		ks.byKID[pk.kid] = append(ks.byKID[pk.kid], pk)
	}
	if len(ks.keys) == 0 {
		return nil, fmt.Errorf("JWK Set has no usable public signing key (%d keys skipped)", len(doc.Keys))
	}
	return ks, nil
}

// usableKey converts a JWK into a verification key, or says why it is not
// one.
func usableKey(k jwk.Key) (*publicKey, string) {
	if k.KeyType() == jwa.OctetSeq {
		return nil, "symmetric (oct) keys are never used"
	}
	if private, err := jwk.IsPrivateKey(k); err != nil || private {
		return nil, "private keys do not belong in a JWKS"
	}
	if use := k.KeyUsage(); use != "" && use != string(jwk.ForSignature) {
		return nil, fmt.Sprintf("use is %q, not sig", use)
	}
	if ops := k.KeyOps(); len(ops) > 0 && !slices.Contains(ops, jwk.KeyOpVerify) {
		return nil, "key_ops does not include verify"
	}
	if err := k.Validate(); err != nil {
		return nil, "invalid key: " + err.Error()
	}
	var raw any
	if err := k.Raw(&raw); err != nil {
		return nil, "cannot decode key: " + err.Error()
	}
	switch r := raw.(type) {
	case *rsa.PublicKey:
		if r.N.BitLen() < minRSABits {
			return nil, fmt.Sprintf("RSA key has %d bits; at least %d are required", r.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		// ECDH checks that the point is on a supported NIST curve.
		if _, err := r.ECDH(); err != nil {
			return nil, "invalid or unsupported EC key: " + err.Error()
		}
	case ed25519.PublicKey:
		if len(r) != ed25519.PublicKeySize {
			return nil, "invalid Ed25519 key"
		}
	default:
		return nil, fmt.Sprintf("unsupported key type %T", raw)
	}
	pk := &publicKey{kid: k.KeyID(), raw: raw}
	if alg := k.Algorithm().String(); alg != "" {
		if !asymmetricAlgorithm(alg) {
			return nil, fmt.Sprintf("alg %q is not an accepted signature algorithm", alg)
		}
		pk.alg = alg
		if !pk.fits(alg) {
			return nil, fmt.Sprintf("alg %q does not fit the key", alg)
		}
	}
	return pk, ""
}
