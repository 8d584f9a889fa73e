package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	_ "crypto/sha256" // for the kid thumbprint
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/leases/clock"
)

// File names LoadOrCreateDevIssuer uses in its directory.
const (
	DevIssuerKeyFile  = "dev-issuer-key.json"
	DevIssuerJWKSFile = "dev-issuer-jwks.json"
)

// devTokenTTL is the lifetime Sign gives a token that sets no exp.
const devTokenTTL = 10 * time.Minute

// DevIssuer is a local ES256 attestation issuer for `valet dev` and tests.
// It signs whatever claims it is given, including invalid ones, so it must
// never be trusted by a production configuration. It is safe for
// concurrent use.
type DevIssuer struct {
	issuer string
	priv   jwk.Key // ES256 private key with kid and alg set
	pub    jwk.Key
	signer jws.Signer
	clock  clock.Clock

	mu       sync.Mutex
	jwksPath string
}

// LoadOrCreateDevIssuer loads the private key in dir/dev-issuer-key.json, or
// creates it (mode 0600, dir created 0700) if the file does not exist, and
// writes the public JWKS to dir/dev-issuer-jwks.json each time, so a valet
// configuration can name that file as the issuer's jwks_file. It returns an
// error if the key file exists but is not an ES256 (P-256) private JWK, or
// if a file cannot be written.
func LoadOrCreateDevIssuer(dir, issuerURL string) (*DevIssuer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("attest: dev issuer: %w", err)
	}
	keyPath := filepath.Join(dir, DevIssuerKeyFile)
	var priv jwk.Key
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		priv, err = jwk.ParseKey(b)
		if err != nil {
			return nil, fmt.Errorf("attest: dev issuer key %s: %w", keyPath, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		priv, err = newDevKey()
		if err != nil {
			return nil, err
		}
		b, err := json.MarshalIndent(priv, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("attest: dev issuer: %w", err)
		}
		if err := writeFileAtomic(keyPath, b, 0o600); err != nil {
			return nil, fmt.Errorf("attest: dev issuer: %w", err)
		}
	default:
		return nil, fmt.Errorf("attest: dev issuer: %w", err)
	}
	d, err := newDevIssuer(issuerURL, priv)
	if err != nil {
		return nil, fmt.Errorf("attest: dev issuer key %s: %w", keyPath, err)
	}
	if err := d.WriteJWKS(filepath.Join(dir, DevIssuerJWKSFile)); err != nil {
		return nil, err
	}
	return d, nil
}

// NewDevIssuer returns a DevIssuer with a fresh in-memory key, for tests.
// WriteJWKS puts its public key where a Verifier can load it.
func NewDevIssuer(issuerURL string) (*DevIssuer, error) {
	priv, err := newDevKey()
	if err != nil {
		return nil, err
	}
	return newDevIssuer(issuerURL, priv)
}

func newDevKey() (jwk.Key, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("attest: generate dev issuer key: %w", err)
	}
	priv, err := jwk.FromRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("attest: dev issuer key: %w", err)
	}
	// The kid is the key's RFC 7638 thumbprint: stable for the key, and
	// different for every new key.
	tp, err := priv.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("attest: dev issuer key: %w", err)
	}
	for k, v := range map[string]any{
		jwk.KeyIDKey:     base64.RawURLEncoding.EncodeToString(tp),
		jwk.AlgorithmKey: jwa.ES256,
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := priv.Set(k, v); err != nil {
			return nil, fmt.Errorf("attest: dev issuer key: %w", err)
		}
	}
	return priv, nil
}

func newDevIssuer(issuerURL string, priv jwk.Key) (*DevIssuer, error) {
	var raw ecdsa.PrivateKey
	if priv.KeyType() != jwa.EC || priv.Raw(&raw) != nil || raw.Curve != elliptic.P256() {
		return nil, errors.New("not an ES256 (EC P-256) private key")
	}
	if priv.KeyID() == "" {
		return nil, errors.New("key has no kid")
	}
	pub, err := priv.PublicKey()
	if err != nil {
		return nil, err
	}
	signer, err := jws.NewSigner(jwa.ES256)
	if err != nil {
		return nil, err
	}
	return &DevIssuer{issuer: issuerURL, priv: priv, pub: pub, signer: signer, clock: clock.Real{}}, nil
}

// SetClock makes Sign fill iat and exp from clk instead of the wall clock,
// for tests with a fake clock. Call it before the issuer is shared.
func (d *DevIssuer) SetClock(clk clock.Clock) { d.clock = clk }

// Issuer returns the iss the issuer puts in its tokens.
func (d *DevIssuer) Issuer() string { return d.issuer }

// KeyID returns the kid of the issuer's key.
func (d *DevIssuer) KeyID() string { return d.priv.KeyID() }

// Key returns the private key, for tests that craft tokens by hand.
func (d *DevIssuer) Key() jwk.Key { return d.priv }

// PublicJWKS returns the JWK Set with the issuer's public key.
func (d *DevIssuer) PublicJWKS() ([]byte, error) {
	set := jwk.NewSet()
	if err := set.AddKey(d.pub); err != nil {
		return nil, err
	}
	return json.MarshalIndent(set, "", "  ")
}

// WriteJWKS writes the public JWK Set to path (mode 0644, replaced
// atomically) and remembers path for JWKSPath.
func (d *DevIssuer) WriteJWKS(path string) error {
	b, err := d.PublicJWKS()
	if err != nil {
		return fmt.Errorf("attest: dev issuer JWKS: %w", err)
	}
	if err := writeFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("attest: dev issuer JWKS: %w", err)
	}
	d.mu.Lock()
	d.jwksPath = path
	d.mu.Unlock()
	return nil
}

// JWKSPath returns where the public JWKS was last written; "" if never.
func (d *DevIssuer) JWKSPath() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.jwksPath
}

// Sign returns a compact ES256 JWS of claims with header kid and typ "JWT".
// If claims lack iss, iat or exp, it sets iss to the issuer (unless that is
// empty, as for a SPIFFE issuer known only by its trust domain), iat to now
// and exp to now+10m; any other claim, valid or not, is signed as given, and a
// claim whose value is nil is left out (so a test can make a token without
// exp). It does not modify claims.
func (d *DevIssuer) Sign(claims map[string]any) (string, error) {
	return d.SignWithHeaders(claims, nil)
}

// SignWithHeaders is Sign with extra protected header parameters, which
// replace the defaults (alg ES256, kid, typ JWT) of the same name. The
// signature is always ES256 by the issuer's key, whatever alg the header
// claims, so tests can build hostile tokens (a forged alg, crit, b64, jku,
// an embedded jwk, ...). A header value of nil removes that parameter.
func (d *DevIssuer) SignWithHeaders(claims map[string]any, headers map[string]any) (string, error) {
	now := d.clock.Now()
	body := make(map[string]any, len(claims)+3)
	for k, v := range claims {
		body[k] = v
	}
	if _, ok := body["iss"]; !ok && d.issuer != "" {
		body["iss"] = d.issuer
	}
	if _, ok := body["iat"]; !ok {
		body["iat"] = now.Unix()
	}
	if _, ok := body["exp"]; !ok {
		body["exp"] = now.Add(devTokenTTL).Unix()
	}
	for k, v := range body {
		if v == nil {
			delete(body, k)
		}
	}
	hdr := map[string]any{"alg": "ES256", "kid": d.priv.KeyID(), "typ": "JWT"}
	for k, v := range headers {
		if v == nil {
			delete(hdr, k)
			continue
		}
		hdr[k] = v
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return "", fmt.Errorf("attest: dev issuer header: %w", err)
	}
	pb, err := json.Marshal(body)
	if err != nil {
		return "", fmt.Errorf("attest: dev issuer claims: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(pb)
	sig, err := d.signer.Sign([]byte(input), d.priv)
	if err != nil {
		return "", fmt.Errorf("attest: dev issuer sign: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// writeFileAtomic writes b to a temporary file beside path and renames it
// into place, so a reader never sees half a key.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
