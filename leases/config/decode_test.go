package config

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	seen := map[string]bool{}
	cases := []struct {
		name, value, want string
	}{
		{"valid", "vault-main", ""},
		{"used twice", "vault-main", `backends[1].name "vault-main" is used twice`},
		{"upper case", "Vault", `backends[2].name "Vault" must be lower-case letters, digits, '.', '_' or '-' (at most 63)`},
		{"empty", "", `backends[3].name "" must be lower-case letters, digits, '.', '_' or '-' (at most 63)`},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := errors.Join(CheckName("backends["+string(rune('0'+i))+"].name", c.value, seen)...)
			if (c.want == "" && err != nil) || (c.want != "" && (err == nil || err.Error() != c.want)) {
				t.Fatalf("CheckName(%q) = %v, want %q", c.value, err, c.want)
			}
			if !seen[c.value] {
				t.Errorf("%q was not added to seen", c.value)
			}
		})
	}
}

func TestDecodeOptionsKeepsZeroAndRefusesUnknownKeys(t *testing.T) {
	type opts struct {
		Timeout Duration `yaml:"timeout"`
		Retries int      `yaml:"retries"`
	}
	o := opts{Timeout: 10, Retries: 3}
	if err := DecodeOptions(map[string]any{"retries": 0}, &o); err != nil || o.Retries != 0 || o.Timeout != 10 {
		t.Fatalf("DecodeOptions = %+v, %v; want retries 0 kept and timeout left at its default", o, err)
	}
	if err := DecodeOptions(map[string]any{"retires": 1}, &o); err == nil {
		t.Fatal("DecodeOptions accepted an unknown key")
	}
}

// TestDecodeOptionsErrorsCiteNoLines: backend options and role params are
// decoded from a document valet writes itself, so an error names the key
// but cites no line number, which would point into the user's config file
// at a line that has nothing to do with it.
func TestDecodeOptionsErrorsCiteNoLines(t *testing.T) {
	var o struct {
		Address string   `yaml:"address"`
		Timeout Duration `yaml:"timeout"`
		NumUses int      `yaml:"num_uses"`
	}
	cases := []struct {
		name string
		opts map[string]any
		want string
	}{
		{"a negative duration", map[string]any{"address": "a", "num_uses": 1, "timeout": "-1s"}, `timeout: duration "-1s" out of range`},
		{"a fraction", map[string]any{"address": "a", "num_uses": 2.5}, "num_uses: 2.5 is not a whole number"},
		{"a string for a number", map[string]any{"num_uses": "two"}, "cannot unmarshal !!str `two` into int"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := DecodeOptions(c.opts, &o)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "line ") {
				t.Fatalf("error %v, want one saying %q without a line number", err, c.want)
			}
		})
	}
}
