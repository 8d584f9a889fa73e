// Package kek seals small secrets at rest under valet's key-encryption key
// (KEK): AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce per
// value and additional authenticated data that binds each sealed value to
// the record it belongs to, so a sealed value copied into another record
// does not open. Backends use it for what they must keep on disk: the jwt
// backend's signing keys, the github backend's app keys and the tokens it
// keeps until it has revoked them, and the audit checkpoint key.
//
// A switch to a new KEK keeps valet running: a Ring holds the new KEK,
// which seals everything from then on, and the previous one, which still
// opens what it sealed; each owner of sealed values re-wraps them under
// the new KEK (RewrapFile for a file of records), and once nothing needs
// the previous KEK any more it can be removed.
package kek

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Size is the length of a key-encryption key in bytes (AES-256).
const Size = 32

// ErrOpen is returned by Open when a sealed value does not open: a wrong
// KEK, a damaged value, or a value sealed for another record.
var ErrOpen = errors.New("cannot decrypt (wrong key-encryption key, damaged value, or a value sealed for another record)")

// Sealed is a value sealed by Seal. Its JSON form is {"nonce", "ciphertext"}
// (both base64); embed it in a record to keep that shape.
type Sealed struct {
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"` // AES-256-GCM(plaintext), with the tag
}

// Check returns an error unless key has the length of a KEK.
func Check(key []byte) error {
	if len(key) != Size {
		return fmt.Errorf("the key-encryption key must be %d bytes (%d hex digits); it is %d bytes", Size, 2*Size, len(key))
	}
	return nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if err := Check(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts plaintext under key, bound to aad: Open needs the same aad.
// aad should name the record the value belongs to (for example
// "valet/jwt-key/<backend>/<kid>").
func Seal(key, aad, plaintext []byte) (Sealed, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return Sealed{}, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, err
	}
	return Sealed{Nonce: nonce, Ciphertext: gcm.Seal(nil, nonce, plaintext, aad)}, nil
}

// Open decrypts s, sealed by Seal under key with the same aad. It returns
// ErrOpen when the value does not open, and another error when key is not
// a KEK.
func Open(key, aad []byte, s Sealed) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(s.Nonce) != gcm.NonceSize() {
		return nil, ErrOpen
	}
	out, err := gcm.Open(nil, s.Nonce, s.Ciphertext, aad)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// SaveFile writes v as indented JSON to path with WriteFile: how files of
// sealed records are kept.
func SaveFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteFile(path, b)
}

// WriteFile writes b to path atomically and durably (a temporary file in
// the same directory, fsync, rename, fsync of the directory) with mode
// 0600, creating the directory (0700) if needed: a crash leaves the old
// content or the new, and the new once WriteFile has returned.
func WriteFile(path string, b []byte) error {
	tmp, err := writeTemp(path, b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	// The rename is durable once the directory's entry is.
	return syncDir(filepath.Dir(path))
}

// CreateFile writes v as indented JSON to path, as SaveFile does, unless
// a file is there already: then it returns an error matching
// fs.ErrExist and leaves the file alone. The check and the creation are
// one step (a hard link of the complete temporary file), so of several
// processes creating the same file at once (replicas on a shared
// data_dir creating a key) exactly one succeeds and the others read
// what it wrote.
func CreateFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := writeTemp(path, b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// writeTemp writes b, synced, to a new temporary file (mode 0600) beside
// path, creating the directory (0700) if needed, and returns its name.
func writeTemp(path string, b []byte) (string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return "", err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
