package builtin

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/leases/audit"
)

// checkpointKeyFile is where the audit checkpoint key lives, under the data
// directory: its public half in clear, its private half sealed under the
// KEK (the way the jwt backend keeps its signing keys).
const checkpointKeyFile = "audit/checkpoint-key.json"

// checkpointKeyRecord is the key file's form.
type checkpointKeyRecord struct {
	KID       string    `json:"kid"`
	PublicKey []byte    `json:"public_key"` // raw Ed25519, base64 in JSON
	CreatedAt time.Time `json:"created_at"`
	// Sealed is the 32-byte Ed25519 seed sealed under the KEK.
	kek.Sealed
}

func checkpointKeyAAD(kid string) []byte { return []byte("valet/audit-checkpoint-key/" + kid) }

// CheckpointKeyPath is the key file of a data directory.
func CheckpointKeyPath(dataDir string) string { return filepath.Join(dataDir, checkpointKeyFile) }

// LoadCheckpointKey opens the checkpoint key of dataDir under either KEK
// of ring, creating it at now, sealed under ring.Current, if there is
// none.
func LoadCheckpointKey(dataDir string, ring kek.Ring, now time.Time) (ed25519.PrivateKey, error) {
	path := CheckpointKeyPath(dataDir)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		priv, cerr := createCheckpointKey(path, ring, now)
		if !errors.Is(cerr, fs.ErrExist) {
			return priv, cerr
		}
		// Another replica on the same data_dir created it meanwhile: its
		// key is the one.
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var rec checkpointKeyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	seed, _, err := ring.Open(checkpointKeyAAD(rec.KID), rec.Sealed)
	if errors.Is(err, kek.ErrOpen) && ring.Previous == nil {
		return nil, fmt.Errorf("%s: the checkpoint key cannot be unsealed: %w (while switching to a new key-encryption key, set the old one as VALET_KEK_PREVIOUS or kek_previous_file)", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: the checkpoint key cannot be unsealed: %w", path, err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: the checkpoint key is damaged", path)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	if audit.CheckpointKeyID(priv.Public().(ed25519.PublicKey)) != rec.KID {
		return nil, fmt.Errorf("%s: kid does not match the key", path)
	}
	return priv, nil
}

// createCheckpointKey creates the key file with a new key, unless a file
// is there already (an error matching fs.ErrExist).
func createCheckpointKey(path string, ring kek.Ring, now time.Time) (ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	kid := audit.CheckpointKeyID(pub)
	sealed, err := ring.Seal(checkpointKeyAAD(kid), priv.Seed())
	if err != nil {
		return nil, err
	}
	err = kek.CreateFile(path, checkpointKeyRecord{KID: kid, PublicKey: pub, CreatedAt: now.UTC(), Sealed: sealed})
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("save the checkpoint key: %w", err)
	}
	return priv, err
}

// RewrapCheckpointKey seals the checkpoint key of dataDir under
// ring.Current if only ring.Previous opens it (one atomic write of the
// key file); a data directory without the key has nothing to re-wrap.
func RewrapCheckpointKey(dataDir string, ring kek.Ring) (kek.Report, error) {
	return kek.RewrapFile(CheckpointKeyPath(dataDir), ring, func(rec *checkpointKeyRecord) []kek.Value {
		return []kek.Value{{AAD: checkpointKeyAAD(rec.KID), Sealed: &rec.Sealed}}
	})
}

// ReadCheckpointPublicKey reads the public checkpoint key of dataDir
// without the KEK (for `valet audit key --data-dir`).
func ReadCheckpointPublicKey(dataDir string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(CheckpointKeyPath(dataDir))
	if err != nil {
		return nil, err
	}
	var rec checkpointKeyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	if len(rec.PublicKey) != ed25519.PublicKeySize || audit.CheckpointKeyID(rec.PublicKey) != rec.KID {
		return nil, errors.New("the checkpoint key file is damaged")
	}
	return rec.PublicKey, nil
}

// CheckpointJWK is a checkpoint public key as a JSON Web Key (RFC 8037:
// kty OKP, crv Ed25519).
func CheckpointJWK(pub ed25519.PublicKey) map[string]any {
	return map[string]any{"kty": "OKP", "crv": "Ed25519", "x": base64.RawURLEncoding.EncodeToString(pub),
		"kid": audit.CheckpointKeyID(pub), "alg": "EdDSA", "use": "sig"}
}

// ParseCheckpointJWKs reads checkpoint public keys from a JWK set
// ({"keys": [...]}) or one JWK, as served at
// /.well-known/valet-audit-keys.json and printed by `valet audit key`.
func ParseCheckpointJWKs(b []byte) ([]ed25519.PublicKey, error) {
	type jwk struct {
		Kty, Crv, X, Kid string
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, err
	}
	if set.Keys == nil {
		var one jwk
		if err := json.Unmarshal(b, &one); err != nil {
			return nil, err
		}
		set.Keys = []jwk{one}
	}
	var out []ed25519.PublicKey
	for i, k := range set.Keys {
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if k.Kty != "OKP" || k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key %d is not an Ed25519 public key (kty OKP, crv Ed25519)", i)
		}
		if k.Kid != "" && k.Kid != audit.CheckpointKeyID(x) {
			return nil, fmt.Errorf("key %d: kid %q does not match the key", i, k.Kid)
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		return nil, errors.New("no keys")
	}
	return out, nil
}
