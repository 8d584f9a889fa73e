package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

var t0 = leasetest.T0

var bg = context.Background()

// Run runs every promise of the suite, each on a fresh store from open.
func Run(t *testing.T, open Open) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := open(t)
			c.run(t, a, b)
		})
	}
}

// cases is the table of promises; each gets two handles on one store.
var cases = []struct {
	name string
	run  func(t *testing.T, a, b Engine)
}{
	{"lease lifecycle seen by every handle", testLifecycle},
	{"refused changes write nothing", testRefused},
	{"listing walks the indexes newest first", testList},
	{"expiry reads the values, not the engine's timers", testExpiry},
	{"revocation queue by next attempt and lane", testRevocationQueue},
	{"start-up recovery of pending intents", testRecoverPending},
	{"pruning ended leases", testPrune},
	{"audit log appends, lists and verifies", testAudit},
	{"concurrent writers from every handle keep one chain", testConcurrentChain},
	{"grants through approval, redeem and expiry", testGrants},
	{"redeem is compare-and-swap across handles", testRedeemOnce},
	{"pruning ended grants", testPruneGrants},
	{"replay cache consumes a jti once", testReplay},
	{"job state changes are compare-and-swap", testJobs},
	{"agent records, quarantine and release", testAgents},
	{"signals, mass revocation and containment", testSignals},
}

func mintEntry(agent string) audit.Entry {
	return audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: agent}, Decision: audit.Allow}
}

func releaseEntry() audit.Entry {
	return audit.Entry{Kind: audit.KindRelease, Actor: audit.Actor{Type: audit.ActorAgent}}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func must[T any](t *testing.T, what string) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

func testLifecycle(t *testing.T, a, b Engine) {
	l := leasetest.NewPending(t0, "agent-1", time.Hour)
	l.Lineage = leases.Lineage{Issuer: "iss", JTI: "j1", PodUID: "pod-1"}
	leasetest.MustCreate(t, a.Store, l)
	if got := leasetest.MustGet(t, b.Store, l.ID); got.State != leases.StatePending || got.AgentID != "agent-1" {
		t.Fatalf("the other handle reads %+v, want the pending lease", got)
	}
	act := must[*leases.Lease](t, "Activate")(b.Store.Activate(bg, l.ID, leases.Activation{Handle: "h1", Details: map[string]string{"k": "v"}}, t0, mintEntry("agent-1")))
	if act.State != leases.StateActive || act.Handle != "h1" {
		t.Fatalf("Activate returned %+v", act)
	}
	ren := must[*leases.Lease](t, "Renew")(a.Store.Renew(bg, l.ID, t0.Add(time.Minute), t0.Add(2*time.Hour),
		audit.Entry{Kind: audit.KindRenew, Actor: audit.Actor{Type: audit.ActorAgent}}))
	if !ren.ExpiresAt.Equal(t0.Add(2*time.Hour)) || ren.RenewCount != 1 {
		t.Fatalf("Renew returned expiry %s, count %d", ren.ExpiresAt, ren.RenewCount)
	}
	end := leasetest.MustEnd(t, b.Store, l.ID, leases.StateReleased, t0.Add(2*time.Minute))
	if end.State != leases.StateRevoking || end.EndReason != leases.StateReleased {
		t.Fatalf("End returned %s/%s, want revoking/released", end.State, end.EndReason)
	}
	done := must[*leases.Lease](t, "RevocationDone")(a.Store.RevocationDone(bg, l.ID, leases.StateReleased, t0.Add(3*time.Minute),
		audit.Entry{Kind: audit.KindRevoked, Actor: audit.SystemActor}))
	if done.State != leases.StateReleased {
		t.Fatalf("RevocationDone returned %s", done.State)
	}
	got := leasetest.MustGet(t, b.Store, l.ID)
	if got.State != leases.StateReleased || got.Handle != "h1" || got.Details["k"] != "v" || got.RenewCount != 1 || got.Lineage.PodUID != "pod-1" {
		t.Fatalf("stored lease %+v", got)
	}
	if kinds := leasetest.AuditKinds(t, b.Store, l.ID); !slices.Equal(kinds, []string{audit.KindMint, audit.KindRenew, audit.KindRelease, audit.KindRevoked}) {
		t.Fatalf("audit of the lease: %v", kinds)
	}
	recs := must[[]audit.Record](t, "ListAudit")(a.Store.ListAudit(bg, audit.Filter{LeaseID: l.ID}))
	if recs[0].AgentID != "agent-1" || recs[0].Role != "demo" {
		t.Fatalf("the engine did not fill the record's subject from the lease: %+v", recs[0].Entry)
	}
	leasetest.WantCounts(t, b.Store, map[leases.State]int64{leases.StateReleased: 1})
	leasetest.MustVerifyAudit(t, b.Store)

	// A lease minted without side effects is created active with its record.
	j := leasetest.NewPending(t0, "agent-1", time.Hour)
	j.State = leases.StateActive
	if err := a.Store.CreateActive(bg, j, t0, mintEntry("agent-1")); err != nil {
		t.Fatal(err)
	}
	if kinds := leasetest.AuditKinds(t, b.Store, j.ID); !slices.Equal(kinds, []string{audit.KindMint}) {
		t.Fatalf("audit of the active lease: %v", kinds)
	}
	if err := b.Store.CreateActive(bg, j, t0, mintEntry("agent-1")); err == nil {
		t.Fatal("a second CreateActive of the same id succeeded")
	}
	if kinds := leasetest.AuditKinds(t, b.Store, j.ID); len(kinds) != 1 {
		t.Fatalf("a refused create wrote records: %v", kinds)
	}
}

func testRefused(t *testing.T, a, b Engine) {
	_, err := a.Store.Activate(bg, "no-such-lease", leases.Activation{Handle: "h"}, t0, mintEntry("x"))
	wantErr(t, "Activate of a missing lease", err, leases.ErrNotFound)
	_, err = b.Store.Get(bg, "no-such-lease")
	wantErr(t, "Get of a missing lease", err, leases.ErrNotFound)

	l := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Minute))
	head := must[audit.Head](t, "AuditHead")(b.Store.AuditHead(bg))
	_, err = b.Store.Activate(bg, l.ID, leases.Activation{Handle: "other"}, t0, mintEntry("agent-1"))
	wantErr(t, "Activate of an active lease", err, leases.ErrState)
	_, err = b.Store.Renew(bg, l.ID, t0.Add(time.Minute), t0.Add(time.Hour), audit.Entry{Kind: audit.KindRenew})
	wantErr(t, "Renew at its expiry", err, leases.ErrState)
	// Abandon of a lease that is no longer pending is unchanged.
	ab := must[*leases.Lease](t, "Abandon")(a.Store.Abandon(bg, l.ID, "", t0, audit.Entry{Kind: audit.KindMintFailed}))
	if ab.State != leases.StateActive || ab.Handle != "h-"+l.ID {
		t.Fatalf("Abandon of an active lease changed it: %+v", ab)
	}
	if h := must[audit.Head](t, "AuditHead")(a.Store.AuditHead(bg)); h != head {
		t.Fatalf("refused and unchanged writes moved the audit head from %d to %d", head.Seq, h.Seq)
	}
	leasetest.MustEnd(t, a.Store, l.ID, leases.StateRevoked, t0)
	head = must[audit.Head](t, "AuditHead")(b.Store.AuditHead(bg))
	again := leasetest.MustEnd(t, b.Store, l.ID, leases.StateReleased, t0.Add(time.Second))
	if again.EndReason != leases.StateRevoked {
		t.Fatalf("a second End changed the reason to %s", again.EndReason)
	}
	if h := must[audit.Head](t, "AuditHead")(a.Store.AuditHead(bg)); h != head {
		t.Fatal("a second End wrote an audit record")
	}
	if _, err := a.Store.End(bg, l.ID, leases.StateActive, t0, releaseEntry()); err == nil {
		t.Fatal("End with a reason that is not terminal succeeded")
	}

	// Abandon of a pending lease ends it with the handle, queued.
	p := leasetest.NewPending(t0, "agent-1", time.Minute)
	leasetest.MustCreate(t, b.Store, p)
	ab = must[*leases.Lease](t, "Abandon")(a.Store.Abandon(bg, p.ID, "h-late", t0, audit.Entry{Kind: audit.KindMintFailed, Actor: audit.SystemActor}))
	if ab.State != leases.StateRevoking || ab.EndReason != leases.StateRevoked || ab.Handle != "h-late" {
		t.Fatalf("Abandon of a pending lease: %+v", ab)
	}
}

func leaseIDs(ls []*leases.Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
}

func testList(t *testing.T, a, b Engine) {
	var all []string // oldest first
	for i := range 7 {
		agent := "agent-even"
		if i%2 == 1 {
			agent = "agent-odd"
		}
		l := leasetest.NewPending(t0.Add(time.Duration(i)*time.Second), agent, time.Hour)
		if i < 3 {
			l.Lineage = leases.Lineage{PodUID: "pod-a"}
		}
		if i == 6 {
			l.Role = "other"
		}
		if i >= 4 {
			leasetest.MustActivate(t, a.Store, l)
		} else {
			leasetest.MustCreate(t, a.Store, l)
		}
		all = append(all, l.ID)
	}
	rev := func(idx ...int) []string {
		var out []string
		for _, i := range slices.Backward(idx) {
			out = append(out, all[i])
		}
		return out
	}
	for _, c := range []struct {
		name string
		f    leases.Filter
		want []string
	}{
		{"everything newest first", leases.Filter{}, rev(0, 1, 2, 3, 4, 5, 6)},
		{"by agent", leases.Filter{AgentID: "agent-odd"}, rev(1, 3, 5)},
		{"by lineage", leases.Filter{Lineage: "pod:pod-a"}, rev(0, 1, 2)},
		{"by state", leases.Filter{State: leases.StateActive}, rev(4, 5, 6)},
		{"by state and agent", leases.Filter{State: leases.StatePending, AgentID: "agent-even"}, rev(0, 2)},
		{"by role", leases.Filter{Role: "other"}, rev(6)},
		{"a page below a cursor", leases.Filter{Before: all[5], Limit: 2}, rev(3, 4)},
		{"a page of an index below a cursor", leases.Filter{AgentID: "agent-even", Before: all[4]}, rev(0, 2)},
		{"limited", leases.Filter{Limit: 3}, rev(4, 5, 6)},
		{"an unknown agent", leases.Filter{AgentID: "nobody"}, nil},
	} {
		got := leaseIDs(must[[]*leases.Lease](t, "List")(b.Store.List(bg, c.f)))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: List = %v, want %v", c.name, got, c.want)
		}
	}
	// The default limit is 100.
	var many []*leases.Lease
	for i := range 120 {
		many = append(many, leasetest.NewPending(t0.Add(time.Minute+time.Duration(i)*time.Millisecond), "agent-many", time.Hour))
	}
	leasetest.SeedActive(t, a.Store, many)
	if got := must[[]*leases.Lease](t, "List")(b.Store.List(bg, leases.Filter{AgentID: "agent-many"})); len(got) != 100 {
		t.Errorf("List without a limit returned %d leases, want 100", len(got))
	}
}

func testExpiry(t *testing.T, a, b Engine) {
	if _, ok, err := b.Store.NextExpiry(); err != nil || ok {
		t.Fatalf("NextExpiry of an empty store: ok %v, err %v", ok, err)
	}
	short := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Minute))
	long := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Hour))
	renewed := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", 30*time.Second))
	extendable := leasetest.NewPending(t0, "agent-2", 2*time.Minute)
	extendable.Backend = "vault"
	leasetest.MustActivate(t, a.Store, extendable)
	pending := leasetest.NewPending(t0, "agent-1", time.Second)
	leasetest.MustCreate(t, a.Store, pending)
	b.Store.SetRevokeAtExpiry(func(l *leases.Lease) bool { return l.Backend == "vault" })
	a.Store.SetRevokeAtExpiry(func(l *leases.Lease) bool { return l.Backend == "vault" })

	if next, ok, err := b.Store.NextExpiry(); err != nil || !ok || !next.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("NextExpiry = %s, %v, %v; want the earliest active expiry %s", next, ok, err, t0.Add(30*time.Second))
	}
	must[*leases.Lease](t, "Renew")(a.Store.Renew(bg, renewed.ID, t0.Add(10*time.Second), t0.Add(90*time.Minute), audit.Entry{Kind: audit.KindRenew}))
	if next, _, _ := b.Store.NextExpiry(); !next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after a renewal NextExpiry = %s, want %s", next, t0.Add(time.Minute))
	}
	if got := must[[]*leases.Lease](t, "ExpireDue")(b.Store.ExpireDue(bg, t0.Add(59*time.Second), 100)); len(got) != 0 {
		t.Fatalf("ExpireDue before any expiry ended %v", leaseIDs(got))
	}
	got := must[[]*leases.Lease](t, "ExpireDue")(b.Store.ExpireDue(bg, t0.Add(3*time.Minute), 1))
	if len(got) != 1 || got[0].ID != short.ID || got[0].State != leases.StateExpired {
		t.Fatalf("ExpireDue with limit 1 = %+v, want %s expired", got, short.ID)
	}
	got = must[[]*leases.Lease](t, "ExpireDue")(a.Store.ExpireDue(bg, t0.Add(3*time.Minute), 100))
	if len(got) != 1 || got[0].ID != extendable.ID || got[0].State != leases.StateRevoking || got[0].EndReason != leases.StateExpired {
		t.Fatalf("ExpireDue of a lease its holder can extend = %+v, want it revoking (reason expired)", got)
	}
	if kinds := leasetest.AuditKinds(t, a.Store, short.ID); !slices.Equal(kinds, []string{audit.KindMint, audit.KindExpire}) {
		t.Fatalf("audit of the expired lease: %v", kinds)
	}
	if l := leasetest.MustGet(t, b.Store, long.ID); l.State != leases.StateActive {
		t.Fatalf("the long lease is %s", l.State)
	}
	if l := leasetest.MustGet(t, b.Store, pending.ID); l.State != leases.StatePending {
		t.Fatalf("a pending lease was expired: %s", l.State)
	}
	if next, _, _ := a.Store.NextExpiry(); !next.Equal(t0.Add(time.Hour)) {
		t.Fatalf("NextExpiry after the sweep = %s, want %s", next, t0.Add(time.Hour))
	}
	for _, c := range []struct {
		at   time.Time
		want int
	}{{t0.Add(59 * time.Minute), 0}, {t0.Add(time.Hour), 1}, {t0.Add(91 * time.Minute), 2}} {
		if n := must[int](t, "ExpiryBacklog")(b.Store.ExpiryBacklog(c.at)); n != c.want {
			t.Errorf("ExpiryBacklog at %s = %d, want %d", c.at.Sub(t0), n, c.want)
		}
	}
}

func testRevocationQueue(t *testing.T, a, b Engine) {
	h1 := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Hour))
	h2 := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Hour))
	nh := leasetest.NewPending(t0, "agent-1", time.Hour)
	leasetest.MustCreate(t, a.Store, nh)
	leasetest.MustEnd(t, b.Store, h1.ID, leases.StateRevoked, t0.Add(time.Second))
	leasetest.MustEnd(t, a.Store, nh.ID, leases.StateRevoked, t0.Add(2*time.Second))
	leasetest.MustEnd(t, b.Store, h2.ID, leases.StateRevoked, t0.Add(3*time.Second))

	due := func(s Store, now time.Time, want func(bool) bool) []string {
		var out []string
		if err := s.EachDueRevocation(now, want, func(l *leases.Lease) bool { out = append(out, l.ID); return true }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := due(a.Store, t0.Add(time.Hour), nil); !slices.Equal(got, []string{h1.ID, nh.ID, h2.ID}) {
		t.Fatalf("due revocations = %v, want earliest first %v", got, []string{h1.ID, nh.ID, h2.ID})
	}
	if got := due(b.Store, t0.Add(2*time.Second), nil); !slices.Equal(got, []string{h1.ID, nh.ID}) {
		t.Fatalf("due at +2s = %v", got)
	}
	if got := due(b.Store, t0.Add(time.Hour), func(hasHandle bool) bool { return !hasHandle }); !slices.Equal(got, []string{nh.ID}) {
		t.Fatalf("due in the lane without a handle = %v, want %v", got, []string{nh.ID})
	}
	stop := 0
	_ = a.Store.EachDueRevocation(t0.Add(time.Hour), nil, func(*leases.Lease) bool { stop++; return false })
	if stop != 1 {
		t.Fatalf("fn returning false was called %d times", stop)
	}

	f := must[*leases.Lease](t, "RevocationFailed")(a.Store.RevocationFailed(bg, h1.ID, "down", t0.Add(time.Minute), false, t0.Add(5*time.Second),
		audit.Entry{Kind: audit.KindRevokeFailed, Actor: audit.SystemActor}))
	if f.RevokeAttempts != 1 || !f.NextAttempt.Equal(t0.Add(time.Minute)) || f.State != leases.StateRevoking {
		t.Fatalf("RevocationFailed: %+v", f)
	}
	if next, ok, _ := b.Store.NextRevocationAfter(t0.Add(10 * time.Second)); !ok || !next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("NextRevocationAfter = %s %v, want %s", next, ok, t0.Add(time.Minute))
	}
	irr := must[*leases.Lease](t, "RevocationFailed")(b.Store.RevocationFailed(bg, h1.ID, "down", t0.Add(2*time.Minute), true, t0.Add(time.Minute),
		audit.Entry{Kind: audit.KindIrrevocable, Actor: audit.SystemActor}))
	if irr.State != leases.StateIrrevocable || irr.RevokeAttempts != 2 {
		t.Fatalf("irrevocable: %+v", irr)
	}
	imp := must[*leases.Lease](t, "RevocationImpossible")(a.Store.RevocationImpossible(bg, h2.ID, "cannot", t0.Add(3*time.Hour), t0.Add(time.Minute),
		audit.Entry{Kind: audit.KindUnrevocable, Actor: audit.SystemActor}))
	if !imp.Unrevocable || imp.EndReason != leases.StateExpired || !imp.NextAttempt.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("RevocationImpossible: %+v", imp)
	}
	if got := due(b.Store, t0.Add(2*time.Hour), nil); !slices.Equal(got, []string{nh.ID, h1.ID}) {
		t.Fatalf("due after the failures = %v, want %v", got, []string{nh.ID, h1.ID})
	}
	for _, id := range []string{nh.ID, h1.ID, h2.ID} {
		must[*leases.Lease](t, "RevocationDone")(b.Store.RevocationDone(bg, id, leases.StateRevoked, t0.Add(4*time.Hour), audit.Entry{Kind: audit.KindRevoked, Actor: audit.SystemActor}))
	}
	if got := due(a.Store, t0.Add(24*time.Hour), nil); len(got) != 0 {
		t.Fatalf("the queue still holds %v after every revocation was done", got)
	}
	if _, ok, _ := a.Store.NextRevocationAfter(t0); ok {
		t.Fatal("NextRevocationAfter found an attempt in an empty queue")
	}
	if l := must[*leases.Lease](t, "RevocationDone")(a.Store.RevocationDone(bg, h1.ID, leases.StateExpired, t0.Add(5*time.Hour), audit.Entry{Kind: audit.KindRevoked})); l.State != leases.StateRevoked {
		t.Fatalf("RevocationDone of an ended lease changed it to %s", l.State)
	}
	leasetest.WantCounts(t, b.Store, map[leases.State]int64{leases.StateRevoked: 3})
}

func testRecoverPending(t *testing.T, a, b Engine) {
	p1 := leasetest.NewPending(t0, "agent-1", time.Hour)
	p2 := leasetest.NewPending(t0, "agent-2", time.Hour)
	leasetest.MustCreate(t, a.Store, p1)
	leasetest.MustCreate(t, b.Store, p2)
	act := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Hour))
	// An hour later: longer than any mint takes, so every pending lease is
	// an intent left behind (a replicated engine leaves younger ones to
	// the mints of other replicas still under way).
	got := must[[]*leases.Lease](t, "RecoverPending")(b.Store.RecoverPending(bg, t0.Add(time.Hour)))
	if ids := leaseIDs(got); len(ids) != 2 || !slices.Contains(ids, p1.ID) || !slices.Contains(ids, p2.ID) {
		t.Fatalf("RecoverPending ended %v, want %s and %s", ids, p1.ID, p2.ID)
	}
	for _, id := range []string{p1.ID, p2.ID} {
		l := leasetest.MustGet(t, a.Store, id)
		if l.State != leases.StateRevoking || l.Handle != "" || l.EndReason != leases.StateRevoked {
			t.Fatalf("recovered lease %+v", l)
		}
		if kinds := leasetest.AuditKinds(t, a.Store, id); !slices.Equal(kinds, []string{audit.KindRecover}) {
			t.Fatalf("audit of a recovered lease: %v", kinds)
		}
	}
	if l := leasetest.MustGet(t, a.Store, act.ID); l.State != leases.StateActive {
		t.Fatalf("recovery touched an active lease: %s", l.State)
	}
}

func testPrune(t *testing.T, a, b Engine) {
	old := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0, "agent-1", time.Hour))
	leasetest.MustEnd(t, a.Store, old.ID, leases.StateReleased, t0.Add(time.Minute))
	must[*leases.Lease](t, "RevocationDone")(a.Store.RevocationDone(bg, old.ID, leases.StateReleased, t0.Add(time.Minute), audit.Entry{Kind: audit.KindRevoked}))
	recent := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0.Add(time.Second), "agent-1", time.Hour))
	leasetest.MustEnd(t, a.Store, recent.ID, leases.StateReleased, t0.Add(time.Hour))
	must[*leases.Lease](t, "RevocationDone")(a.Store.RevocationDone(bg, recent.ID, leases.StateReleased, t0.Add(time.Hour), audit.Entry{Kind: audit.KindRevoked}))
	revoking := leasetest.MustActivate(t, a.Store, leasetest.NewPending(t0.Add(2*time.Second), "agent-1", time.Hour))
	leasetest.MustEnd(t, a.Store, revoking.ID, leases.StateRevoked, t0.Add(time.Minute))

	n := must[int](t, "PruneEnded")(b.Store.PruneEnded(bg, t0.Add(30*time.Minute), 100))
	if n != 1 {
		t.Fatalf("PruneEnded deleted %d, want 1", n)
	}
	_, err := a.Store.Get(bg, old.ID)
	wantErr(t, "Get of a pruned lease", err, leases.ErrNotFound)
	if got := leaseIDs(must[[]*leases.Lease](t, "List")(a.Store.List(bg, leases.Filter{AgentID: "agent-1"}))); !slices.Equal(got, []string{revoking.ID, recent.ID}) {
		t.Fatalf("the agent index lists %v after pruning", got)
	}
	if kinds := leasetest.AuditKinds(t, b.Store, old.ID); len(kinds) != 3 {
		t.Fatalf("pruning removed audit records: %v", kinds)
	}
	leasetest.WantCounts(t, a.Store, map[leases.State]int64{leases.StateReleased: 1, leases.StateRevoking: 1})
}

func testAudit(t *testing.T, a, b Engine) {
	if h := must[audit.Head](t, "AuditHead")(a.Store.AuditHead(bg)); h.Seq != 0 {
		t.Fatalf("the head of an empty log is %d", h.Seq)
	}
	if err := a.Store.Audit(bg, t0, audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor},
		audit.Entry{Kind: audit.KindPolicyReload, Actor: audit.SystemActor, AgentID: "x"}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := b.Store.Audit(bg, t0.Add(time.Duration(i)*time.Second), audit.Entry{Kind: audit.KindMint, Actor: audit.SystemActor, AgentID: fmt.Sprint("agent-", i%2)}); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(recs []audit.Record) []uint64 {
		var out []uint64
		for _, r := range recs {
			out = append(out, r.Seq)
		}
		return out
	}
	for _, c := range []struct {
		name string
		f    audit.Filter
		want []uint64
	}{
		{"all in order", audit.Filter{}, []uint64{1, 2, 3, 4, 5, 6, 7}},
		{"after a sequence", audit.Filter{AfterSeq: 5}, []uint64{6, 7}},
		{"by kind", audit.Filter{Kind: audit.KindMint, Limit: 2}, []uint64{3, 4}},
		{"by agent", audit.Filter{AgentID: "agent-1"}, []uint64{4, 6}},
		{"newest first", audit.Filter{Newest: true, Limit: 3}, []uint64{7, 6, 5}},
		{"newest below a sequence", audit.Filter{Newest: true, BeforeSeq: 3}, []uint64{2, 1}},
	} {
		if got := seqs(must[[]audit.Record](t, "ListAudit")(a.Store.ListAudit(bg, c.f))); !slices.Equal(got, c.want) {
			t.Errorf("%s: ListAudit = %v, want %v", c.name, got, c.want)
		}
	}
	res := leasetest.MustVerifyAudit(t, b.Store)
	h := must[audit.Head](t, "AuditHead")(a.Store.AuditHead(bg))
	if res.Records != 7 || res.HeadSeq != 7 || h.Seq != 7 || res.HeadHash != fmt.Sprintf("%x", h.Hash) {
		t.Fatalf("verify %+v, head %d %x", res, h.Seq, h.Hash)
	}
}

func testConcurrentChain(t *testing.T, a, b Engine) {
	const n = 40
	var wg sync.WaitGroup
	var ls []*leases.Lease
	for i := range n {
		ls = append(ls, leasetest.NewPending(t0.Add(time.Duration(i)*time.Millisecond), fmt.Sprint("agent-", i%3), time.Hour))
	}
	errs := make(chan error, 3*n)
	for i, l := range ls {
		s := []Engine{a, b}[i%2].Store
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.CreatePending(bg, l); err != nil {
				errs <- err
				return
			}
			if _, err := s.Activate(bg, l.ID, leases.Activation{Handle: "h"}, t0, mintEntry(l.AgentID)); err != nil {
				errs <- err
				return
			}
			if err := s.Audit(bg, t0, audit.Entry{Kind: audit.KindLeaseAccess, Actor: audit.SystemActor, LeaseID: l.ID}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	res := leasetest.MustVerifyAudit(t, a.Store)
	if res.Records != 2*n {
		t.Fatalf("the log holds %d records, want %d", res.Records, 2*n)
	}
	leasetest.WantCounts(t, b.Store, map[leases.State]int64{leases.StateActive: n})
	if got := leasetest.CountAudit(t, b.Store, audit.KindMint); got != n {
		t.Fatalf("%d mint records, want %d", got, n)
	}
}

func newGrant(now time.Time, agent string, st grants.State) *grants.Grant {
	r := grants.Request{AgentID: agent, Role: "elevated", TTL: time.Minute}
	return &grants.Grant{ID: leases.NewID(now), Kind: grants.KindApproval, AgentID: agent, Role: "elevated", TTL: time.Minute,
		Binding: grants.Binding(r), Requester: []string{agent}, State: st, Required: 1, CreatedAt: now,
		ExpiresAt: now.Add(time.Hour), RedeemBy: now.Add(2 * time.Hour)}
}

func grantEntry(kind string) audit.Entry {
	return audit.Entry{Kind: kind, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}
}

func testGrants(t *testing.T, a, b Engine) {
	g := newGrant(t0, "agent-1", grants.StatePending)
	if err := a.Grants.Create(bg, g, t0, grantEntry(audit.KindGrantRequest)); err != nil {
		t.Fatal(err)
	}
	if err := b.Grants.Create(bg, g, t0, grantEntry(audit.KindGrantRequest)); err == nil {
		t.Fatal("a second Create of the same grant succeeded")
	}
	other := newGrant(t0.Add(time.Second), "agent-2", grants.StatePending)
	other.ExpiresAt = t0.Add(time.Minute)
	if err := b.Grants.Create(bg, other, t0, grantEntry(audit.KindGrantRequest)); err != nil {
		t.Fatal(err)
	}
	bg2 := newGrant(t0.Add(2*time.Second), "agent-1", grants.StateRedeemed)
	bg2.Kind = grants.KindBreakGlass
	if err := a.Grants.Create(bg, bg2, t0, grantEntry(audit.KindBreakGlass)); err != nil {
		t.Fatal(err)
	}
	list := func(f grants.Filter) []string {
		var out []string
		for _, g := range must[[]*grants.Grant](t, "List grants")(b.Grants.List(bg, f)) {
			out = append(out, g.ID)
		}
		return out
	}
	for _, c := range []struct {
		name string
		f    grants.Filter
		want []string
	}{
		{"all newest first", grants.Filter{}, []string{bg2.ID, other.ID, g.ID}},
		{"pending", grants.Filter{State: grants.StatePending}, []string{other.ID, g.ID}},
		{"of an agent", grants.Filter{AgentID: "agent-1"}, []string{bg2.ID, g.ID}},
		{"awaiting review", grants.Filter{ReviewPending: true}, []string{bg2.ID}},
	} {
		if got := list(c.f); !slices.Equal(got, c.want) {
			t.Errorf("%s: List = %v, want %v", c.name, got, c.want)
		}
	}
	_, err := b.Grants.Approve(bg, g.ID, grants.Decision{Operator: "agent-1", At: t0}, time.Hour, grantEntry(audit.KindGrantApprove))
	wantErr(t, "self-approval", err, grants.ErrSelfApproval)
	ap := must[*grants.Grant](t, "Approve")(b.Grants.Approve(bg, g.ID, grants.Decision{Operator: "alice", At: t0.Add(time.Second)}, time.Hour, grantEntry(audit.KindGrantApprove)))
	if ap.State != grants.StateApproved || len(ap.Approvals) != 1 {
		t.Fatalf("Approve: %+v", ap)
	}
	_, err = a.Grants.Redeem(bg, g.ID, "agent-1", "wrong binding", t0.Add(time.Minute), grantEntry(audit.KindGrantRedeem))
	if err == nil {
		t.Fatal("Redeem with another binding succeeded")
	}
	rd := must[*grants.Grant](t, "Redeem")(a.Grants.Redeem(bg, g.ID, "agent-1", g.Binding, t0.Add(time.Minute), grantEntry(audit.KindGrantRedeem)))
	if rd.State != grants.StateRedeemed {
		t.Fatalf("Redeem: %s", rd.State)
	}
	un := must[*grants.Grant](t, "Unredeem")(b.Grants.Unredeem(bg, g.ID, t0.Add(time.Minute), grantEntry(audit.KindMintFailed)))
	if un.State != grants.StateApproved {
		t.Fatalf("Unredeem: %s", un.State)
	}
	must[*grants.Grant](t, "Redeem")(b.Grants.Redeem(bg, g.ID, "agent-1", g.Binding, t0.Add(time.Minute), grantEntry(audit.KindGrantRedeem)))
	must[*grants.Grant](t, "Redeemed")(a.Grants.Redeemed(bg, g.ID, "lease-1", t0.Add(time.Minute)))
	if got := must[*grants.Grant](t, "Get grant")(b.Grants.Get(bg, g.ID)); got.LeaseID != "lease-1" || got.State != grants.StateRedeemed {
		t.Fatalf("stored grant %+v", got)
	}
	rv := must[*grants.Grant](t, "Review")(b.Grants.Review(bg, bg2.ID, grants.Decision{Operator: "bob", At: t0.Add(time.Minute)}, grantEntry(audit.KindGrantReview)))
	if rv.Review == nil {
		t.Fatal("Review recorded no review")
	}
	if got := list(grants.Filter{ReviewPending: true}); len(got) != 0 {
		t.Fatalf("reviewed grant still awaits review: %v", got)
	}
	exp := must[[]*grants.Grant](t, "ExpireDue")(a.Grants.ExpireDue(bg, t0.Add(2*time.Minute)))
	if len(exp) != 1 || exp[0].ID != other.ID || exp[0].State != grants.StateExpired {
		t.Fatalf("ExpireDue = %+v, want %s expired", exp, other.ID)
	}
	if got := list(grants.Filter{State: grants.StatePending}); len(got) != 0 {
		t.Fatalf("pending after expiry: %v", got)
	}
	_, err = b.Grants.Get(bg, "missing")
	wantErr(t, "Get of a missing grant", err, grants.ErrNotFound)
	recs := must[[]audit.Record](t, "ListAudit")(a.Store.ListAudit(bg, audit.Filter{Kind: audit.KindGrantExpired}))
	if len(recs) != 1 || recs[0].Details["grant_id"] != other.ID && recs[0].AgentID != "agent-2" {
		t.Fatalf("grant expiry records: %+v", recs)
	}
	leasetest.MustVerifyAudit(t, b.Store)
}

// grantPruner is a grant store that deletes ended grants (housekeeping).
type grantPruner interface {
	PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error)
}

func testPruneGrants(t *testing.T, a, b Engine) {
	pa, okA := a.Grants.(grantPruner)
	pb, okB := b.Grants.(grantPruner)
	if !okA || !okB {
		t.Fatal("the engine's grant store cannot delete ended grants (PruneEnded)")
	}
	cutoff := t0.Add(30 * time.Minute)
	op := func(at time.Time) grants.Decision { return grants.Decision{Operator: "alice", At: at} }
	at := t0
	create := func(agent string, st grants.State, kind string) *grants.Grant {
		t.Helper()
		at = at.Add(time.Second)
		g := newGrant(at, agent, st)
		g.ExpiresAt = at.Add(3 * time.Hour)
		if kind == grants.KindBreakGlass {
			g.Kind, g.EndedAt, g.Required, g.LeaseID = kind, at, 0, "lease-break-glass"
		}
		if err := a.Grants.Create(bg, g, at, grantEntry(audit.KindGrantRequest)); err != nil {
			t.Fatal(err)
		}
		return g
	}
	deny := func(g *grants.Grant, when time.Time) {
		t.Helper()
		must[*grants.Grant](t, "Deny")(b.Grants.Deny(bg, g.ID, op(when), grantEntry(audit.KindGrantDeny)))
	}
	redeem := func(g *grants.Grant) {
		t.Helper()
		must[*grants.Grant](t, "Redeem")(a.Grants.Redeem(bg, g.ID, g.AgentID, g.Binding, t0.Add(time.Minute), grantEntry(audit.KindGrantRedeem)))
	}
	var gone []*grants.Grant
	for range 3 {
		g := create("agent-old", grants.StatePending, grants.KindApproval)
		deny(g, t0.Add(time.Minute))
		gone = append(gone, g)
	}
	deniedOld := create("agent-1", grants.StatePending, grants.KindApproval)
	deny(deniedOld, t0.Add(time.Minute))
	withLease := create("agent-1", grants.StateApproved, grants.KindApproval)
	redeem(withLease)
	must[*grants.Grant](t, "Redeemed")(b.Grants.Redeemed(bg, withLease.ID, "lease-1", t0.Add(time.Minute)))
	gone = append(gone, deniedOld, withLease)

	deniedRecent := create("agent-1", grants.StatePending, grants.KindApproval)
	deny(deniedRecent, t0.Add(2*time.Hour))
	mintUnderWay := create("agent-1", grants.StateApproved, grants.KindApproval)
	redeem(mintUnderWay)
	awaitingReview := create("agent-1", grants.StateRedeemed, grants.KindBreakGlass)
	pending := create("agent-1", grants.StatePending, grants.KindApproval)

	if n := must[int](t, "PruneEnded")(pb.PruneEnded(bg, cutoff, 2)); n != 2 {
		t.Fatalf("PruneEnded with limit 2 deleted %d", n)
	}
	if n := must[int](t, "PruneEnded")(pa.PruneEnded(bg, cutoff, 100)); n != len(gone)-2 {
		t.Fatalf("the next PruneEnded deleted %d, want the other %d grants ended before the cutoff that need nothing more", n, len(gone)-2)
	}
	if n := must[int](t, "PruneEnded")(pb.PruneEnded(bg, cutoff, 100)); n != 0 {
		t.Fatalf("a third PruneEnded deleted %d more", n)
	}
	for _, g := range gone {
		_, err := a.Grants.Get(bg, g.ID)
		wantErr(t, "Get of a pruned grant", err, grants.ErrNotFound)
	}
	for _, g := range []*grants.Grant{deniedRecent, mintUnderWay, awaitingReview, pending} {
		must[*grants.Grant](t, "Get of a grant that stays")(b.Grants.Get(bg, g.ID))
	}
	ids := func(f grants.Filter) []string {
		var out []string
		for _, g := range must[[]*grants.Grant](t, "List grants")(a.Grants.List(bg, f)) {
			out = append(out, g.ID)
		}
		return out
	}
	if got := ids(grants.Filter{AgentID: "agent-old"}); len(got) != 0 {
		t.Fatalf("the agent index still lists pruned grants: %v", got)
	}
	if got := ids(grants.Filter{State: grants.StateDenied}); !slices.Equal(got, []string{deniedRecent.ID}) {
		t.Fatalf("the state index lists %v, want only %s", got, deniedRecent.ID)
	}
	if n := leasetest.CountAudit(t, b.Store, audit.KindGrantDeny); n != 5 {
		t.Fatalf("%d grant deny records after pruning, want all 5", n)
	}
	// Reviewed, the break-glass grant needs nothing more.
	must[*grants.Grant](t, "Review")(a.Grants.Review(bg, awaitingReview.ID, op(t0.Add(2*time.Minute)), grantEntry(audit.KindGrantReview)))
	if n := must[int](t, "PruneEnded")(pb.PruneEnded(bg, cutoff, 100)); n != 1 {
		t.Fatalf("PruneEnded after the review deleted %d, want the break-glass grant", n)
	}
	if got := ids(grants.Filter{ReviewPending: true}); len(got) != 0 {
		t.Fatalf("grants awaiting review after pruning: %v", got)
	}
}

func testRedeemOnce(t *testing.T, a, b Engine) {
	for round := range 3 {
		g := newGrant(t0.Add(time.Duration(round)*time.Second), "agent-1", grants.StateApproved)
		if err := a.Grants.Create(bg, g, t0, grantEntry(audit.KindGrantRequest)); err != nil {
			t.Fatal(err)
		}
		var wins, refused atomic.Int32
		var wg sync.WaitGroup
		for i := range 16 {
			s := []Engine{a, b}[i%2].Grants
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.Redeem(bg, g.ID, "agent-1", g.Binding, t0.Add(time.Minute), grantEntry(audit.KindGrantRedeem))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, grants.ErrState):
					refused.Add(1)
				default:
					t.Errorf("Redeem: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 || refused.Load() != 15 {
			t.Fatalf("round %d: %d redeems won and %d were refused, want 1 and 15", round, wins.Load(), refused.Load())
		}
	}
	if n := leasetest.CountAudit(t, b.Store, audit.KindGrantRedeem); n != 3 {
		t.Fatalf("%d redeem records, want 3", n)
	}
}

func testReplay(t *testing.T, a, b Engine) {
	clk := clock.NewFake(t0)
	ra, rb := a.Replay(clk), b.Replay(clk)
	if err := ra.Consume(bg, "iss/j1", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "a second Consume", rb.Consume(bg, "iss/j1", t0.Add(time.Minute)), attest.ErrReplay)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		r := []ReplayCache{ra, rb}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := r.Consume(bg, "iss/j2", t0.Add(time.Minute))
			if err == nil {
				wins.Add(1)
			} else if !errors.Is(err, attest.ErrReplay) {
				t.Errorf("Consume: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent Consumes of one jti succeeded, want 1", wins.Load())
	}
	if err := rb.Consume(bg, "iss/j3", t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	if err := rb.Consume(bg, "iss/j1", t0.Add(5*time.Minute)); err != nil {
		t.Fatalf("Consume of an expired entry: %v", err)
	}
	n := must[int](t, "Purge")(ra.Purge(t0.Add(2 * time.Minute)))
	if n != 1 {
		t.Fatalf("Purge deleted %d entries, want 1 (j2)", n)
	}
	wantErr(t, "Consume after Purge of a live entry", ra.Consume(bg, "iss/j3", t0.Add(3*time.Minute)), attest.ErrReplay)
	wantErr(t, "Consume of a re-consumed entry", ra.Consume(bg, "iss/j1", t0.Add(5*time.Minute)), attest.ErrReplay)
}

func testJobs(t *testing.T, a, b Engine) {
	st := must[*jobs.State](t, "JobState")(a.Store.JobState(bg, "rotate"))
	if st.Name != "rotate" || st.Runs != 0 {
		t.Fatalf("state of a job that never ran: %+v", st)
	}
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		s := []Engine{a, b}[i%2].Store
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateJob(bg, "rotate", t0, func(st *jobs.State) ([]audit.Entry, error) {
				st.Runs++
				return []audit.Entry{{Kind: audit.KindJobStart, Actor: audit.SystemActor}}, nil
			})
			if err != nil {
				t.Errorf("UpdateJob: %v", err)
			}
		}()
	}
	wg.Wait()
	if st := must[*jobs.State](t, "JobState")(b.Store.JobState(bg, "rotate")); st.Runs != n {
		t.Fatalf("after %d concurrent increments Runs = %d: a change was lost", n, st.Runs)
	}
	if got := leasetest.CountAudit(t, a.Store, audit.KindJobStart); got != n {
		t.Fatalf("%d job records, want %d", got, n)
	}
	head := must[audit.Head](t, "AuditHead")(a.Store.AuditHead(bg))
	st = must[*jobs.State](t, "UpdateJob")(b.Store.UpdateJob(bg, "rotate", t0, func(st *jobs.State) ([]audit.Entry, error) {
		return []audit.Entry{{Kind: audit.KindJobEnd}}, jobs.ErrUnchanged
	}))
	if st.Runs != n {
		t.Fatalf("UpdateJob returning ErrUnchanged returned Runs %d", st.Runs)
	}
	_, err := a.Store.UpdateJob(bg, "rotate", t0, func(st *jobs.State) ([]audit.Entry, error) {
		st.Runs = 1000
		return []audit.Entry{{Kind: audit.KindJobEnd}}, jobs.ErrBusy
	})
	wantErr(t, "UpdateJob whose change fails", err, jobs.ErrBusy)
	if st := must[*jobs.State](t, "JobState")(a.Store.JobState(bg, "rotate")); st.Runs != n {
		t.Fatalf("a refused change wrote Runs %d", st.Runs)
	}
	if h := must[audit.Head](t, "AuditHead")(b.Store.AuditHead(bg)); h != head {
		t.Fatal("unchanged or refused job changes wrote audit records")
	}
}

func testAgents(t *testing.T, a, b Engine) {
	if g := b.Store.Gate("agent-1"); g.Quarantine != nil || g.Risk.Score != 0 {
		t.Fatalf("the gate of an unknown agent: %+v", g)
	}
	if err := a.Store.See(bg, []agents.Sighting{
		{AgentID: "agent-1", First: t0, Last: t0.Add(time.Second), Roles: []string{"demo"}},
		{AgentID: "agent-2", First: t0, Last: t0.Add(2 * time.Second)},
		{AgentID: "agent-3", First: t0, Last: t0.Add(3 * time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	got := must[*agents.Agent](t, "GetAgent")(b.Store.GetAgent(bg, "agent-1"))
	if !got.FirstSeen.Equal(t0) || !got.LastSeen.Equal(t0.Add(time.Second)) || !slices.Equal(got.Roles, []string{"demo"}) {
		t.Fatalf("agent record %+v", got)
	}
	_, err := a.Store.GetAgent(bg, "nobody")
	wantErr(t, "GetAgent of an unknown agent", err, agents.ErrNotFound)
	ids := func(as []*agents.Agent) []string {
		var out []string
		for _, x := range as {
			out = append(out, x.ID)
		}
		return out
	}
	if got := ids(must[[]*agents.Agent](t, "ListAgents")(b.Store.ListAgents(bg, agents.Filter{}))); !slices.Equal(got, []string{"agent-3", "agent-2", "agent-1"}) {
		t.Fatalf("ListAgents = %v, want most recently seen first", got)
	}
	page := must[[]*agents.Agent](t, "ListAgents")(b.Store.ListAgents(bg, agents.Filter{Limit: 1}))
	if got := ids(must[[]*agents.Agent](t, "ListAgents")(a.Store.ListAgents(bg, agents.Filter{Before: page[0].Cursor()}))); !slices.Equal(got, []string{"agent-2", "agent-1"}) {
		t.Fatalf("ListAgents below a cursor = %v", got)
	}
	if err := b.Store.See(bg, []agents.Sighting{{AgentID: "agent-1", First: t0, Last: t0.Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if got := ids(must[[]*agents.Agent](t, "ListAgents")(a.Store.ListAgents(bg, agents.Filter{}))); !slices.Equal(got, []string{"agent-1", "agent-3", "agent-2"}) {
		t.Fatalf("ListAgents after a new sighting = %v", got)
	}

	q := agents.Quarantine{Since: t0.Add(time.Minute), Reason: "suspicious", By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, ReleaseAt: t0.Add(time.Hour)}
	qe := audit.Entry{Kind: audit.KindAgentQuarantine, Actor: q.By, Decision: audit.Allow}
	iso := must[*agents.Agent](t, "Isolate")(a.Store.Isolate(bg, "agent-1", q, qe))
	if iso.Quarantine == nil {
		t.Fatal("Isolate recorded no quarantine")
	}
	if g := a.Store.Gate("agent-1"); !g.Quarantine.ActiveAt(t0.Add(2 * time.Minute)) {
		t.Fatalf("the gate on the writing handle after Isolate returned: %+v", g)
	}
	leasetest.Eventually(t, "the other handle's gate shows the quarantine", func() bool {
		return b.Store.Gate("agent-1").Quarantine.ActiveAt(t0.Add(2 * time.Minute))
	})
	_, err = b.Store.Isolate(bg, "agent-1", q, qe)
	wantErr(t, "Isolate of a quarantined agent", err, agents.ErrState)
	never := must[*agents.Agent](t, "Isolate")(b.Store.Isolate(bg, "never-seen", agents.Quarantine{Since: t0, Reason: "r", By: q.By}, qe))
	if !never.LastSeen.IsZero() {
		t.Fatalf("an agent quarantined before any sighting has LastSeen %s", never.LastSeen)
	}
	if got := ids(must[[]*agents.Agent](t, "ListAgents")(a.Store.ListAgents(bg, agents.Filter{Quarantined: true}))); !slices.Equal(got, []string{"agent-1", "never-seen"}) {
		t.Fatalf("quarantined agents = %v", got)
	}
	rel := must[*agents.Agent](t, "Release")(b.Store.Release(bg, "never-seen", agents.Release{At: t0.Add(time.Minute), By: q.By, Reason: "ok"},
		audit.Entry{Kind: audit.KindAgentRelease, Actor: q.By}))
	if rel.Quarantine != nil {
		t.Fatal("Release left the quarantine")
	}
	_, err = a.Store.Release(bg, "never-seen", agents.Release{At: t0.Add(2 * time.Minute), By: q.By}, audit.Entry{Kind: audit.KindAgentRelease})
	wantErr(t, "Release of an agent not quarantined", err, agents.ErrState)
	if due := must[[]*agents.Agent](t, "ReleaseDue")(a.Store.ReleaseDue(bg, t0.Add(59*time.Minute))); len(due) != 0 {
		t.Fatalf("ReleaseDue before the release time released %v", ids(due))
	}
	due := must[[]*agents.Agent](t, "ReleaseDue")(b.Store.ReleaseDue(bg, t0.Add(time.Hour)))
	if !slices.Equal(ids(due), []string{"agent-1"}) || due[0].Quarantine != nil {
		t.Fatalf("ReleaseDue = %+v", due)
	}
	leasetest.Eventually(t, "every handle's gate shows the release", func() bool {
		return a.Store.Gate("agent-1").Quarantine == nil && b.Store.Gate("agent-1").Quarantine == nil
	})
	if n := leasetest.CountAudit(t, a.Store, audit.KindAgentRelease); n != 2 {
		t.Fatalf("%d release records, want 2", n)
	}
}

func testSignals(t *testing.T, a, b Engine) {
	var live []*leases.Lease
	for i := range 7 {
		live = append(live, leasetest.NewPending(t0.Add(time.Duration(i)*time.Millisecond), "agent-1", time.Hour))
	}
	leasetest.SeedActive(t, a.Store, live)
	later := leasetest.MustActivate(t, b.Store, leasetest.NewPending(t0.Add(time.Hour), "agent-1", time.Hour))
	bystander := leasetest.MustActivate(t, b.Store, leasetest.NewPending(t0, "agent-2", time.Hour))

	sig := &agents.Signal{ID: leases.NewID(t0.Add(time.Minute)), Subject: agents.Subject{Kind: agents.SubjectAgent, ID: "agent-1"},
		Severity: agents.SeverityHigh, Reason: "exfiltration", Source: agents.Source{Kind: agents.SourceOperator, Name: "alice"},
		Action: agents.ActionQuarantine, ReceivedAt: t0.Add(time.Minute), Agents: []string{"agent-1"}, Points: 50,
		Containment: &agents.Containment{State: agents.ContainmentPending}}
	q := &agents.Quarantine{Since: t0.Add(time.Minute), Reason: "signal", By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, SignalID: sig.ID}
	quarantined := must[[]string](t, "RecordSignal")(a.Store.RecordSignal(bg, sig, broker.SignalChange{Points: 50, HalfLife: time.Hour, Quarantine: q},
		audit.Entry{Kind: audit.KindSignal, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}},
		audit.Entry{Kind: audit.KindAgentQuarantine, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}))
	if !slices.Equal(quarantined, []string{"agent-1"}) {
		t.Fatalf("RecordSignal quarantined %v", quarantined)
	}
	ag := must[*agents.Agent](t, "GetAgent")(b.Store.GetAgent(bg, "agent-1"))
	if ag.Quarantine == nil || ag.Risk.Score <= 0 {
		t.Fatalf("agent after the signal: %+v", ag)
	}
	if p := must[[]*agents.Signal](t, "PendingSignals")(b.Store.PendingSignals(bg)); len(p) != 1 || p[0].ID != sig.ID {
		t.Fatalf("PendingSignals = %+v", p)
	}
	if got := must[[]*agents.Signal](t, "ListSignals")(b.Store.ListSignals(bg, agents.SignalFilter{AgentID: "agent-1"})); len(got) != 1 {
		t.Fatalf("signals of agent-1: %d", len(got))
	}
	if got := must[[]*agents.Signal](t, "ListSignals")(b.Store.ListSignals(bg, agents.SignalFilter{AgentID: "agent-2"})); len(got) != 0 {
		t.Fatalf("signals of agent-2: %d", len(got))
	}

	// Mass revocation in batches, across handles, with a cursor.
	var ended []string
	before := ""
	for i := 0; ; i++ {
		s := []Engine{a, b}[i%2].Store
		out, next, err := s.EndLive(bg, sig.ID, leases.Filter{AgentID: "agent-1"}, before, t0.Add(time.Minute), 3, leases.StateRevoked, t0.Add(2*time.Minute),
			audit.Entry{Kind: audit.KindRevoke, Actor: audit.SystemActor, Reason: "signal"})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) > 3 {
			t.Fatalf("EndLive with limit 3 ended %d", len(out))
		}
		for _, l := range out {
			if l.State != leases.StateRevoking || l.EndReason != leases.StateRevoked {
				t.Fatalf("EndLive returned %+v", l)
			}
			ended = append(ended, l.ID)
		}
		if next == "" {
			break
		}
		before = next
		if i > 10 {
			t.Fatal("EndLive never reached the end of the index")
		}
	}
	slices.Sort(ended)
	want := leaseIDs(live)
	slices.Sort(want)
	if !slices.Equal(ended, want) {
		t.Fatalf("EndLive ended %v, want %v (not the later lease, not the other agent's)", ended, want)
	}
	for _, id := range []string{later.ID, bystander.ID} {
		if l := leasetest.MustGet(t, a.Store, id); l.State != leases.StateActive {
			t.Fatalf("lease %s is %s", id, l.State)
		}
	}
	if _, _, err := a.Store.EndLive(bg, "", leases.Filter{Role: "demo"}, "", t0, 10, leases.StateRevoked, t0, audit.Entry{Kind: audit.KindRevoke}); err == nil {
		t.Fatal("EndLive without an index to walk succeeded")
	}
	c := must[*agents.Signal](t, "Contained")(b.Store.Contained(bg, sig.ID, 0, t0.Add(3*time.Minute),
		audit.Entry{Kind: audit.KindSignalContained, Actor: audit.SystemActor}))
	if c.Containment.State != agents.ContainmentDone || c.Containment.Ended != len(live) {
		t.Fatalf("Contained: %+v", c.Containment)
	}
	if p := must[[]*agents.Signal](t, "PendingSignals")(a.Store.PendingSignals(bg)); len(p) != 0 {
		t.Fatalf("PendingSignals after containment: %d", len(p))
	}
	for _, l := range live {
		if kinds := leasetest.AuditKinds(t, a.Store, l.ID); !slices.Equal(kinds, []string{audit.KindMint, audit.KindRevoke}) {
			t.Fatalf("audit of a contained lease: %v", kinds)
		}
	}
	old := &agents.Signal{ID: leases.NewID(t0), Subject: agents.Subject{Kind: agents.SubjectRole, ID: "demo"}, Severity: agents.SeverityLow,
		Source: agents.Source{Kind: agents.SourceOperator, Name: "alice"}, Action: agents.ActionAlert, ReceivedAt: t0}
	must[[]string](t, "RecordSignal")(b.Store.RecordSignal(bg, old, broker.SignalChange{}, audit.Entry{Kind: audit.KindSignal, Actor: audit.SystemActor}, audit.Entry{}))
	if n := must[int](t, "PruneSignals")(a.Store.PruneSignals(bg, t0.Add(30*time.Second), 100)); n != 1 {
		t.Fatalf("PruneSignals deleted %d, want the old signal", n)
	}
	_, err := b.Store.GetSignal(bg, old.ID)
	wantErr(t, "GetSignal of a pruned signal", err, agents.ErrNotFound)
	leasetest.MustVerifyAudit(t, b.Store)
}
