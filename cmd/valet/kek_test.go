package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/jwt"
	"github.com/valet-broker/valet/backends/kek"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
)

// TestKEKRotationWithARestartInTheMiddle switches valet's key-encryption
// key from A to B: valet refuses to start with B alone while keys are
// sealed under A; with B and A as the previous KEK it starts, and is
// killed by the kek-rotation job between the jwt backend's key file and
// the checkpoint key (one under B, the other still under A); restarted
// with both it loses nothing and `valet kek finish` completes the switch;
// with B alone it then starts with the same signing and checkpoint keys,
// and a token signed before the switch still introspects active.
func TestKEKRotationWithARestartInTheMiddle(t *testing.T) {
	kekA, kekB := strings.Repeat("07", 32), strings.Repeat("5b", 32)
	e := newTestEnv(t)
	p := startServe(t, e, "VALET_KEK="+kekA)
	e.URL = p.url
	tok := e.Mint(e.Attest("kek-agent", nil), "demo")["credential"].(map[string]any)["access_token"].(string)
	mustCLI(t, cliEnv(e), "jobs", "run", "signing-key-rotation")
	kidsBefore, cpKeyBefore := publishedKeys(t, e)
	if len(kidsBefore) != 2 || len(cpKeyBefore) != 1 {
		t.Fatalf("before the switch: signing keys %v, checkpoint keys %v", kidsBefore, cpKeyBefore)
	}
	p.stop(t)

	// B alone cannot open what A sealed, and says what to do.
	if msg := serveFails(t, e, "VALET_KEK="+kekB); !strings.Contains(msg, "VALET_KEK_PREVIOUS") {
		t.Fatalf("start with the new KEK alone: %s; want a refusal naming VALET_KEK_PREVIOUS", msg)
	}

	// The switch, killed after the first owner's values.
	p = startServe(t, e, "VALET_KEK="+kekB, "VALET_KEK_PREVIOUS="+kekA, "VALET_FAILPOINTS=kek.between-owners")
	e.URL = p.url
	if _, _, code := runCLI(t, cliEnv(e), "kek", "finish"); code == 0 {
		t.Fatal("valet kek finish succeeded although the server was killed during the run")
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the failpoint did not kill valet")
	}
	if !underKEKAlone(t, e, "backend.tokens", kekB) || underKEKAlone(t, e, "audit_checkpoint_key", kekB) || !underKEKAlone(t, e, "audit_checkpoint_key", kekA) {
		t.Fatal("after the kill the signing keys should be under B and the checkpoint key still under A")
	}

	// Restarted with both keys: nothing is lost, and finish completes.
	p = startServe(t, e, "VALET_KEK="+kekB, "VALET_KEK_PREVIOUS="+kekA)
	e.URL = p.url
	if kids, cp := publishedKeys(t, e); !slices.Equal(kids, kidsBefore) || !slices.Equal(cp, cpKeyBefore) {
		t.Fatalf("during the switch: signing keys %v, checkpoint keys %v; want %v, %v", kids, cp, kidsBefore, cpKeyBefore)
	}
	eventually(t, 10*time.Second, "the killed run is recorded interrupted", func() bool {
		return apiJSON[map[string]any](t, e, "/v1/jobs/kek-rotation")["last_outcome"] == "interrupted"
	})
	out := mustCLI(t, cliEnv(e), "kek", "finish")
	if !strings.Contains(out, "the previous key-encryption key "+kek.ID(mustHex(t, kekA))+" is no longer needed") ||
		!strings.Contains(out, "under the key-encryption key "+kek.ID(mustHex(t, kekB))+" (1 sealed again by this run, 2 already)") {
		t.Fatalf("valet kek finish:\n%s", out)
	}
	if strings.Contains(out, kekA) || strings.Contains(out, kekB) {
		t.Fatalf("valet kek finish shows a key:\n%s", out)
	}
	p.stop(t)

	// B alone: the same keys, the old token still good, the checkpoint
	// key still signs.
	p = startServe(t, e, "VALET_KEK="+kekB)
	e.URL = p.url
	if kids, cp := publishedKeys(t, e); !slices.Equal(kids, kidsBefore) || !slices.Equal(cp, cpKeyBefore) {
		t.Fatalf("after the switch: signing keys %v, checkpoint keys %v; want %v, %v", kids, cp, kidsBefore, cpKeyBefore)
	}
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": basicAuth("demo-api", rsSecret("demo-api"))}
	if r := e.raw("POST", "/v1/introspect", h, strings.NewReader(url.Values{"token": {tok}}.Encode())); r.Status != http.StatusOK || r.JSON(t)["active"] != true {
		t.Fatalf("introspection of a token signed before the switch: %d %s", r.Status, r.Body)
	}
	if out := mustCLI(t, cliEnv(e), "jobs", "run", "audit-checkpoint"); !strings.Contains(out, ": ok in ") {
		t.Fatalf("a checkpoint after the switch: %s", out)
	}
	if out := mustCLI(t, cliEnv(e), "kek", "finish"); !strings.Contains(out, "valet holds no previous key-encryption key: nothing to finish") {
		t.Fatalf("valet kek finish with no previous KEK:\n%s", out)
	}
	if msg := serveFailsAfterStop(t, e, p, "VALET_KEK="+kekA); !strings.Contains(msg, "cannot") {
		t.Fatalf("start with the old KEK after the switch: %s; want a refusal", msg)
	}
}

// publishedKeys returns the kids of the JWKS and of the audit checkpoint
// keys the server publishes.
func publishedKeys(t *testing.T, e *testEnv) (signing, checkpoint []string) {
	t.Helper()
	for path, out := range map[string]*[]string{"/.well-known/jwks.json": &signing, "/.well-known/valet-audit-keys.json": &checkpoint} {
		var set struct {
			Keys []struct {
				Kid string `json:"kid"`
			} `json:"keys"`
		}
		r := e.Do("GET", path, "", nil)
		if r.Status != http.StatusOK || json.Unmarshal(r.Body, &set) != nil {
			t.Fatalf("GET %s: %d %s", path, r.Status, r.Body)
		}
		for _, k := range set.Keys {
			*out = append(*out, k.Kid)
		}
		slices.Sort(*out)
	}
	return signing, checkpoint
}

// underKEKAlone says whether the owner's sealed values open under key
// alone, asking valet's own loaders.
func underKEKAlone(t *testing.T, e *testEnv, owner, key string) bool {
	t.Helper()
	k := mustHex(t, key)
	switch owner {
	case "backend.tokens":
		_, err := jwt.New("tokens", nil, backends.Deps{DataDir: e.Config.DataDir, KEK: k, PublicURL: e.Config.PublicURL})
		return err == nil
	case "audit_checkpoint_key":
		_, err := jobdefs.LoadCheckpointKey(e.Config.DataDir, kek.Ring{Current: k}, time.Now())
		return err == nil
	}
	t.Fatalf("no owner %s", owner)
	return false
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := ParseKEK(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serveFails runs `valet serve` for the env's config and returns its
// error output; it fails the test unless valet exits non-zero within 30s.
func serveFails(t *testing.T, e *testEnv, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, valetBinary(t), "serve", "--config", filepath.Join(e.Dir, "config.yaml"))
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("valet serve did not fail (%v):\n%s", err, out)
	}
	return string(out)
}

// serveFailsAfterStop stops p, then is serveFails.
func serveFailsAfterStop(t *testing.T, e *testEnv, p *proc, env ...string) string {
	t.Helper()
	p.stop(t)
	return serveFails(t, e, env...)
}

// The previous KEK comes from VALET_KEK_PREVIOUS, else from
// kek_previous_file (relative to the config file); a bad one is refused
// naming where it came from, and one equal to the current KEK stops the
// start.
func TestPreviousKEKSources(t *testing.T) {
	dir := t.TempDir()
	good, bad := strings.Repeat("5b", 32), "not-hex"
	for name, content := range map[string]string{"prev.kek": good + "\n", "bad.kek": bad} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name, env, file string
		want            []byte
		err             string
	}{
		{"neither", "", "", nil, ""},
		{"the environment", good, "", mustHex(t, good), ""},
		{"the environment before the file", good, "bad.kek", mustHex(t, good), ""},
		{"a file relative to the config", "", "prev.kek", mustHex(t, good), ""},
		{"a bad environment", bad, "", nil, "VALET_KEK_PREVIOUS: the key-encryption key must be 64 hex digits"},
		{"a bad file", "", "bad.kek", nil, "kek_previous_file: the key-encryption key must be 64 hex digits"},
		{"a missing file", "", "gone.kek", nil, "kek_previous_file: open "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("VALET_KEK_PREVIOUS", c.env)
			text := minimalConfig
			if c.file != "" {
				text += "kek_previous_file: " + c.file + "\n"
			}
			path := filepath.Join(dir, "valet.yaml")
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := loadPreviousKEK(cfg)
			if c.err == "" && (err != nil || !bytes.Equal(got, c.want)) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("loadPreviousKEK: %x, %v; want %x, %q", got, err, c.want, c.err)
			}
		})
	}

	e := newTestEnv(t)
	k := mustHex(t, good)
	s := &Server{Config: e.Config, KEK: k, PreviousKEK: bytes.Clone(k), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := s.Open(context.Background()); err == nil || !strings.Contains(err.Error(), "the previous key-encryption key is the current one") {
		s.Close()
		t.Fatalf("a start with the previous KEK equal to the current one: %v", err)
	}
}
