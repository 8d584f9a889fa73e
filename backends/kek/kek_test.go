package kek

import (
	"bytes"
	"errors"
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
