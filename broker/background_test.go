package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// runBroker starts b.Run on its own goroutine, waits until its duties have
// armed their timers (duties of them on the fake clock), and returns a
// function that advances the clock by d and waits until every duty has
// done its pass and armed its next timer. Run stops at the end of the test.
func runBroker(t *testing.T, f *fixture, b *broker.Broker, duties int) (advance func(d time.Duration)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	armed := func() bool { return f.clock.Waiters() == duties }
	waitUntil(t, "Run arms its timers", armed)
	return func(d time.Duration) {
		t.Helper()
		if d < broker.HousekeepingInterval {
			t.Fatalf("advance by %s: every duty must fire, so advance by at least %s", d, broker.HousekeepingInterval)
		}
		f.clock.Advance(d) // every timer fires: none is armed until its duty has done its pass
		waitUntil(t, "every duty did its pass", armed)
	}
}

// The timers Run arms: grant expiry, refusal summaries and housekeeping;
// with agent records, also sightings, quarantine releases and the
// resumption of mass revocations.
const (
	timers           = 3
	timersWithAgents = timers + 3
)

func TestRunBackgroundDuties(t *testing.T) {
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

			advance := runBroker(t, f, f.b, timersWithAgents)
			advance(tc.advance)

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

// Housekeeping purges the replay cache once an interval, with the broker's
// time, and a failing purge is retried at the next pass.
func TestRunPurgesTheReplayCache(t *testing.T) {
	f := newFixture(t, nil)
	rec := &purgeRecorder{fail: errors.New("injected: disk full")}
	b, err := broker.New(broker.Options{Config: f.cfg, Store: f.store, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
		Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn}, Revoker: f.queue, Clock: f.clock, Replay: rec})
	if err != nil {
		t.Fatal(err)
	}
	start := f.clock.Now()
	advance := runBroker(t, f, b, timers)
	if got := rec.purges(); len(got) != 0 {
		t.Fatalf("purged at %v before the first interval passed", got)
	}
	advance(broker.HousekeepingInterval)
	advance(broker.HousekeepingInterval)
	want := []time.Time{start.Add(broker.HousekeepingInterval), start.Add(2 * broker.HousekeepingInterval)}
	if got := rec.purges(); !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("purged at %v, want %v", got, want)
	}
}
