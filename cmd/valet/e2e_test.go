package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
)

// The end-to-end tests run the real binary, as users do.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// valetBinary builds the valet binary once per test run.
func valetBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "valet-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "valet")
		// The test build includes the test-ledger backend, whose
		// credentials are files a test can count, and failpoints
		// ($VALET_FAILPOINTS) that kill the process mid-flow.
		out, err := exec.Command("go", "build", "-tags", "valet_testbackends,valet_failpoints", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a running `valet serve`.
type proc struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
}

// startServe starts `valet serve --config` for the env's config and waits
// until it logs that it is serving.
func startServe(t *testing.T, e *testEnv, env ...string) *proc {
	t.Helper()
	return startServeConfig(t, filepath.Join(e.Dir, "config.yaml"), nil, env...)
}

// startServeConfig is startServe for a config file; onLine, if not nil,
// gets every line valet logs (a copy it may keep).
func startServeConfig(t *testing.T, config string, onLine func(line []byte), env ...string) *proc {
	t.Helper()
	cmd := exec.Command(valetBinary(t), "serve", "--config", config)
	cmd.Env = append(append(os.Environ(), "VALET_KEK="+strings.Repeat("07", 32)), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if onLine != nil {
				onLine(bytes.Clone(sc.Bytes()))
			}
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "valet is serving" {
				addr <- line.Addr
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	select {
	case a := <-addr:
		p.url = "http://" + a
	case <-p.done:
		t.Fatalf("valet serve exited before serving: %v", cmd.ProcessState)
	case <-time.After(30 * time.Second):
		t.Fatal("valet serve did not start within 30s")
	}
	return p
}

// kill sends SIGKILL: no shutdown code runs.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("valet did not stop within 20s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("valet exited with %d after SIGTERM", code)
	}
}

// ecKeyFromJWK rebuilds a P-256 public key from a JWK by hand, so the
// check does not share code with valet.
func ecKeyFromJWK(t *testing.T, k map[string]any) *ecdsa.PublicKey {
	t.Helper()
	if k["kty"] != "EC" || k["crv"] != "P-256" {
		t.Fatalf("unexpected JWK %v", k)
	}
	coord := func(s any) []byte {
		b, err := base64.RawURLEncoding.DecodeString(s.(string))
		if err != nil || len(b) != 32 {
			t.Fatalf("bad JWK coordinate %v", s)
		}
		return b
	}
	// ParseUncompressedPublicKey checks that the point is on the curve.
	point := append(append([]byte{4}, coord(k["x"])...), coord(k["y"])...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		t.Fatalf("JWK is not a P-256 point: %v", err)
	}
	return pub
}

func TestEndToEndServeMintVerifyRelease(t *testing.T) {
	e := newTestEnv(t)
	p := startServe(t, e)
	e.URL = p.url

	tok := e.Attest("e2e-agent", nil)
	res := e.Mint(tok, "demo")
	leaseID := res["lease_id"].(string)
	access := res["credential"].(map[string]any)["access_token"].(string)

	// Verify the minted JWT with golang-jwt against the served JWKS.
	r := e.Do("GET", "/.well-known/jwks.json", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("jwks: %d", r.Status)
	}
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(r.Body, &jwks); err != nil || len(jwks.Keys) == 0 {
		t.Fatalf("jwks body %s: %v", r.Body, err)
	}
	parsed, err := jwtlib.Parse(access, func(tk *jwtlib.Token) (any, error) {
		for _, k := range jwks.Keys {
			if k["kid"] == tk.Header["kid"] {
				return ecKeyFromJWK(t, k), nil
			}
		}
		return nil, fmt.Errorf("kid %v not in JWKS", tk.Header["kid"])
	}, jwtlib.WithValidMethods([]string{"ES256"}), jwtlib.WithIssuer("http://valet.test"),
		jwtlib.WithAudience("demo-api"), jwtlib.WithExpirationRequired(), jwtlib.WithIssuedAt())
	if err != nil {
		t.Fatalf("golang-jwt rejects the minted token: %v", err)
	}
	claims := parsed.Claims.(jwtlib.MapClaims)
	if claims["sub"] != "test/e2e-agent" || claims["jti"] != leaseID || claims["scope"] != "read write" {
		t.Fatalf("claims = %v", claims)
	}
	exp, _ := claims.GetExpirationTime()
	if d := time.Until(exp.Time); d <= 4*time.Minute || d > 5*time.Minute {
		t.Fatalf("token expires in %s, want the role's 5m", d)
	}

	// Release, then introspection turns inactive.
	if in := introspect(t, e, access); in["active"] != true {
		t.Fatalf("introspection before release: %v", in)
	}
	r = e.Do("DELETE", "/v1/leases/"+leaseID, e.Attest("e2e-agent", nil), nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "released" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	if in := introspect(t, e, access); in["active"] != false {
		t.Fatalf("introspection after release: %v", in)
	}
	p.stop(t)
}

// mintIntoFailpoint starts valet serve for e with the failpoint between a
// backend's mint and the lease commit, mints role as agent sub, and waits
// for the process to have killed itself there.
func mintIntoFailpoint(t *testing.T, e *testEnv, sub, role string) {
	t.Helper()
	p := startServe(t, e, "VALET_FAILPOINTS=mint.after-backend")
	req, _ := http.NewRequest("POST", p.url+"/v1/credentials", strings.NewReader(`{"role":"`+role+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.Attest(sub, nil))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the mint answered %d; the failpoint should have killed valet", resp.StatusCode)
	}
	<-p.done
}

// killDuringMints starts valet serve for e, has workers agents mint in a
// loop (worker w as the agent and role who(w) names, with a 1h TTL), kills
// the server (SIGKILL) once at least n mints succeeded (or after 20 s),
// and returns the lease ids whose credential reached a client.
func killDuringMints(t *testing.T, e *testEnv, workers, n int, who func(w int) (sub, role string)) []string {
	t.Helper()
	p := startServe(t, e)
	e.URL = p.url
	var mu sync.Mutex
	var returned []string
	var ok atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, role := who(w)
			tok := e.Attest(sub, nil)
			client := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("POST", p.url+"/v1/credentials", strings.NewReader(`{"role":"`+role+`","ttl":"1h"}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					return // the server died
				}
				var body struct {
					LeaseID    string         `json:"lease_id"`
					Credential map[string]any `json:"credential"`
				}
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if err == nil && resp.StatusCode == http.StatusCreated && len(body.Credential) > 0 {
					mu.Lock()
					returned = append(returned, body.LeaseID)
					mu.Unlock()
					ok.Add(1)
				}
			}
		}()
	}
	// Let mints flow, then kill mid-stream.
	deadline := time.Now().Add(20 * time.Second)
	for ok.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.kill()
	close(stop)
	wg.Wait()
	if ok.Load() == 0 {
		t.Fatal("no mint succeeded before the kill")
	}
	return returned
}

// TestCrashSafety kills the real server with SIGKILL while many mints are in
// flight, restarts it, and checks invariants 3 and 4: every credential a
// client received has an active lease, no pending lease survives recovery,
// every credential the ledger backend issued for an interrupted mint is
// revoked, and the audit chain verifies. It loops so kills land at
// different points. Workers alternate between the jwt backend (leases
// written once, active) and the ledger backend (pending intent first).
func TestCrashSafety(t *testing.T) {
	e := newTestEnv(t)
	const rounds = 4
	const workers = 24
	var returned []string // lease ids whose credential reached a client
	for round := 0; round < rounds; round++ {
		returned = append(returned, killDuringMints(t, e, workers, 40+round*25, func(w int) (string, string) {
			return fmt.Sprintf("crash-%d-%d", round, w), []string{"demo", "ledger"}[w%2]
		})...)
	}

	// Restart and check.
	p := startServe(t, e)
	e.URL = p.url
	r := e.Do("GET", "/v1/leases?state=pending&limit=1000", testOperatorToken, nil)
	var list struct {
		Leases []map[string]any `json:"leases"`
	}
	if err := json.Unmarshal(r.Body, &list); err != nil || r.Status != 200 {
		t.Fatalf("list pending: %d %s", r.Status, r.Body)
	}
	if len(list.Leases) != 0 {
		t.Fatalf("%d pending leases survived recovery", len(list.Leases))
	}
	for _, id := range returned {
		r := e.Do("GET", "/v1/leases/"+url.PathEscape(id), testOperatorToken, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("lease %s whose credential was returned: %d %s", id, r.Status, r.Body)
		}
		if st := r.JSON(t)["state"]; st != "active" {
			t.Fatalf("lease %s whose credential was returned is %v, want active", id, st)
		}
	}
	// Recovery revokes the interrupted ledger mints through the queue:
	// wait until nothing is left to revoke, then every file left in the
	// ledger must belong to an active lease.
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts := map[string]int{}
		for _, st := range []string{"revoking", "irrevocable"} {
			r := e.Do("GET", "/v1/leases?state="+st+"&limit=1000", testOperatorToken, nil)
			var l struct {
				Leases []map[string]any `json:"leases"`
			}
			_ = json.Unmarshal(r.Body, &l)
			counts[st] = len(l.Leases)
		}
		if counts["revoking"]+counts["irrevocable"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revocations still outstanding 30s after restart: %v", counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
	files, err := os.ReadDir(filepath.Join(e.Dir, "ledger"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		r := e.Do("GET", "/v1/leases/"+f.Name(), testOperatorToken, nil)
		if r.Status != http.StatusOK || r.JSON(t)["state"] != "active" {
			t.Fatalf("ledger credential %s is alive but its lease is not active: %d %s", f.Name(), r.Status, r.Body)
		}
	}
	r = e.Do("GET", "/v1/audit/verify", testOperatorToken, nil)
	if v := r.JSON(t); v["ok"] != true {
		t.Fatalf("audit verify after crashes: %s", r.Body)
	}
	r = e.Do("GET", "/v1/audit?kind=lease.recover&limit=1000", testOperatorToken, nil)
	var recs struct {
		Records []map[string]any `json:"records"`
	}
	_ = json.Unmarshal(r.Body, &recs)
	t.Logf("%d credentials returned across %d kills, all with active leases; %d interrupted mints recovered", len(returned), rounds, len(recs.Records))
	p.stop(t)
}
