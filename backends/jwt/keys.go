package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/valet-broker/valet/backends/kek"
)

// signingKey is one key pair. The private half exists only in memory; on
// disk it is sealed with AES-256-GCM under the key-encryption key.
type signingKey struct {
	kid       string
	alg       string // ES256 or EdDSA
	createdAt time.Time
	// notBefore is when the key starts signing (zero: at createdAt); it
	// is published from createdAt.
	notBefore time.Time
	priv      crypto.Signer
	// header is the encoded protected header, computed once per key.
	header string
}

// keyFile is the on-disk form of a backend's keys.
type keyFile struct {
	Keys []sealedKey `json:"keys"`
}

type sealedKey struct {
	KID       string    `json:"kid"`
	Alg       string    `json:"alg"`
	CreatedAt time.Time `json:"created_at"`
	// NotBefore is when the key starts signing (absent: at CreatedAt).
	NotBefore time.Time `json:"not_before,omitzero"`
	// Sealed is the PKCS#8 DER of the private key, sealed under the KEK.
	kek.Sealed
}

func generateKey(alg string, now time.Time) (*signingKey, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("unsupported algorithm %q (use ES256 or EdDSA)", alg)
	}
	if err != nil {
		return nil, err
	}
	return newSigningKey(alg, now, priv)
}

func newSigningKey(alg string, created time.Time, priv crypto.Signer) (*signingKey, error) {
	pub, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	// The kid is derived from the public key, so it is stable and unique.
	sum := sha256.Sum256(pub)
	k := &signingKey{kid: base64.RawURLEncoding.EncodeToString(sum[:12]), alg: alg, createdAt: created.UTC(), priv: priv}
	h, err := json.Marshal(map[string]string{"alg": alg, "kid": k.kid, "typ": "at+jwt"})
	if err != nil {
		return nil, err
	}
	k.header = base64.RawURLEncoding.EncodeToString(h)
	return k, nil
}

// activeFrom is when the key starts (or started) signing.
func (k *signingKey) activeFrom() time.Time {
	if k.notBefore.After(k.createdAt) {
		return k.notBefore
	}
	return k.createdAt
}

// jwk returns the public key as a JSON Web Key.
func (k *signingKey) jwk() map[string]any {
	m := map[string]any{"kid": k.kid, "alg": k.alg, "use": "sig"}
	switch pub := k.priv.Public().(type) {
	case *ecdsa.PublicKey:
		// Bytes is the uncompressed point 0x04 || X || Y.
		pt, _ := pub.Bytes()
		m["kty"] = "EC"
		m["crv"] = "P-256"
		m["x"] = b64(pt[1:33])
		m["y"] = b64(pt[33:65])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = b64(pub)
	}
	return m
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func aad(backend, kid string) []byte { return []byte("valet/jwt-key/" + backend + "/" + kid) }

func seal(key []byte, backend string, k *signingKey) (sealedKey, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return sealedKey{}, err
	}
	sealed, err := kek.Seal(key, aad(backend, k.kid), der)
	if err != nil {
		return sealedKey{}, err
	}
	return sealedKey{KID: k.kid, Alg: k.alg, CreatedAt: k.createdAt, NotBefore: k.notBefore, Sealed: sealed}, nil
}

func unseal(ring kek.Ring, backend string, s sealedKey) (*signingKey, error) {
	der, _, err := ring.Open(aad(backend, s.KID), s.Sealed)
	if errors.Is(err, kek.ErrOpen) {
		return nil, fmt.Errorf("key %s: cannot decrypt (wrong key-encryption key? while switching to a new one, set the old one as VALET_KEK_PREVIOUS or kek_previous_file)", s.KID)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", s.KID, err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", s.KID, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: not a signing key", s.KID)
	}
	k, err := newSigningKey(s.Alg, s.CreatedAt, signer)
	if err != nil {
		return nil, err
	}
	if k.kid != s.KID {
		return nil, fmt.Errorf("key %s: kid does not match the key", s.KID)
	}
	k.notBefore = s.NotBefore.UTC()
	return k, nil
}

// loadKeys reads and unseals the backend's keys, newest first, under
// either key of ring. A key that
// cannot be unsealed (a damaged entry) is skipped and returned, still
// sealed, in unreadable, so that saving keeps it untouched: one bad entry
// neither stops the backend nor is destroyed by the next rotation. If no
// key can be unsealed (a wrong key-encryption key) it fails.
func loadKeys(path string, ring kek.Ring, backend string) (keys []*signingKey, unreadable []sealedKey, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var firstErr error
	for _, s := range f.Keys {
		k, err := unseal(ring, backend, s)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", path, err)
			}
			unreadable = append(unreadable, s)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 && firstErr != nil {
		return nil, nil, firstErr
	}
	return keys, unreadable, nil
}

// saveKeys writes the sealed keys, then the entries in keep as they were,
// atomically (temp file, fsync, rename).
func saveKeys(path string, key []byte, backend string, keys []*signingKey, keep []sealedKey) error {
	var f keyFile
	for _, k := range keys {
		s, err := seal(key, backend, k)
		if err != nil {
			return err
		}
		f.Keys = append(f.Keys, s)
	}
	f.Keys = append(f.Keys, keep...)
	return kek.SaveFile(path, f)
}

// keyValues lists the sealed keys of a key file for kek.RewrapFile.
func keyValues(backend string) func(*keyFile) []kek.Value {
	return func(f *keyFile) []kek.Value {
		out := make([]kek.Value, len(f.Keys))
		for i := range f.Keys {
			out[i] = kek.Value{AAD: aad(backend, f.Keys[i].KID), Sealed: &f.Keys[i].Sealed}
		}
		return out
	}
}
