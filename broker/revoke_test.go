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
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// TestEndLease: the owning agent releases a lease, an operator revokes
// it; the lease ends in the store with its record, and its credential is
// revoked at the backend at once (or stays queued when the backend does
// not confirm). A refused or redundant call changes nothing.
func TestEndLease(t *testing.T) {
	alice := &broker.Operator{Name: "alice", Method: "token"}
	cases := []struct {
		name   string
		caller func(t *testing.T, f *fixture) broker.Caller // default: the owning agent "a"
		reason string
		setup  func(t *testing.T, f *fixture, l *leases.Lease)
		// want
		code    string       // "" when the call succeeds
		state   leases.State // returned and stored
		revoked bool         // the backend revoked the credential
		records []string     // audit records the call wrote
		actor   audit.Actor  // of the first record
		said    string       // its reason
	}{
		{
			name: "the owning agent releases", state: leases.StateReleased, revoked: true,
			records: []string{"lease.release/", "lease.revoked/"},
			actor:   audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, said: "released by agent",
		},
		{
			name:   "an operator revokes",
			caller: func(*testing.T, *fixture) broker.Caller { return broker.Caller{Operator: alice} },
			state:  leases.StateRevoked, revoked: true,
			records: []string{"lease.revoke/", "lease.revoked/"},
			actor:   audit.Actor{Type: audit.ActorOperator, ID: "alice"}, said: "revoked by operator",
		},
		{
			name:   "an operator gives a reason",
			caller: func(*testing.T, *fixture) broker.Caller { return broker.Caller{Operator: alice} },
			reason: "leaked in a log", state: leases.StateRevoked, revoked: true,
			records: []string{"lease.revoke/", "lease.revoked/"},
			actor:   audit.Actor{Type: audit.ActorOperator, ID: "alice"}, said: "leaked in a log",
		},
		{
			name:  "the backend does not confirm",
			setup: func(t *testing.T, f *fixture, l *leases.Lease) { f.be.revokeErr = errors.New("backend unreachable") },
			state: leases.StateRevoking, records: []string{"lease.release/", "lease.revoke_failed/"},
			actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, said: "released by agent",
		},
		{
			name: "already ended",
			setup: func(t *testing.T, f *fixture, l *leases.Lease) {
				if _, err := f.b.EndLease(context.Background(), f.agent(t, "a"), l.ID, "", ""); err != nil {
					t.Fatal(err)
				}
				f.be.revoked = nil
			},
			state: leases.StateReleased,
		},
		{
			name:  "past its expiry",
			setup: func(t *testing.T, f *fixture, l *leases.Lease) { f.clock.Advance(2 * time.Minute) },
			state: leases.StateExpired,
		},
		{
			name:   "another agent",
			caller: func(t *testing.T, f *fixture) broker.Caller { return f.agent(t, "b") },
			code:   broker.ENOTFOUND, state: leases.StateActive,
		},
		{
			name: "the store fails",
			setup: func(t *testing.T, f *fixture, l *leases.Lease) {
				f.fs.endFails = map[string]error{l.ID: errors.New("injected: disk full")}
			},
			code: broker.EINTERNAL, state: leases.StateActive,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			ctx := context.Background()
			l := f.mint(t, "a", "r", time.Minute)
			c := f.agent(t, "a")
			if tc.caller != nil {
				c = tc.caller(t, f)
			}
			if tc.setup != nil {
				tc.setup(t, f, l)
			}
			mark := f.auditMark(t)
			got, err := f.b.EndLease(ctx, c, l.ID, tc.reason, "end-1")
			recs := f.written(t, mark)
			if k := kinds(recs); !slices.Equal(k, tc.records) {
				t.Errorf("audit records %v, want %v", k, tc.records)
			}
			if stored := f.lease(t, l.ID); stored.StateAt(f.clock.Now()) != tc.state {
				t.Errorf("stored lease is %s, want %s", stored.StateAt(f.clock.Now()), tc.state)
			}
			revoked := slices.ContainsFunc(f.be.revoked, func(r backends.Ref) bool { return r.CorrelationID == l.ID })
			if revoked != tc.revoked {
				t.Errorf("revoked at the backend: %v, want %v", revoked, tc.revoked)
			}
			if tc.code != "" {
				if got != nil || broker.ErrorCode(err) != tc.code {
					t.Fatalf("EndLease = %+v, %v; want %s", got, err, tc.code)
				}
				return
			}
			if err != nil || got.State != tc.state {
				t.Fatalf("EndLease = %+v, %v; want the lease %s", got, err, tc.state)
			}
			if len(recs) > 0 && (recs[0].Actor != tc.actor || recs[0].Reason != tc.said || recs[0].LeaseID != l.ID || recs[0].RequestID != "end-1") {
				t.Errorf("first record %+v, want actor %+v saying %q for the lease and request", recs[0], tc.actor, tc.said)
			}
		})
	}
}

// TestRevokeMatching: an operator revokes every live lease of an agent or
// of an attestation's lineage, and nothing else.
func TestRevokeMatching(t *testing.T) {
	alice := &broker.Operator{Name: "alice", Method: "token"}
	type minted struct {
		a1, a2, other, b *leases.Lease // a1 and a2 share one attestation; other is a's, from another
	}
	cases := []struct {
		name   string
		filter func(m minted) leases.Filter
		setup  func(f *fixture)
		// want
		code  string
		n     int
		ended func(m minted) []*leases.Lease // the rest stay active
	}{
		{
			name:   "every lease of an agent",
			filter: func(minted) leases.Filter { return leases.Filter{AgentID: "test/a"} },
			n:      3, ended: func(m minted) []*leases.Lease { return []*leases.Lease{m.a1, m.a2, m.other} },
		},
		{
			name:   "every lease of one attestation",
			filter: func(m minted) leases.Filter { return leases.Filter{Lineage: m.a1.Lineage.IDs()[0]} },
			n:      2, ended: func(m minted) []*leases.Lease { return []*leases.Lease{m.a1, m.a2} },
		},
		{
			name:   "an agent without leases",
			filter: func(minted) leases.Filter { return leases.Filter{AgentID: "test/nobody"} },
		},
		{
			name:   "neither agent nor lineage",
			filter: func(minted) leases.Filter { return leases.Filter{} },
			code:   broker.EINVALID,
		},
		{
			name:   "the store cannot list",
			filter: func(minted) leases.Filter { return leases.Filter{AgentID: "test/a"} },
			setup:  func(f *fixture) { f.fs.listErr = errors.New("injected: disk full") },
			code:   broker.EINTERNAL,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			ctx := context.Background()
			tok, err := f.issuer.Sign(map[string]any{"sub": "a", "aud": "valet", "jti": "attestation-1"})
			if err != nil {
				t.Fatal(err)
			}
			var m minted
			for _, dst := range []**leases.Lease{&m.a1, &m.a2} {
				res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "r"})
				if err != nil {
					t.Fatal(err)
				}
				*dst = res.Lease
			}
			m.other, m.b = f.mint(t, "a", "r", 0), f.mint(t, "b", "r", 0)
			if tc.setup != nil {
				tc.setup(f)
			}
			mark := f.auditMark(t)
			n, err := f.b.RevokeMatching(ctx, alice, tc.filter(m), "incident 7", "bulk-1")
			if broker.ErrorCode(err) != tc.code || n != tc.n {
				t.Fatalf("RevokeMatching = %d, %v; want %d and code %q", n, err, tc.n, tc.code)
			}
			var ended []*leases.Lease
			if tc.ended != nil {
				ended = tc.ended(m)
			}
			var wantRecords []string
			for range ended {
				wantRecords = append(wantRecords, "lease.revoke/", "lease.revoked/")
			}
			recs := f.written(t, mark)
			if k := kinds(recs); !sameElements(k, wantRecords) {
				t.Errorf("audit records %v, want %v", k, wantRecords)
			}
			for _, r := range recs {
				if r.Kind == audit.KindRevoke && (r.Actor.ID != "alice" || r.Reason != "incident 7" || r.RequestID != "bulk-1") {
					t.Errorf("revoke record %+v, want alice's, with her reason and request id", r)
				}
			}
			for _, l := range []*leases.Lease{m.a1, m.a2, m.other, m.b} {
				want := leases.StateActive
				if slices.ContainsFunc(ended, func(e *leases.Lease) bool { return e.ID == l.ID }) {
					want = leases.StateRevoked
				}
				if got := f.lease(t, l.ID).State; got != want {
					t.Errorf("lease of %s is %s, want %s", l.AgentID, got, want)
				}
			}
		})
	}
}

// sameElements reports whether a and b hold the same strings, in any order.
func sameElements(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestRevokeAtBackend: the revocation the queue makes tells the lease's
// backend everything about the credential, and fails for a backend that
// is no longer configured.
func TestRevokeAtBackend(t *testing.T) {
	be := &scripted{mint: ok, issued: map[string]bool{}}
	validUntil := func(l *leases.Lease) time.Time { return l.ExpiresAt.Add(time.Hour) }
	revoke := broker.RevokeAtBackend(map[string]backends.Backend{"ext": be}, validUntil)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	l := &leases.Lease{ID: "01J00000000000000000000000", AgentID: "test/a", Role: "r", Backend: "ext", Handle: "h-1",
		ExpiresAt: now.Add(time.Minute), EndedAt: now, Details: map[string]string{"accessor": "x"}}
	cases := []struct {
		name    string
		backend string
		wantErr string
	}{
		{"a configured backend", "ext", ""},
		{"a backend no longer configured", "gone", `backend "gone" is no longer configured`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be.revoked = nil
			cp := *l
			cp.Backend = tc.backend
			_, err := revoke(context.Background(), &cp)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || len(be.revoked) != 0 {
					t.Fatalf("revoke = %v (revoked %v), want %q and nothing revoked", err, be.revoked, tc.wantErr)
				}
				return
			}
			want := backends.Ref{Handle: "h-1", CorrelationID: l.ID, AgentID: "test/a", Role: "r", ExpiresAt: l.ExpiresAt, EndedAt: now,
				ValidUntil: l.ExpiresAt.Add(time.Hour), Details: map[string]string{"accessor": "x"}}
			if err != nil || len(be.revoked) != 1 || !refEqual(be.revoked[0], want) {
				t.Fatalf("revoke = %v, revoked %+v; want %+v", err, be.revoked, want)
			}
		})
	}
}

func refEqual(a, b backends.Ref) bool {
	return a.Handle == b.Handle && a.CorrelationID == b.CorrelationID && a.AgentID == b.AgentID && a.Role == b.Role &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.EndedAt.Equal(b.EndedAt) && a.ValidUntil.Equal(b.ValidUntil) && len(a.Details) == len(b.Details) && a.Details["accessor"] == b.Details["accessor"]
}

// expiryRevoking is a backend whose credentials their holders can extend.
type expiryRevoking struct{ *scripted }

func (expiryRevoking) RevokeAtExpiry() {}

// TestExpiryRevocation: with the store asking RevokesAtExpiry and the
// expirer telling the broker (LeasesExpired), a lease whose backend's
// credentials their holder can extend is revoked at the backend as soon as
// it expires, without waiting for the queue's next wake, and then reads
// expired; any other lease just expires.
func TestExpiryRevocation(t *testing.T) {
	cases := []struct {
		name    string
		backend string
		revoked bool
	}{
		{"a holder can extend the credential", "holder", true},
		{"the credential dies on its own", "ext", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			holder := expiryRevoking{&scripted{mint: ok, issued: map[string]bool{}}}
			var bes map[string]backends.Backend
			f := newFixtureWith(t, func(cfg *fixtureConfig) {
				cfg.Backends = append(cfg.Backends, backends.Config{Name: "holder", Type: "scripted"})
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
					r.Name, r.Backend, r.TTL = "x", tc.backend, config.Duration(time.Minute)
				}))
			}, func(*clock.Fake, string) map[string]backends.Backend {
				bes = map[string]backends.Backend{"holder": holder}
				return bes
			})
			bes["ext"] = f.be
			f.store.SetRevokeAtExpiry(broker.RevokesAtExpiry(bes))
			l := f.mint(t, "a", "x", 0)

			ctx, cancel := context.WithCancel(context.Background())
			exp := leases.NewExpirer(f.store, f.clock, nil)
			exp.OnExpire = func(expired []*leases.Lease, _ time.Time) { f.b.LeasesExpired(expired) }
			var wg sync.WaitGroup
			for _, run := range []func(context.Context){exp.Run, f.queue.Run} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					run(ctx)
				}()
			}
			t.Cleanup(func() {
				cancel()
				wg.Wait()
			})
			waitUntil(t, "the expirer arms its timer", func() bool { return f.clock.Waiters() == 1 })
			f.clock.Advance(time.Minute)
			// A revoking lease reads expired only once its backend confirmed.
			waitUntil(t, "the lease is expired", func() bool { return f.lease(t, l.ID).State == leases.StateExpired })
			revoked := func(s *scripted) bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return slices.ContainsFunc(s.revoked, func(r backends.Ref) bool { return r.CorrelationID == l.ID })
			}
			if got := revoked(holder.scripted) || revoked(f.be); got != tc.revoked {
				t.Errorf("revoked at the backend: %v, want %v", got, tc.revoked)
			}
			recs, err := f.store.ListAudit(context.Background(), audit.Filter{LeaseID: l.ID, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"mint/allow", "lease.expire/"}
			if tc.revoked {
				want = append(want, "lease.revoked/")
			}
			if got := kinds(recs); !slices.Equal(got, want) {
				t.Errorf("audit records %v, want %v", got, want)
			}
		})
	}
}
