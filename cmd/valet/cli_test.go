package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/policy"
)

// runCLI runs the valet binary with env added to the environment and
// returns stdout, stderr and the exit code.
func runCLI(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(valetBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func leaseState(t *testing.T, e *testEnv, id string) string {
	t.Helper()
	r := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("get lease %s: %d %s", id, r.Status, r.Body)
	}
	return r.JSON(t)["state"].(string)
}

func TestCLI(t *testing.T) {
	e := newTestEnv(t)
	p := startServe(t, e)
	e.URL = p.url
	agentEnv := []string{"VALET_ADDR=" + p.url, "VALET_ATTESTATION=" + e.Attest("cli-agent", nil), "VALET_TOKEN="}
	opEnv := []string{"VALET_ADDR=" + p.url, "VALET_TOKEN=" + testOperatorToken}

	t.Run("creds prints the credential as JSON", func(t *testing.T) {
		out, errOut, code := runCLI(t, agentEnv, "creds", "demo", "--ttl", "90s", "--reason", "cli test")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var res mintResponse
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if res.Role != "demo" || res.AgentID != "test/cli-agent" || res.Credential["access_token"] == nil {
			t.Fatalf("unexpected credential %+v", res)
		}
		if d := time.Until(res.ExpiresAt); d > 90*time.Second || d < 80*time.Second {
			t.Fatalf("expires in %s, want about 90s", d)
		}
		if leaseState(t, e, res.LeaseID) != "active" {
			t.Fatal("minted lease is not active")
		}
	})

	t.Run("creds env and token formats", func(t *testing.T) {
		out, _, code := runCLI(t, agentEnv, "creds", "demo", "-o", "env")
		if code != 0 || !strings.Contains(out, "export VALET_ACCESS_TOKEN='ey") || !strings.Contains(out, "export VALET_LEASE_ID='") {
			t.Fatalf("env format: exit %d\n%s", code, out)
		}
		out, _, code = runCLI(t, agentEnv, "creds", "demo", "-o", "token")
		if code != 0 || strings.Count(strings.TrimSpace(out), ".") != 2 || strings.Contains(out, "{") {
			t.Fatalf("token format: exit %d\n%s", code, out)
		}
	})

	t.Run("creds reports a policy denial", func(t *testing.T) {
		env := append(append([]string{}, agentEnv...), "VALET_ATTESTATION="+e.Attest("cli-blocked", map[string]any{"blocked": true}))
		_, errOut, code := runCLI(t, env, "creds", "demo")
		if code != 1 || !strings.Contains(errOut, "403") || !strings.Contains(errOut, "forbidden by policy") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})

	t.Run("exec injects, returns the exit code and releases", func(t *testing.T) {
		out, errOut, code := runCLI(t, agentEnv, "exec", "demo", "--", "sh", "-c",
			`test -n "$VALET_ACCESS_TOKEN" || exit 99; echo "$VALET_LEASE_ID"; exit 7`)
		if code != 7 {
			t.Fatalf("exit %d, want the child's 7; stderr %s", code, errOut)
		}
		id := strings.TrimSpace(out)
		if st := leaseState(t, e, id); st != "released" {
			t.Fatalf("lease after exec is %s, want released", st)
		}
		// The credential was in the child's environment only.
		if strings.Contains(errOut, "eyJ") {
			t.Fatal("the credential leaked to valet's stderr")
		}
	})

	t.Run("exec forwards signals", func(t *testing.T) {
		cmd := exec.Command(valetBinary(t), "exec", "demo", "--", "sh", "-c",
			`trap 'exit 42' TERM; echo "$VALET_LEASE_ID"; while :; do sleep 0.02; done`)
		cmd.Env = append(os.Environ(), agentEnv...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		id, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, stdout)
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 42 {
			t.Fatalf("valet exec ended with %v, want exit 42 from the child's TERM trap", err)
		}
		if st := leaseState(t, e, strings.TrimSpace(id)); st != "released" {
			t.Fatalf("lease after signalled exec is %s, want released", st)
		}
	})

	t.Run("operator lists, revokes and verifies", func(t *testing.T) {
		res := e.Mint(e.Attest("cli-victim", nil), "demo")
		id := res["lease_id"].(string)
		out, errOut, code := runCLI(t, opEnv, "leases", "list", "--agent", "test/cli-victim")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "active") {
			t.Fatalf("leases list: exit %d %s\n%s", code, errOut, out)
		}
		if _, errOut, code := runCLI(t, opEnv, "leases", "revoke", id, "--reason", "cli test"); code != 0 {
			t.Fatalf("revoke: exit %d %s", code, errOut)
		}
		if st := leaseState(t, e, id); st != "revoked" {
			t.Fatalf("lease after revoke is %s", st)
		}
		out, _, code = runCLI(t, opEnv, "audit", "verify")
		if code != 0 || !strings.HasPrefix(out, "audit log OK") {
			t.Fatalf("audit verify: exit %d\n%s", code, out)
		}
		// Operator commands refuse to run without the operator token.
		if _, errOut, code := runCLI(t, agentEnv, "leases", "list"); code == 0 || !strings.Contains(errOut, "VALET_TOKEN") {
			t.Fatalf("leases list without VALET_TOKEN: exit %d %s", code, errOut)
		}
	})

	t.Run("offline audit verify detects tampering", func(t *testing.T) {
		p.stop(t)
		out, _, code := runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir)
		if code != 0 || !strings.HasPrefix(out, "audit log OK") {
			t.Fatalf("offline verify of an intact log: exit %d\n%s", code, out)
		}
		// Rewrite one record's reason in place, as an attacker with the
		// file would.
		db, err := bbolt.Open(filepath.Join(e.Dir, "valet.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			k, v := b.Cursor().First() // record 1: server.start
			changed := bytes.Replace(v, []byte(`"kind":"server.start"`), []byte(`"kind":"server.stop"`), 1)
			return b.Put(append([]byte{}, k...), changed)
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		out, _, code = runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir)
		if code != 1 || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "record 1") {
			t.Fatalf("offline verify of a tampered log: exit %d\n%s", code, out)
		}
	})
}

func TestDevFilesWork(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	cfg, tok, err := prepareDev(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "valet_op_") || cfg.Role("demo") == nil || cfg.Role("demo-elevated").Approval.Required != 1 {
		t.Fatalf("dev config: token %q, roles %+v", tok, cfg.Roles)
	}
	// The sample policy's own tests pass.
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(filepath.Join(dir, "policies"), filepath.Join(dir, "policies"), policy.TestOptions{}, &out)
	if err != nil || failed != 0 || passed == 0 {
		t.Fatalf("dev policy tests: passed %d failed %d err %v\n%s", passed, failed, err, out.String())
	}
	// Running it again keeps the same operator token and files.
	_, tok2, err := prepareDev(dir, "127.0.0.1:0")
	if err != nil || tok2 != tok {
		t.Fatalf("second prepareDev: token %q (was %q), err %v", tok2, tok, err)
	}
	for _, f := range []string{"kek", "operator-token", "dev-issuer-key.json"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
		}
	}
}

func TestPolicyTestCommandFailsOnMismatch(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(`@id("p") permit(principal, action == Action::"mint", resource == Role::"r");`), 0o600)
	os.WriteFile(filepath.Join(dir, "ok.test.yaml"), []byte("cases:\n  - name: allowed\n    principal: {issuer: i, sub: s}\n    role: {name: r}\n    expect: allow\n"), 0o600)
	if out, _, code := runCLI(t, nil, "policy", "test", dir); code != 0 || !strings.Contains(out, "PASS allowed") {
		t.Fatalf("passing tests: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "bad.test.yaml"), []byte("cases:\n  - name: wrongly expected\n    principal: {issuer: i, sub: s}\n    role: {name: r}\n    expect: deny\n"), 0o600)
	if out, _, code := runCLI(t, nil, "policy", "test", dir); code != 1 || !strings.Contains(out, "FAIL wrongly expected") {
		t.Fatalf("failing test: exit %d\n%s", code, out)
	}
}

// A forbid that fails to evaluate denies by default, as the server's
// policy.on_error does; --on-error skip tests Cedar's semantics instead.
func TestPolicyTestCommandOnError(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(`@id("p") permit(principal, action, resource);
@id("typo") forbid(principal, action, resource) when { principal.claims.sub.contains("x") };`), 0o600)
	os.WriteFile(filepath.Join(dir, "t.test.yaml"), []byte("cases:\n  - name: typo denies\n    principal: {issuer: i, sub: s, claims: {sub: s}}\n    role: {name: r}\n    expect: deny\n    expect_errors: [typo]\n"), 0o600)
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"default fails closed", nil, 0, []string{"PASS typo denies"}},
		{"deny fails closed", []string{"--on-error", "deny"}, 0, []string{"PASS typo denies"}},
		{"skip follows Cedar", []string{"--on-error", "skip"}, 1, []string{"FAIL typo denies: expected deny, got allow"}},
		{"unknown mode", []string{"--on-error", "ignore"}, 1, []string{`--on-error must be deny or skip, not "ignore"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, nil, append([]string{"policy", "test", dir}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tt.code, out, errOut)
			}
			for _, w := range tt.wants {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
}

func TestExamplePoliciesPassTheirTests(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "examples", "policies")
	var out bytes.Buffer
	passed, failed, err := policy.RunTests(dir, dir, policy.TestOptions{}, &out)
	if err != nil || failed != 0 || passed < 5 {
		t.Fatalf("passed %d failed %d err %v\n%s", passed, failed, err, out.String())
	}
}

func TestCLICredsWaitsForApproval(t *testing.T) {
	e := newTestEnv(t)
	p := startServe(t, e)
	e.URL = p.url
	cmd := exec.Command(valetBinary(t), "creds", "elevated", "--reason", "cli approval test", "--wait", "--timeout", "1m")
	cmd.Env = append(os.Environ(), "VALET_ADDR="+p.url, "VALET_ATTESTATION="+e.Attest("cli-waiter", nil), "VALET_TOKEN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Find the pending grant as an operator and approve it.
	var id string
	eventually(t, 10*time.Second, "the grant appears", func() bool {
		r := e.Do("GET", "/v1/grants?state=pending", testOperatorToken, nil)
		gs := r.JSON(t)["grants"].([]any)
		if len(gs) == 1 {
			id = gs[0].(map[string]any)["id"].(string)
		}
		return id != ""
	})
	if _, errOut, code := runCLI(t, []string{"VALET_ADDR=" + p.url, "VALET_TOKEN=" + testOperatorToken}, "grants", "approve", id, "-m", "ok from the CLI"); code != 0 {
		t.Fatalf("grants approve: exit %d %s", code, errOut)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("creds --wait: %v\n%s", err, errb.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("creds --wait did not return after the approval")
	}
	var res mintResponse
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.LeaseID == "" || res.GrantID != id {
		t.Fatalf("creds --wait printed %s (%v)", out.String(), err)
	}
	if !strings.Contains(errb.String(), "waiting for operator approval") {
		t.Fatalf("no progress message: %s", errb.String())
	}
}

// TestCLIAuditVerifyCanonicalBytes: a record whose stored bytes decode to
// the appended record but are not its canonical encoding (here a duplicated
// key whose last value is the original) breaks the log, offline and online.
func TestCLIAuditVerifyCanonicalBytes(t *testing.T) {
	e := newTestEnv(t).Start()
	e.Mint(e.Attest("verify-agent", nil), "demo")
	e.Server.Close()

	var seq uint64
	db, err := bbolt.Open(filepath.Join(e.Dir, "valet.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if bytes.Contains(v, []byte(`"decision":"allow"`)) {
				seq = binary.BigEndian.Uint64(k)
				changed := bytes.Replace(v, []byte(`"decision":"allow"`), []byte(`"decision":"deny","decision":"allow"`), 1)
				return b.Put(append([]byte{}, k...), changed)
			}
		}
		return errors.New("no allowed decision in the log")
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("record %d:", seq)

	out, _, code := runCLI(t, nil, "audit", "verify", "--data-dir", e.Dir)
	if code != 1 || !strings.Contains(out, "BROKEN") || !strings.Contains(out, want) {
		t.Errorf("offline verify: exit %d\n%s\nwant exit 1 naming %q", code, out, want)
	}

	e.Start()
	out, _, code = runCLI(t, []string{"VALET_ADDR=" + e.URL, "VALET_TOKEN=" + testOperatorToken}, "audit", "verify")
	if code != 1 || !strings.Contains(out, "BROKEN") || !strings.Contains(out, want) {
		t.Errorf("online verify: exit %d\n%s\nwant exit 1 naming %q", code, out, want)
	}
}

// TestServeListsEachConfigErrorOnItsOwnLine: a config with several
// mistakes is refused with one line per mistake, each naming its key,
// rather than one line with the newlines written as \n.
func TestServeListsEachConfigErrorOnItsOwnLine(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`data_dir: .
issuers:
  - {name: dev, issuer: valet-dev, audiences: [valet], jwks_file: jwks.json}
backends:
  - {name: tokens, type: jwt}
roles:
  - {name: demo, backend: tokens, ttl: 5m, max_ttl: 1m}
policy: {dir: .}
limits: {agent_burst: 0}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runCLI(t, nil, "serve", "--config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
	}
	if strings.Contains(stderr, `\n`) {
		t.Fatalf("newlines printed as \\n:\n%s", stderr)
	}
	for _, want := range []string{"roles[0].max_ttl (1m0s) must not be less than ttl (5m0s)", "limits.agent_burst must be at least 1; it is 0"} {
		if !slices.ContainsFunc(strings.Split(stderr, "\n"), func(l string) bool { return strings.Contains(l, want) }) {
			t.Fatalf("no line saying %q:\n%s", want, stderr)
		}
	}
}
