package broker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
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
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// scripted is a backend whose behaviour a test sets: it records what it
// issued (as if at an external system) and what was revoked, fails
// revocations while revokeErr is set, and answers that it cannot revoke
// (backends.ErrUnrevocable) while unrevocable is set.
type scripted struct {
	mu          sync.Mutex
	mint        func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error)
	issued      map[string]bool // correlation id -> alive
	revoked     []backends.Ref
	revokeErr   error
	unrevocable bool
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
	if s.revokeErr != nil {
		return s.revokeErr
	}
	if s.unrevocable {
		return fmt.Errorf("%w: this service has no revocation", backends.ErrUnrevocable)
	}
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

// renewing is a scripted backend that also renews: by renew when set, else
// to the requested expiry.
type renewing struct {
	*scripted
	renew func(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error)
}

func (r *renewing) Renew(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
	if r.renew != nil {
		return r.renew(ctx, ref, req)
	}
	return &backends.Renewal{ExpiresAt: req.ExpiresAt}, nil
}

// fixedLife is a scripted backend whose credentials live a fixed time at
// the backend (backends.FixedLifetime).
type fixedLife struct {
	*scripted
	life time.Duration
}

func (f *fixedLife) CredentialLifetime(backends.RoleSpec, time.Duration) time.Duration { return f.life }

// failingStore fails Activate on demand, as a full disk would, End for
// the leases in endFails, and Renew, Get and List with the errors set.
type failingStore struct {
	*bolt.Store
	failActivate bool
	endFails     map[string]error
	renewErr     error
	getErr       error
	listErr      error
}

func (f *failingStore) Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*leases.Lease, error) {
	if f.renewErr != nil {
		return nil, f.renewErr
	}
	return f.Store.Renew(ctx, id, now, expiresAt, e)
}

func (f *failingStore) Get(ctx context.Context, id string) (*leases.Lease, error) {
	if f.getErr != nil {
		return nil, f.getErr
	}
	return f.Store.Get(ctx, id)
}

func (f *failingStore) List(ctx context.Context, lf leases.Filter) ([]*leases.Lease, error) {
	if f.listErr != nil {
		return nil, f.listErr
	}
	return f.Store.List(ctx, lf)
}

func (f *failingStore) End(ctx context.Context, id string, reason leases.State, now time.Time, e audit.Entry) (*leases.Lease, error) {
	if err := f.endFails[id]; err != nil {
		return nil, err
	}
	return f.Store.End(ctx, id, reason, now, e)
}

func (f *failingStore) Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error) {
	if f.failActivate {
		return nil, errors.New("injected: disk full")
	}
	return f.Store.Activate(ctx, id, a, now, e)
}

type fixture struct {
	b      *broker.Broker
	store  *bolt.Store
	fs     *failingStore
	sigs   *failingSignals
	be     *scripted
	rn     *renewing  // backend "renewing": be, able to renew
	fl     *fixedLife // backend "fixed": be, whose credentials live an hour
	issuer *attest.DevIssuer
	clock  *clock.Fake
	queue  *leases.RevocationQueue
	grants *bolt.Grants
	// What broker.New was given, for tests that build another broker.
	cfg   *broker.Config
	v     broker.Verifier
	authz broker.Authorizer
}

// fixtureConfig is the configuration a test may change before its fixture
// starts: the broker's, and the backends and policy sections.
type fixtureConfig struct {
	*broker.Config
	Backends []backends.Config
	Policy   policy.Config
	// Detectors are handed to the broker.
	Detectors []broker.Detector
	// Transmitters are the SSF transmitters whose SETs the broker
	// accepts (verified with the store's replay cache).
	Transmitters []attest.TransmitterConfig
	// RequireJTI makes the agents' issuer require_jti, with the store's
	// replay cache: each attestation is accepted once.
	RequireJTI bool
}

func newFixture(t *testing.T, cfgEdit func(*fixtureConfig)) *fixture {
	t.Helper()
	return newFixtureWith(t, cfgEdit, nil)
}

// newFixtureWith is newFixture with more backends beside "ext" and
// "renewing": extra builds them with the fixture's clock and data
// directory (configure them and their roles in cfgEdit).
func newFixtureWith(t *testing.T, cfgEdit func(*fixtureConfig), extra func(clk *clock.Fake, dir string) map[string]backends.Backend) *fixture {
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
	cfg := &fixtureConfig{Config: broker.DefaultConfig()}
	issuers := []attest.IssuerConfig{config.Defaulted(func(ic *attest.IssuerConfig) {
		ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "test", "https://issuer.test", []string{"valet"}, jwks, []string{"ES256"}
	})}
	cfg.Backends = []backends.Config{{Name: "ext", Type: "scripted"}, {Name: "renewing", Type: "scripted"}, {Name: "fixed", Type: "scripted"}}
	cfg.Roles = []broker.Role{config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.TTL = "r", "ext", config.Duration(time.Minute) })}
	cfg.Policy = config.Defaulted(func(p *policy.Config) { p.Dir = filepath.Join(dir, "policies") })
	if cfgEdit != nil {
		cfgEdit(cfg)
	}
	issuers[0].RequireJTI = cfg.RequireJTI
	names := map[string]bool{}
	for _, bc := range cfg.Backends {
		names[bc.Name] = true
	}
	if err := errors.Join(attest.ValidateIssuers("issuers", issuers), backends.ValidateConfigs(cfg.Backends), cfg.Policy.Validate(),
		cfg.Validate(names)); err != nil {
		t.Fatal(err)
	}
	store, err := bolt.Open(filepath.Join(dir, "valet.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var replay attest.ReplayCache
	if cfg.RequireJTI {
		replay = store.ReplayCache(clk)
	}
	v, err := attest.New(context.Background(), attest.Options{MaxTokenBytes: broker.DefaultMaxAttestationBytes, Issuers: issuers, Clock: clk, Logger: log,
		Replay: replay})
	if err != nil {
		t.Fatal(err)
	}
	pe, err := policy.NewEngine(policy.Options{Dir: cfg.Policy.Dir, Logger: log, OnError: cfg.Policy.OnError})
	if err != nil {
		t.Fatal(err)
	}
	be := &scripted{mint: ok, issued: map[string]bool{}}
	rn := &renewing{scripted: be}
	fl := &fixedLife{scripted: be, life: time.Hour}
	bes := map[string]backends.Backend{"ext": be, "renewing": rn, "fixed": fl}
	if extra != nil {
		maps.Copy(bes, extra(clk, dir))
	}
	q, err := leases.NewRevocationQueue(leases.RevocationQueueConfig{Store: store, Clock: clk, Logger: log,
		Attempts: cfg.Leases.RevokeAttempts, Backoff: cfg.Leases.RevokeBackoff.D(), MaxBackoff: cfg.Leases.RevokeMaxBackoff.D(),
		Concurrency: cfg.Leases.RevokeConcurrency, Timeout: leases.DefaultRevokeTimeout,
		Revoke: broker.RevokeAtBackend(bes, store.ValidUntil)})
	if err != nil {
		t.Fatal(err)
	}
	fs := &failingStore{Store: store}
	sigs := &failingSignals{Store: store}
	gs := store.Grants()
	var sets broker.SETVerifier
	if len(cfg.Transmitters) > 0 {
		sets, err = attest.NewSETVerifier(context.Background(), attest.SETOptions{Transmitters: cfg.Transmitters, PublicURL: cfg.PublicURL,
			MaxTokenBytes: broker.DefaultMaxAttestationBytes, Replay: store.ReplayCache(clk), Options: attest.Options{Clock: clk, Logger: log}})
		if err != nil {
			t.Fatal(err)
		}
	}
	b, err := broker.New(broker.Options{Config: cfg.Config, Store: fs, Auditor: store, Verifier: v, Authorizer: pe,
		Backends: bes, Revoker: q, Clock: clk, Logger: log, Grants: gs, Agents: store, Signals: sigs, Detectors: cfg.Detectors,
		SETs: sets, IssuerNames: map[string]string{"https://issuer.test": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{b: b, store: store, fs: fs, sigs: sigs, be: be, rn: rn, fl: fl, issuer: iss, clock: clk, queue: q, grants: gs, cfg: cfg.Config, v: v, authz: pe}
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
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Limit: 1000})
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
		wantMsg  string // what the client is told
	}{
		{"backend error", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return nil, errors.New("permission denied at backend")
		}, broker.EBADGATEWAY, "backend ext failed to issue the credential"},
		{"backend unavailable", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return nil, fmt.Errorf("dial: %w", backends.ErrUnavailable)
		}, broker.EUNAVAILABLE, "backend ext is unavailable"},
		{"backend hangs past the mint timeout", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, broker.EUNAVAILABLE, "backend ext did not answer within 200ms"},
		{"the request ends before the backend answers", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			ctx.Value(cancelKey{}).(context.CancelFunc)()
			<-ctx.Done()
			return nil, ctx.Err()
		}, broker.EUNAVAILABLE, "the request ended before backend ext answered"},
		{"credential outlives its lease (invariant 2)", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return &backends.Credential{Handle: "h", ExpiresAt: req.ExpiresAt.Add(time.Hour), Data: map[string]any{"secret": "x"}}, nil
		}, broker.EBADGATEWAY, "after the lease's expiry"},
		{"credential without expiry (invariant 2)", func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
			return &backends.Credential{Handle: "h", Data: map[string]any{"secret": "x"}}, nil
		}, broker.EBADGATEWAY, "after the lease's expiry"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) { cfg.Limits.MintTimeout = config.Duration(200 * time.Millisecond) })
			f.be.mint = c.mint
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ctx = context.WithValue(ctx, cancelKey{}, cancel)
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r"})
			if res != nil || broker.ErrorCode(err) != c.wantCode || !strings.Contains(broker.ErrorMessage(err), c.wantMsg) {
				t.Fatalf("Mint = %v, %v; want no credential and %s saying %q", res, err, c.wantCode, c.wantMsg)
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

// cancelKey carries a test request's cancel function to its backend, which
// plays the client going away.
type cancelKey struct{}

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
	f := newFixture(t, func(cfg *fixtureConfig) { cfg.Roles[0].MaxTTL = config.Duration(2 * time.Minute) })
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if d := res.Lease.ExpiresAt.Sub(f.clock.Now()); d != 2*time.Minute {
		t.Fatalf("lease TTL %s, want the role's max 2m", d)
	}
}

func TestRateLimitPerAgent(t *testing.T) {
	f := newFixture(t, func(cfg *fixtureConfig) { cfg.Limits.AgentRate, cfg.Limits.AgentBurst = 1, 3 })
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
	f := newFixture(t, func(cfg *fixtureConfig) { cfg.Limits.AgentRate, cfg.Limits.AgentBurst = math.Inf(1), 1 })
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

// A refused renewal says its actual cause, and changes nothing.
func TestRenewRefusalsSayTheCause(t *testing.T) {
	no := false
	renewable := config.Defaulted(func(r *broker.Role) {
		r.Name, r.Backend, r.TTL, r.MaxTTL = "x", "renewing", config.Duration(10*time.Minute), config.Duration(time.Hour)
	})
	with := func(edit func(r *broker.Role)) broker.Role {
		r := renewable
		edit(&r)
		return r
	}
	hang := func(ctx context.Context, _ backends.Ref, _ backends.MintRequest) (*backends.Renewal, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	cases := []struct {
		name     string
		role     broker.Role
		mintTTL  time.Duration
		before   func(t *testing.T, f *fixture, c broker.Caller, id string) // after the mint
		renewTTL time.Duration
		renew    func(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error)
		code     string
		want     string // in the message; "" for a renewal that succeeds
	}{
		{name: "renewable", role: renewable, renewTTL: 20 * time.Minute},
		{
			name: "released", role: renewable,
			before: func(t *testing.T, f *fixture, c broker.Caller, id string) {
				if _, err := f.b.EndLease(context.Background(), c, id, "", ""); err != nil {
					t.Fatal(err)
				}
			},
			code: broker.ECONFLICT, want: "is released; only active leases can be renewed",
		},
		{
			name: "past its expiry", role: renewable,
			before: func(t *testing.T, f *fixture, c broker.Caller, id string) { f.clock.Advance(11 * time.Minute) },
			code:   broker.ECONFLICT, want: "is expired; only active leases can be renewed",
		},
		{
			name: "backend does not renew", role: with(func(r *broker.Role) { r.Backend = "ext" }),
			code: broker.ECONFLICT, want: "its backend ext does not renew credentials",
		},
		{
			name: "role not renewable", role: with(func(r *broker.Role) { r.Renewable = &no }),
			code: broker.ECONFLICT, want: "role x is not renewable",
		},
		{
			name: "minted at its maximum", role: with(func(r *broker.Role) { r.MaxTTL = r.TTL }),
			code: broker.ECONFLICT, want: "already expires at its maximum",
		},
		{
			name: "renewed to its maximum", role: renewable,
			before: func(t *testing.T, f *fixture, c broker.Caller, id string) {
				if _, err := f.b.RenewLease(context.Background(), c, broker.RenewRequest{ID: id, TTL: 2 * time.Hour}); err != nil {
					t.Fatal(err)
				}
			},
			code: broker.ECONFLICT, want: "already expires at its maximum",
		},
		{
			name: "requested ttl does not extend", role: renewable, renewTTL: 5 * time.Minute,
			before: func(t *testing.T, f *fixture, c broker.Caller, id string) { f.clock.Advance(time.Minute) },
			code:   broker.ECONFLICT, want: "a ttl of 5m0s from now ends at",
		},
		{
			name: "role's default ttl does not extend", role: renewable, mintTTL: 30 * time.Minute,
			code: broker.ECONFLICT, want: "the role's default ttl of 10m0s from now ends at",
		},
		{
			name: "backend unavailable", role: renewable, renewTTL: 20 * time.Minute,
			renew: func(context.Context, backends.Ref, backends.MintRequest) (*backends.Renewal, error) {
				return nil, fmt.Errorf("dial: %w", backends.ErrUnavailable)
			},
			code: broker.EUNAVAILABLE, want: "backend renewing is unavailable",
		},
		{
			name: "backend does not answer in time", role: renewable, renewTTL: 20 * time.Minute, renew: hang,
			code: broker.EUNAVAILABLE, want: "backend renewing did not answer within 200ms",
		},
		{
			name: "the request ends first", role: renewable, renewTTL: 20 * time.Minute,
			renew: func(ctx context.Context, ref backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
				ctx.Value(cancelKey{}).(context.CancelFunc)()
				return hang(ctx, ref, req)
			},
			code: broker.EUNAVAILABLE, want: "the request ended before backend renewing answered",
		},
		{
			name: "backend fails", role: renewable, renewTTL: 20 * time.Minute,
			renew: func(context.Context, backends.Ref, backends.MintRequest) (*backends.Renewal, error) {
				return nil, errors.New("permission denied")
			},
			code: broker.EBADGATEWAY, want: "backend renewing failed to renew the credential",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, tc.role)
				cfg.Limits.MintTimeout = config.Duration(200 * time.Millisecond)
			})
			f.rn.renew = tc.renew
			tok := f.attest(t, "renewer")
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "x", TTL: tc.mintTTL})
			if err != nil {
				t.Fatal(err)
			}
			id := res.Lease.ID
			p, err := f.b.AuthenticateAgent(context.Background(), tok, "", "")
			if err != nil {
				t.Fatal(err)
			}
			c := broker.Caller{Agent: p}
			if tc.before != nil {
				tc.before(t, f, c, id)
			}
			was, err := f.store.Get(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ctx = context.WithValue(ctx, cancelKey{}, cancel)
			rr, err := f.b.RenewLease(ctx, c, broker.RenewRequest{ID: id, TTL: tc.renewTTL})
			if tc.want == "" {
				if err != nil || !rr.Lease.ExpiresAt.Equal(f.clock.Now().Add(tc.renewTTL)) {
					t.Fatalf("RenewLease = %+v, %v; want the lease renewed for %s", rr, err, tc.renewTTL)
				}
				return
			}
			if broker.ErrorCode(err) != tc.code || !strings.Contains(broker.ErrorMessage(err), tc.want) {
				t.Fatalf("RenewLease error = %v (%s), want %s saying %q", err, broker.ErrorCode(err), tc.code, tc.want)
			}
			if strings.Contains(tc.want, "maximum") != strings.Contains(broker.ErrorMessage(err), "maximum") {
				t.Errorf("message %q speaks of the maximum when that is not the cause", broker.ErrorMessage(err))
			}
			now, err := f.store.Get(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if !now.ExpiresAt.Equal(was.ExpiresAt) || now.RenewCount != was.RenewCount || now.State != was.State {
				t.Errorf("a refused renewal changed the lease: %+v, was %+v", now, was)
			}
		})
	}
}

// When the mint of a redeemed grant fails, the grant is given back, and the
// audit record says whether it can be redeemed again: only before its
// deadline, which may pass while the backend works.
func TestRedeemAfterFailedMintSaysWhetherItCanBeRedeemedAgain(t *testing.T) {
	cases := []struct {
		name      string
		slow      time.Duration // how long the failing backend takes
		wantState grants.State
		want      string
	}{
		{"within the deadline", time.Second, grants.StateApproved, "mint failed; the grant can be redeemed again until "},
		{"deadline passed during the mint", 20 * time.Minute, grants.StateExpired, "has passed; it cannot be redeemed again"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
			})
			tok := f.attest(t, "asker")
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: tok, Role: "admin", Reason: "fix the outage"})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v; want a pending grant", res, err)
			}
			op := &broker.Operator{Name: "alice", Method: "token"}
			if _, err := f.b.ApproveGrant(context.Background(), op, res.Grant.ID, "ok", ""); err != nil {
				t.Fatal(err)
			}
			f.be.mint = func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
				f.clock.Advance(tc.slow)
				return nil, errors.New("permission denied at backend")
			}
			if _, err := f.b.RedeemGrant(context.Background(), broker.RedeemRequest{Attestation: f.attest(t, "asker"), GrantID: res.Grant.ID, RequestID: "redeem-1"}); broker.ErrorCode(err) != broker.EBADGATEWAY {
				t.Fatalf("RedeemGrant error = %v, want the backend's failure", err)
			}
			recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindGrantRedeem, Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			var reason string
			for _, r := range recs {
				if r.RequestID == "redeem-1" && r.Decision == audit.Deny {
					reason = r.Reason
				}
			}
			if !strings.Contains(reason, tc.want) {
				t.Errorf("audit reason %q, want it to say %q", reason, tc.want)
			}
			g, err := f.b.GetGrant(context.Background(), broker.Caller{Operator: op}, res.Grant.ID)
			if err != nil || g.State != tc.wantState {
				t.Errorf("grant after the failed mint: %+v, %v; want %s", g, err, tc.wantState)
			}
		})
	}
}

// checkListed lists with list page by page (limit 2, following the last id
// as the cursor while a page is full) and checks that it gets want (oldest
// first) newest first, every item shown in state.
func checkListed[T any](t *testing.T, state string, want []string, list func(before string) ([]T, error), id func(T) string, shown func(T) string) {
	t.Helper()
	var ids []string
	before := ""
	for range 100 {
		page, err := list(before)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page {
			ids = append(ids, id(it))
			if shown(it) != state {
				t.Errorf("state=%s lists %s shown as %s", state, id(it), shown(it))
			}
		}
		if len(page) < 2 {
			want = slices.Clone(want)
			slices.Reverse(want)
			if !slices.Equal(ids, want) {
				t.Errorf("state=%s lists %v, want %v", state, ids, want)
			}
			return
		}
		before = id(page[len(page)-1])
	}
	t.Fatal("paging did not end")
}

// Listing by state filters on the state each item is shown with, at the
// same moment: an active lease or a pending grant past its deadline is
// listed (and shown) as expired, not as active or pending, before the
// sweeper records it; and pages stay full while more items match.
func TestListByStateAsShown(t *testing.T) {
	t.Run("leases", func(t *testing.T) {
		f := newFixture(t, func(cfg *fixtureConfig) { cfg.Roles[0].MaxTTL = config.Duration(time.Hour) })
		var short, long []string // newest last
		for i := range 7 {
			ttl := 30 * time.Minute
			if i%2 == 0 {
				ttl = 30 * time.Second
			}
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "lister"), Role: "r", TTL: ttl})
			if err != nil {
				t.Fatal(err)
			}
			if ttl < time.Minute {
				short = append(short, res.Lease.ID)
			} else {
				long = append(long, res.Lease.ID)
			}
			f.clock.Advance(time.Second)
		}
		f.clock.Advance(time.Minute)
		// One of the short leases is recorded expired, the others only
		// are past their expiry.
		if _, err := f.store.ExpireDue(context.Background(), f.clock.Now(), 1); err != nil {
			t.Fatal(err)
		}
		for st, want := range map[leases.State][]string{leases.StateActive: long, leases.StateExpired: short} {
			checkListed(t, string(st), want, func(before string) ([]*leases.Lease, error) {
				return f.b.ListLeases(context.Background(), leases.Filter{State: st, Before: before, Limit: 2})
			}, func(l *leases.Lease) string { return l.ID }, func(l *leases.Lease) string { return string(l.State) })
		}
		l, err := f.b.GetLease(context.Background(), broker.Caller{Operator: &broker.Operator{Name: "op"}}, short[len(short)-1])
		if err != nil || l.State != leases.StateExpired {
			t.Errorf("GetLease of a lease past its expiry: %+v, %v; want it shown expired", l, err)
		}
	})

	t.Run("grants", func(t *testing.T) {
		f := newFixture(t, func(cfg *fixtureConfig) {
			cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
		})
		op := &broker.Operator{Name: "alice", Method: "token"}
		request := func() string {
			t.Helper()
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "asker"), Role: "admin", Reason: "needs it"})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v", res, err)
			}
			f.clock.Advance(time.Second)
			return res.Grant.ID
		}
		approve := func(id string) {
			t.Helper()
			if _, err := f.b.ApproveGrant(context.Background(), op, id, "ok", ""); err != nil {
				t.Fatal(err)
			}
		}
		var old []string // pending past their deadline, or approved past theirs
		for i := range 6 {
			old = append(old, request())
			if i == 2 {
				approve(old[i])
			}
		}
		f.clock.Advance(61 * time.Minute) // request_ttl 1h, redeem_within 15m
		fresh := []string{request(), request()}
		approved := request()
		approve(approved)

		for st, want := range map[grants.State][]string{grants.StatePending: fresh, grants.StateApproved: {approved}, grants.StateExpired: old} {
			checkListed(t, string(st), want, func(before string) ([]*grants.Grant, error) {
				return f.b.ListGrants(context.Background(), grants.Filter{State: st, Before: before, Limit: 2})
			}, func(g *grants.Grant) string { return g.ID }, func(g *grants.Grant) string { return string(g.State) })
		}
	})
}

// Revoking an agent's leases ends those live as of now, and counts only
// them: a lease past its expiry has ended on its own and is not claimed
// revoked.
func TestRevokeMatchingSkipsLeasesPastExpiry(t *testing.T) {
	f := newFixture(t, func(cfg *fixtureConfig) { cfg.Roles[0].MaxTTL = config.Duration(time.Hour) })
	mint := func(ttl time.Duration) string {
		res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "many"), Role: "r", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return res.Lease.ID
	}
	gone, live := mint(time.Minute), mint(time.Hour)
	f.clock.Advance(2 * time.Minute)
	n, err := f.b.RevokeMatching(context.Background(), &broker.Operator{Name: "op"}, leases.Filter{AgentID: "test/many"}, "", "")
	if err != nil || n != 1 {
		t.Fatalf("RevokeMatching = %d, %v; want the one live lease", n, err)
	}
	op := broker.Caller{Operator: &broker.Operator{Name: "op"}}
	for id, want := range map[string]leases.State{live: leases.StateRevoked, gone: leases.StateExpired} {
		if l, err := f.b.GetLease(context.Background(), op, id); err != nil || l.State != want {
			t.Errorf("lease %s: %+v, %v; want %s", id, l, err, want)
		}
	}
	// Nor is one lease past its expiry revoked on its own.
	if l, err := f.b.EndLease(context.Background(), op, gone, "", "end-gone"); err != nil || l.State != leases.StateExpired {
		t.Errorf("EndLease of a lease past its expiry = %+v, %v; want it returned expired", l, err)
	}
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{LeaseID: gone, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Kind == audit.KindRevoke || r.Kind == audit.KindRevoked {
			t.Errorf("a lease past its expiry was recorded revoked: %+v", r)
		}
	}
}

// TestRevokeMatchingSurvivesOneBadLease: bulk revocation ends every lease
// it can. A lease pruned since it was listed is skipped; a lease the store
// fails to end is reported, with how many were ended, and does not stop
// the others.
func TestRevokeMatchingSurvivesOneBadLease(t *testing.T) {
	cases := []struct {
		name        string
		fail        error
		wantEnded   int
		wantErrCode string
	}{
		{name: "gone meanwhile", fail: leases.ErrNotFound, wantEnded: 4},
		{name: "store failure", fail: errors.New("injected: disk full"), wantEnded: 4, wantErrCode: broker.EINTERNAL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, nil)
			var ids []string
			for range 5 {
				res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "bulk"), Role: "r"})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, res.Lease.ID)
			}
			f.fs.endFails = map[string]error{ids[2]: tc.fail}
			n, err := f.b.RevokeMatching(ctx, &broker.Operator{Name: "alice"}, leases.Filter{AgentID: "test/bulk"}, "", "req-1")
			if n != tc.wantEnded {
				t.Errorf("RevokeMatching ended %d, want %d", n, tc.wantEnded)
			}
			if broker.ErrorCode(err) != tc.wantErrCode && !(err == nil && tc.wantErrCode == "") {
				t.Errorf("RevokeMatching error = %v (code %s), want code %q", err, broker.ErrorCode(err), tc.wantErrCode)
			}
			// The client sees a generic internal error; the log line under
			// the request id says what happened.
			if tc.wantErrCode != "" && !strings.Contains(err.Error(), "ended 4 of 5 live leases; 1 could not be ended") {
				t.Errorf("error %q does not say how many were ended", err)
			}
			for i, id := range ids {
				l, err := f.store.Get(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if want := leases.StateRevoked; i != 2 && l.State != want {
					t.Errorf("lease %d is %s, want %s", i, l.State, want)
				}
			}
			if f.be.alive() != 1 {
				t.Errorf("%d credentials alive at the backend, want only the one that could not be ended", f.be.alive())
			}
		})
	}
}

// auditMark is the sequence number of the newest audit record (0 when
// there is none), to list what a call wrote after it.
func (f *fixture) auditMark(t *testing.T) uint64 {
	t.Helper()
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Newest: true, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		return 0
	}
	return recs[0].Seq
}

// written lists the audit records written after mark, oldest first.
func (f *fixture) written(t *testing.T, mark uint64) []audit.Record {
	t.Helper()
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{AfterSeq: mark, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// kinds shows audit records as kind/decision, oldest first.
func kinds(recs []audit.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Kind+"/"+r.Decision)
	}
	return out
}

// lease reads a lease as stored.
func (f *fixture) lease(t *testing.T, id string) *leases.Lease {
	t.Helper()
	l, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// agent is sub as a caller, proven by a fresh attestation.
func (f *fixture) agent(t *testing.T, sub string) broker.Caller {
	t.Helper()
	p, err := f.b.AuthenticateAgent(context.Background(), f.attest(t, sub), "", "")
	if err != nil {
		t.Fatal(err)
	}
	return broker.Caller{Agent: p}
}

// mint mints role for agent sub and returns the lease.
func (f *fixture) mint(t *testing.T, sub, role string, ttl time.Duration) *leases.Lease {
	t.Helper()
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, sub), Role: role, TTL: ttl})
	if err != nil || res.Lease == nil {
		t.Fatalf("Mint(%s, %s) = %+v, %v", sub, role, res, err)
	}
	return res.Lease
}

// writePolicy adds a policy file to the fixture's policy directory (call
// it from the config edit, before the policy is loaded).
func writePolicy(t *testing.T, cfg *fixtureConfig, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cfg.Policy.Dir, name), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// sweptBetweenReads is a store whose first List runs a sweep after it has
// read: what it listed changes state before the listing's next read.
type sweptBetweenReads[F any, T any] struct {
	list  func(ctx context.Context, f F) ([]T, error)
	sweep func()
	once  sync.Once
}

func (s *sweptBetweenReads[F, T]) List(ctx context.Context, f F) ([]T, error) {
	out, err := s.list(ctx, f)
	s.once.Do(s.sweep)
	return out, err
}

type sweptGrants struct {
	*bolt.Grants
	s *sweptBetweenReads[grants.Filter, *grants.Grant]
}

func (g sweptGrants) List(ctx context.Context, f grants.Filter) ([]*grants.Grant, error) {
	return g.s.List(ctx, f)
}

type sweptLeases struct {
	*failingStore
	s *sweptBetweenReads[leases.Filter, *leases.Lease]
}

func (l sweptLeases) List(ctx context.Context, f leases.Filter) ([]*leases.Lease, error) {
	return l.s.List(ctx, f)
}

// An item the sweeper records expired while state=expired is being listed
// (between the listing's reads of the stored states) is still listed: the
// states items leave are read before the one they enter.
func TestListExpiredWhileTheSweeperRecords(t *testing.T) {
	f := newFixture(t, func(cfg *fixtureConfig) {
		cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
	})
	res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "asker"), Role: "admin", Reason: "needs it"})
	if err != nil || res.Grant == nil {
		t.Fatalf("Mint = %+v, %v", res, err)
	}
	lease, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "asker"), Role: "r", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(61 * time.Minute) // past the grant's request_ttl and the lease's expiry
	gs := sweptGrants{Grants: f.grants}
	gs.s = &sweptBetweenReads[grants.Filter, *grants.Grant]{list: f.grants.List, sweep: func() {
		if got, err := f.grants.ExpireDue(context.Background(), f.clock.Now()); err != nil || len(got) != 1 {
			t.Errorf("the sweep expired %d grants, %v", len(got), err)
		}
	}}
	ls := sweptLeases{failingStore: f.fs}
	ls.s = &sweptBetweenReads[leases.Filter, *leases.Lease]{list: f.fs.List, sweep: func() {
		if got, err := f.store.ExpireDue(context.Background(), f.clock.Now(), 10); err != nil || len(got) != 1 {
			t.Errorf("the sweep expired %d leases, %v", len(got), err)
		}
	}}
	b, err := broker.New(broker.Options{Config: f.cfg, Store: ls, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
		Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn, "fixed": f.fl}, Revoker: f.queue, Clock: f.clock, Grants: gs})
	if err != nil {
		t.Fatal(err)
	}
	glist, err := b.ListGrants(context.Background(), grants.Filter{State: grants.StateExpired})
	if err != nil || len(glist) != 1 || glist[0].ID != res.Grant.ID {
		t.Errorf("state=expired grants listed while the sweeper recorded the expiry: %d, %v; want %s", len(glist), err, res.Grant.ID)
	}
	llist, err := b.ListLeases(context.Background(), leases.Filter{State: leases.StateExpired})
	if err != nil || len(llist) != 1 || llist[0].ID != lease.Lease.ID {
		t.Errorf("state=expired leases listed while the expirer recorded the expiry: %d, %v; want %s", len(llist), err, lease.Lease.ID)
	}
}
