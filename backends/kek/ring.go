package kek

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// Ring is the key-encryption keys valet holds. Current seals every value;
// Previous, set only while valet switches from one KEK to another, still
// opens the values it sealed until each is re-wrapped under Current.
type Ring struct {
	Current  []byte
	Previous []byte // nil outside a switch
}

// Check returns an error unless Current, and Previous when set, have the
// length of a KEK and differ.
func (r Ring) Check() error {
	if err := Check(r.Current); err != nil {
		return err
	}
	if r.Previous == nil {
		return nil
	}
	if err := Check(r.Previous); err != nil {
		return fmt.Errorf("the previous key-encryption key: %w", err)
	}
	if hmac.Equal(r.Current, r.Previous) {
		return errors.New("the previous key-encryption key is the current one: set the new key as the KEK and the old one as the previous KEK")
	}
	return nil
}

// Seal seals plaintext under Current (see Seal).
func (r Ring) Seal(aad, plaintext []byte) (Sealed, error) { return Seal(r.Current, aad, plaintext) }

// Open opens s under Current, else under Previous; underPrevious reports
// that only Previous opened it, so it still needs re-wrapping. It returns
// ErrOpen when neither opens it, and another error when a key is not a
// KEK.
func (r Ring) Open(aad []byte, s Sealed) (plaintext []byte, underPrevious bool, err error) {
	out, err := Open(r.Current, aad, s)
	if !errors.Is(err, ErrOpen) || r.Previous == nil {
		return out, false, err
	}
	out, err = Open(r.Previous, aad, s)
	return out, err == nil, err
}

// Rewrap returns s sealed under Current: s itself when Current opens it
// (changed false), else what Previous opens sealed anew under Current
// (changed true). It returns ErrOpen when neither opens it.
func (r Ring) Rewrap(aad []byte, s Sealed) (out Sealed, changed bool, err error) {
	plain, prev, err := r.Open(aad, s)
	if err != nil || !prev {
		return s, false, err
	}
	out, err = r.Seal(aad, plain)
	clear(plain)
	return out, err == nil, err
}

// ID names a key-encryption key without revealing it, for logs, audit
// records and messages to operators: the first 8 bytes of
// HMAC-SHA256(key, "valet/kek-id"), in hex. It is "" for no key.
func ID(key []byte) string {
	if len(key) == 0 {
		return ""
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("valet/kek-id"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// Report is what a re-wrap found among the values it went through.
type Report struct {
	// Current counts the values Current already sealed; Rewrapped those
	// Previous sealed, now sealed under Current; Unreadable those that
	// neither opens (damaged, or sealed under another KEK), left as they
	// were.
	Current    int `json:"current"`
	Rewrapped  int `json:"rewrapped"`
	Unreadable int `json:"unreadable"`
}

// Add adds o's counts to r.
func (r *Report) Add(o Report) {
	r.Current += o.Current
	r.Rewrapped += o.Rewrapped
	r.Unreadable += o.Unreadable
}

// Value is one sealed value of a record, with the additional
// authenticated data it was sealed with.
type Value struct {
	AAD    []byte
	Sealed *Sealed
}

// RewrapFile re-wraps under r.Current the sealed values of the JSON file
// at path (read into a T; values lists the sealed values it holds) that
// only r.Previous opens, and writes the file back once, atomically
// (SaveFile), if any changed: a crash leaves the file as it was or wholly
// re-wrapped. A missing file has nothing to re-wrap. Values neither key
// opens are counted Unreadable and kept as they were.
func RewrapFile[T any](path string, r Ring, values func(*T) []Value) (Report, error) {
	var rep Report
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return rep, nil
	}
	if err != nil {
		return rep, err
	}
	var f T
	if err := json.Unmarshal(b, &f); err != nil {
		return rep, fmt.Errorf("%s: %w", path, err)
	}
	for _, v := range values(&f) {
		out, changed, err := r.Rewrap(v.AAD, *v.Sealed)
		switch {
		case errors.Is(err, ErrOpen):
			rep.Unreadable++
		case err != nil:
			return Report{}, fmt.Errorf("%s: %w", path, err)
		case changed:
			*v.Sealed = out
			rep.Rewrapped++
		default:
			rep.Current++
		}
	}
	if rep.Rewrapped > 0 {
		if err := SaveFile(path, f); err != nil {
			return Report{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	return rep, nil
}
