// Package jsonenc appends JSON values to a byte slice, byte for byte as
// encoding/json's Marshal writes them (RFC 8259 text, HTML-safe escaping,
// invalid UTF-8 replaced by U+FFFD, map keys sorted, times in RFC 3339 with
// sub-second precision), without reflection or allocation beyond the
// slice's growth (Map hands values other than strings to encoding/json,
// with both). It is for the few types on the mint path that are encoded once per request, where
// encoding/json's reflection over maps costs more than the rest of the
// encoding; those types' tests compare every output with encoding/json's.
package jsonenc

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

const hex = "0123456789abcdef"

// plain[c] says an ASCII byte c stands for itself in a JSON string.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = !strings.ContainsRune(`"\<>&`, rune(c))
	}
	return t
}()

// String appends s as a JSON string, escaped as encoding/json escapes it:
// '"' and '\\' with a backslash, \b \f \n \r \t by their short forms, other
// control characters and '<', '>', '&' as \u00XX, U+2028 and U+2029 as
// \u2028 and \u2029, and each byte that is not part of valid UTF-8 as
// \ufffd.
func String(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0 // s[start:i] is pending, needing no escape
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Time appends t as encoding/json writes a time.Time: a JSON string in
// RFC 3339 with sub-second precision (time.RFC3339Nano). It fails as
// Time.MarshalJSON does, for a year outside 0–9999 or an offset that RFC
// 3339 cannot write.
func Time(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, err
	}
	return append(b, '"'), nil
}

// Bool appends true or false.
func Bool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

// StringMap appends m as a JSON object with its keys sorted, as
// encoding/json writes a map[string]string; a nil map is null.
func StringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	var small [8]string
	b = append(b, '{')
	for i, k := range sortedKeys(m, small[:0]) {
		if i > 0 {
			b = append(b, ',')
		}
		b = String(b, k)
		b = append(b, ':')
		b = String(b, m[k])
	}
	return append(b, '}')
}

// Map appends m as a JSON object with its keys sorted, as encoding/json
// writes a map[string]any: string values directly, every other value by
// encoding/json itself (so its errors are encoding/json's). A nil map is
// null.
func Map(b []byte, m map[string]any) ([]byte, error) {
	if m == nil {
		return append(b, "null"...), nil
	}
	var small [8]string
	b = append(b, '{')
	for i, k := range sortedKeys(m, small[:0]) {
		if i > 0 {
			b = append(b, ',')
		}
		b = String(b, k)
		b = append(b, ':')
		switch v := m[k].(type) {
		case string:
			b = String(b, v)
		default:
			enc, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			b = append(b, enc...)
		}
	}
	return append(b, '}'), nil
}

// StringMap and Map repeat their object loop rather than share one that
// takes the value's encoder as a function: a buffer handed to a function
// value escapes, and Lease.Encode's stack buffer went to the heap with it
// (472 → 675 ns, 1 → 2 allocations per lease).

// sortedKeys appends m's keys to keys and sorts them in byte order, as
// encoding/json orders them. Maps on the mint path have a handful of keys:
// callers pass a small array's slice, which stays on their stack.
func sortedKeys[V any](m map[string]V, keys []string) []string {
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
