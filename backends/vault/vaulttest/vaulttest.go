// Package vaulttest starts real HashiCorp Vault servers (v1.13.0, built by
// `make vault`) and throwaway PostgreSQL clusters (Debian's postgresql) for
// valet's tests. A missing dependency fails the test with a message that
// says how to get it; nothing is skipped silently.
package vaulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends/freeport"
)

// TB is the part of testing.TB the helpers use, so that benchmarks and
// tools outside `go test` can use them too.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// Binary returns the path of the Vault test server: $VALET_VAULT_BIN, or
// deploy/vault/bin/vault in the module. It fails tb if there is none.
func Binary(tb TB) string {
	tb.Helper()
	if p := os.Getenv("VALET_VAULT_BIN"); p != "" {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		tb.Fatalf("vaulttest: %v", err)
	}
	p := filepath.Join(root, "deploy", "vault", "bin", "vault")
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("the Vault test server is missing (%s): run `make vault` (it builds Vault v1.13.0 from the Go module proxy, about 5 minutes the first time)", p)
	}
	return p
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/valet-broker/valet\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find valet's go.mod above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a loopback port that was free a moment ago, below the
// kernel's ephemeral range so that no outgoing connection takes it before
// the server binds it (backends/freeport).
func FreePort(tb TB) int {
	tb.Helper()
	p, err := freeport.Port()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Server is a running Vault.
type Server struct {
	tb      TB
	Addr    string // http://127.0.0.1:port
	Token   string // root token
	dir     string
	args    []string
	log     *os.File
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	unseal  string // unseal key (file storage only)
	storage bool
}

// StartDev starts `vault server -dev` (in-memory storage) on a free port.
func StartDev(tb TB) *Server {
	tb.Helper()
	port := FreePort(tb)
	s := &Server{tb: tb, Addr: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "root-" + randomHex(8), dir: tb.TempDir()}
	s.args = []string{"server", "-dev", "-dev-no-store-token", "-dev-root-token-id=" + s.Token, fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port)}
	s.start()
	s.waitHealthy(http.StatusOK)
	tb.Cleanup(s.Kill)
	return s
}

// StartFile starts a Vault with file storage in a temp dir, initialises it
// (one unseal key) and unseals it. Stop and Start keep the data, as a real
// Vault restart does; Start leaves it sealed until Unseal.
func StartFile(tb TB) *Server {
	tb.Helper()
	port := FreePort(tb)
	dir := tb.TempDir()
	s := &Server{tb: tb, Addr: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir, storage: true}
	cfg := fmt.Sprintf(`
storage "file" { path = %q }
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
disable_mlock = true
api_addr      = %q
ui            = false
`, filepath.Join(dir, "data"), port, s.Addr)
	cfgPath := filepath.Join(dir, "vault.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	s.args = []string{"server", "-config=" + cfgPath}
	s.start()
	s.waitHealthy(http.StatusNotImplemented) // not initialised
	c := s.client("")
	init, err := c.Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		tb.Fatalf("vault init: %v", err)
	}
	s.Token, s.unseal = init.RootToken, init.Keys[0]
	s.Unseal()
	tb.Cleanup(s.Kill)
	return s
}

func (s *Server) start() {
	s.tb.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "vault.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.tb.Fatal(err)
	}
	cmd := exec.Command(Binary(s.tb), s.args...)
	cmd.Env = append(os.Environ(), "GODEBUG=x509negativeserial=1", "VAULT_LOG_LEVEL=warn", "HOME="+s.dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start vault: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.log = cmd, done, logf
	s.mu.Unlock()
}

// waitHealthy polls sys/health until it answers with want (200 active,
// 501 not initialised, 503 sealed) or the process exits.
func (s *Server) waitHealthy(want int) {
	s.tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			b, _ := os.ReadFile(filepath.Join(s.dir, "vault.log"))
			s.tb.Fatalf("vault exited during start-up:\n%s", b)
		default:
		}
		resp, err := http.Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.tb.Fatalf("vault at %s did not become ready (want health %d) within 60s", s.Addr, want)
}

// Unseal unseals a file-storage server after Start.
func (s *Server) Unseal() {
	s.tb.Helper()
	if !s.storage {
		return
	}
	s.waitHealthy(http.StatusServiceUnavailable)
	if _, err := s.client("").Sys().Unseal(s.unseal); err != nil {
		s.tb.Fatalf("unseal: %v", err)
	}
	s.waitHealthy(http.StatusOK)
}

// Stop terminates the server (SIGTERM) and waits for it.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	s.mu.Lock()
	s.cmd = nil
	s.log.Close()
	s.mu.Unlock()
}

// Start restarts a stopped file-storage server on the same port and data;
// it comes up sealed.
func (s *Server) Start() {
	s.tb.Helper()
	s.start()
}

// Kill stops the server if it runs.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
	s.mu.Lock()
	s.cmd = nil
	s.log.Close()
	s.mu.Unlock()
}

// Client returns an API client with the root token.
func (s *Server) Client() *api.Client { return s.client(s.Token) }

// ClientWithToken returns an API client using token.
func (s *Server) ClientWithToken(token string) *api.Client { return s.client(token) }

func (s *Server) client(token string) *api.Client {
	s.tb.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 10 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		s.tb.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// Write is a helper for test set-up: a write that must succeed.
func (s *Server) Write(path string, data map[string]any) *api.Secret {
	s.tb.Helper()
	sec, err := s.Client().Logical().WriteWithContext(context.Background(), path, data)
	if err != nil {
		s.tb.Fatalf("vault write %s: %v", path, err)
	}
	return sec
}

// Policy writes an ACL policy.
func (s *Server) Policy(name, hcl string) {
	s.tb.Helper()
	if err := s.Client().Sys().PutPolicy(name, hcl); err != nil {
		s.tb.Fatalf("vault policy %s: %v", name, err)
	}
}

// Mount enables a secrets engine of type typ at path, unless an engine is
// enabled there already (a dev Vault has KV version 2 at secret/).
func (s *Server) Mount(path, typ string) {
	s.tb.Helper()
	mounts, err := s.Client().Sys().ListMounts()
	if err != nil {
		s.tb.Fatalf("vault list mounts: %v", err)
	}
	if _, ok := mounts[strings.Trim(path, "/")+"/"]; ok {
		return
	}
	if err := s.Client().Sys().Mount(path, &api.MountInput{Type: typ}); err != nil {
		s.tb.Fatalf("vault mount %s: %v", path, err)
	}
}

// TokenFile writes the root token to a file and returns its path.
func (s *Server) TokenFile() string {
	s.tb.Helper()
	p := filepath.Join(s.tb.TempDir(), "vault-token")
	if err := os.WriteFile(p, []byte(s.Token+"\n"), 0o600); err != nil {
		s.tb.Fatal(err)
	}
	return p
}

// UnreadableAccessors returns the token accessors that Vault lists but
// refuses to look up, even for the root token (403).
func (s *Server) UnreadableAccessors() []string {
	s.tb.Helper()
	c := s.Client()
	list, err := c.Logical().List("auth/token/accessors")
	if err != nil {
		s.tb.Fatalf("vault list accessors: %v", err)
	}
	var out []string
	for _, k := range list.Data["keys"].([]any) {
		_, err := c.Logical().Write("auth/token/lookup-accessor", map[string]any{"accessor": k})
		var re *api.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
			out = append(out, k.(string))
		}
	}
	return out
}

// LeaveUnreadableAccessors makes Vault leave token accessors that nobody
// can look up, as a client that gives up on its token creations mid-flight
// does (Vault 1.13 logs "failed to register token lease ... context
// canceled" and keeps the accessor of a token it no longer accepts). It
// creates tokens through tokenRole with requests cancelled after a random
// few milliseconds until at least one such accessor exists, and returns
// them. It fails tb after 20 rounds without one.
func (s *Server) LeaveUnreadableAccessors(tokenRole string) []string {
	s.tb.Helper()
	c := s.Client()
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; i < 40; i++ {
					d := time.Duration((w*40+i+round*7)%3000) * time.Microsecond
					ctx, cancel := context.WithTimeout(context.Background(), d)
					_, _ = c.Logical().WriteWithContext(ctx, "auth/token/create/"+tokenRole, map[string]any{"ttl": "60s"})
					cancel()
				}
			}(w)
		}
		wg.Wait()
		if acc := s.settledUnreadableAccessors(); len(acc) > 0 {
			return acc
		}
	}
	s.tb.Fatal("Vault left no unreadable token accessor after 20 rounds of cancelled token creations")
	return nil
}

// settledUnreadableAccessors returns the unreadable accessors once Vault
// has finished the creations its clients gave up on: a cancelled request
// ends at once for the client, while Vault may still be working on it and
// leave another unreadable accessor a moment later. The set is settled when
// three readings 100ms apart agree (at most 10s).
func (s *Server) settledUnreadableAccessors() []string {
	read := func() []string {
		acc := s.UnreadableAccessors()
		slices.Sort(acc)
		return acc
	}
	prev, same := read(), 0
	for deadline := time.Now().Add(10 * time.Second); same < 2 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		cur := read()
		if slices.Equal(cur, prev) {
			same++
		} else {
			prev, same = cur, 0
		}
	}
	return prev
}

// AppRole enables AppRole auth at approle/ (unless it is enabled) and
// creates the role name, whose tokens have policies and live 1h; it
// returns files, in a temp dir of their own, holding the role's role_id
// and a fresh secret-id.
func (s *Server) AppRole(name string, policies ...string) (roleIDFile, secretIDFile string) {
	s.tb.Helper()
	c := s.Client()
	auths, err := c.Sys().ListAuth()
	if err != nil {
		s.tb.Fatalf("vault list auth: %v", err)
	}
	if _, ok := auths["approle/"]; !ok {
		if err := c.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
			s.tb.Fatalf("vault enable approle: %v", err)
		}
	}
	s.Write("auth/approle/role/"+name, map[string]any{"token_policies": policies, "token_ttl": "1h", "token_max_ttl": "4h"})
	sec, err := s.Client().Logical().Read("auth/approle/role/" + name + "/role-id")
	if err != nil || sec == nil {
		s.tb.Fatalf("vault read role-id: %v", err)
	}
	dir := s.tb.TempDir()
	roleIDFile, secretIDFile = filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id")
	if err := os.WriteFile(roleIDFile, []byte(sec.Data["role_id"].(string)+"\n"), 0o600); err != nil {
		s.tb.Fatal(err)
	}
	if err := os.WriteFile(secretIDFile, []byte(s.SecretID(name)+"\n"), 0o600); err != nil {
		s.tb.Fatal(err)
	}
	return roleIDFile, secretIDFile
}

// SecretID generates a secret-id of the AppRole role name.
func (s *Server) SecretID(name string) string {
	s.tb.Helper()
	return s.Write("auth/approle/role/"+name+"/secret-id", nil).Data["secret_id"].(string)
}

// AppRoleLogin reports whether Vault accepts a login with the role_id in
// roleIDFile and secretID (nil), or why not.
func (s *Server) AppRoleLogin(roleIDFile, secretID string) error {
	s.tb.Helper()
	roleID, err := os.ReadFile(roleIDFile)
	if err != nil {
		s.tb.Fatal(err)
	}
	_, err = s.client("").Logical().Write("auth/approle/login", map[string]any{"role_id": strings.TrimSpace(string(roleID)), "secret_id": secretID})
	return err
}
