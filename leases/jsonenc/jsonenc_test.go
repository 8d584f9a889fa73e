package jsonenc

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// same fails unless got is what encoding/json writes for v.
func same(t *testing.T, got []byte, v any) {
	t.Helper()
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%#v:\n got %s\nwant %s", v, got, want)
	}
}

var strings_ = []string{
	"", "plain", `quote " and \ backslash`, "<script>&amp;</script>",
	"\b\f\n\r\t\x00\x01\x1f\x7f", "é ü 漢字 🎉", "\u2028 line \u2029 paragraph",
	"bad \xff utf-8 \xc3", "\xed\xa0\x80 surrogate", "trailing \xe2\x80",
}

func TestStringIsEncodingJSONs(t *testing.T) {
	for _, s := range strings_ {
		same(t, String([]byte("prefix"), s)[len("prefix"):], s)
	}
}

func FuzzString(f *testing.F) {
	for _, s := range strings_ {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		same(t, String(nil, s), s)
	})
}

func TestTimeIsEncodingJSONs(t *testing.T) {
	east := time.FixedZone("east", 5*3600+30*60)
	for _, tm := range []time.Time{
		{}, time.Unix(0, 0).UTC(), time.Date(2026, 11, 30, 1, 2, 3, 456789000, time.UTC),
		time.Date(2026, 11, 30, 1, 2, 3, 1, east), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Now(), // with a monotonic reading
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("seconds", 30)),
	} {
		got, err := Time(nil, tm)
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, tm)
	}
	for _, bad := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 24*3600)),
	} {
		if _, err := json.Marshal(bad); err == nil {
			t.Fatalf("encoding/json took %v", bad)
		}
		if got, err := Time(nil, bad); err == nil {
			t.Errorf("Time(%v) = %s, want the error encoding/json returns", bad, got)
		}
	}
}

func TestMapsAreEncodingJSONs(t *testing.T) {
	same(t, StringMap(nil, nil), map[string]string(nil))
	same(t, StringMap(nil, map[string]string{}), map[string]string{})
	many := map[string]string{}
	for i := range 20 { // more keys than the stack array holds
		many[strings.Repeat("k", 20-i)+"\xff<"] = strings.Repeat("v", i) + "\u2028"
	}
	same(t, StringMap(nil, many), many)

	anys := []map[string]any{
		nil, {},
		{"access_token": "eyJ.x.y", "token_type": "Bearer", "expires_at": "2026-11-30T01:02:03Z", "scope": "a b"},
		{"n": 1, "f": 1.5, "big": float64(1 << 60), "neg": math.Copysign(0, -1), "b": true, "nil": nil, "list": []any{"x", 2, map[string]any{"z": "<"}},
			"nested": map[string]any{"b": "2", "a": []string{"&"}}, "bytes": []byte("raw"), "time": time.Unix(1, 5).UTC(),
			"raw": json.RawMessage(`{"kept":true}`)},
	}
	for _, m := range anys {
		got, err := Map(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, m)
	}
	if _, err := Map(nil, map[string]any{"nan": math.NaN()}); err == nil {
		t.Error("Map took NaN, which encoding/json refuses")
	}
}

func TestBool(t *testing.T) {
	same(t, Bool(nil, true), true)
	same(t, Bool(nil, false), false)
}

func BenchmarkString(b *testing.B) {
	s := strings.Repeat("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ", 20)
	buf := make([]byte, 0, 1024)
	b.SetBytes(int64(len(s)))
	b.ReportAllocs()
	for b.Loop() {
		buf = String(buf[:0], s)
	}
}
