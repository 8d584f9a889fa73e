package kek

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSealOpen(t *testing.T) {
	key := bytes.Repeat([]byte{7}, Size)
	other := bytes.Repeat([]byte{8}, Size)
	secret := []byte("ghs_the-secret")
	s, err := Seal(key, []byte("record-1"), secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(s.Ciphertext, secret) {
		t.Fatal("the ciphertext holds the plaintext")
	}
	again, _ := Seal(key, []byte("record-1"), secret)
	if bytes.Equal(again.Nonce, s.Nonce) {
		t.Fatal("two seals used the same nonce")
	}
	flipped := Sealed{Nonce: s.Nonce, Ciphertext: append([]byte{}, s.Ciphertext...)}
	flipped.Ciphertext[0] ^= 1
	for _, c := range []struct {
		name string
		key  []byte
		aad  string
		s    Sealed
		want error
	}{
		{"the same key and record", key, "record-1", s, nil},
		{"another record", key, "record-2", s, ErrOpen},
		{"another key", other, "record-1", s, ErrOpen},
		{"a damaged ciphertext", key, "record-1", flipped, ErrOpen},
		{"a short nonce", key, "record-1", Sealed{Nonce: s.Nonce[:4], Ciphertext: s.Ciphertext}, ErrOpen},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Open(c.key, []byte(c.aad), c.s)
			if !errors.Is(err, c.want) {
				t.Fatalf("Open: %v, want %v", err, c.want)
			}
			if c.want == nil && !bytes.Equal(got, secret) {
				t.Fatalf("Open = %q", got)
			}
		})
	}
}

func TestShortKeyIsRefused(t *testing.T) {
	if _, err := Seal(make([]byte, 16), nil, []byte("x")); err == nil || errors.Is(err, ErrOpen) {
		t.Fatalf("Seal with a 16-byte key: %v, want a key-length error", err)
	}
	if _, err := Open(make([]byte, 31), nil, Sealed{}); err == nil || errors.Is(err, ErrOpen) {
		t.Fatalf("Open with a 31-byte key: %v, want a key-length error", err)
	}
}

// TestCreateFile: the first creator writes the file; a later one gets
// fs.ErrExist and changes nothing; no temporary file is left behind.
func TestCreateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "key.json")
	if err := CreateFile(path, map[string]string{"kid": "first"}); err != nil {
		t.Fatalf("first create: %v", err)
	}
	err := CreateFile(path, map[string]string{"kid": "second"})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second create: %v, want fs.ErrExist", err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.Contains(b, []byte(`"first"`)) {
		t.Fatalf("the file holds %s (%v), want the first creator's", b, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v (%v), want 0600", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("the directory holds %d entries, want only the file", len(entries))
	}
}
