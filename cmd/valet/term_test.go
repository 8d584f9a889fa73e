package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestTermSafe(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"plain", "test/agent-1 demo", "test/agent-1 demo"},
		{"letters of any script", "héllo мир 世界 ✓", "héllo мир 世界 ✓"},
		{"newline forging a row", "x\n2026-11-29 FAKE mint allow", `x\n2026-11-29 FAKE mint allow`},
		{"carriage return and tab", "a\rb\tc", `a\rb\tc`},
		{"ANSI clear screen", "x\x1b[2J", `x\x1b[2J`},
		{"C1 CSI", "x\u009b2J", `x\u009b2J`},
		{"DEL and NUL", "a\x7fb\x00c", `a\x7fb\x00c`},
		{"bidi override", "evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"bidi isolate and mark", "\u2066a\u2069\u200f", `\u2066a\u2069\u200f`},
		{"zero-width space", "ad\u200bmin", `ad\u200bmin`},
		{"line separator", "a\u2028b", `a\u2028b`},
		{"invalid UTF-8", "a\xffb\xc3", `a\xffb\xc3`},
		{"replacement character itself", "a\ufffdb", "a\ufffdb"},
		{"non-BMP format character", "a\U000e0001b", `a\U000e0001b`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := termSafe(tc.in); got != tc.want {
				t.Errorf("termSafe(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestWriteJSONEscapesWhatATerminalActsOn(t *testing.T) {
	in := map[string]any{"reason": "evil\u202e\u009b2J\x7f\U000e0001", "plain": "é ✓", "n": 1.5}
	var out bytes.Buffer
	if err := writeJSON(&out, in); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"n\": 1.5,\n  \"plain\": \"é ✓\",\n  \"reason\": \"evil\\u202e\\u009b2J\\u007f\\udb40\\udc01\"\n}\n"
	if out.String() != want {
		t.Errorf("writeJSON = %q, want %q", out.String(), want)
	}
	// The escaped output is the same JSON.
	var back map[string]any
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back["reason"] != in["reason"] || back["plain"] != in["plain"] {
		t.Errorf("round trip: %v, %v", back, err)
	}
}
