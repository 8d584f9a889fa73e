package vault

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/leases/clock"
)

// TestLoginRetriesFollowTheClock: while valet cannot log in to Vault, the
// login loop retries on the injected clock with a doubling backoff, and
// requests try a login at most once a second of that clock; a test moves
// the clock instead of waiting.
func TestLoginRetriesFollowTheClock(t *testing.T) {
	v := vaulttest.StartDev(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("not-a-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.ClearToken()
	clk := clock.NewFake(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	a := newAuthenticator(client, AuthOptions{Method: "token", TokenFile: tokenFile}, slog.New(slog.NewTextHandler(io.Discard, nil)), clk)
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	loggedIn := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.loggedIn
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	// The first login failed: the loop waits for its retry on the clock.
	waitFor("the login loop arms its retry timer", func() bool { return clk.Waiters() == 1 })
	if loggedIn() {
		t.Fatal("logged in with a token Vault does not know")
	}

	// A request tries a login itself, then fails fast for the rest of
	// that second.
	ctx := context.Background()
	const fastFail = "valet is not logged in to Vault"
	if err := a.ready(ctx); err == nil || strings.Contains(err.Error(), fastFail) {
		t.Fatalf("first request: %v; want the error of a login attempt", err)
	}
	if err := a.ready(ctx); err == nil || !strings.Contains(err.Error(), fastFail) {
		t.Fatalf("request within the second: %v; want a fast failure without a login", err)
	}

	// The retry fires at 1s of the clock, fails, and the next waits 2s.
	clk.Advance(time.Second)
	waitFor("the retry fails and the loop waits again", func() bool { return clk.Waiters() == 1 && !loggedIn() })
	if err := a.ready(ctx); err == nil || strings.Contains(err.Error(), fastFail) {
		t.Fatalf("request a second later: %v; want the error of a new login attempt", err)
	}

	// Vault now knows the token. A second of the clock is not yet the
	// doubled backoff; the next is.
	if err := os.WriteFile(tokenFile, []byte(v.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if loggedIn() || clk.Waiters() != 1 {
		t.Fatalf("the loop retried before its backoff of 2s (logged in %v, %d timers)", loggedIn(), clk.Waiters())
	}
	clk.Advance(time.Second)
	waitFor("the loop logs in at its retry", loggedIn)
	if client.Token() != v.Token {
		t.Fatalf("client token %q, want the one in the token file", client.Token())
	}
	if err := a.ready(ctx); err != nil {
		t.Fatalf("request once logged in: %v", err)
	}
}
