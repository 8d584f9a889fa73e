// Package identity is the one place valet decides whether two operator
// names, group names or requester identities are the same. Names are
// compared under the PRECIS Nickname profile (RFC 8266, built on the
// PRECIS framework of RFC 8264): leading and trailing spaces are dropped,
// inner runs of spaces collapse to one, compatibility characters are
// normalized (NFKC) and case is mapped to lower case; valet then applies
// Unicode full case folding as well, so names that differ only in ß and
// ss, or in a final sigma, are one name too. So "alice@example.com",
// "ALICE@example.com" and " Alice@Example.com " are one operator, and a
// full-width "ａｌｉｃｅ" is "alice". Control characters and invalid UTF-8
// are refused.
//
// The package imports nothing of valet, so every package that compares
// identities (broker, broker/grants, web) can use it.
package identity

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/secure/precis"
)

// MaxBytes bounds a name before any processing.
const MaxBytes = 256

// Normalize returns name in the form valet shows and records: spaces
// trimmed and collapsed, NFKC, case kept as given. It returns an error
// when name is empty (after trimming), longer than MaxBytes, not valid
// UTF-8, or holds a character the Nickname profile disallows (control
// characters among them).
func Normalize(name string) (string, error) {
	if err := precheck(name); err != nil {
		return "", err
	}
	out, err := precis.Nickname.String(name)
	if err != nil {
		return "", invalid(name, err)
	}
	return out, nil
}

// Key returns the comparison form of name: Normalize, then case folded.
// Two names are the same identity exactly when their keys are equal;
// store or index names by their key. Key returns "" for a name Normalize
// refuses, which equals nothing (see Equal).
func Key(name string) string {
	if precheck(name) != nil {
		return ""
	}
	k, err := precis.Nickname.CompareKey(name)
	if err != nil {
		return ""
	}
	return cases.Fold().String(k)
}

// Equal reports whether a and b name the same identity. A name that is
// not valid equals nothing, not even itself.
func Equal(a, b string) bool {
	ka := Key(a)
	return ka != "" && ka == Key(b)
}

// Contains reports whether list holds an identity equal to name.
func Contains(list []string, name string) bool {
	k := Key(name)
	return k != "" && slices.ContainsFunc(list, func(s string) bool { return Key(s) == k })
}

// Intersects reports whether a and b share an identity (for example an
// operator's groups and a role's approver groups).
func Intersects(a, b []string) bool {
	return slices.ContainsFunc(a, func(s string) bool { return Contains(b, s) })
}

// Duplicate returns the indexes i < j of the first two entries of list
// that are the same identity, or ok false when there are none.
func Duplicate(list []string) (i, j int, ok bool) {
	seen := make(map[string]int, len(list))
	for j, s := range list {
		k := Key(s)
		if k == "" {
			continue
		}
		if i, dup := seen[k]; dup {
			return i, j, true
		}
		seen[k] = j
	}
	return 0, 0, false
}

// ErrInvalid is wrapped by the errors of Normalize.
var ErrInvalid = errors.New("not a valid name")

func precheck(name string) error {
	switch {
	case len(name) > MaxBytes:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalid)
	}
	return nil
}

func invalid(name string, err error) error {
	if strings.TrimFunc(name, unicode.IsSpace) == "" {
		return fmt.Errorf("%w: empty", ErrInvalid)
	}
	return fmt.Errorf("%w: %q holds a control character or another character names may not contain (%v)", ErrInvalid, name, err)
}
