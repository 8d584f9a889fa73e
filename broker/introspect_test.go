package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/jwt"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// tokenFixture is a fixture with a real jwt backend "tokens" and its role
// "tok" (ttl 5m).
func tokenFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, func(cfg *fixtureConfig) {
		cfg.Backends = append(cfg.Backends, backends.Config{Name: "tokens", Type: jwt.Type})
		cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
			r.Name, r.Backend, r.TTL = "tok", "tokens", config.Duration(5*time.Minute)
		}))
	}, func(clk *clock.Fake, dir string) map[string]backends.Backend {
		be, err := jwt.New("tokens", nil, backends.Deps{DataDir: dir, KEK: make([]byte, 32), PublicURL: "https://valet.test", Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]backends.Backend{"tokens": be}
	})
}

// TestIntrospect: a valet-issued token is active (RFC 7662) while its
// signature verifies and its lease is active and unexpired; anything else
// is inactive, and only a store failure is an error.
func TestIntrospect(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		token func(t *testing.T, f *fixture, tok string, l *leases.Lease) string // default: the minted token
		// want
		active bool
		lease  bool // the answer names the minted lease
		code   string
	}{
		{name: "an active token", active: true, lease: true},
		{
			name: "the lease was released",
			token: func(t *testing.T, f *fixture, tok string, l *leases.Lease) string {
				if _, err := f.b.EndLease(ctx, f.agent(t, "a"), l.ID, "", ""); err != nil {
					t.Fatal(err)
				}
				return tok
			},
			lease: true,
		},
		{
			name: "past its expiry",
			token: func(t *testing.T, f *fixture, tok string, _ *leases.Lease) string {
				f.clock.Advance(5 * time.Minute)
				return tok
			},
			lease: true,
		},
		{
			name: "the lease is gone",
			token: func(t *testing.T, f *fixture, tok string, l *leases.Lease) string {
				if _, err := f.b.EndLease(ctx, f.agent(t, "a"), l.ID, "", ""); err != nil {
					t.Fatal(err)
				}
				if n, err := f.store.PruneEnded(ctx, f.clock.Now().Add(time.Second), 10); err != nil || n != 1 {
					t.Fatalf("PruneEnded = %d, %v", n, err)
				}
				return tok
			},
		},
		{
			name:  "a token valet did not issue",
			token: func(t *testing.T, f *fixture, _ string, _ *leases.Lease) string { return f.attest(t, "a") },
		},
		{
			name: "a token with its signature changed",
			token: func(t *testing.T, f *fixture, tok string, _ *leases.Lease) string {
				return tok[:len(tok)-4] + strings.Repeat("A", 4)
			},
		},
		{name: "not a token", token: func(*testing.T, *fixture, string, *leases.Lease) string { return "x.y.z" }},
		{name: "empty", token: func(*testing.T, *fixture, string, *leases.Lease) string { return "" }},
		{
			name: "over the size limit",
			token: func(t *testing.T, f *fixture, tok string, _ *leases.Lease) string {
				f.fs.getErr = errors.New("injected: must not be read")
				return tok + strings.Repeat("A", broker.DefaultMaxAttestationBytes)
			},
		},
		{
			name: "the store fails",
			token: func(t *testing.T, f *fixture, tok string, _ *leases.Lease) string {
				f.fs.getErr = errors.New("injected: disk full")
				return tok
			},
			code: broker.EINTERNAL,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tokenFixture(t)
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "a"), Role: "tok"})
			if err != nil {
				t.Fatal(err)
			}
			tok, _ := res.Credential["access_token"].(string)
			if tok == "" {
				t.Fatalf("credential %v has no access_token", res.Credential)
			}
			if tc.token != nil {
				tok = tc.token(t, f, tok, res.Lease)
			}
			in, err := f.b.Introspect(ctx, tok)
			if tc.code != "" {
				if in != nil || broker.ErrorCode(err) != tc.code {
					t.Fatalf("Introspect = %+v, %v; want %s", in, err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.Active != tc.active || (in.Lease != nil) != tc.lease || tc.lease && in.Lease.ID != res.Lease.ID {
				t.Fatalf("Introspect = %+v; want active %v, naming the lease %v", in, tc.active, tc.lease)
			}
			if in.Active && (in.Claims["jti"] != res.Lease.ID || in.Claims["sub"] != "test/a") {
				t.Errorf("claims %v, want the lease id as jti and the agent as sub", in.Claims)
			}
			if !in.Active && len(in.Claims) != 0 {
				t.Errorf("an inactive answer carries claims %v", in.Claims)
			}
		})
	}
}

// PublicJWKs publishes the signing backends' public keys, and only those.
func TestPublicJWKs(t *testing.T) {
	f := tokenFixture(t)
	keys := f.b.PublicJWKs()
	if len(keys) != 1 || keys[0]["kid"] == nil || keys[0]["d"] != nil {
		t.Fatalf("PublicJWKs = %v, want the jwt backend's one public key", keys)
	}
}
