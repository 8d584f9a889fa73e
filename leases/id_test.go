package leases

import (
	"strings"
	"testing"
	"time"
)

// t0 is a time well away from the zero time and from the Unix epoch.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestNewID(t *testing.T) {
	times := []time.Time{
		time.UnixMilli(0),
		time.UnixMilli(1),
		t0,
		t0.Add(time.Millisecond),
		t0.Add(time.Second),
		time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		time.UnixMilli(1<<48 - 1), // the last millisecond the layout holds
	}
	var prev string
	seen := map[string]bool{}
	for i, at := range times {
		for range 100 {
			id := NewID(at)
			if len(id) != 26 || !ValidID(id) {
				t.Fatalf("NewID(%v) = %q: not a valid 26-character id", at, id)
			}
			if strings.ContainsAny(id, "ILOUabcdefghijklmnopqrstuvwxyz") {
				t.Fatalf("NewID(%v) = %q uses letters outside Crockford's alphabet", at, id)
			}
			if seen[id] {
				t.Fatalf("NewID(%v) returned %q twice", at, id)
			}
			seen[id] = true
			// Ids from a later millisecond sort after every id of an
			// earlier one, whatever their random part.
			if i > 0 && id <= prev {
				t.Fatalf("NewID(%v) = %q sorts before %q from %v", at, id, prev, times[i-1])
			}
		}
		// The largest id of this millisecond bounds the next one.
		prev = maxIDAt(at)
	}
	// The first 10 characters are the timestamp: the same for the same
	// millisecond, whatever the sub-millisecond part.
	a, b := NewID(t0), NewID(t0.Add(999*time.Microsecond))
	if a[:10] != b[:10] {
		t.Errorf("ids in the same millisecond have different time prefixes: %s, %s", a, b)
	}
	if want := "0000000000"; NewID(time.UnixMilli(0))[:10] != want {
		t.Errorf("id of the epoch starts %q, want %q", NewID(time.UnixMilli(0))[:10], want)
	}
}

// maxIDAt is the largest id NewID can return for t: its timestamp followed
// by all ones.
func maxIDAt(t time.Time) string {
	return NewID(t)[:10] + strings.Repeat("Z", 16)
}

func TestValidID(t *testing.T) {
	cases := []struct {
		name string
		id   string
		want bool
	}{
		{"new id", NewID(t0), true},
		{"all zeros", strings.Repeat("0", 26), true},
		{"largest", "7" + strings.Repeat("Z", 25), true},
		{"first digit above 7 overflows 128 bits", "8" + strings.Repeat("0", 25), false},
		{"empty", "", false},
		{"too short", strings.Repeat("0", 25), false},
		{"too long", strings.Repeat("0", 27), false},
		{"lower case", strings.ToLower(NewID(t0)[:10]) + "abcdefghjkmnpqrs", false},
		{"letter I", strings.Repeat("0", 25) + "I", false},
		{"letter L", strings.Repeat("0", 25) + "L", false},
		{"letter O", strings.Repeat("0", 25) + "O", false},
		{"letter U", strings.Repeat("0", 25) + "U", false},
		{"punctuation", strings.Repeat("0", 25) + "-", false},
		{"path traversal", "../../" + strings.Repeat("0", 20), false},
		{"multibyte", strings.Repeat("0", 24) + "é", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ValidID(tc.id); got != tc.want {
				t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
			}
		})
	}
}
