package leases

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// randomFill sets every field of the struct v points to, recursively, to
// a random value or its zero value (each about half the time), so a field
// added to Lease is covered without this test naming it.
func randomFill(t *testing.T, r *rand.Rand, v reflect.Value) {
	texts := []string{"", "a", "agent-7", `q"\`, "<&>", "\n\t\x01", "é漢🎉", "\u2028", "bad\xff"}
	text := func() string { return texts[r.IntN(len(texts))] }
	for i := range v.NumField() {
		f := v.Field(i)
		if r.IntN(2) == 0 {
			f.SetZero()
			continue
		}
		switch {
		case f.Type() == reflect.TypeFor[time.Time]():
			zones := []*time.Location{time.UTC, time.Local, time.FixedZone("x", -(3*3600 + 30*60))}
			tm := time.Unix(r.Int64N(4e9), r.Int64N(1e9)).In(zones[r.IntN(len(zones))])
			if r.IntN(4) == 0 {
				tm = time.Now() // monotonic reading
			}
			f.Set(reflect.ValueOf(tm))
		case f.Kind() == reflect.String:
			f.SetString(text())
		case f.Kind() == reflect.Int:
			f.SetInt(r.Int64N(7) - 3)
		case f.Kind() == reflect.Bool:
			f.SetBool(true)
		case f.Kind() == reflect.Struct:
			randomFill(t, r, f)
		case f.Type() == reflect.TypeFor[[]string]():
			s := []string{}
			for range r.IntN(3) {
				s = append(s, text())
			}
			f.Set(reflect.ValueOf(s))
		case f.Type() == reflect.TypeFor[map[string]string]():
			m := map[string]string{}
			for range r.IntN(12) {
				m[text()+text()] = text()
			}
			f.Set(reflect.ValueOf(m))
		case f.Type() == reflect.TypeFor[map[string]any]():
			m := map[string]any{}
			for range r.IntN(4) {
				m[text()] = []any{text(), r.IntN(9), map[string]any{"n": 1.5, "s": text()}, nil, true}[r.IntN(5)]
			}
			f.Set(reflect.ValueOf(m))
		default:
			t.Fatalf("randomFill: Lease has a field of type %s; teach the test (and AppendJSON) about it", f.Type())
		}
	}
}

func TestLeaseAppendJSONIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		var l Lease
		if i > 0 {
			randomFill(t, r, reflect.ValueOf(&l).Elem())
		}
		want, err := json.Marshal(&l)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := l.Encode()
		if err != nil || !bytes.Equal(enc, want) {
			t.Fatalf("lease %d: Encode = %s, %v; want %s", i, enc, err, want)
		}
		got, err := l.AppendJSON([]byte("kept"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(got, []byte("kept")) || !bytes.Equal(got[4:], want) {
			t.Fatalf("lease %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

func TestLeaseAppendJSONFailsAsMarshal(t *testing.T) {
	for _, l := range []Lease{
		{ExpiresAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{NextAttempt: time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Scope: map[string]any{"ch": make(chan int)}},
	} {
		if _, err := json.Marshal(&l); err == nil {
			t.Fatalf("encoding/json took %+v", l)
		}
		if got, err := l.AppendJSON(nil); err == nil {
			t.Errorf("AppendJSON(%+v) = %s, want an error", l, got)
		}
	}
}

func benchLease() *Lease {
	now := time.Now()
	return &Lease{ID: "01JXYZABCDEFGHJKMNPQRSTVWX", AgentID: "system:serviceaccount:agents:agent-123", Role: "reader", Backend: "jwt",
		Handle: "corr-0123456789", Details: map[string]string{"kid": "k-2026-11-30", "scope": "read write"}, State: StateActive,
		CreatedAt: now, ExpiresAt: now.Add(5 * time.Minute), Renewable: true, MaxExpires: now.Add(time.Hour),
		Lineage:   Lineage{Issuer: "https://kubernetes.default.svc", JTI: "abcdef0123456789", PodUID: "0a1b2c3d-1111-2222-3333-444455556666"},
		RequestID: "req-0123456789abcdef"}
}

// BenchmarkLeaseJSON compares Encode with encoding/json on a lease as
// the JWT backend's mint stores it.
func BenchmarkLeaseJSON(b *testing.B) {
	l := benchLease()
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(l); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Encode(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
