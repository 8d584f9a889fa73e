package broker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/audit"
	"github.com/valet-broker/valet/broker/clock"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/leases"
)

// scripted is a backend whose behaviour a test sets: it records what it
// issued (as if at an external system) and what was revoked.
type scripted struct {
	mu      sync.Mutex
	mint    func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error)
	issued  map[string]bool // correlation id -> alive
	revoked []backends.Ref
}

func (s *scripted) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	s.mu.Lock()
	s.issued[req.CorrelationID] = true
	s.mu.Unlock()
	return s.mint(ctx, req)
}

func (s *scripted) Revoke(ctx context.Context, ref backends.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = append(s.revoked, ref)
	delete(s.issued, ref.CorrelationID)
	return nil
}

func (s *scripted) alive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.issued)
}

func ok(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	return &backends.Credential{Handle: "h-" + req.CorrelationID, ExpiresAt: req.ExpiresAt, Data: map[string]any{"secret": "s3cret-" + req.CorrelationID}}, nil
}

// failingStore fails Activate on demand, as a full disk would.
type failingStore struct {
	*leases.BoltStore
	failActivate bool
}

func (f *failingStore) Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error) {
	if f.failActivate {
		return nil, errors.New("injected: disk full")
	}
	return f.BoltStore.Activate(ctx, id, a, now, e)
}

type fixture struct {
	b      *broker.Broker
	store  *leases.BoltStore
	fs     *failingStore
	be     *scripted
	issuer *attest.DevIssuer
	clock  *clock.Fake
	queue  *leases.RevocationQueue
	// What broker.New was given, for tests that build another broker.
	cfg   *broker.Config
	v     broker.Verifier
	authz broker.Authorizer
}

func newFixture(t *testing.T, cfgEdit func(*broker.Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	iss, err := attest.NewDevIssuer("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	iss.SetClock(clk)
	jwks := filepath.Join(dir, "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "policies"), 0o700)
	os.WriteFile(filepath.Join(dir, "policies", "p.cedar"), []byte(`permit(principal, action, resource);`), 0o600)
	cfg := broker.DefaultConfig()
	cfg.DataDir = dir
	cfg.Issuers = []broker.IssuerConfig{broker.Defaulted(func(ic *broker.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "test", "https://issuer.test", []string{"valet"}, jwks, []string{"ES256"}
	})}
	cfg.Backends = []broker.BackendConfig{{Name: "ext", Type: "scripted"}}
	cfg.Roles = []broker.Role{broker.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.TTL = "r", "ext", broker.Duration(time.Minute) })}
	cfg.Policy = broker.PolicyConfig{Dir: filepath.Join(dir, "policies")}
	if cfgEdit != nil {
		cfgEdit(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	store, err := leases.OpenBolt(filepath.Join(dir, "valet.db"), leases.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	v, err := attest.New(context.Background(), attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: cfg.Issuers, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pe, err := policy.NewEngine(policy.Options{Dir: cfg.Policy.Dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	be := &scripted{mint: ok, issued: map[string]bool{}}
	q, err := leases.NewRevocationQueue(leases.RevocationQueueConfig{Store: store, Clock: clk, Logger: log,
		Attempts: cfg.Leases.RevokeAttempts, Backoff: cfg.Leases.RevokeBackoff.D(), MaxBackoff: cfg.Leases.RevokeMaxBackoff.D(),
		Concurrency: cfg.Leases.RevokeConcurrency, Timeout: leases.DefaultRevokeTimeout,
		Revoke: func(ctx context.Context, l *leases.Lease) error {
			return be.Revoke(ctx, backends.Ref{Handle: l.Handle, CorrelationID: l.ID})
		}})
	if err != nil {
		t.Fatal(err)
	}
	fs := &failingStore{BoltStore: store}
	gs, err := grants.NewStore(store)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg, Store: fs, Auditor: store, Verifier: v, Authorizer: pe,
		Backends: map[string]backends.Backend{"ext": be}, Revoker: q, Clock: clk, Logger: log, Grants: gs})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{b: b, store: store, fs: fs, be: be, issuer: iss, clock: clk, queue: q, cfg: cfg, v: v, authz: pe}
}

func (f *fixture) attest(t *testing.T, sub string) string {
	t.Helper()
	tok, err := f.issuer.Sign(map[string]any{"sub": sub, "aud": "valet"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) counts(t *testing.T) map[leases.State]int64 {
	t.Helper()
	c, err := f.store.Counts()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c {
		if v == 0 {
			delete(c, k)
		}
	}
	return c
}

func (f *fixture) auditKinds(t *testing.T) []string {
	t.Helper()
	recs, err := audit.List(f.store.DB(), audit.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, r.Kind+"/"+r.Decision)
	}
	return kinds
}

func TestMintFailuresLeaveNothingAlive(t *testing.T) {
	cases := []struct {
		name     string
		mint     func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error)
		wantCode string
	}{
		{"backend error", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return nil, errors.New("permission denied at backend")
		}, broker.EBADGATEWAY},
		{"backend unavailable", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return nil, fmt.Errorf("dial: %w", backends.ErrUnavailable)
		}, broker.EUNAVAILABLE},
		{"backend hangs past the mint timeout", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, broker.EUNAVAILABLE},
		{"credential outlives its lease (invariant 2)", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return &backends.Credential{Handle: "h", ExpiresAt: req.ExpiresAt.Add(time.Hour), Data: map[string]any{"secret": "x"}}, nil
		}, broker.EBADGATEWAY},
		{"credential without expiry (invariant 2)", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return &backends.Credential{Handle: "h", Data: map[string]any{"secret": "x"}}, nil
		}, broker.EBADGATEWAY},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *broker.Config) { cfg.Limits.MintTimeout = broker.Duration(200 * time.Millisecond) })
			f.be.mint = c.mint
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r"})
			if res != nil || broker.ErrorCode(err) != c.wantCode {
				t.Fatalf("Mint = %v, %v; want no credential and %s", res, err, c.wantCode)
			}
			if n := f.be.alive(); n != 0 {
				t.Fatalf("%d credentials still alive at the backend", n)
			}
			if got := f.counts(t); got[leases.StateRevoked] != 1 || len(got) != 1 {
				t.Fatalf("lease counts = %v, want one revoked", got)
			}
			kinds := f.auditKinds(t)
			if len(kinds) != 2 || kinds[0] != "mint.failed/allow" || kinds[1] != "lease.revoked/" {
				t.Fatalf("audit = %v", kinds)
			}
		})
	}
}

func TestMintNotReturnedWhenLeaseCannotBeActivated(t *testing.T) {
	f := newFixture(t, nil)
	f.fs.failActivate = true
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r"})
	if res != nil || err == nil {
		t.Fatalf("Mint returned %v, %v; the credential must not be returned without a durable lease", res, err)
	}
	if broker.ErrorMessage(err) == "" || broker.ErrorCode(err) != broker.EINTERNAL {
		t.Fatalf("error %v, want an internal error", err)
	}
	// What the backend issued was revoked with the handle it returned.
	if n := f.be.alive(); n != 0 {
		t.Fatalf("%d credentials alive at the backend after a failed activation", n)
	}
	if len(f.be.revoked) != 1 || f.be.revoked[0].Handle == "" {
		t.Fatalf("revocations = %+v, want one by handle", f.be.revoked)
	}
}

func TestMintSuccessRecordsIntentFirst(t *testing.T) {
	f := newFixture(t, nil)
	var sawPending bool
	f.be.mint = func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
		l, err := f.store.Get(ctx, req.CorrelationID)
		sawPending = err == nil && l.State == leases.StatePending
		return ok(ctx, req)
	}
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !sawPending {
		t.Fatal("the backend was called before a pending lease was durable (invariant 3)")
	}
	if res.Lease.State != leases.StateActive || res.Lease.Handle != "h-"+res.Lease.ID || res.Credential["secret"] == nil {
		t.Fatalf("result %+v", res)
	}
	if d := res.Lease.ExpiresAt.Sub(f.clock.Now()); d != 30*time.Second {
		t.Fatalf("lease TTL %s, want the requested 30s", d)
	}
}

func TestMintTTLCappedByRole(t *testing.T) {
	f := newFixture(t, func(cfg *broker.Config) { cfg.Roles[0].MaxTTL = broker.Duration(2 * time.Minute) })
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if d := res.Lease.ExpiresAt.Sub(f.clock.Now()); d != 2*time.Minute {
		t.Fatalf("lease TTL %s, want the role's max 2m", d)
	}
}

func TestRateLimitPerAgent(t *testing.T) {
	f := newFixture(t, func(cfg *broker.Config) { cfg.Limits.AgentRate, cfg.Limits.AgentBurst = 1, 3 })
	tok := f.attest(t, "greedy")
	for i := 0; i < 3; i++ {
		if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "r"}); err != nil {
			t.Fatalf("mint %d within the burst: %v", i, err)
		}
	}
	if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "r"}); broker.ErrorCode(err) != broker.ERATELIMIT {
		t.Fatalf("mint over the burst: %v, want rate_limited", err)
	}
	// Another agent has its own bucket.
	if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "other"), Role: "r"}); err != nil {
		t.Fatalf("another agent: %v", err)
	}
	// Time refills the bucket.
	f.clock.Advance(2 * time.Second)
	if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "r"}); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
}

// TestRateLimitInfinite: limits.agent_rate: .inf sets no limit, whatever
// the burst.
func TestRateLimitInfinite(t *testing.T) {
	f := newFixture(t, func(cfg *broker.Config) { cfg.Limits.AgentRate, cfg.Limits.AgentBurst = math.Inf(1), 1 })
	tok := f.attest(t, "busy")
	for i := range 50 {
		if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "r"}); err != nil {
			t.Fatalf("mint %d: %v", i, err)
		}
	}
}

// TestNewRefusesUnusableAgentLimits: the broker takes the agent rate and
// burst as given; 0 is not replaced by a default but refused, and a
// negative rate no longer switches the limit off.
func TestNewRefusesUnusableAgentLimits(t *testing.T) {
	cases := []struct {
		name  string
		rate  float64
		burst int
		want  string
	}{
		{"zero rate", 0, 20, "limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is 0"},
		{"negative rate", -1, 20, "limits.agent_rate must be a positive number of requests per second (.inf for no limit); it is -1"},
		{"NaN rate", math.NaN(), 20, "limits.agent_rate must be a positive number"},
		{"zero burst", 10, 0, "limits.agent_burst must be at least 1; it is 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			cfg := *f.cfg
			cfg.Limits.AgentRate, cfg.Limits.AgentBurst = tc.rate, tc.burst
			_, err := broker.New(broker.Options{Config: &cfg, Store: f.store, Auditor: f.store, Verifier: f.v, Authorizer: f.authz, Revoker: f.queue})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// A role that cannot be a configured name is refused before the
// attestation is verified, and reaches no audit record, whoever asks.
func TestMintRefusesRoleNamesOfAnotherSyntax(t *testing.T) {
	f := newFixture(t, nil)
	before := f.auditKinds(t)
	for _, tok := range []string{"", "not.a.token", f.attest(t, "a")} {
		for _, role := range []string{"x\n2026-11-29 FAKE mint allow\x1b[2J", "R", ""} {
			_, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: role})
			var be *broker.Error
			if !errors.As(err, &be) || be.Code != broker.EINVALID || !strings.Contains(be.Message, broker.NameRule) {
				t.Errorf("Mint(role %q) = %v, want EINVALID stating the name rule", role, err)
			}
		}
	}
	if after := f.auditKinds(t); !slices.Equal(before, after) {
		t.Errorf("refused mints wrote audit records: %v, was %v", after, before)
	}
}
