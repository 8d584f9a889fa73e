package main

import (
	"os"
	"strings"
	"testing"
)

// TestServeCheck: `valet serve --check` validates a configuration as
// start-up does and exits, 0 when it is valid, 1 naming every bad key.
func TestServeCheck(t *testing.T) {
	for _, c := range []struct {
		name     string
		edit     func(string) string
		code     int
		out, err string
	}{
		{"a valid configuration", nil, 0, "configuration OK: ", ""},
		{"an etcd configuration", func(s string) string {
			return s + "storage:\n  engine: etcd\n  etcd: {endpoints: [https://etcd-0:2379], prefix: /v/}\n"
		}, 0, "(storage engine etcd)", ""},
		{"a bad key", func(s string) string { return s + "storage: {engine: redis}\n" }, 1, "", `storage.engine must be bbolt or etcd; it is "redis"`},
		{"etcd without endpoints", func(s string) string { return s + "storage: {engine: etcd}\n" }, 1, "",
			"storage.etcd.endpoints must not be empty when storage.engine is etcd"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newTestEnv(t)
			if c.edit != nil {
				b, err := os.ReadFile(e.Dir + "/config.yaml")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(e.Dir+"/config.yaml", []byte(c.edit(string(b))), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			out, errOut, code := runCLI(t, nil, "serve", "--check", "--config", e.Dir+"/config.yaml")
			if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errOut, c.err) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, %q, %q", code, out, errOut, c.code, c.out, c.err)
			}
			if c.code == 0 && !strings.Contains(out, e.Dir+"/config.yaml") {
				t.Fatalf("stdout %q does not name the file", out)
			}
		})
	}
}
