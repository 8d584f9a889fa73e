package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// The default jobs are listed with their next runs, by the API and the
// CLI; an operator runs one at once; a missing job, a non-operator and a
// body that is not an empty object are refused.
func TestJobsAPIAndCLI(t *testing.T) {
	e := newTestEnv(t).Start()
	rows := parseTable(t, mustCLI(t, cliEnv(e), "jobs", "list"))
	want := map[string]string{"signing-key-rotation": "@daily", "audit-checkpoint": "@hourly", "grant-expiry": "@every 30s", "housekeeping": "@every 10m", "audit-archive": "@every 10m", "kek-rotation": "@hourly",
		"vault-secret-id-rotation": "@daily", "vault-token-health": "@every 5m", "quarantine-release": "@every 30s"}
	if len(rows) != len(want) {
		t.Fatalf("jobs list: %v, want the %d default jobs", rows, len(want))
	}
	for _, r := range rows {
		if want[r["NAME"]] != r["SCHEDULE"] || r["NEXT"] == "-" || r["NEXT"] == "" {
			t.Errorf("row %v: want schedule %q and a next run", r, want[r["NAME"]])
		}
	}

	out := mustCLI(t, cliEnv(e), "jobs", "run", "housekeeping")
	if !strings.HasPrefix(out, "job housekeeping run 1: ok in ") || !strings.Contains(out, "db_size_bytes: ") {
		t.Errorf("jobs run: %q", out)
	}
	show := apiJSON[map[string]any](t, e, "/v1/jobs/housekeeping")
	recent, _ := show["recent"].([]any)
	if show["last_outcome"] != "ok" || len(recent) != 1 || recent[0].(map[string]any)["operator"] != "alice" {
		t.Errorf("GET /v1/jobs/housekeeping: %v", show)
	}
	kinds := auditKinds(t, e)
	if kinds[audit.KindJobStart] != 1 || kinds[audit.KindJobEnd] != 1 {
		t.Errorf("audit kinds %v: want the run's job.start and job.end", kinds)
	}

	cases := []struct {
		name, method, path, bearer string
		body                       any
		status                     int
		detail                     string
	}{
		{"unknown job", "POST", "/v1/jobs/nope/run", testOperatorToken, nil, 404, "job nope is not configured"},
		{"unknown job read", "GET", "/v1/jobs/nope", testOperatorToken, nil, 404, "job nope is not configured"},
		{"no operator", "POST", "/v1/jobs/housekeeping/run", "", nil, 401, "operators"},
		{"agent", "GET", "/v1/jobs", e.Attest("agent-1", nil), nil, 401, "not an operator credential"},
		{"a body with fields", "POST", "/v1/jobs/housekeeping/run", testOperatorToken, map[string]any{"force": true}, 400, "force"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.Do(tc.method, tc.path, tc.bearer, tc.body)
			if r.Status != tc.status || !strings.Contains(string(r.Body), tc.detail) || r.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%s %s: %d %s", tc.method, tc.path, r.Status, r.Body)
			}
		})
	}
	if s := apiJSON[map[string]any](t, e, "/v1/jobs/housekeeping"); s["runs"] != float64(1) {
		t.Errorf("a refused run changed the job: %v", s)
	}
	_, errOut, code := runCLI(t, cliEnv(e), "jobs", "run", "nope")
	if code == 0 || !strings.Contains(errOut, "job nope is not configured") {
		t.Errorf("jobs run nope: exit %d, %q", code, errOut)
	}
}

// cachingJWKS is a resource server's JWKS cache at its strictest: it keeps
// the key set for the Cache-Control max-age it was served with, on the
// fake clock, and never fetches early, not even for an unknown kid.
type cachingJWKS struct {
	url     string
	clock   clock.Clock
	set     jwk.Set
	expires time.Time
	fetches int
}

func (c *cachingJWKS) verify(t *testing.T, tok string) error {
	t.Helper()
	if c.set == nil || !c.clock.Now().Before(c.expires) {
		resp, err := http.Get(c.url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		maxAge, err := strconv.Atoi(strings.TrimPrefix(strings.Split(resp.Header.Get("Cache-Control"), ", ")[1], "max-age="))
		if err != nil {
			t.Fatalf("Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
		if c.set, err = jwk.Parse(b); err != nil {
			t.Fatal(err)
		}
		c.expires = c.clock.Now().Add(time.Duration(maxAge) * time.Second)
		c.fetches++
	}
	_, err := jws.Verify([]byte(tok), jws.WithKeySet(c.set, jws.WithInferAlgorithmFromKey(true)))
	return err
}

// Three rotations by `POST /v1/jobs/signing-key-rotation/run`, with tokens
// minted and verified every minute throughout by a client that caches the
// JWKS for its max-age (jwx) and by go-oidc's remote key set: no
// verification fails, and each rotation's key signs from an hour (the
// default prepublish) after the run.
func TestSigningKeyRotationKeepsCachingVerifiers(t *testing.T) {
	e := newTestEnv(t)
	// The test's three hours and a quarter start at 01:00 UTC, so the
	// job's own @daily run never falls among the three manual ones,
	// whatever the time of day the test runs.
	fake := clock.NewFake(time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour))
	e.Clock = fake
	e.Issuer.SetClock(fake)
	e.Start()
	ctx := context.Background()
	strict := &cachingJWKS{url: e.URL + "/.well-known/jwks.json", clock: fake}
	remote := oidc.NewRemoteKeySet(ctx, e.URL+"/.well-known/jwks.json")
	failures := 0
	signers := map[string]bool{}
	mintAndVerify := func() string {
		tok := e.Mint(e.Attest("rs-client", nil), "demo")["credential"].(map[string]any)["access_token"].(string)
		if err := strict.verify(t, tok); err != nil {
			failures++
			t.Errorf("at %s the caching verifier failed: %v", fake.Now().Format(time.TimeOnly), err)
		}
		if _, err := remote.VerifySignature(ctx, tok); err != nil {
			failures++
			t.Errorf("at %s go-oidc failed: %v", fake.Now().Format(time.TimeOnly), err)
		}
		msg, err := jws.Parse([]byte(tok))
		if err != nil {
			t.Fatal(err)
		}
		kid := msg.Signatures()[0].ProtectedHeaders().KeyID()
		signers[kid] = true
		return kid
	}
	for rotation := 1; rotation <= 3; rotation++ {
		before := mintAndVerify()
		r := e.Do("POST", "/v1/jobs/signing-key-rotation/run", testOperatorToken, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("rotation %d: %d %s", rotation, r.Status, r.Body)
		}
		run := r.JSON(t)["run"].(map[string]any)
		changes := run["changes"].(map[string]any)
		newKid, _ := changes["tokens.key_id"].(string)
		if run["outcome"] != "ok" || newKid == "" || newKid == before {
			t.Fatalf("rotation %d: %v", rotation, run)
		}
		for minute := 1; minute <= 65; minute++ {
			fake.Advance(time.Minute)
			kid := mintAndVerify()
			switch {
			case minute < 60 && kid != before:
				t.Fatalf("rotation %d: minute %d signed by %s before its prepublish passed", rotation, minute, kid)
			case minute >= 60 && kid != newKid:
				t.Fatalf("rotation %d: minute %d signed by %s, want the new key %s", rotation, minute, kid, newKid)
			}
		}
	}
	if failures != 0 || len(signers) != 4 || strict.fetches < 3*65/5 {
		t.Errorf("%d failed verifications, %d signing keys, %d JWKS fetches", failures, len(signers), strict.fetches)
	}
	out := mustCLI(t, cliEnv(e), "jobs", "show", "signing-key-rotation")
	if !strings.Contains(out, `"runs": 3`) || !strings.Contains(out, `"last_outcome": "ok"`) {
		t.Errorf("jobs show: %s", out)
	}
}

// `valet audit verify --checkpoint <witness file>` detects a tail cut and
// a re-chained log that the chain alone accepts, a forged checkpoint and a
// checkpoint of another valet.
func TestAuditCheckpointWitness(t *testing.T) {
	type tamper struct {
		name   string
		edit   func(stored [][]byte) [][]byte
		stdout string // what verify prints
	}
	cases := []tamper{
		{"untouched", nil, "checkpoints OK: the log matches 2 signed checkpoints"},
		{"tail cut", func(st [][]byte) [][]byte { return st[:len(st)-6] }, "records after"},
		{"re-chained", bolt.Rechain(3), "first untrusted record"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			witness := filepath.Join(t.TempDir(), "witness", "checkpoints.jsonl")
			e := newTestEnvYAML(t, func(s string) string {
				return s + "jobs:\n  - name: audit-checkpoint\n    witnesses:\n      - type: file\n        path: " + witness + "\n"
			})
			var logBuf strings.Builder
			e.Log = &logBuf
			t.Cleanup(func() {
				if t.Failed() {
					t.Log(logBuf.String())
				}
			})
			e.Start()
			agent := e.Attest("audited", nil)
			e.Mint(agent, "demo")
			if r := e.Do("POST", "/v1/jobs/audit-checkpoint/run", testOperatorToken, nil); r.Status != 200 || r.JSON(t)["run"].(map[string]any)["outcome"] != "ok" {
				t.Fatalf("checkpoint: %d %s", r.Status, r.Body)
			}
			for range 3 {
				e.Mint(agent, "demo")
			}
			keyOut := mustCLI(t, cliEnv(e), "audit", "key")
			keyFile := filepath.Join(t.TempDir(), "key.json")
			if err := os.WriteFile(keyFile, []byte(keyOut), 0o600); err != nil {
				t.Fatal(err)
			}
			e.Server.Close() // checkpoints once more at shutdown; frees the database
			b, err := os.ReadFile(witness)
			if err != nil || strings.Count(string(b), "\n") != 2 {
				t.Fatalf("witness file: %v\n%s", err, b)
			}
			if tc.edit != nil {
				s, err := bolt.Open(filepath.Join(e.Dir, "valet.db"), bolt.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if err := s.RewriteAudit(tc.edit); err != nil {
					t.Fatal(err)
				}
				s.Close()
			}
			out, errOut, code := runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir, "--key", keyFile, "--checkpoint", witness)
			if !strings.HasPrefix(out, "audit log OK") {
				t.Fatalf("the chain alone should verify: %q %q", out, errOut)
			}
			if !strings.Contains(out, tc.stdout) || (code == 0) != (tc.edit == nil) {
				t.Fatalf("verify --checkpoint: exit %d\n%s%s", code, out, errOut)
			}
		})
	}

	t.Run("forged and foreign checkpoints", func(t *testing.T) {
		witness := filepath.Join(t.TempDir(), "checkpoints.jsonl")
		yaml := func(s string) string {
			return s + "jobs:\n  - name: audit-checkpoint\n    witnesses:\n      - {type: file, path: " + witness + "}\n"
		}
		e := newTestEnvYAML(t, yaml).Start()
		other := newTestEnvYAML(t, yaml).Start() // another valet, its own key, the same witness
		for _, env := range []*testEnv{e, other} {
			if r := env.Do("POST", "/v1/jobs/audit-checkpoint/run", testOperatorToken, nil); r.Status != 200 {
				t.Fatalf("checkpoint: %d %s", r.Status, r.Body)
			}
		}
		lines := strings.Split(strings.TrimSpace(readFile(t, witness)), "\n")
		var ours, theirs audit.Checkpoint
		mustUnmarshal(t, lines[0], &ours)
		mustUnmarshal(t, lines[1], &theirs)
		forged := ours
		forged.Seq++
		for _, c := range []struct {
			name string
			cp   audit.Checkpoint
			want string
		}{
			{"forged", forged, "signature does not verify"},
			{"another valet's", theirs, "signed by another key"},
		} {
			f := filepath.Join(t.TempDir(), "cp.json")
			b, _ := json.Marshal(c.cp)
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			out, _, code := runCLI(t, cliEnv(e), "audit", "verify", "--checkpoint", f)
			if code != 1 || !strings.Contains(out, "checkpoints REFUSED") || !strings.Contains(out, c.want) {
				t.Errorf("%s: exit %d %q", c.name, code, out)
			}
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustUnmarshal(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatal(err)
	}
}

// Records moved to the audit archive are still part of the log: `valet
// audit verify` proves the whole history, through the server and offline,
// against checkpoints signed before and after the move, and a changed
// archived record breaks it.
func TestAuditArchiveVerifies(t *testing.T) {
	witness := filepath.Join(t.TempDir(), "witness", "checkpoints.jsonl")
	e := newTestEnvYAML(t, func(s string) string {
		return s + "jobs:\n  - name: audit-checkpoint\n    witnesses:\n      - {type: file, path: " + witness + "}\n" +
			"  - name: audit-archive\n    hot_window: 0s\n"
	}).Start()
	agent := e.Attest("archived", nil)
	run := func(job string) map[string]any {
		t.Helper()
		r := e.Do("POST", "/v1/jobs/"+job+"/run", testOperatorToken, nil)
		if r.Status != 200 || r.JSON(t)["run"].(map[string]any)["outcome"] != "ok" {
			t.Fatalf("%s: %d %s", job, r.Status, r.Body)
		}
		return r.JSON(t)["run"].(map[string]any)
	}
	for range 3 {
		e.Mint(agent, "demo")
	}
	run("audit-checkpoint")
	e.Mint(agent, "demo")
	archived := run("audit-archive")["changes"].(map[string]any)
	if archived["records_archived"] == "0" || archived["segments"] != "1" {
		t.Fatalf("audit-archive changes %v, want records in one segment", archived)
	}
	e.Mint(agent, "demo")
	run("audit-checkpoint")
	keyFile := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(keyFile, []byte(mustCLI(t, cliEnv(e), "audit", "key")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, cliEnv(e), "audit", "verify", "--key", keyFile, "--checkpoint", witness)
	if code != 0 || !strings.Contains(out, "audit log OK") || !strings.Contains(out, "checkpoints OK: the log matches 2 signed checkpoints") {
		t.Fatalf("verify through the server: exit %d\n%s%s", code, out, errOut)
	}
	e.Server.Close()
	out, errOut, code = runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir, "--key", keyFile, "--checkpoint", witness)
	if code != 0 || !strings.Contains(out, "checkpoints OK") {
		t.Fatalf("verify offline: exit %d\n%s%s", code, out, errOut)
	}
	segs, err := filepath.Glob(filepath.Join(e.Dir, "audit", "archive", "*.jsonl"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("archive segments %v, %v", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(b), `"kind":"mint"`, `"kind":"mint.failed"`, 1)
	if changed == string(b) {
		t.Fatalf("no mint record in the archive:\n%s", b)
	}
	if err := os.Chmod(segs[0], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[0], []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code = runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir, "--key", keyFile, "--checkpoint", witness)
	if code != 1 || !strings.Contains(out, "audit log BROKEN") {
		t.Errorf("verify offline after an archived record changed: exit %d\n%s", code, out)
	}
}
