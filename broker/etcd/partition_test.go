package etcd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestPartitionedMinorityMemberStallsNothing: with one member cut off
// from the others (the quorum is the other two), a replica whose client
// reaches all three keeps answering at once and stays ready: a request
// the client sends to the cut-off member is refused there at once (it
// has no leader) and goes to another member, instead of waiting out the
// request timeout while readiness says no quorum answers.
func TestPartitionedMinorityMemberStallsNothing(t *testing.T) {
	c, err := etcdtest.StartProxied(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	// The client as valet makes it (storage.etcd).
	cfg := Config{Endpoints: c.Endpoints()}
	cfg.SetDefaults()
	client, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	const timeout = 5 * time.Second
	s, err := Open(context.Background(), Options{Client: client, Prefix: "/partition/", Logger: leasetest.QuietLog, RequestTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	victim := (max(c.Leader(), 0) + 1) % 3 // a follower
	c.Partition(victim)
	alone, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Members()[victim].ClientURL}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	// Until the cut-off member notices (an election timeout), requests it
	// gets wait for a leader it cannot reach: they are the stall that
	// cannot be helped.
	leasetest.Eventually(t, fmt.Sprintf("member %d refuses for want of a leader", victim), func() bool {
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), time.Second)
		defer cancel()
		_, err := alone.Txn(ctx).Then(clientv3.OpGet("x")).Commit()
		return rpctypes.Error(err) == rpctypes.ErrNoLeader
	})
	// A health check the member took before it noticed waits out its
	// timeout (2s) and may fail: readiness is judged on the checks after.
	noticed := time.Now()
	leasetest.Eventually(t, "the replica is ready on a health check made after the member noticed", func() bool {
		return time.Since(noticed) > 3*time.Second && s.Ready() == nil
	})
	// Long enough for several health checks (one a second) and for many
	// requests to meet the cut-off member.
	deadline := time.Now().Add(3 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		n++
		start := time.Now()
		if err := s.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
			t.Fatalf("write %d with a minority member cut off: %v", n, err)
		}
		if _, err := s.AuditHead(context.Background()); err != nil {
			t.Fatalf("read %d with a minority member cut off: %v", n, err)
		}
		if d := time.Since(start); d > timeout/2 {
			t.Fatalf("write and read %d took %s with a minority member cut off", n, d)
		}
		if err := s.Ready(); err != nil {
			t.Fatalf("not ready with a quorum answering: %v", err)
		}
	}
	c.Heal(victim)
	t.Logf("%d writes and reads with member %d cut off", n, victim)
}
