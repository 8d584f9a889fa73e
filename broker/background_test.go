package broker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

func TestGrantExpiryAndHousekeeping(t *testing.T) {
	type outcome struct {
		grantExpired bool // a grant.expired record names the grant
		leaseKept    bool // the released lease is still in the store
	}
	cases := []struct {
		name    string
		advance time.Duration
		want    outcome
	}{
		// request_ttl is 1h; leases.retention is set to 1h.
		{"within the deadlines", 59 * time.Minute, outcome{grantExpired: false, leaseKept: true}},
		{"past the deadlines", 61 * time.Minute, outcome{grantExpired: true, leaseKept: false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Leases.Retention = config.Duration(time.Hour)
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
			})
			ctx := context.Background()
			tok := f.attest(t, "bg")
			res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "admin", Reason: "migrate"})
			if err != nil || res.Grant == nil {
				t.Fatalf("Mint = %+v, %v; want a pending grant", res, err)
			}
			grantID := res.Grant.ID
			res, err = f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "r"})
			if err != nil {
				t.Fatal(err)
			}
			p, err := f.b.AuthenticateAgent(ctx, tok, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if l, err := f.b.EndLease(ctx, broker.Caller{Agent: p}, res.Lease.ID, "", ""); err != nil || l.State != leases.StateReleased {
				t.Fatalf("EndLease = %+v, %v; want released", l, err)
			}

			f.clock.Advance(tc.advance)
			if _, err := f.b.ExpireGrants(ctx); err != nil {
				t.Fatal(err)
			}
			h, err := f.b.Housekeep(ctx)
			if err != nil || (h.Pruned == 1) == tc.want.leaseKept {
				t.Fatalf("Housekeep = %+v, %v", h, err)
			}

			recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindGrantExpired, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			expired := slices.ContainsFunc(recs, func(r audit.Record) bool { return r.Details["grant_id"] == grantID })
			if expired != tc.want.grantExpired {
				t.Errorf("grant recorded expired: %v, want %v (records %+v)", expired, tc.want.grantExpired, recs)
			}
			_, err = f.store.Get(ctx, res.Lease.ID)
			if kept := err == nil; kept != tc.want.leaseKept || err != nil && !errors.Is(err, leases.ErrNotFound) {
				t.Errorf("released lease: Get error %v, want kept %v", err, tc.want.leaseKept)
			}
		})
	}
}

// purgeRecorder is a replay cache that records when it was purged.
type purgeRecorder struct {
	mu   sync.Mutex
	at   []time.Time
	fail error
}

func (p *purgeRecorder) Purge(now time.Time) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.at = append(p.at, now)
	return 0, p.fail
}

func (p *purgeRecorder) purges() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.at)
}

// Housekeeping purges the replay cache with the broker's time, and says
// when the purge failed.
func TestHousekeepPurgesTheReplayCache(t *testing.T) {
	f := newFixture(t, nil)
	rec := &purgeRecorder{fail: errors.New("injected: disk full")}
	b, err := broker.New(broker.Options{Config: f.cfg, Store: f.store, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
		Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn}, Revoker: f.queue, Clock: f.clock, Replay: rec})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	if _, err := b.Housekeep(context.Background()); err == nil || !strings.Contains(err.Error(), "purge the replay cache: injected: disk full") {
		t.Errorf("Housekeep = %v, want the purge's failure", err)
	}
	if got := rec.purges(); len(got) != 1 || !got[0].Equal(f.clock.Now()) {
		t.Errorf("purged at %v, want once at %v", got, f.clock.Now())
	}
}
