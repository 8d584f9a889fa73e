package strictjson_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker/strictjson"
)

// seconds is a type with its own UnmarshalJSON, whose message must reach
// the client.
type seconds int

func (s *seconds) UnmarshalJSON(b []byte) error {
	if b[0] == '"' {
		return errors.New("expected a number of seconds")
	}
	_, err := fmt.Sscan(string(b), (*int)(s))
	return err
}

type body struct {
	Role   string         `json:"role"`
	TTL    *seconds       `json:"ttl,omitempty"`
	Reason string         `json:"reason,omitempty"`
	Scope  map[string]any `json:"scope,omitempty"`
	Count  int            `json:"count,omitempty"`
	Flag   bool           `json:"flag,omitempty"`
}

func TestUnmarshal(t *testing.T) {
	cases := []struct {
		name string
		in   string
		// want is "" for success, else parts of the message.
		want   []string
		offset int64
		// field marks problems only a struct field reveals, which Check
		// (no target type) accepts.
		field bool
	}{
		{name: "valid", in: ` {"role":"demo","ttl":90,"reason":"r","scope":{"a":[1,{"b":null}]},"count":2,"flag":true} `},
		{name: "null field", in: `{"role":null}`},
		{name: "unknown key", in: `{"role":"demo","admin":true}`, want: []string{`unknown key "admin" at byte 15`, "the keys are role, ttl, reason, scope, count, flag"}, offset: 15, field: true},
		{name: "case variant of a key", in: `{"role":"demo","ROLE":"demo-elevated"}`, want: []string{`unknown key "ROLE"`, `keys are case-sensitive: did you mean "role"?`}, offset: 15, field: true},
		{name: "case variant alone", in: `{"Role":"demo"}`, want: []string{`unknown key "Role"`, `did you mean "role"?`}, offset: 1, field: true},
		{name: "duplicate key", in: `{"role":"demo","role":"demo-elevated"}`, want: []string{`duplicate key "role" at byte 15`}, offset: 15},
		{name: "duplicate key nested", in: `{"role":"demo","scope":{"a":1,"a":2}}`, want: []string{`duplicate key "a" in "scope" at byte 30`}, offset: 30},
		{name: "invalid UTF-8 in a value", in: "{\"role\":\"demo\",\"reason\":\"ok\xff\"}", want: []string{"invalid UTF-8 at byte 27"}, offset: 27},
		{name: "invalid UTF-8 in a key", in: "{\"r\xc3\":1}", want: []string{"invalid UTF-8 at byte 3"}, offset: 3},
		{name: "lone surrogate escape", in: `{"reason":"\ud800"}`, want: []string{`malformed JSON in "reason" at byte 11`, "surrogate"}, offset: 11},
		{name: "wrong type", in: `{"role":7}`, want: []string{`key "role" at byte 8 must be a string, not a number`}, offset: 8, field: true},
		{name: "fraction for an integer", in: `{"count":1.5}`, want: []string{`key "count" at byte 9 must be an integer`}, offset: 9, field: true},
		{name: "object for a map", in: `{"scope":[1]}`, want: []string{`key "scope" at byte 9 must be an object, not an array`}, offset: 9, field: true},
		{name: "type's own message", in: `{"ttl":"90s"}`, want: []string{`key "ttl" at byte 7: expected a number of seconds`}, offset: 7, field: true},
		{name: "trailing data", in: `{"role":"demo"} x`, want: []string{"data after the JSON object at byte 16"}, offset: 16},
		{name: "two objects", in: `{"role":"demo"}{"role":"demo"}`, want: []string{"data after the JSON object at byte 15"}, offset: 15},
		{name: "empty", in: ``, want: []string{"empty"}},
		{name: "white space", in: " \n ", want: []string{"empty"}},
		{name: "array", in: `[{"role":"demo"}]`, want: []string{"must be an object, not an array"}},
		{name: "null", in: `null`, want: []string{"must be an object, not null"}},
		{name: "not JSON", in: `role=demo`, want: []string{"malformed JSON at byte 0"}},
		{name: "truncated", in: `{"role":`, want: []string{`the JSON ends early in "role" at byte 8`}, offset: 8},
		{name: "control character in a string", in: "{\"role\":\"a\nb\"}", want: []string{`malformed JSON in "role" at byte 10`}, offset: 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b body
			err := strictjson.Unmarshal([]byte(tc.in), &b)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Unmarshal: %v", err)
				}
				return
			}
			var se *strictjson.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %T %v, want *strictjson.Error", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(se.Message, w) {
					t.Errorf("message %q does not contain %q", se.Message, w)
				}
			}
			if se.Offset != tc.offset {
				t.Errorf("offset %d, want %d", se.Offset, tc.offset)
			}
			// Check applies the same rules but for the fields.
			cerr := strictjson.Check([]byte(tc.in))
			if tc.field != (cerr == nil) {
				t.Errorf("Check = %v; want an error unless the problem is a field's", cerr)
			}
		})
	}
}

func TestUnmarshalFillsTheStruct(t *testing.T) {
	var b body
	if err := strictjson.Unmarshal([]byte(`{"role":"demo","ttl":90,"scope":{"scopes":["read"]}}`), &b); err != nil {
		t.Fatal(err)
	}
	if b.Role != "demo" || b.TTL == nil || *b.TTL != 90 || len(b.Scope["scopes"].([]any)) != 1 {
		t.Fatalf("decoded %+v", b)
	}
}

// mintBody is a POST /v1/credentials body, the document decoded on every
// mint.
const mintBody = `{"role":"demo","ttl":90,"reason":"nightly report","scope":{"scopes":["read","write"]}}`

func BenchmarkUnmarshal(b *testing.B) {
	in := []byte(mintBody)
	b.ReportAllocs()
	for b.Loop() {
		var v body
		if err := strictjson.Unmarshal(in, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	in := []byte(`{"iss":"https://issuer.example","sub":"agent-7","aud":["valet"],"exp":1900000000,"iat":1800000000,"jti":"0f8e6c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := strictjson.Check(in); err != nil {
			b.Fatal(err)
		}
	}
}

// Decoders are reused between documents: nothing of one document (its
// position, open objects, keys seen, strings) may show in the next.
func TestNoStateCarriesOver(t *testing.T) {
	for i := range 50 {
		var b body
		if err := strictjson.Unmarshal([]byte(`{"scope":{"a":{"b":[`), &b); err == nil {
			t.Fatal("truncated document accepted")
		}
		if err := strictjson.Check([]byte(`{"role":"demo","role":"x"}`)); err == nil {
			t.Fatal("duplicate key accepted")
		}
		in := fmt.Sprintf(`{"role":"demo-%d","scope":{"a":1}}`, i)
		b = body{}
		if err := strictjson.Unmarshal([]byte(in), &b); err != nil {
			t.Fatalf("after a refused document: %v", err)
		}
		if want := fmt.Sprintf("demo-%d", i); b.Role != want || b.Scope["a"] != 1.0 {
			t.Fatalf("decoded %+v, want role %q and scope a=1", b, want)
		}
		var se *strictjson.Error
		if err := strictjson.Check([]byte(`{"a":1} x`)); !errors.As(err, &se) || se.Offset != 8 {
			t.Fatalf("Check trailing data = %v, want an *Error at byte 8", err)
		}
	}
}
