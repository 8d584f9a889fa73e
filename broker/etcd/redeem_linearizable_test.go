package etcd

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestRedeemIsLinearizableUnderMemberFailures: clients redeem and read
// grants through three replicas while the etcd member that leads the raft
// group is stopped (as a crash) and started again; porcupine checks that
// the history is linearizable: every grant is redeemed at most once, a
// failed redeem wrote nothing, and a read sees every redeem that returned
// before it.
func TestRedeemIsLinearizableUnderMemberFailures(t *testing.T) {
	p := newPrefix()
	var replicas []*Store
	for range 3 {
		s, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: p, Logger: leasetest.QuietLog, RequestTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		replicas = append(replicas, s)
	}
	const nGrants, clients, maxOps = 200, 9, 400
	var ids []string
	for i := range nGrants {
		now := leasetest.T0.Add(time.Duration(i) * time.Millisecond)
		r := grants.Request{AgentID: "agent", Role: "elevated", TTL: time.Minute}
		g := &grants.Grant{ID: leases.NewID(now), Kind: grants.KindApproval, AgentID: "agent", Role: "elevated", TTL: time.Minute,
			Binding: grants.Binding(r), State: grants.StateApproved, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), RedeemBy: now.Add(time.Hour)}
		if err := replicas[0].Grants().Create(context.Background(), g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, g.ID)
	}
	binding := grants.Binding(grants.Request{AgentID: "agent", Role: "elevated", TTL: time.Minute})

	start := time.Now()
	stop := make(chan struct{})
	var mu sync.Mutex
	var history []porcupine.Operation
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := replicas[c%len(replicas)].Grants()
			for range maxOps {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(rand.N(5)) * time.Millisecond):
				}
				in := etcdtest.RedeemInput{Grant: ids[rand.N(len(ids))], Read: rand.N(3) == 0}
				call := time.Since(start).Nanoseconds()
				var out etcdtest.RedeemOutput
				if in.Read {
					g, err := s.Get(context.Background(), in.Grant)
					if err != nil {
						continue // a read that failed says nothing
					}
					out.Redeemed = g.State == grants.StateRedeemed
				} else {
					_, err := s.Redeem(context.Background(), in.Grant, "agent", binding, leasetest.T0.Add(time.Minute), audit.Entry{Kind: audit.KindGrantRedeem})
					switch {
					case err == nil:
						out.Won = true
					case errors.Is(err, grants.ErrState):
						out.Refused = true
					default:
						// The store answers with an error only when
						// nothing was written (an unknown outcome is
						// found out before it answers).
						out.Failed = true
					}
				}
				ret := time.Since(start).Nanoseconds()
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}()
	}
	// Crash the raft leader while the clients run, and bring it back.
	time.Sleep(50 * time.Millisecond)
	victim := cluster.Leader()
	if victim < 0 {
		victim = 0
	}
	crashed := time.Since(start)
	cluster.StopMember(victim)
	t.Logf("member %d stopped in %s", victim, time.Since(start)-crashed)
	time.Sleep(1500 * time.Millisecond)
	restarted := time.Since(start)
	if err := cluster.RestartMember(victim); err != nil {
		t.Fatalf("restart member %d: %v", victim, err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	res, info := porcupine.CheckOperationsVerbose(etcdtest.RedeemModel, history, time.Minute)
	if res != porcupine.Ok {
		t.Fatalf("the redeem history of %d operations is not linearizable (%v): %v", len(history), res, info.PartialLinearizationsOperations())
	}
	wins, failed, during := 0, 0, 0
	for _, op := range history {
		if op.Output.(etcdtest.RedeemOutput).Won {
			wins++
		}
		if op.Output.(etcdtest.RedeemOutput).Failed {
			failed++
		}
		if op.Call < restarted.Nanoseconds() && op.Return > crashed.Nanoseconds() {
			during++
		}
	}
	if during == 0 {
		t.Fatal("no operation overlapped the member's outage: the test did not test what it says")
	}
	if wins > nGrants {
		t.Fatalf("%d redeems won for %d grants", wins, nGrants)
	}
	if n := countKind(t, replicas[1], audit.KindGrantRedeem); n != wins {
		t.Fatalf("%d redeem records for %d redeems that won", n, wins)
	}
	leasetest.MustVerifyAudit(t, replicas[2])
	t.Logf("%d operations (%d overlapping the outage of member %d), %d redeems won, %d failed", len(history), during, victim, wins, failed)
}

func countKind(t *testing.T, s *Store, kind string) int {
	t.Helper()
	return leasetest.CountAudit(t, s, kind)
}
