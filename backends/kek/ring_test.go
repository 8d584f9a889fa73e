package kek

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	oldKEK   = bytes.Repeat([]byte{1}, Size)
	newKEK   = bytes.Repeat([]byte{2}, Size)
	otherKEK = bytes.Repeat([]byte{3}, Size)
)

func mustSeal(t *testing.T, key []byte, aad, plain string) Sealed {
	t.Helper()
	s, err := Seal(key, []byte(aad), []byte(plain))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A ring opens under the current KEK, or under the previous one and says
// so; a value of any other key, or of another record, does not open.
func TestRingOpen(t *testing.T) {
	ring := Ring{Current: newKEK, Previous: oldKEK}
	cases := []struct {
		name     string
		ring     Ring
		sealed   Sealed
		aad      string
		previous bool
		err      error
	}{
		{"sealed under the current KEK", ring, mustSeal(t, newKEK, "r", "v"), "r", false, nil},
		{"sealed under the previous KEK", ring, mustSeal(t, oldKEK, "r", "v"), "r", true, nil},
		{"sealed under another KEK", ring, mustSeal(t, otherKEK, "r", "v"), "r", false, ErrOpen},
		{"sealed for another record", ring, mustSeal(t, oldKEK, "r", "v"), "s", false, ErrOpen},
		{"previous KEK not held", Ring{Current: newKEK}, mustSeal(t, oldKEK, "r", "v"), "r", false, ErrOpen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, prev, err := c.ring.Open([]byte(c.aad), c.sealed)
			if !errors.Is(err, c.err) || prev != c.previous {
				t.Fatalf("Open: previous %v, %v; want previous %v, %v", prev, err, c.previous, c.err)
			}
			if c.err == nil && string(got) != "v" {
				t.Fatalf("Open = %q", got)
			}
		})
	}
}

func TestRingCheck(t *testing.T) {
	cases := []struct {
		name string
		ring Ring
		want string
	}{
		{"current only", Ring{Current: newKEK}, ""},
		{"current and previous", Ring{Current: newKEK, Previous: oldKEK}, ""},
		{"no current", Ring{Previous: oldKEK}, "must be 32 bytes"},
		{"short previous", Ring{Current: newKEK, Previous: oldKEK[:16]}, "the previous key-encryption key: the key-encryption key must be 32 bytes"},
		{"previous is current", Ring{Current: newKEK, Previous: bytes.Clone(newKEK)}, "the previous key-encryption key is the current one"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.ring.Check()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Check: %v, want %q", err, c.want)
			}
		})
	}
}

// An ID names a key, stably, and reveals nothing of it.
func TestID(t *testing.T) {
	if ID(newKEK) != ID(bytes.Clone(newKEK)) || ID(newKEK) == ID(oldKEK) || len(ID(newKEK)) != 16 {
		t.Fatalf("ID(new) %s, ID(old) %s", ID(newKEK), ID(oldKEK))
	}
	if strings.Contains(ID(newKEK), "0202") || ID(nil) != "" {
		t.Fatalf("ID(new) %s, ID(nil) %q", ID(newKEK), ID(nil))
	}
}

type testRecord struct {
	Name string `json:"name"`
	Sealed
}

type testFile struct {
	Records []testRecord `json:"records"`
}

func testValues(f *testFile) []Value {
	out := make([]Value, len(f.Records))
	for i := range f.Records {
		out[i] = Value{AAD: []byte("rec/" + f.Records[i].Name), Sealed: &f.Records[i].Sealed}
	}
	return out
}

// RewrapFile re-seals what only the previous KEK opens, keeps what the
// current one opens and what neither opens, and writes the file only when
// something changed; run again, it finds nothing to do.
func TestRewrapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.json")
	in := testFile{Records: []testRecord{
		{"a", mustSeal(t, oldKEK, "rec/a", "secret-a")},
		{"b", mustSeal(t, newKEK, "rec/b", "secret-b")},
		{"c", mustSeal(t, otherKEK, "rec/c", "secret-c")},
		{"d", mustSeal(t, oldKEK, "rec/d", "secret-d")},
	}}
	if err := SaveFile(path, in); err != nil {
		t.Fatal(err)
	}
	ring := Ring{Current: newKEK, Previous: oldKEK}
	rep, err := RewrapFile(path, ring, testValues)
	if err != nil {
		t.Fatal(err)
	}
	if rep != (Report{Current: 1, Rewrapped: 2, Unreadable: 1}) {
		t.Fatalf("report %+v", rep)
	}
	var out testFile
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"secret-a", "secret-b", "", "secret-d"} {
		r := out.Records[i]
		got, err := Open(newKEK, []byte("rec/"+r.Name), r.Sealed)
		switch {
		case want == "" && !bytes.Equal(r.Ciphertext, in.Records[i].Ciphertext):
			t.Errorf("record %s, which no key opens, was changed", r.Name)
		case want != "" && (err != nil || string(got) != want):
			t.Errorf("record %s under the new KEK: %q, %v", r.Name, got, err)
		}
	}
	if !bytes.Equal(out.Records[1].Nonce, in.Records[1].Nonce) {
		t.Error("a record already under the current KEK was sealed again")
	}
	info, _ := os.Stat(path)
	again, err := RewrapFile(path, ring, testValues)
	if err != nil || again != (Report{Current: 3, Unreadable: 1}) {
		t.Fatalf("second pass: %+v, %v", again, err)
	}
	if info2, _ := os.Stat(path); !info2.ModTime().Equal(info.ModTime()) {
		t.Error("a pass with nothing to re-wrap wrote the file")
	}
	if rep, err := RewrapFile(filepath.Join(t.TempDir(), "none.json"), ring, testValues); err != nil || rep != (Report{}) {
		t.Fatalf("missing file: %+v, %v", rep, err)
	}
}
