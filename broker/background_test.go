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
	"github.com/valet-broker/valet/broker/grants"
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

// backlog is a store with due ended leases or grants to prune: each
// PruneEnded deletes up to limit of them, and it records each limit.
type backlog struct {
	mu     sync.Mutex
	due    int
	limits []int
	// onCall, if set, runs at each call (with its number, from 1).
	onCall func(call int)
}

func (b *backlog) PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limits = append(b.limits, limit)
	if b.onCall != nil {
		b.onCall(len(b.limits))
	}
	n := min(limit, b.due)
	b.due -= n
	return n, nil
}

type backlogLeases struct {
	broker.LeaseStore
	*backlog
}

type backlogGrants struct {
	broker.GrantStore
	*backlog
}

// One housekeeping pass deletes every lease and grant past the retention,
// however many ended since the last pass, in transactions of bounded
// size: pruning keeps up with any rate at which leases end (a fixed budget
// per pass falls behind without bound once more end between two passes).
func TestHousekeepPrunesEverythingDueInChunks(t *testing.T) {
	f := newFixture(t, nil)
	for _, due := range []struct{ leases, grants int }{{25_000, 2_500}, {0, 0}, {999, 1}} {
		ls, gs := &backlog{due: due.leases}, &backlog{due: due.grants}
		b, err := broker.New(broker.Options{Config: f.cfg, Store: backlogLeases{f.fs, ls}, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
			Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn}, Revoker: f.queue, Clock: f.clock, Grants: backlogGrants{f.grants, gs}})
		if err != nil {
			t.Fatal(err)
		}
		h, err := b.Housekeep(context.Background())
		if err != nil || h.Pruned != due.leases || h.GrantsPruned != due.grants {
			t.Errorf("Housekeep with %+v due = %+v, %v; want all of them pruned", due, h, err)
		}
		for _, s := range []*backlog{ls, gs} {
			if s.due != 0 {
				t.Errorf("%d left after the pass", s.due)
			}
			for _, l := range s.limits {
				if l > 1000 {
					t.Errorf("a transaction pruned up to %d; want chunks of at most 1000 (limits %v)", l, s.limits)
				}
			}
		}
	}
}

// A housekeeping pass that runs out of time stops between chunks and
// says so, with what it pruned.
func TestHousekeepStopsBetweenChunksWhenCancelled(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ls := &backlog{due: 10_000, onCall: func(call int) {
		if call == 2 {
			cancel()
		}
	}}
	b, err := broker.New(broker.Options{Config: f.cfg, Store: backlogLeases{f.fs, ls}, Auditor: f.store, Verifier: f.v, Authorizer: f.authz,
		Backends: map[string]backends.Backend{"ext": f.be, "renewing": f.rn}, Revoker: f.queue, Clock: f.clock, Grants: f.grants})
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.Housekeep(ctx)
	if !errors.Is(err, context.Canceled) || len(ls.limits) != 2 || h.Pruned != 2*ls.limits[0] {
		t.Errorf("Housekeep = %+v, %v after %d chunks; want two chunks pruned and the cancellation", h, err, len(ls.limits))
	}
}

// Grants that ended more than leases.retention ago are deleted by
// housekeeping; their audit records stay.
func TestHousekeepPrunesEndedGrants(t *testing.T) {
	f := newFixture(t, func(cfg *fixtureConfig) {
		cfg.Leases.Retention = config.Duration(time.Hour)
		cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "admin", "ext", 1 }))
	})
	ctx := context.Background()
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: f.attest(t, "bg"), Role: "admin", Reason: "migrate"})
	if err != nil || res.Grant == nil {
		t.Fatalf("Mint = %+v, %v; want a pending grant", res, err)
	}
	id := res.Grant.ID
	if _, err := f.b.DenyGrant(ctx, &broker.Operator{Name: "alice"}, id, "no", ""); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		advance time.Duration
		pruned  int
	}{{59 * time.Minute, 0}, {2 * time.Minute, 1}} {
		f.clock.Advance(step.advance)
		h, err := f.b.Housekeep(ctx)
		if err != nil || h.GrantsPruned != step.pruned {
			t.Fatalf("after %s more: Housekeep = %+v, %v; want %d grants pruned", step.advance, h, err, step.pruned)
		}
	}
	if _, err := f.grants.Get(ctx, id); !errors.Is(err, grants.ErrNotFound) {
		t.Errorf("Get of the pruned grant: %v, want ErrNotFound", err)
	}
	recs, err := f.store.ListAudit(ctx, audit.Filter{Kind: audit.KindGrantDeny, Limit: 10})
	if err != nil || len(recs) != 1 || recs[0].Details["grant_id"] != id {
		t.Errorf("grant.deny records = %+v, %v; want the denial kept", recs, err)
	}
}
