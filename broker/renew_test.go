package broker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// renewFixture has role "long" on the renewing backend (ttl 10m, max_ttl
// 1h) and a policy that forbids renewals to agent "no-renew".
func renewFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixture(t, func(cfg *fixtureConfig) {
		cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
			r.Name, r.Backend, r.TTL, r.MaxTTL = "long", "renewing", config.Duration(10*time.Minute), config.Duration(time.Hour)
		}))
		writePolicy(t, cfg, "renew.cedar", `forbid(principal, action == Action::"renew", resource) when { principal.sub == "no-renew" };`)
	})
}

// TestRenewLease: a renewal moves the lease's expiry to what was asked,
// capped by the lease's maximum and by what the backend granted, and
// records it with the caller and the policy version; a refused one
// changes nothing and records only a policy refusal.
func TestRenewLease(t *testing.T) {
	operator := broker.Caller{Operator: &broker.Operator{Name: "alice", Method: "token"}}
	cases := []struct {
		name   string
		owner  string // the agent the lease is minted for
		caller func(t *testing.T, f *fixture) broker.Caller
		id     func(leaseID string) string
		ttl    time.Duration
		setup  func(f *fixture)
		// want
		code      string        // "" when the renewal succeeds
		expiresIn time.Duration // the new expiry, from now (success)
		actor     audit.Actor   // of the lease.renew record (success)
		records   []string      // audit records the call wrote
	}{
		{
			name: "the owning agent renews", owner: "a", ttl: 20 * time.Minute,
			expiresIn: 20 * time.Minute, actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "an operator renews", owner: "a", ttl: 20 * time.Minute,
			caller:    func(*testing.T, *fixture) broker.Caller { return operator },
			expiresIn: 20 * time.Minute, actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "the role's ttl when none is asked", owner: "a",
			setup:     func(f *fixture) { f.clock.Advance(5 * time.Minute) },
			expiresIn: 10 * time.Minute, actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "capped at the lease's maximum", owner: "a", ttl: 2 * time.Hour,
			expiresIn: time.Hour, actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "the backend grants more than asked", owner: "a", ttl: 20 * time.Minute,
			setup: func(f *fixture) {
				f.rn.renew = func(_ context.Context, _ backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
					return &backends.Renewal{ExpiresAt: req.ExpiresAt.Add(time.Hour)}, nil
				}
			},
			expiresIn: 20 * time.Minute, actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "the backend grants less than asked", owner: "a", ttl: 20 * time.Minute,
			setup: func(f *fixture) {
				f.rn.renew = func(_ context.Context, _ backends.Ref, req backends.MintRequest) (*backends.Renewal, error) {
					return &backends.Renewal{ExpiresAt: req.ExpiresAt.Add(-5 * time.Minute)}, nil
				}
			},
			expiresIn: 15 * time.Minute, actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, records: []string{"lease.renew/allow"},
		},
		{
			name: "the policy forbids it", owner: "no-renew", ttl: 20 * time.Minute,
			code: broker.EFORBIDDEN, records: []string{"lease.renew/deny"},
		},
		{
			name: "another agent", owner: "a", ttl: 20 * time.Minute,
			caller: func(t *testing.T, f *fixture) broker.Caller { return f.agent(t, "b") },
			code:   broker.ENOTFOUND,
		},
		{
			name: "no such lease", owner: "a", ttl: 20 * time.Minute,
			id:   func(string) string { return "01J00000000000000000000000" },
			code: broker.ENOTFOUND,
		},
		{
			name: "not a lease id", owner: "a", ttl: 20 * time.Minute,
			id:   func(string) string { return "../etc" },
			code: broker.ENOTFOUND,
		},
		{
			name: "the backend fails", owner: "a", ttl: 20 * time.Minute,
			setup: func(f *fixture) {
				f.rn.renew = func(context.Context, backends.Ref, backends.MintRequest) (*backends.Renewal, error) {
					return nil, errors.New("permission denied at backend")
				}
			},
			code: broker.EBADGATEWAY,
		},
		{
			name: "the store fails", owner: "a", ttl: 20 * time.Minute,
			setup: func(f *fixture) { f.fs.renewErr = errors.New("injected: disk full") },
			code:  broker.EINTERNAL,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := renewFixture(t)
			ctx := context.Background()
			l := f.mint(t, tc.owner, "long", 0)
			c := f.agent(t, tc.owner)
			if tc.caller != nil {
				c = tc.caller(t, f)
			}
			id := l.ID
			if tc.id != nil {
				id = tc.id(l.ID)
			}
			if tc.setup != nil {
				tc.setup(f)
			}
			mark := f.auditMark(t)
			res, err := f.b.RenewLease(ctx, c, broker.RenewRequest{ID: id, TTL: tc.ttl, RequestID: "renew-1"})
			recs := f.written(t, mark)
			if got := kinds(recs); !slices.Equal(got, tc.records) {
				t.Errorf("audit records %v, want %v", got, tc.records)
			}
			stored := f.lease(t, l.ID)
			if tc.code != "" {
				if res != nil || broker.ErrorCode(err) != tc.code {
					t.Fatalf("RenewLease = %+v, %v; want %s", res, err, tc.code)
				}
				if tc.code == broker.EINTERNAL && strings.Contains(broker.ErrorMessage(err), "disk full") {
					t.Errorf("client message %q carries the internal cause", broker.ErrorMessage(err))
				}
				if !stored.ExpiresAt.Equal(l.ExpiresAt) || stored.RenewCount != 0 {
					t.Errorf("a refused renewal changed the lease: expires %s (was %s), renew count %d", stored.ExpiresAt, l.ExpiresAt, stored.RenewCount)
				}
				return
			}
			if err != nil {
				t.Fatalf("RenewLease: %v", err)
			}
			want := f.clock.Now().Add(tc.expiresIn)
			if !stored.ExpiresAt.Equal(want) || !res.Lease.ExpiresAt.Equal(want) || stored.RenewCount != 1 {
				t.Errorf("lease expires at %s (returned %s), renew count %d; want %s and 1", stored.ExpiresAt, res.Lease.ExpiresAt, stored.RenewCount, want)
			}
			r := recs[0]
			if r.Actor != tc.actor || r.LeaseID != l.ID || r.RequestID != "renew-1" || r.PolicyVersion == "" ||
				r.Details["expires_at"] != want.UTC().Format(time.RFC3339) {
				t.Errorf("renew record %+v; want actor %+v, the lease, the request id, a policy version and the new expiry", r, tc.actor)
			}
		})
	}
}
