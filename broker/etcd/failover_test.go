package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestLeaderFailoverDuringMassRevocation: two replicas elect a leader,
// whose revocation queue works through a mass revocation. The leader dies
// (its etcd client is cut: no resignation, its session runs out) half-way;
// the other replica takes the lead and finishes. Every lease ends revoked
// with exactly one revocation record, the deposed leader's late writes are
// fenced, and the gap without a leader is measured.
func TestLeaderFailoverDuringMassRevocation(t *testing.T) {
	p := newPrefix()
	clientA, err := cluster.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer clientA.Close()
	sA, err := Open(context.Background(), Options{Client: clientA, Prefix: p, Logger: leasetest.QuietLog, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sA.Close()
	sB := openReplica(t, p)
	be := leasetest.NewFakeBackend(0)
	var revoked atomic.Int64
	revoke := func(ctx context.Context, l *leases.Lease) (string, error) {
		time.Sleep(2 * time.Millisecond) // a backend call takes a while
		n, err := be.Revoke(ctx, l)
		revoked.Add(1)
		return n, err
	}
	// The leader's duties as valet runs them: the queue, woken by the
	// watch of what other replicas queue.
	duties := func(s *Store) func(ctx context.Context) {
		return func(ctx context.Context) {
			q := leasetest.MustQueue(leases.RevocationQueueConfig{Store: s, Revoke: revoke, Clock: clock.Real{}, Logger: leasetest.QuietLog,
				Attempts: 5, Backoff: 50 * time.Millisecond, MaxBackoff: time.Second, Concurrency: 4, Timeout: 5 * time.Second})
			go s.WatchDuties(ctx, func(time.Time) {}, q.Kick)
			q.Kick()
			q.Run(ctx)
		}
	}

	const n = 240
	now := time.Now()
	var ls []*leases.Lease
	for i := range n {
		ls = append(ls, leasetest.NewPending(now.Add(time.Duration(i)*time.Microsecond), fmt.Sprintf("agent-%d", i%4), time.Hour))
	}
	leasetest.SeedActive(t, sB, ls)

	lA, lB := sA.NewLeader(1, "a"), sB.NewLeader(1, "b")
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	doneA := make(chan struct{})
	go func() { defer close(doneA); lA.Run(ctxA, duties(sA)) }()
	leasetest.Eventually(t, "replica a leads", lA.Leading)
	ctxB, cancelB := context.WithCancel(context.Background())
	doneB := make(chan struct{})
	go func() { defer close(doneB); lB.Run(ctxB, duties(sB)) }()
	t.Cleanup(func() { cancelB(); <-doneB })

	// The mass revocation: every lease ended through the agent index, on
	// the follower (as an operator's request would).
	for a := range 4 {
		before := ""
		for {
			_, next, err := sB.EndLive(context.Background(), "", leases.Filter{AgentID: fmt.Sprintf("agent-%d", a)}, before, now.Add(time.Hour), 500,
				leases.StateRevoked, time.Now(), audit.Entry{Kind: audit.KindRevoke, Actor: audit.SystemActor, Reason: "mass revocation"})
			if err != nil {
				t.Fatal(err)
			}
			if next == "" {
				break
			}
			before = next
		}
	}
	leasetest.Eventually(t, "the leader revoked a quarter", func() bool { return revoked.Load() >= n/4 })
	if lB.Leading() {
		t.Fatal("both replicas lead")
	}
	killed := time.Now()
	clientA.Close() // the leader dies: no resignation
	leasetest.Eventually(t, "replica b leads", lB.Leading)
	gap := time.Since(killed)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := sB.Counts()
		if err != nil {
			t.Fatal(err)
		}
		if c[leases.StateRevoked] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new leader did not finish the mass revocation: %v", c)
		}
		time.Sleep(20 * time.Millisecond)
	}
	finished := time.Since(killed)
	for _, l := range ls {
		if got := leasetest.MustGet(t, sB, l.ID); got.State != leases.StateRevoked {
			t.Fatalf("lease %s is %s", l.ID, got.State)
		}
		if kinds := leasetest.AuditKinds(t, sB, l.ID); len(kinds) != 3 || kinds[2] != audit.KindRevoked {
			t.Fatalf("audit of lease %s: %v, want mint, revoke and one revoked", l.ID, kinds)
		}
	}
	leasetest.MustVerifyAudit(t, sB)
	// A write of the deposed leader's duty is refused.
	cancelA()
	<-doneA
	if _, err := sA.ExpireDue(context.Background(), time.Now(), 10); err == nil {
		t.Fatal("the deposed leader's expiry write succeeded")
	}
	_, err = sB.ExpireDue(LeaderDuty(context.Background()), time.Now(), 10)
	if err != nil {
		t.Fatalf("the leader's expiry write: %v", err)
	}
	t.Logf("leader failover during a mass revocation of %d leases: a new leader after %s (session TTL 1s), the revocation finished %s after the kill",
		n, gap.Round(time.Millisecond), finished.Round(time.Millisecond))
}

// TestFencedWritesOfADeposedLeader: a replica that lost the lead (its
// election key gone) cannot land a duty's write, while a follower's
// agent-facing writes go on.
func TestFencedWritesOfADeposedLeader(t *testing.T) {
	p := newPrefix()
	s := openReplica(t, p)
	l := s.NewLeader(1, "a")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, func(ctx context.Context) { <-ctx.Done() }) }()
	leasetest.Eventually(t, "the replica leads", l.Leading)
	lease := leasetest.MustActivate(t, s, leasetest.NewPending(time.Now().Add(-time.Hour), "agent", time.Minute))
	// Someone deletes the election key behind the leader's back (as its
	// session's expiry would).
	key, _ := s.fence()
	if _, err := s.client.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	_, err := s.ExpireDue(context.Background(), time.Now(), 10)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("ExpireDue after the leader key was deleted: %v, want ErrFenced", err)
	}
	if got := leasetest.MustGet(t, s, lease.ID); got.State != leases.StateActive {
		t.Fatalf("a fenced expiry changed the lease to %s", got.State)
	}
	if l.Leading() {
		t.Fatal("the replica still says it leads after a fenced write failed")
	}
	// An agent's release is not a duty: it is written.
	leasetest.MustEnd(t, s, lease.ID, leases.StateReleased, time.Now())
	cancel()
	<-done
}

// TestQuarantineOnAnotherReplicaRefusesNewLeases: a quarantine committed
// on one replica refuses a lease created on another, whatever that
// replica's copy of the gates says at that moment: the lease's
// transaction reads the gate key.
func TestQuarantineOnAnotherReplicaRefusesNewLeases(t *testing.T) {
	p := newPrefix()
	a, b := openReplica(t, p), openReplica(t, p)
	now := time.Now()
	q := agents.Quarantine{Since: now, Reason: "exfiltration", By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}
	if _, err := a.Isolate(context.Background(), "agent-q", q, audit.Entry{Kind: audit.KindAgentQuarantine, Actor: q.By}); err != nil {
		t.Fatal(err)
	}
	// b's copy may not have the quarantine yet; forget it to be sure.
	b.gates.Set("agent-q", agents.Gate{})
	l := leasetest.NewPending(now.Add(time.Second), "agent-q", time.Minute)
	err := b.CreatePending(context.Background(), l)
	var be *broker.Error
	if !errors.As(err, &be) || be.Code != broker.EQUARANTINED {
		t.Fatalf("CreatePending for a quarantined agent: %v, want EQUARANTINED", err)
	}
	if _, err := b.Get(context.Background(), l.ID); !errors.Is(err, leases.ErrNotFound) {
		t.Fatalf("the refused lease was stored: %v", err)
	}
	if g := b.Gate("agent-q"); g.Quarantine == nil {
		t.Fatal("the replica's gate did not take the quarantine it read")
	}
	other := leasetest.NewPending(now.Add(time.Second), "agent-ok", time.Minute)
	if err := b.CreatePending(context.Background(), other); err != nil {
		t.Fatalf("CreatePending for another agent: %v", err)
	}
}

// TestLeaderStopsWhileEtcdIsAway: a replica waiting for the lead stops at
// once when asked, even while no etcd member answers. (A cancelled
// campaign makes etcd's election resign with the client's own context,
// which retries for as long as etcd is away: a replica stopping during an
// etcd outage waited for it forever.)
func TestLeaderStopsWhileEtcdIsAway(t *testing.T) {
	c := etcdtest.StartT(t)
	p := newPrefix()
	open := func(name string) *Leader {
		s, err := Open(context.Background(), Options{Client: c.ClientT(t), Prefix: p, Logger: leasetest.QuietLog, RequestTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s.NewLeader(1, name)
	}
	lA, lB := open("a"), open("b")
	ctxA, cancelA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { defer close(doneA); lA.Run(ctxA, func(ctx context.Context) { <-ctx.Done() }) }()
	leasetest.Eventually(t, "replica a leads", lA.Leading)
	ctxB, cancelB := context.WithCancel(context.Background())
	doneB := make(chan struct{})
	go func() { defer close(doneB); lB.Run(ctxB, func(ctx context.Context) { <-ctx.Done() }) }()
	cl := c.ClientT(t)
	leasetest.Eventually(t, "replica b campaigns", func() bool {
		r, err := cl.Get(context.Background(), p+"leader/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && r.Count == 2
	})
	var wg sync.WaitGroup
	for i := range c.Members() {
		wg.Go(func() { c.StopMember(i) })
	}
	wg.Wait()
	for _, r := range []struct {
		name   string
		cancel context.CancelFunc
		done   chan struct{}
	}{{"waiting for the lead", cancelB, doneB}, {"leading", cancelA, doneA}} {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("a replica %s did not stop within 10s while etcd was away", r.name)
		}
	}
}
