// Package jwt is valet's own token backend: it mints JWT access tokens (RFC
// 9068 shape, typ at+jwt) signed with ES256 or EdDSA. iss is valet's public
// URL, sub the agent id, aud the role's audience, jti the lease id and exp
// the lease's expiry. Resource servers verify them with the keys at
// /.well-known/jwks.json and ask /v1/introspect whether the lease is still
// active.
package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Type is the backend type name in configuration.
const Type = "jwt"

// Options are the jwt backend's configuration keys.
type Options struct {
	// Algorithm is ES256 (default) or EdDSA. RSA is not offered.
	Algorithm string `yaml:"algorithm"`
	// KeyRetention is how long a rotated-out key stays in the JWKS so tokens
	// it signed still verify (default 24h; must exceed the longest role
	// max_ttl). It must be positive: with 0 a rotation would unpublish the
	// key that signed every live token.
	KeyRetention config.Duration `yaml:"key_retention"`
}

// SetDefaults sets algorithm ES256 and key_retention 24h; New decodes the
// options on top of them, so only absent keys take a default.
func (o *Options) SetDefaults() {
	o.Algorithm = "ES256"
	o.KeyRetention = config.Duration(24 * time.Hour)
}

// RoleParams are a role's jwt-specific parameters.
type RoleParams struct {
	// Claims are extra static claims added to every token of the role. They
	// cannot override the registered claims.
	Claims map[string]any `yaml:"claims"`
}

// Backend signs tokens with its current key.
type Backend struct {
	name    string
	issuer  string
	opts    Options
	kek     kek.Ring // seals under Current; opens under Previous too during a switch
	keyPath string
	deps    backends.Deps

	mu   sync.RWMutex
	keys []*signingKey // newest first; keys[0] signs
	// unreadable are entries of the key file that could not be unsealed;
	// they are not used, and are written back untouched.
	unreadable []sealedKey
	// file is the key file as the keys were last read from or written
	// to it, checkedAt when it was last compared with the disk (refresh).
	file      os.FileInfo
	checkedAt time.Time

	roles sync.Map // role name -> RoleParams
}

var (
	_ backends.Backend       = (*Backend)(nil)
	_ backends.Renewer       = (*Backend)(nil)
	_ backends.KeyPublisher  = (*Backend)(nil)
	_ backends.Introspector  = (*Backend)(nil)
	_ backends.RoleChecker   = (*Backend)(nil)
	_ backends.ScopeChecker  = (*Backend)(nil)
	_ backends.SelfContained = (*Backend)(nil)
	_ backends.KeyRotator    = (*Backend)(nil)
	_ backends.KEKRewrapper  = (*Backend)(nil)
)

// SelfContained marks the backend as side-effect free: minting only signs,
// so a crash before the lease commit leaves nothing to revoke.
func (b *Backend) SelfContained() {}

// New builds a jwt backend. It loads its keys from
// DataDir/<name>/keys.json (decrypting them with deps.KEK) or creates the
// first key.
func New(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	var o Options
	o.SetDefaults()
	if err := config.DecodeOptions(options, &o); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if o.Algorithm != "ES256" && o.Algorithm != "EdDSA" {
		return nil, fmt.Errorf("backend %s: algorithm %q must be ES256 or EdDSA", name, o.Algorithm)
	}
	if o.KeyRetention <= 0 {
		return nil, fmt.Errorf("backend %s: key_retention must be positive (how long a rotated-out key stays published); it is %s", name, o.KeyRetention)
	}
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	ring := kek.Ring{Current: deps.KEK, Previous: deps.PreviousKEK}
	if err := ring.Check(); err != nil {
		return nil, fmt.Errorf("backend %s: signing keys are encrypted at rest: %w (set VALET_KEK or kek_file)", name, err)
	}
	b := &Backend{
		name: name, issuer: deps.PublicURL, opts: o, kek: ring, deps: deps,
		keyPath: filepath.Join(deps.DataDir, name, "keys.json"),
	}
	keys, unreadable, err := loadKeys(b.keyPath, ring, name)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if len(unreadable) > 0 {
		log := deps.Logger
		if log == nil {
			log = slog.Default()
		}
		kids := make([]string, len(unreadable))
		for i, u := range unreadable {
			kids[i] = u.KID
		}
		log.Error("signing keys that cannot be unsealed are skipped (not published, not used) and kept in the key file untouched",
			"backend", name, "path", b.keyPath, "kids", kids)
	}
	b.unreadable = unreadable
	if len(keys) == 0 {
		if keys, err = b.createFirstKey(); err != nil {
			return nil, fmt.Errorf("backend %s: %w", name, err)
		}
	}
	b.keys = keys
	b.file, _ = os.Stat(b.keyPath)
	b.checkedAt = deps.Clock.Now()
	return b, nil
}

// refresh reads the key file again when another process replaced it
// since this backend last read or wrote it: replicas share data_dir, and
// the leader's signing-key rotation writes the file for all of them. It
// compares at most once a second (by the backend's clock); a file that
// cannot be read keeps the keys in use (and is logged).
func (b *Backend) refresh() {
	now := b.deps.Clock.Now()
	b.mu.RLock()
	due := now.Sub(b.checkedAt) >= time.Second
	b.mu.RUnlock()
	if !due {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.checkedAt) < time.Second {
		return
	}
	b.checkedAt = now
	fi, err := os.Stat(b.keyPath)
	if err != nil || (b.file != nil && os.SameFile(fi, b.file) && fi.ModTime().Equal(b.file.ModTime()) && fi.Size() == b.file.Size()) {
		return
	}
	keys, unreadable, err := loadKeys(b.keyPath, b.kek, b.name)
	if err == nil && len(keys) == 0 {
		err = errors.New("it holds no key")
	}
	if err != nil {
		log := b.deps.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Error("the signing key file changed and cannot be read; signing on with the keys in use", "backend", b.name, "path", b.keyPath, "err", err)
		return
	}
	b.keys, b.unreadable, b.file = keys, unreadable, fi
}

// createFirstKey creates the key file with a first key, unless another
// replica on the same data_dir created it meanwhile: then its keys are
// the ones to use. A file there already without a usable key (an empty
// list) gets the new key.
func (b *Backend) createFirstKey() ([]*signingKey, error) {
	k, err := generateKey(b.opts.Algorithm, b.deps.Clock.Now())
	if err != nil {
		return nil, err
	}
	keys := []*signingKey{k}
	s, err := seal(b.kek.Current, b.name, k)
	if err != nil {
		return nil, err
	}
	err = kek.CreateFile(b.keyPath, keyFile{Keys: []sealedKey{s}})
	if errors.Is(err, fs.ErrExist) {
		theirs, unreadable, lerr := loadKeys(b.keyPath, b.kek, b.name)
		if lerr != nil {
			return nil, lerr
		}
		if len(theirs) > 0 {
			b.unreadable = unreadable
			return theirs, nil
		}
		err = saveKeys(b.keyPath, b.kek.Current, b.name, keys, b.unreadable)
	}
	if err != nil {
		return nil, fmt.Errorf("save keys: %w", err)
	}
	return keys, nil
}

// CheckRole validates a role's params.
func (b *Backend) CheckRole(r backends.RoleSpec) error {
	var p RoleParams
	if err := config.DecodeOptions(r.Params, &p); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	for k := range p.Claims {
		if reservedClaims[k] {
			return fmt.Errorf("params.claims.%s: registered claims are set by valet and cannot be overridden", k)
		}
	}
	// A token lives at most the role's max_ttl after it was signed; the
	// key that signed it must stay published that long after a rotation.
	if r.MaxTTL > b.opts.KeyRetention.D() {
		return fmt.Errorf("max_ttl (%s) is longer than backend %s's key_retention (%s): a token could outlive the published key "+
			"that verifies it after a rotation; raise key_retention or lower max_ttl", r.MaxTTL, b.name, b.opts.KeyRetention)
	}
	b.roles.Store(r.Name, p)
	return nil
}

var reservedClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true, "jti": true,
	"scope": true, "client_id": true, "role": true,
}

// Mint signs a token that expires at req.ExpiresAt.
func (b *Backend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	scopes, aud, err := narrow(req)
	if err != nil {
		return nil, err
	}
	scope := strings.Join(scopes, " ")
	tok, kid, err := b.sign(req, scope, aud)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_at":   req.ExpiresAt.UTC().Format(time.RFC3339),
	}
	if scope != "" {
		data["scope"] = scope
	}
	return &backends.Credential{
		Handle:    req.CorrelationID,
		ExpiresAt: req.ExpiresAt,
		Data:      data,
		Details:   map[string]string{"kid": kid, "scope": scope},
	}, nil
}

// CheckScope reports, with the error Mint would return, whether scope is
// an acceptable narrowing of role.
func (b *Backend) CheckScope(role backends.RoleSpec, scope map[string]any) error {
	_, _, err := narrow(backends.MintRequest{Role: role, Scope: scope})
	return err
}

// narrow applies the client's optional scope request: {"scopes": [...],
// "audience": [...]}, each a subset of the role's. An empty audience list is
// refused: a token without aud is a widening for resource servers that do
// not insist on one.
func narrow(req backends.MintRequest) (scopes, aud []string, err error) {
	scopes, aud = req.Role.Scopes, req.Role.Audience
	for k, v := range req.Scope {
		switch k {
		case "scopes", "audience":
			list, ok := backends.ScopeStrings(v)
			if !ok {
				return nil, nil, backends.Errorf(backends.ErrInvalid, "scope.%s must be a list of strings", k)
			}
			if k == "audience" && len(list) == 0 {
				return nil, nil, backends.Errorf(backends.ErrInvalid, "scope.audience must name at least one of role %s's audiences %v", req.Role.Name, req.Role.Audience)
			}
			allowed := req.Role.Scopes
			if k == "audience" {
				allowed = req.Role.Audience
			}
			for _, s := range list {
				if !slices.Contains(allowed, s) {
					return nil, nil, backends.Errorf(backends.ErrInvalid, "scope.%s: %q is not granted by role %s (allowed: %v)", k, s, req.Role.Name, allowed)
				}
			}
			if k == "scopes" {
				scopes = list
			} else {
				aud = list
			}
		default:
			return nil, nil, backends.Errorf(backends.ErrInvalid, "scope.%s is not understood by the jwt backend (use scopes or audience)", k)
		}
	}
	return scopes, aud, nil
}

// Renew reissues the token with the same jti and a later exp: a signed
// token cannot be extended in place.
func (b *Backend) Renew(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
	c, err := b.Mint(ctx, req)
	if err != nil {
		return nil, err
	}
	return &backends.Renewal{ExpiresAt: c.ExpiresAt, Data: c.Data}, nil
}

// Revoke has nothing to do at a backend: a valet JWT cannot be recalled
// from whoever holds it, but introspection answers inactive as soon as its
// lease has ended, and its exp bounds it.
func (b *Backend) Revoke(ctx context.Context, ref backends.Ref) error { return nil }

type claims struct {
	Iss      string `json:"iss"`
	Sub      string `json:"sub"`
	Aud      any    `json:"aud,omitempty"`
	Exp      int64  `json:"exp"`
	Nbf      int64  `json:"nbf"`
	Iat      int64  `json:"iat"`
	Jti      string `json:"jti"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope,omitempty"`
	Role     string `json:"role"`
}

// sign returns the compact JWS of the token's claims and the kid of the
// key that signed it. scope is the space-separated scope claim ("" leaves
// it out).
func (b *Backend) sign(req backends.MintRequest, scope string, aud []string) (string, string, error) {
	c := claims{
		Iss: b.issuer, Sub: req.AgentID, Exp: req.ExpiresAt.Unix(), Nbf: req.IssuedAt.Unix(), Iat: req.IssuedAt.Unix(),
		Jti: req.CorrelationID, ClientID: req.AgentID, Scope: scope, Role: req.Role.Name,
	}
	switch len(aud) {
	case 0:
	case 1:
		c.Aud = aud[0]
	default:
		c.Aud = aud
	}
	var payload []byte
	var err error
	if p, ok := b.roles.Load(req.Role.Name); ok && len(p.(RoleParams).Claims) > 0 {
		payload, err = json.Marshal(c.merged(p.(RoleParams).Claims))
	} else {
		payload, err = json.Marshal(c)
	}
	if err != nil {
		return "", "", err
	}
	k := b.signingKey(b.deps.Clock.Now())
	// One buffer holds the signing input and then the whole token; both
	// algorithms' signatures are 64 bytes, 86 in base64url.
	tok := make([]byte, 0, len(k.header)+1+base64.RawURLEncoding.EncodedLen(len(payload))+1+86)
	tok = append(tok, k.header...)
	tok = append(tok, '.')
	tok = base64.RawURLEncoding.AppendEncode(tok, payload)
	sig, err := signJWS(k, tok)
	if err != nil {
		return "", "", err
	}
	tok = append(tok, '.')
	tok = base64.RawURLEncoding.AppendEncode(tok, sig)
	return string(tok), k.kid, nil
}

// merged is c as a map with the role's static claims merged after the
// registered ones (CheckRole refuses role claims that name a registered
// claim). Marshalled, it is the same JSON as a round trip of c's own
// encoding through a map: the same keys (aud and scope only when set), in
// sorted order, and integral numbers printed alike as int64 or float64.
func (c *claims) merged(extra map[string]any) map[string]any {
	m := make(map[string]any, 10+len(extra))
	m["iss"], m["sub"], m["exp"], m["nbf"], m["iat"] = c.Iss, c.Sub, c.Exp, c.Nbf, c.Iat
	m["jti"], m["client_id"], m["role"] = c.Jti, c.ClientID, c.Role
	if c.Aud != nil {
		m["aud"] = c.Aud
	}
	if c.Scope != "" {
		m["scope"] = c.Scope
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// signJWS produces a JWS signature: r||s (32 bytes each) for ES256, the
// plain signature for EdDSA.
func signJWS(k *signingKey, input []byte) ([]byte, error) {
	switch priv := k.priv.(type) {
	case *ecdsa.PrivateKey:
		h := sha256.Sum256(input)
		r, s, err := ecdsa.Sign(rand.Reader, priv, h[:])
		if err != nil {
			return nil, err
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out, nil
	case ed25519.PrivateKey:
		return priv.Sign(rand.Reader, input, crypto.Hash(0))
	}
	return nil, errors.New("unsupported key type")
}

// PublicJWKs returns the current key and rotated-out keys still retained.
func (b *Backend) PublicJWKs() []map[string]any {
	b.refresh()
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]map[string]any, 0, len(b.keys))
	for _, k := range b.keys {
		out = append(out, k.jwk())
	}
	return out
}

// Rotate makes a new key the signing key at once, without
// pre-publication (RotateKey(now, now)).
func (b *Backend) Rotate(now time.Time) error {
	_, err := b.RotateKey(now, now)
	return err
}

// RotateKey implements backends.KeyRotator: the new key is published at
// once and signs from activateAt (or from when the newest key published
// before it starts, if later). A key is needed until every token it
// signed has expired: it stops signing when the key after it starts, and
// stays published for key_retention after that; a rotation drops the keys
// past it. The key file is written (sealed under the KEK) before the
// rotation takes effect.
func (b *Backend) RotateKey(now, activateAt time.Time) (backends.KeyRotation, error) {
	k, err := generateKey(b.opts.Algorithm, now)
	if err != nil {
		return backends.KeyRotation{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.keys) > 0 {
		activateAt = maxTime(activateAt, b.keys[0].activeFrom())
	}
	k.notBefore = maxTime(activateAt, now).UTC()
	keys := []*signingKey{k}
	var dropped []string
	for i, old := range b.keys {
		// The key before it in the list (newer) replaced it when it
		// started signing.
		next := k
		if i > 0 {
			next = b.keys[i-1]
		}
		if retiredAt := next.activeFrom(); retiredAt.After(now) || now.Sub(retiredAt) < b.opts.KeyRetention.D() {
			keys = append(keys, old)
		} else {
			dropped = append(dropped, old.kid)
		}
	}
	if err := saveKeys(b.keyPath, b.kek.Current, b.name, keys, b.unreadable); err != nil {
		return backends.KeyRotation{}, err
	}
	b.keys = keys
	b.file, _ = os.Stat(b.keyPath)
	r := backends.KeyRotation{KeyID: k.kid, ActiveFrom: k.notBefore, Dropped: dropped}
	for _, k := range keys {
		r.Published = append(r.Published, k.kid)
	}
	return r, nil
}

// RewrapKEK implements backends.KEKRewrapper: the keys of the key file
// that only the previous KEK opens are sealed again under the current
// one, in one atomic write of the file, while no rotation writes it.
func (b *Backend) RewrapKEK(ctx context.Context) (kek.Report, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return kek.RewrapFile(b.keyPath, b.kek, keyValues(b.name))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// signingKey returns the key that signs at now: the newest key that has
// started signing (the oldest key if none has, which cannot happen once
// the first key exists).
func (b *Backend) signingKey(now time.Time) *signingKey {
	b.refresh()
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, k := range b.keys {
		if !k.activeFrom().After(now) {
			return k
		}
	}
	return b.keys[len(b.keys)-1]
}

// ErrNotOurs is returned by Introspect for tokens this backend did not sign.
var ErrNotOurs = errors.New("token was not issued by this backend")

// Introspect verifies a token's signature and issuer.
func (b *Backend) Introspect(token string) (*backends.TokenInfo, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, ErrNotOurs
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, ErrNotOurs
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal(hb, &h) != nil {
		return nil, ErrNotOurs
	}
	b.refresh()
	b.mu.RLock()
	var key *signingKey
	for _, k := range b.keys {
		if k.kid == h.Kid {
			key = k
		}
	}
	b.mu.RUnlock()
	if key == nil || key.alg != h.Alg || parts[0] != key.header {
		return nil, ErrNotOurs
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !verifyJWS(key, []byte(parts[0]+"."+parts[1]), sig) {
		return nil, ErrNotOurs
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, ErrNotOurs
	}
	var m map[string]any
	if err := json.Unmarshal(pb, &m); err != nil {
		return nil, ErrNotOurs
	}
	if m["iss"] != b.issuer {
		return nil, ErrNotOurs
	}
	jti, _ := m["jti"].(string)
	return &backends.TokenInfo{LeaseID: jti, Claims: m}, nil
}

func verifyJWS(k *signingKey, input, sig []byte) bool {
	switch pub := k.priv.Public().(type) {
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return false
		}
		h := sha256.Sum256(input)
		return ecdsa.Verify(pub, h[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case ed25519.PublicKey:
		return ed25519.Verify(pub, input, sig)
	}
	return false
}
