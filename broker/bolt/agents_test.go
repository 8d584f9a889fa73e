package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

const halfLife = time.Hour

var detectorActor = audit.Actor{Type: audit.ActorDetector, ID: "source:siem"}

func newSignal(id string, at time.Time, subject agents.Subject, action agents.Action, agentIDs ...string) *agents.Signal {
	s := &agents.Signal{ID: id, Subject: subject, Severity: agents.SeverityHigh, Reason: "test " + id,
		Source: agents.Source{Kind: agents.SourceREST, Name: "siem"}, Action: action, ReceivedAt: at, Agents: agentIDs}
	if action.Revokes() {
		s.Containment = &agents.Containment{State: agents.ContainmentPending}
	}
	return s
}

func signalEntries(id string) (e, qe audit.Entry) {
	return audit.Entry{Kind: audit.KindSignal, Actor: detectorActor, Decision: audit.Allow, Reason: "signal " + id},
		audit.Entry{Kind: audit.KindAgentQuarantine, Actor: detectorActor, Decision: audit.Allow, Reason: "quarantined by signal " + id}
}

func mustRecordSignal(t *testing.T, s *Store, sig *agents.Signal, c broker.SignalChange) []string {
	t.Helper()
	e, qe := signalEntries(sig.ID)
	q, err := s.RecordSignal(context.Background(), sig, c, e, qe)
	if err != nil {
		t.Fatalf("RecordSignal(%s): %v", sig.ID, err)
	}
	return q
}

func TestAgentRecords(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "valet.db")
	s := mustOpenStoreAt(t, path)

	if _, err := s.GetAgent(ctx, "test/a"); !errors.Is(err, agents.ErrNotFound) {
		t.Fatalf("an unknown agent: %v, want ErrNotFound", err)
	}
	if g := s.Gate("test/a"); g.Quarantine != nil || g.Risk.Score != 0 {
		t.Fatalf("the gate of an unknown agent: %+v", g)
	}
	if err := s.See(ctx, []agents.Sighting{
		{AgentID: "test/a", First: t0, Last: t0.Add(time.Second), Roles: []string{"demo"}},
		{AgentID: "test/b", First: t0, Last: t0.Add(2 * time.Second), Roles: []string{"other"}},
	}); err != nil {
		t.Fatal(err)
	}
	a, err := s.GetAgent(ctx, "test/a")
	if err != nil || !a.FirstSeen.Equal(t0) || !slices.Equal(a.Roles, []string{"demo"}) {
		t.Fatalf("after a sighting: %+v, %v", a, err)
	}

	// A quarantining signal: risk, quarantine and audit in one go.
	sig := newSignal(leases.NewID(t0.Add(time.Minute)), t0.Add(time.Minute), agents.Subject{Kind: agents.SubjectAgent, ID: "test/a"},
		agents.ActionQuarantine, "test/a")
	q := &agents.Quarantine{Since: sig.ReceivedAt, Reason: "signal", By: detectorActor, SignalID: sig.ID}
	if got := mustRecordSignal(t, s, sig, broker.SignalChange{Points: 60, HalfLife: halfLife, Quarantine: q}); !slices.Equal(got, []string{"test/a"}) {
		t.Fatalf("quarantined %v, want [test/a]", got)
	}
	g := s.Gate("test/a")
	if !g.Quarantine.ActiveAt(sig.ReceivedAt) || g.Risk.Value(sig.ReceivedAt, halfLife) != 60 {
		t.Fatalf("gate after the signal: %+v", g)
	}
	if got := leasetest.CountAudit(t, s, audit.KindSignal); got != 1 {
		t.Errorf("%d signal records, want 1", got)
	}
	if got := leasetest.CountAudit(t, s, audit.KindAgentQuarantine); got != 1 {
		t.Errorf("%d quarantine records, want 1", got)
	}
	qd, err := s.ListAgents(ctx, agents.Filter{Quarantined: true})
	if err != nil || len(qd) != 1 || qd[0].ID != "test/a" {
		t.Fatalf("quarantined agents: %v, %v", qd, err)
	}
	pending, err := s.PendingSignals(ctx)
	if err != nil || len(pending) != 1 || pending[0].ID != sig.ID {
		t.Fatalf("pending signals: %v, %v", pending, err)
	}

	// The gate and the quarantine survive a restart.
	s.Close()
	s = mustOpenStoreAt(t, path)
	if g := s.Gate("test/a"); !g.Quarantine.ActiveAt(sig.ReceivedAt) {
		t.Fatalf("gate after reopening: %+v", g)
	}
	if _, err := s.Isolate(ctx, "test/a", agents.Quarantine{Since: t0.Add(2 * time.Minute), Reason: "again"}, audit.Entry{}); !errors.Is(err, agents.ErrState) {
		t.Fatalf("quarantining a quarantined agent: %v, want ErrState", err)
	}
	rel := agents.Release{At: t0.Add(3 * time.Minute), By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, Reason: "checked"}
	a, err = s.Release(ctx, "test/a", rel, audit.Entry{Kind: audit.KindAgentRelease, Actor: rel.By, Decision: audit.Allow, Reason: rel.Reason})
	if err != nil || a.Quarantine != nil || a.LastRelease == nil {
		t.Fatalf("release: %+v, %v", a, err)
	}
	if g := s.Gate("test/a"); g.Quarantine != nil || g.Risk.Value(rel.At, halfLife) == 0 {
		t.Fatalf("gate after release: %+v (the risk stays and decays)", g)
	}
	if qd, _ := s.ListAgents(ctx, agents.Filter{Quarantined: true}); len(qd) != 0 {
		t.Fatalf("quarantined agents after release: %v", qd)
	}
	if _, err := s.Release(ctx, "test/nobody", rel, audit.Entry{}); !errors.Is(err, agents.ErrNotFound) {
		t.Fatalf("releasing an unknown agent: %v", err)
	}
	leasetest.MustVerifyAudit(t, s)
}

func TestListAgentsBySeen(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	var sightings []agents.Sighting
	for i := range 25 {
		sightings = append(sightings, agents.Sighting{AgentID: fmt.Sprintf("test/agent-%02d", i), First: t0, Last: t0.Add(time.Duration(i) * time.Second)})
	}
	if err := s.See(ctx, sightings); err != nil {
		t.Fatal(err)
	}
	// Seeing one again moves it to the front.
	if err := s.See(ctx, []agents.Sighting{{AgentID: "test/agent-03", First: t0, Last: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	before := ""
	for {
		page, err := s.ListAgents(ctx, agents.Filter{Before: before, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page {
			got = append(got, a.ID)
		}
		if len(page) < 10 {
			break
		}
		before = page[len(page)-1].Cursor()
	}
	if len(got) != 25 || got[0] != "test/agent-03" || got[1] != "test/agent-24" || got[24] != "test/agent-00" {
		t.Fatalf("listing by last seen: %v", got)
	}
	if _, err := s.ListAgents(ctx, agents.Filter{Before: "not a cursor"}); err == nil {
		t.Fatal("a bad cursor was accepted")
	}
}

func TestAutomaticReleaseThroughTheIndex(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	for i, until := range []time.Duration{time.Hour, 2 * time.Hour, 0} {
		id := fmt.Sprintf("test/a%d", i)
		sig := newSignal(leases.NewID(t0), t0, agents.Subject{Kind: agents.SubjectAgent, ID: id}, agents.ActionQuarantine, id)
		q := &agents.Quarantine{Since: t0, Reason: "r", By: detectorActor, SignalID: sig.ID}
		if until > 0 {
			q.ReleaseAt = t0.Add(until)
		}
		mustRecordSignal(t, s, sig, broker.SignalChange{Points: 10, HalfLife: halfLife, Quarantine: q})
	}
	released, err := s.ReleaseDue(ctx, t0.Add(90*time.Minute))
	if err != nil || len(released) != 1 || released[0].ID != "test/a0" {
		t.Fatalf("ReleaseDue at 90m: %v, %v", released, err)
	}
	if g := s.Gate("test/a0"); g.Quarantine != nil {
		t.Fatalf("the released agent's gate: %+v", g)
	}
	released, err = s.ReleaseDue(ctx, t0.Add(100*24*time.Hour))
	if err != nil || len(released) != 1 || released[0].ID != "test/a1" {
		t.Fatalf("ReleaseDue much later: %v, %v (an operator's quarantine never ends on its own)", released, err)
	}
	if got := leasetest.CountAudit(t, s, audit.KindAgentRelease); got != 2 {
		t.Fatalf("%d release records, want 2", got)
	}
}

// TestEndLive: mass revocation ends exactly the live leases of the subject
// that existed when the signal came, in bounded transactions, across
// batches.
func TestEndLive(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	var ls []*leases.Lease
	mk := func(agent string, at time.Time, lineage leases.Lineage, role string) *leases.Lease {
		l := leasetest.NewPending(at, agent, time.Hour)
		l.Lineage, l.Role, l.Handle = lineage, role, "h"
		ls = append(ls, l)
		return l
	}
	pod := leases.Lineage{Issuer: "https://issuer", PodUID: "pod-1"}
	for i := range 250 {
		mk("test/a", t0.Add(time.Duration(i)*time.Millisecond), pod, "demo")
	}
	for i := range 30 {
		mk("test/b", t0.Add(time.Duration(i)*time.Millisecond), leases.Lineage{}, "other")
	}
	late := mk("test/a", t0.Add(time.Hour), pod, "demo") // minted after the signal
	leasetest.SeedActive(t, s, ls)
	ended := leasetest.MustEnd(t, s, ls[0].ID, leases.StateReleased, t0.Add(time.Second))

	cases := []struct {
		name   string
		filter leases.Filter
		want   int
	}{
		{"by lineage", leases.Filter{Lineage: "pod:pod-1"}, 249},
		{"by role over the state index", leases.Filter{Role: "other", State: leases.StateActive}, 30},
	}
	signalAt := t0.Add(time.Minute)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			total, batches, next := 0, 0, ""
			for {
				out, n, err := s.EndLive(ctx, "", c.filter, next, signalAt, 100, leases.StateRevoked, signalAt,
					audit.Entry{Kind: audit.KindRevoke, Actor: detectorActor, Reason: "signal"})
				if err != nil {
					t.Fatal(err)
				}
				total += len(out)
				batches++
				for _, l := range out {
					if l.State != leases.StateRevoking || l.EndReason != leases.StateRevoked {
						t.Fatalf("ended lease %s is %s/%s", l.ID, l.State, l.EndReason)
					}
				}
				if n == "" {
					break
				}
				next = n
			}
			if total != c.want || batches < c.want/100 {
				t.Fatalf("ended %d in %d batches, want %d", total, batches, c.want)
			}
		})
	}
	if got := leasetest.MustGet(t, s, late.ID); got.State != leases.StateActive {
		t.Errorf("the lease minted after the signal is %s, want active", got.State)
	}
	if got := leasetest.MustGet(t, s, ended.ID); got.State != leases.StateRevoking || got.EndReason != leases.StateReleased {
		t.Errorf("the lease released before is %s/%s, want it as it was", got.State, got.EndReason)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateActive: 1, leases.StateRevoking: 280})
	if got := leasetest.CountAudit(t, s, audit.KindRevoke); got != 279 {
		t.Errorf("%d revoke records, want one per lease ended (279)", got)
	}
	if _, _, err := s.EndLive(ctx, "", leases.Filter{Role: "demo"}, "", signalAt, 10, leases.StateRevoked, signalAt, audit.Entry{}); err == nil {
		t.Error("EndLive without an index to walk was accepted")
	}
}

func TestSignalsListingContainmentAndPruning(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	var ids []string
	for i := range 5 {
		at := t0.Add(time.Duration(i) * time.Hour)
		agent := "test/a"
		if i%2 == 1 {
			agent = "test/b"
		}
		action := agents.ActionAlert
		if i == 0 {
			action = agents.ActionRevoke
		}
		sig := newSignal(leases.NewID(at), at, agents.Subject{Kind: agents.SubjectAgent, ID: agent}, action, agent)
		mustRecordSignal(t, s, sig, broker.SignalChange{Points: 10, HalfLife: halfLife})
		ids = append(ids, sig.ID)
	}
	got, err := s.ListSignals(ctx, agents.SignalFilter{AgentID: "test/a"})
	if err != nil || len(got) != 3 || got[0].ID != ids[4] || got[2].ID != ids[0] {
		t.Fatalf("signals of test/a: %v, %v", got, err)
	}
	if got, _ := s.ListSignals(ctx, agents.SignalFilter{Source: "source:other"}); len(got) != 0 {
		t.Fatalf("signals of another source: %v", got)
	}
	// The pending one is not pruned until its containment is done.
	if n, err := s.PruneSignals(ctx, t0.Add(3*time.Hour), 100); err != nil || n != 2 {
		t.Fatalf("prune: %d, %v; want the 2 old ones that are not pending", n, err)
	}
	sig, err := s.Contained(ctx, ids[0], 7, t0.Add(4*time.Hour), audit.Entry{Kind: audit.KindSignalContained, Actor: audit.SystemActor, Reason: "7 ended"})
	if err != nil || sig.Containment.State != agents.ContainmentDone || sig.Containment.Ended != 7 {
		t.Fatalf("contained: %+v, %v", sig, err)
	}
	if p, _ := s.PendingSignals(ctx); len(p) != 0 {
		t.Fatalf("pending after containment: %v", p)
	}
	if n, err := s.PruneSignals(ctx, t0.Add(3*time.Hour), 100); err != nil || n != 1 {
		t.Fatalf("prune after containment: %d, %v", n, err)
	}
	if got, _ := s.ListSignals(ctx, agents.SignalFilter{AgentID: "test/a"}); len(got) != 1 {
		t.Fatalf("signals of test/a after pruning: %v", got)
	}
}

// TestDueRevocationsByLane: the queue's walk learns a lease's lane from
// the index without reading it, and still reads leases queued before the
// index held lanes.
func TestDueRevocationsByLane(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	withHandle := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	leasetest.MustEnd(t, s, withHandle.ID, leases.StateRevoked, t0)
	leasetest.MustCreate(t, s, leasetest.NewPending(t0, "b", time.Hour))
	recovered, err := s.RecoverPending(ctx, t0)
	if err != nil || len(recovered) != 1 {
		t.Fatal(recovered, err)
	}
	lanes := func() (handle, recovery []string) {
		for _, h := range []bool{true, false} {
			err := s.EachDueRevocation(t0, func(hasHandle bool) bool { return hasHandle == h }, func(l *leases.Lease) bool {
				if h {
					handle = append(handle, l.ID)
				} else {
					recovery = append(recovery, l.ID)
				}
				return true
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		return handle, recovery
	}
	h, r := lanes()
	if !slices.Equal(h, []string{withHandle.ID}) || !slices.Equal(r, []string{recovered[0].ID}) {
		t.Fatalf("by handle %v, by correlation id %v", h, r)
	}
	// An index written before it held lanes has nil values.
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRevoke)
		var keys [][]byte
		b.ForEach(func(k, _ []byte) error { keys = append(keys, append([]byte{}, k...)); return nil })
		for _, k := range keys {
			if err := b.Put(k, nil); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h, r = lanes()
	if !slices.Equal(h, []string{withHandle.ID}) || !slices.Equal(r, []string{recovered[0].ID}) {
		t.Fatalf("old index: by handle %v, by correlation id %v", h, r)
	}
}
