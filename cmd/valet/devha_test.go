package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDevHA: `valet dev --etcd` makes the dev configuration a replica's
// (make run-ha runs two): its own listen address, the proxy's public URL
// shared by all, the etcd engine; without --etcd nothing changes, and the
// replica flags alone are refused.
func TestDevHA(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name    string
		ha      devHA
		listen  string
		check   func(t *testing.T, cfg *Config)
		wantErr string
	}{
		{"a replica", devHA{endpoints: []string{"http://127.0.0.1:23790", "http://127.0.0.1:23800"}, replica: "b", publicURL: "http://127.0.0.1:8750/"},
			"127.0.0.1:8752", func(t *testing.T, cfg *Config) {
				e := cfg.Storage.Etcd
				if cfg.Listen != "127.0.0.1:8752" || cfg.PublicURL != "http://127.0.0.1:8750" || cfg.Storage.Engine != engineEtcd ||
					len(e.Endpoints) != 2 || e.Replica != "b" || e.Prefix != "/valet-dev/" || e.LeaderTTL.D() != 2*time.Second {
					t.Fatalf("listen %s, public_url %s, storage %+v", cfg.Listen, cfg.PublicURL, cfg.Storage)
				}
			}, ""},
		{"one process", devHA{}, "127.0.0.1:9999", func(t *testing.T, cfg *Config) {
			if cfg.Storage.Engine != engineBbolt || cfg.Listen != "127.0.0.1:0" {
				t.Fatalf("without --etcd: listen %s, engine %s", cfg.Listen, cfg.Storage.Engine)
			}
		}, ""},
		{"replica flags without --etcd", devHA{replica: "a"}, "127.0.0.1:0", nil, "--replica and --public-url go with --etcd"},
		{"a bad endpoint", devHA{endpoints: []string{"127.0.0.1:2379"}}, "127.0.0.1:0", nil,
			`storage.etcd.endpoints[0] must be an http:// or https:// URL; it is "127.0.0.1:2379"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, _, err := prepareDev(filepath.Join(dir, "data"), "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			err = c.ha.apply(cfg, c.listen)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("apply: %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg)
		})
	}
}
