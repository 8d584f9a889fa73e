package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/vault"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/leases/clock"
)

// logRecords keeps the log records a backend writes.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// containing returns the records whose message contains s.
func (l *logRecords) containing(s string) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.recs {
		if strings.Contains(r.Message, s) {
			out = append(out, r)
		}
	}
	return out
}

// recoveryBackend builds a vault backend on addr (Vault or a proxy in front
// of it) logged in with token, with the kv role, logging into logs.
func recoveryBackend(t *testing.T, addr, token string, logs *logRecords) *vault.Backend {
	t.Helper()
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := vault.New("vault-main", map[string]any{"address": addr, "auth": map[string]any{"method": "token", "token_file": tf}},
		backends.Deps{Clock: clock.Real{}, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*vault.Backend)
	t.Cleanup(func() { b.Close() })
	if err := b.CheckRole(backends.RoleSpec{Name: "kv", Params: map[string]any{"token_role": "valet-agents", "policies": []any{"agent-read"}}, TTL: time.Minute, MaxTTL: 2 * time.Minute, Renewable: true}); err != nil {
		t.Fatal(err)
	}
	return b
}

// mintOrphans mints a token for each id, as mints whose leases were never
// recorded, and returns the tokens by id.
func mintOrphans(t *testing.T, b *vault.Backend, ids ...string) map[string]*backends.Credential {
	t.Helper()
	out := map[string]*backends.Credential{}
	for _, id := range ids {
		c, err := b.Mint(context.Background(), mintReq(id, "kv", time.Minute, nil))
		if err != nil {
			t.Fatal(err)
		}
		out[id] = c
	}
	return out
}

// recoverAll recovers every id at once, as a restart does, and returns each
// one's outcome.
func recoverAll(b *vault.Backend, endedAt time.Time, ids ...string) map[string]error {
	var mu sync.Mutex
	out := map[string]error{}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := b.Revoke(context.Background(), backends.Ref{CorrelationID: id, EndedAt: endedAt})
			mu.Lock()
			out[id] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// TestRecoverySkipsUnreadableAccessors: a token creation cut off half-way
// leaves an accessor that not even root can look up. Recovery skips it,
// reports it once, and still finds and revokes every orphan, with one scan
// for all the leases recovered together.
func TestRecoverySkipsUnreadableAccessors(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	unreadable := v.LeaveUnreadableAccessors("valet-agents")
	var logs logRecords
	b := recoveryBackend(t, v.Addr, v.Token, &logs)
	ids := []string{"ORPHAN-1", "ORPHAN-2", "ORPHAN-3", "ORPHAN-4", "ORPHAN-5", "ORPHAN-6"}
	creds := mintOrphans(t, b, append(ids, "KEEP")...)
	restart := time.Now()

	results := recoverAll(b, restart, append(ids, "NEVER-MINTED")...)
	for id, err := range results {
		if err != nil {
			t.Errorf("recover %s: %v; want it recovered despite %d unreadable accessors", id, err, len(unreadable))
		}
	}
	for _, id := range ids {
		if lookupSelf(t, v, creds[id].Data["vault_token"].(string)) == nil {
			t.Errorf("the orphaned token of %s is still valid", id)
		}
	}
	if err := lookupSelf(t, v, creds["KEEP"].Data["vault_token"].(string)); err != nil {
		t.Errorf("recovery revoked a token of another lease: %v", err)
	}
	warns := logs.containing("skipped Vault token accessors")
	if len(warns) != 1 {
		t.Fatalf("%d warnings about skipped accessors, want exactly one (one scan for the whole pass)", len(warns))
	}
	attrs := map[string]string{}
	warns[0].Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
	if attrs["unreadable"] != fmt.Sprint(len(unreadable)) || attrs["failed"] != "0" || !strings.Contains(strings.Join(unreadable, " "), attrs["sample_accessor"]) || warns[0].Level != slog.LevelWarn {
		t.Errorf("warning %s %v; want %d unreadable, 0 failed and a sample among %v", warns[0].Level, attrs, len(unreadable), unreadable)
	}
	// A lease that ended after that scan started needs a scan of its own.
	later := mintOrphans(t, b, "LATER")
	if err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "LATER", EndedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if lookupSelf(t, v, later["LATER"].Data["vault_token"].(string)) == nil {
		t.Error("a token created after the first scan was not found by the next")
	}
	if n := len(logs.containing("skipped Vault token accessors")); n != 2 {
		t.Errorf("%d scans in all, want 2", n)
	}
}

// faultProxy forwards to Vault but answers 502 to the lookup of the
// accessors in fail, and counts accessor lists.
type faultProxy struct {
	*httptest.Server
	mu    sync.Mutex
	fail  map[string]bool
	lists atomic.Int64
}

func newFaultProxy(t *testing.T, vaultAddr string) *faultProxy {
	t.Helper()
	u, err := url.Parse(vaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{fail: map[string]bool{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/auth/token/accessors" {
			p.lists.Add(1)
		}
		if r.URL.Path == "/v1/auth/token/lookup-accessor" {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var req struct{ Accessor string }
			json.Unmarshal(body, &req)
			p.mu.Lock()
			fail := p.fail[req.Accessor]
			p.mu.Unlock()
			if fail {
				http.Error(w, `{"errors":["injected: upstream unavailable"]}`, http.StatusBadGateway)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *faultProxy) setFail(acc string, fail bool) {
	p.mu.Lock()
	p.fail[acc] = fail
	p.mu.Unlock()
}

// TestRecoveryScanWithALookupFailure: one accessor's lookup fails for a
// reason that says nothing about its token (a 502). Every other orphan is
// still found and revoked; a lease whose token was not found cannot be
// confirmed, since its token may be the one not read, and is found by the
// next scan once Vault answers.
func TestRecoveryScanWithALookupFailure(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	proxy := newFaultProxy(t, v.Addr)
	var logs logRecords
	b := recoveryBackend(t, proxy.URL, v.Token, &logs)
	creds := mintOrphans(t, b, "FOUND", "HIDDEN")
	proxy.setFail(creds["HIDDEN"].Handle, true)

	results := recoverAll(b, time.Now(), "FOUND", "HIDDEN", "NEVER-MINTED")
	if err := results["FOUND"]; err != nil {
		t.Errorf("recover FOUND: %v; one unreadable accessor must not stop the others", err)
	}
	for _, id := range []string{"HIDDEN", "NEVER-MINTED"} {
		if err := results[id]; err == nil || !strings.Contains(err.Error(), "could not be read") {
			t.Errorf("recover %s = %v; want an error saying its token may be among the accessors not read", id, err)
		}
	}
	if lookupSelf(t, v, creds["FOUND"].Data["vault_token"].(string)) == nil {
		t.Error("the orphan that could be read was not revoked")
	}
	if n := proxy.lists.Load(); n != 1 {
		t.Errorf("%d accessor lists for one pass of 3 recoveries, want 1", n)
	}
	if w := logs.containing("skipped Vault token accessors"); len(w) != 1 {
		t.Errorf("%d warnings about skipped accessors, want 1", len(w))
	}
	// The retry of the same pass reuses the scan, and still does not
	// claim what it does not know.
	if err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "HIDDEN"}); err == nil {
		t.Error("a retry within the pass claimed HIDDEN has no token")
	}
	if n := proxy.lists.Load(); n != 1 {
		t.Errorf("%d accessor lists after a retry within the pass, want 1", n)
	}
	// Vault answers again: the next pass finds it.
	proxy.setFail(creds["HIDDEN"].Handle, false)
	if err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "HIDDEN", EndedAt: time.Now()}); err != nil {
		t.Fatalf("recover HIDDEN once Vault answers: %v", err)
	}
	if lookupSelf(t, v, creds["HIDDEN"].Data["vault_token"].(string)) == nil {
		t.Error("HIDDEN's token survived the second pass")
	}
}

// TestRecoveryWithoutLookupPermission: when valet's policy does not allow
// accessor lookups every lookup answers 403, exactly like an unreadable
// accessor. Recovery must then fail and name the missing permission, never
// conclude that no token exists.
func TestRecoveryWithoutLookupPermission(t *testing.T) {
	v := vaulttest.StartDev(t)
	setupVault(t, v)
	v.Policy("valet-no-lookup", `
path "auth/token/create/valet-agents" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/accessors" { capabilities = ["list", "sudo"] }
`)
	tok := v.Write("auth/token/create", map[string]any{"policies": []string{"valet-no-lookup"}, "ttl": "1h"}).Auth.ClientToken
	var logs logRecords
	b := recoveryBackend(t, v.Addr, tok, &logs)
	creds := mintOrphans(t, b, "ORPHAN")
	err := b.Revoke(context.Background(), backends.Ref{CorrelationID: "ORPHAN", EndedAt: time.Now()})
	if err == nil || !strings.Contains(err.Error(), "lookup-accessor") {
		t.Fatalf("recovery without lookup permission = %v; want an error naming auth/token/lookup-accessor", err)
	}
	if err := lookupSelf(t, v, creds["ORPHAN"].Data["vault_token"].(string)); err != nil {
		t.Fatalf("the orphan is gone although it could not be found: %v", err)
	}
}
