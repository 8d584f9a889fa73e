package identity

import (
	"errors"
	"strings"
	"testing"
)

func TestEqual(t *testing.T) {
	cases := []struct {
		name string
		a, b string
		want bool
	}{
		{"same", "alice@example.com", "alice@example.com", true},
		{"case of an email", "alice@example.com", "ALICE@example.com", true},
		{"surrounding spaces", " Alice@Example.com ", "alice@example.com", true},
		{"inner spaces collapse", "Alice  Smith", "alice smith", true},
		{"full-width letters", "ａｌｉｃｅ", "alice", true},
		{"sharp s folds to ss", "Straße", "STRASSE", true},
		{"final sigma", "Σίσυφος", "ΣΊΣΥΦΟΣ", true},
		{"different people", "alice@example.com", "alice@example.org", false},
		{"a prefix is not the name", "alice", "alice2", false},
		{"empty equals nothing", "", "", false},
		{"a control character equals nothing", "al\x00ice", "al\x00ice", false},
		{"a zero-width space is not hidden", "bob\u200bsmith", "bobsmith", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Equal(c.a, c.b); got != c.want {
				t.Fatalf("Equal(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
			}
			if got := Equal(c.b, c.a); got != c.want {
				t.Fatalf("Equal(%q, %q) = %v, want %v", c.b, c.a, got, c.want)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		name, in, want, err string
	}{
		{"kept as given", "Alice@Example.com", "Alice@Example.com", ""},
		{"trimmed", "  alice ", "alice", ""},
		{"inner spaces collapse", "Alice \u00a0 Smith", "Alice Smith", ""},
		{"empty", "", "", "empty"},
		{"only spaces", " \t ", "", "empty"},
		{"NUL", "al\x00ice", "", "control character"},
		{"newline", "alice\nbob", "", "control character"},
		{"right-to-left override", "x\u202etxt.exe", "", "control character"},
		{"invalid UTF-8", "al\xffice", "", "not valid UTF-8"},
		{"too long", strings.Repeat("a", MaxBytes+1), "", "longer than 256 bytes"},
		{"longest", strings.Repeat("a", MaxBytes), strings.Repeat("a", MaxBytes), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Normalize(c.in)
			if c.err != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Normalize(%q) = %q, %v; want an error saying %q", c.in, got, err, c.err)
				}
				if strings.ContainsAny(err.Error(), "\x00\n\u202e") {
					t.Fatalf("the error repeats a control character: %q", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("Normalize(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
		})
	}
}

func TestLists(t *testing.T) {
	if !Contains([]string{"bob", "Alice@Example.com"}, "alice@example.com") {
		t.Fatal("Contains misses a case variant")
	}
	if Contains([]string{"bob", ""}, "") {
		t.Fatal("Contains finds the empty name")
	}
	if !Intersects([]string{"staff", "SRE"}, []string{"sre"}) || Intersects([]string{"staff"}, []string{"sre"}) {
		t.Fatal("Intersects")
	}
	if i, j, ok := Duplicate([]string{"alice", "bob", "ALICE"}); !ok || i != 0 || j != 2 {
		t.Fatalf("Duplicate = %d, %d, %v; want 0, 2, true", i, j, ok)
	}
	if _, _, ok := Duplicate([]string{"alice", "bob"}); ok {
		t.Fatal("Duplicate found one in distinct names")
	}
}
