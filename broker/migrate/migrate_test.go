package migrate_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/etcd"
	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/broker/migrate"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

var (
	t0 = leasetest.T0
	bg = context.Background()
)

// cluster is the one embedded etcd cluster of this package's tests; each
// test copies into a prefix of its own.
var (
	cluster  *etcdtest.Cluster
	prefixes atomic.Int64
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "valet-migrate-test-")
	if err != nil {
		panic(err)
	}
	cluster, err = etcdtest.Start(dir, 3)
	if err != nil {
		panic(err)
	}
	code := m.Run()
	cluster.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// openTarget opens an etcd store on a fresh prefix of the cluster.
func openTarget(t *testing.T) (*etcd.Store, string) {
	t.Helper()
	p := fmt.Sprintf("/migrate-%d/", prefixes.Add(1))
	return openEtcd(t, p), p
}

func openEtcd(t *testing.T, prefix string) *etcd.Store {
	t.Helper()
	s, err := etcd.Open(bg, etcd.Options{Client: cluster.ClientT(t), Prefix: prefix, Logger: leasetest.QuietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
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

func check(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// seeded is what populate wrote, for the assertions on the copy.
type seeded struct {
	active             []*leases.Lease
	pending            *leases.Lease
	revoking, abandon  *leases.Lease
	released           *leases.Lease
	pendingGrant       *grants.Grant
	approved           *grants.Grant
	glass              *grants.Grant
	signal             *agents.Signal
	liveJTI, staleJTI  string
	quarantinedAgentID string
}

// populate writes every kind of record through the bbolt store's own
// methods (what the flows call), more leases than one batch and one etcd
// transaction hold.
func populate(t *testing.T, s *bolt.Store) seeded {
	t.Helper()
	var sd seeded
	for i := range 300 {
		l := leasetest.NewPending(t0.Add(time.Duration(i)*time.Millisecond), fmt.Sprintf("agent-%d", i%3), time.Hour+time.Duration(i)*time.Second)
		if i%10 == 0 {
			l.Lineage = leases.Lineage{Issuer: "https://issuer.test", JTI: fmt.Sprintf("jti-%d", i/10), PodUID: "pod-1"}
		}
		sd.active = append(sd.active, l)
	}
	leasetest.SeedActive(t, s, sd.active)
	sd.pending = leasetest.NewPending(t0.Add(time.Second), "agent-0", time.Hour)
	leasetest.MustCreate(t, s, sd.pending)
	sd.revoking = leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(2*time.Second), "agent-1", time.Hour))
	sd.revoking = leasetest.MustEnd(t, s, sd.revoking.ID, leases.StateRevoked, t0.Add(3*time.Second))
	sd.abandon = leasetest.NewPending(t0.Add(4*time.Second), "agent-2", time.Hour)
	leasetest.MustCreate(t, s, sd.abandon)
	sd.abandon = must[*leases.Lease](t, "Abandon")(s.Abandon(bg, sd.abandon.ID, "", t0.Add(5*time.Second),
		audit.Entry{Kind: audit.KindMintFailed, Actor: audit.SystemActor}))
	sd.released = leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(6*time.Second), "agent-1", time.Hour))
	leasetest.MustEnd(t, s, sd.released.ID, leases.StateReleased, t0.Add(7*time.Second))
	sd.released = must[*leases.Lease](t, "RevocationDone")(s.RevocationDone(bg, sd.released.ID, leases.StateReleased, t0.Add(8*time.Second),
		audit.Entry{Kind: audit.KindRevoked, Actor: audit.SystemActor}))

	gs := s.Grants()
	grant := func(at time.Time, agent string, kind string, st grants.State) *grants.Grant {
		r := grants.Request{AgentID: agent, Role: "elevated", TTL: time.Minute}
		g := &grants.Grant{ID: leases.NewID(at), Kind: kind, AgentID: agent, Role: "elevated", TTL: time.Minute,
			Binding: grants.Binding(r), Requester: []string{agent}, State: st, Required: 1, CreatedAt: at,
			ExpiresAt: at.Add(time.Hour), RedeemBy: at.Add(2 * time.Hour)}
		check(t, "create grant", gs.Create(bg, g, at, audit.Entry{Kind: audit.KindGrantRequest, Actor: audit.Actor{Type: audit.ActorAgent, ID: agent}}))
		return g
	}
	sd.pendingGrant = grant(t0.Add(10*time.Second), "agent-0", grants.KindApproval, grants.StatePending)
	sd.approved = grant(t0.Add(11*time.Second), "agent-1", grants.KindApproval, grants.StatePending)
	sd.approved = must[*grants.Grant](t, "Approve")(gs.Approve(bg, sd.approved.ID, grants.Decision{Operator: "alice", At: t0.Add(12 * time.Second)}, time.Hour,
		audit.Entry{Kind: audit.KindGrantApprove, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}))
	sd.glass = grant(t0.Add(13*time.Second), "agent-2", grants.KindBreakGlass, grants.StateRedeemed)

	check(t, "See", s.See(bg, []agents.Sighting{
		{AgentID: "agent-0", First: t0, Last: t0.Add(time.Minute), Roles: []string{"demo"}},
		{AgentID: "agent-1", First: t0, Last: t0.Add(2 * time.Minute), Roles: []string{"demo"}},
		{AgentID: "agent-2", First: t0, Last: t0.Add(3 * time.Minute), Roles: []string{"demo"}},
	}))
	sd.signal = &agents.Signal{ID: leases.NewID(t0.Add(20 * time.Second)), Subject: agents.Subject{Kind: agents.SubjectAgent, ID: "agent-2"},
		Severity: agents.SeverityHigh, Reason: "exfiltration", Source: agents.Source{Kind: agents.SourceOperator, Name: "alice"},
		Action: agents.ActionQuarantine, ReceivedAt: t0.Add(20 * time.Second), Agents: []string{"agent-2"}, Points: 50,
		Containment: &agents.Containment{State: agents.ContainmentPending}}
	q := &agents.Quarantine{Since: t0.Add(20 * time.Second), Reason: "signal", By: audit.Actor{Type: audit.ActorOperator, ID: "alice"},
		SignalID: sd.signal.ID, ReleaseAt: t0.Add(24 * time.Hour)}
	must[[]string](t, "RecordSignal")(s.RecordSignal(bg, sd.signal, broker.SignalChange{Points: 50, HalfLife: time.Hour, Quarantine: q},
		audit.Entry{Kind: audit.KindSignal, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}},
		audit.Entry{Kind: audit.KindAgentQuarantine, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}))
	sd.quarantinedAgentID = "agent-2"

	must[*jobs.State](t, "UpdateJob")(s.UpdateJob(bg, "signing-key-rotation", t0, func(st *jobs.State) ([]audit.Entry, error) {
		st.Runs = 3
		st.LastOutcome = "ok"
		return []audit.Entry{{Kind: audit.KindJobEnd, Actor: audit.SystemActor}}, nil
	}))

	rc := s.ReplayCache(clock.NewFake(t0))
	sd.liveJTI, sd.staleJTI = "test/jti-live", "test/jti-stale"
	check(t, "Consume", rc.Consume(bg, sd.liveJTI, t0.Add(2*time.Hour)))
	check(t, "Consume", rc.Consume(bg, sd.staleJTI, t0.Add(time.Minute)))

	// The log's start moves to the archive's segment files, as the
	// audit-archive job moves it: the copy must still hold the whole log.
	if a := must[audit.Archived](t, "ArchiveAudit")(s.ArchiveAudit(bg, t0.Add(15*time.Second))); a.Records < 300 {
		t.Fatalf("archived %d records, want the leases' at least", a.Records)
	}
	check(t, "Audit", s.Audit(bg, t0.Add(time.Hour), audit.Entry{Kind: audit.KindCheckpoint, Actor: audit.SystemActor, Reason: "checkpoint"}))
	return sd
}

// openSource writes a populated bbolt file and reopens it read-only, as
// `valet storage migrate` does.
func openSource(t *testing.T) (*bolt.Store, string, seeded) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "valet.db")
	w, err := bolt.Open(path, bolt.Options{})
	check(t, "open", err)
	sd := populate(t, w)
	check(t, "close", w.Close())
	s, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	check(t, "open read-only", err)
	t.Cleanup(func() { s.Close() })
	return s, path, sd
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	check(t, "read", err)
	return sha256.Sum256(b)
}

func ids(ls []*leases.Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.ID)
	}
	return out
}

// TestCopyBboltToEtcd: every kind of record of a real bbolt file lands in
// a real etcd cluster, where the engine's indexes serve it as they serve
// what a replica wrote; the audit chain verifies with the same head; the
// source file is not changed by a byte.
func TestCopyBboltToEtcd(t *testing.T) {
	src, path, sd := openSource(t)
	before := fileSum(t, path)
	dst, prefix := openTarget(t)
	now := t0.Add(10 * time.Minute)

	rep, err := migrate.Copy(bg, src, dst, now)
	check(t, "Copy", err)
	if !rep.OK() {
		t.Fatalf("the copy does not verify: %+v", rep)
	}
	srcHead := must[audit.Head](t, "AuditHead")(src.AuditHead(bg))
	want := map[string][3]int64{ // source, copied, target
		migrate.KindLeases:          {304, 304, 304},
		migrate.KindRevocationQueue: {2, 2, 2},
		migrate.KindGrants:          {3, 3, 3},
		migrate.KindAgents:          {3, 3, 3},
		migrate.KindQuarantined:     {1, 1, 1},
		migrate.KindSignals:         {1, 1, 1},
		migrate.KindPendingSignals:  {1, 1, 1},
		migrate.KindJobs:            {1, 1, 1},
		migrate.KindReplay:          {2, 1, 1},
		migrate.KindAudit:           {int64(srcHead.Seq), int64(srcHead.Seq), int64(srcHead.Seq)},
		migrate.KindCheckpoints:     {1, 1, 1},
	}
	for _, c := range rep.Counts {
		if w := want[c.Kind]; [3]int64{c.Source, c.Copied, c.Target} != w || !c.Same {
			t.Errorf("%s: source %d, copied %d, target %d, same %v; want %v and the same records", c.Kind, c.Source, c.Copied, c.Target, c.Same, w)
		}
	}
	if rep.ExpiredReplay != 1 {
		t.Errorf("expired replay entries left out: %d, want 1", rep.ExpiredReplay)
	}
	if rep.SourceHead != srcHead || rep.TargetHead != srcHead || !rep.TargetAudit.OK || rep.TargetAudit.HeadSeq != srcHead.Seq {
		t.Fatalf("heads: source %+v, target %+v, verify %+v; want %+v", rep.SourceHead, rep.TargetHead, rep.TargetAudit, srcHead)
	}
	if fileSum(t, path) != before {
		t.Fatal("the source file changed")
	}

	// A replica that opens the prefix now serves the copy through its
	// indexes.
	r := openEtcd(t, prefix)
	t.Run("leases and their indexes", func(t *testing.T) {
		srcCounts := must[map[leases.State]int64](t, "Counts")(src.Counts())
		if got := must[map[leases.State]int64](t, "Counts")(r.Counts()); fmt.Sprint(got) != fmt.Sprint(srcCounts) {
			t.Errorf("counts %v, want %v", got, srcCounts)
		}
		for _, c := range []struct {
			name string
			f    leases.Filter
		}{
			{"of an agent", leases.Filter{AgentID: "agent-1", Limit: 1000}},
			{"by attestation", leases.Filter{Lineage: "jti:https://issuer.test#jti-3", Limit: 1000}},
			{"by pod", leases.Filter{Lineage: "pod:pod-1", Limit: 1000}},
			{"pending", leases.Filter{State: leases.StatePending, Limit: 1000}},
			{"revoking", leases.Filter{State: leases.StateRevoking, Limit: 1000}},
			{"all", leases.Filter{Limit: 1000}},
		} {
			want := ids(must[[]*leases.Lease](t, "List")(src.List(bg, c.f)))
			got := ids(must[[]*leases.Lease](t, "List")(r.List(bg, c.f)))
			if len(want) == 0 || !slices.Equal(got, want) {
				t.Errorf("%s: %d leases %v, want %d %v", c.name, len(got), got, len(want), want)
			}
		}
		wantNext, _, _ := src.NextExpiry()
		if next, ok, err := r.NextExpiry(); err != nil || !ok || !next.Equal(wantNext) {
			t.Errorf("next expiry %s %v %v, want %s", next, ok, err, wantNext)
		}
		due := ids(must[[]*leases.Lease](t, "DueRevocations")(r.DueRevocations(now.Add(time.Hour), 100)))
		if slices.Sort(due); !slices.Equal(due, []string{sd.revoking.ID, sd.abandon.ID}) {
			t.Errorf("revocation queue %v, want %s and %s", due, sd.revoking.ID, sd.abandon.ID)
		}
		byHandle := map[bool]int{}
		check(t, "EachDueRevocation", r.EachDueRevocation(now.Add(time.Hour), func(hasHandle bool) bool {
			byHandle[hasHandle]++
			return false
		}, func(*leases.Lease) bool { return true }))
		if byHandle[true] != 1 || byHandle[false] != 1 {
			t.Errorf("lanes of the queue %v, want one by correlation id and one by handle", byHandle)
		}
		if l := must[*leases.Lease](t, "Get")(r.Get(bg, sd.released.ID)); l.State != leases.StateReleased || l.Handle != sd.released.Handle {
			t.Errorf("released lease %+v", l)
		}
		if n := must[int](t, "PruneEnded")(r.PruneEnded(bg, now, 10)); n != 1 {
			t.Errorf("pruned %d ended leases, want the 1 through the retention index", n)
		}
	})
	t.Run("grants", func(t *testing.T) {
		gs := r.Grants()
		for _, c := range []struct {
			name string
			f    grants.Filter
			want []string
		}{
			{"pending", grants.Filter{State: grants.StatePending}, []string{sd.pendingGrant.ID}},
			{"approved", grants.Filter{State: grants.StateApproved}, []string{sd.approved.ID}},
			{"of an agent", grants.Filter{AgentID: "agent-2"}, []string{sd.glass.ID}},
			{"awaiting review", grants.Filter{ReviewPending: true}, []string{sd.glass.ID}},
		} {
			var got []string
			for _, g := range must[[]*grants.Grant](t, "List")(gs.List(bg, c.f)) {
				got = append(got, g.ID)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("%s: %v, want %v", c.name, got, c.want)
			}
		}
		g := must[*grants.Grant](t, "Redeem")(gs.Redeem(bg, sd.approved.ID, "agent-1", sd.approved.Binding, now,
			audit.Entry{Kind: audit.KindGrantRedeem, Actor: audit.Actor{Type: audit.ActorAgent, ID: "agent-1"}}))
		if g.State != grants.StateRedeemed {
			t.Errorf("the copied approval redeems to %s", g.State)
		}
	})
	t.Run("agents, quarantine and signals", func(t *testing.T) {
		if g := r.Gate(sd.quarantinedAgentID); g.Quarantine == nil || g.Risk.Score <= 0 {
			t.Errorf("gate of the quarantined agent on a replica opened after the copy: %+v", g)
		}
		qs := must[[]*agents.Agent](t, "ListAgents")(r.ListAgents(bg, agents.Filter{Quarantined: true}))
		if len(qs) != 1 || qs[0].ID != sd.quarantinedAgentID {
			t.Errorf("quarantined agents %+v", qs)
		}
		all := must[[]*agents.Agent](t, "ListAgents")(r.ListAgents(bg, agents.Filter{}))
		var seen []string
		for _, a := range all {
			seen = append(seen, a.ID)
		}
		if !slices.Equal(seen, []string{"agent-2", "agent-1", "agent-0"}) {
			t.Errorf("agents by last seen %v", seen)
		}
		p := must[[]*agents.Signal](t, "PendingSignals")(r.PendingSignals(bg))
		if len(p) != 1 || p[0].ID != sd.signal.ID {
			t.Errorf("pending containments %+v", p)
		}
		if got := must[[]*agents.Signal](t, "ListSignals")(r.ListSignals(bg, agents.SignalFilter{AgentID: "agent-2"})); len(got) != 1 {
			t.Errorf("signals of agent-2: %d", len(got))
		}
		// The quarantine refuses a new lease of the agent on the target.
		l := leasetest.NewPending(now, sd.quarantinedAgentID, time.Hour)
		if err := r.CreatePending(bg, l); !errors.Is(err, &broker.Error{Code: broker.EQUARANTINED}) {
			t.Errorf("a lease of the quarantined agent: %v, want code %s", err, broker.EQUARANTINED)
		}
		released := must[[]*agents.Agent](t, "ReleaseDue")(r.ReleaseDue(bg, t0.Add(25*time.Hour)))
		if len(released) != 1 || released[0].ID != sd.quarantinedAgentID {
			t.Errorf("released at the copied release time: %+v", released)
		}
	})
	t.Run("job state and the replay cache", func(t *testing.T) {
		if st := must[*jobs.State](t, "JobState")(r.JobState(bg, "signing-key-rotation")); st.Runs != 3 || st.LastOutcome != "ok" {
			t.Errorf("job state %+v", st)
		}
		rc := r.ReplayCache(clock.NewFake(now))
		if err := rc.Consume(bg, sd.liveJTI, now.Add(time.Hour)); !errors.Is(err, attest.ErrReplay) {
			t.Errorf("a jti consumed before the copy: %v, want %v", err, attest.ErrReplay)
		}
		check(t, "Consume of the expired entry, not copied", rc.Consume(bg, sd.staleJTI, now.Add(time.Hour)))
	})
	t.Run("the audit log goes on from the copied head", func(t *testing.T) {
		check(t, "Audit", r.Audit(bg, now, audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}))
		v := must[audit.VerifyResult](t, "VerifyAudit")(r.VerifyAudit(bg))
		if !v.OK || v.HeadSeq <= srcHead.Seq {
			t.Errorf("after a new record: %+v", v)
		}
		recs := must[[]audit.Record](t, "ListAudit")(r.ListAudit(bg, audit.Filter{Kind: audit.KindCheckpoint}))
		if len(recs) != 1 || recs[0].Reason != "checkpoint" {
			t.Errorf("checkpoint records %+v", recs)
		}
	})
}

// lossy is a target whose import drops the first lease of every batch:
// what Copy's verification must catch.
type lossy struct{ migrate.Target }

func (l lossy) Import(ctx context.Context, b *migrate.Batch) error {
	cp := *b
	if len(cp.Leases) > 0 {
		cp.Leases = cp.Leases[1:]
	}
	return l.Target.Import(ctx, &cp)
}

// TestCopyRefuses: what Copy refuses writes nothing; a copy that lost a
// record does not verify.
func TestCopyRefuses(t *testing.T) {
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, src *bolt.Store, path string, dst *etcd.Store) (migrate.Source, migrate.Target)
		want    string
	}{
		{"a target that is not empty", func(t *testing.T, src *bolt.Store, _ string, dst *etcd.Store) (migrate.Source, migrate.Target) {
			check(t, "Audit", dst.Audit(bg, t0, audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}))
			return src, dst
		}, "the target is not empty: it holds 3 keys"},
		{"a source whose audit chain is broken", func(t *testing.T, src *bolt.Store, path string, dst *etcd.Store) (migrate.Source, migrate.Target) {
			src.Close()
			w, err := bolt.Open(path, bolt.Options{})
			check(t, "open", err)
			h := must[audit.Head](t, "AuditHead")(w.AuditHead(bg)) // a record in the database, not in the archive
			check(t, "Tamper", w.Tamper("audit", audit.SeqKey(h.Seq-1), func(v []byte) []byte {
				return []byte(strings.Replace(string(v), `"kind":"`, `"kind":"x`, 1))
			}))
			w.Close()
			s, err := bolt.Open(path, bolt.Options{ReadOnly: true})
			check(t, "open read-only", err)
			t.Cleanup(func() { s.Close() })
			return s, dst
		}, "the source's audit log does not verify"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, path, _ := openSource(t)
			dst, _ := openTarget(t)
			s, d := c.prepare(t, src, path, dst)
			keys := must[int64](t, "KeyCount")(dst.KeyCount(bg))
			_, err := migrate.Copy(bg, s, d, t0)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Copy: %v, want an error saying %q", err, c.want)
			}
			if after := must[int64](t, "KeyCount")(dst.KeyCount(bg)); after != keys {
				t.Fatalf("the refused copy wrote: %d keys before, %d after", keys, after)
			}
		})
	}

	t.Run("a copy that lost records does not verify", func(t *testing.T) {
		src, _, _ := openSource(t)
		dst, _ := openTarget(t)
		rep, err := migrate.Copy(bg, src, lossy{dst}, t0)
		check(t, "Copy", err)
		if rep.OK() {
			t.Fatal("a copy without two leases verified")
		}
		for _, c := range rep.Counts {
			if wantSame := c.Kind != migrate.KindLeases; c.Same != wantSame {
				t.Errorf("%s: same %v, want %v (copied %d, target %d)", c.Kind, c.Same, wantSame, c.Copied, c.Target)
			}
		}
	})

	t.Run("an import never overwrites", func(t *testing.T) {
		dst, _ := openTarget(t)
		l := leasetest.NewPending(t0, "agent-1", time.Hour)
		check(t, "Import", dst.Import(bg, &migrate.Batch{Leases: []*leases.Lease{l}}))
		changed := *l
		changed.AgentID = "someone-else"
		err := dst.Import(bg, &migrate.Batch{Leases: []*leases.Lease{&changed}})
		if err == nil || !strings.Contains(err.Error(), "lease "+l.ID+" exists already") {
			t.Fatalf("a second import of lease %s: %v", l.ID, err)
		}
		if got := must[*leases.Lease](t, "Get")(dst.Get(bg, l.ID)); got.AgentID != "agent-1" {
			t.Fatalf("the lease was overwritten: %+v", got)
		}
		h := audit.Head{Seq: 1}
		check(t, "Import head", dst.Import(bg, &migrate.Batch{Head: &h}))
		if err := dst.Import(bg, &migrate.Batch{Head: &audit.Head{Seq: 2}}); err == nil {
			t.Fatal("a second head was imported over the first")
		}
	})
}
