package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/leases/config"
)

// startReplicas starts two valet servers on one etcd prefix of a real
// 3-member cluster, with one configuration (the same issuer, data_dir
// and keys), as replicas behind a load balancer would run.
func startReplicas(t *testing.T) (a, b *testEnv) {
	t.Helper()
	c := etcdtest.StartT(t)
	a = newTestEnv(t)
	a.Config.Storage.Engine = engineEtcd
	a.Config.Storage.Etcd.Endpoints = c.Endpoints()
	a.Config.Storage.Etcd.Prefix = "/valet-replicas/"
	a.Config.Storage.Etcd.LeaderTTL = config.Duration(time.Second)
	cfgB := *a.Config
	cfgB.Storage.Etcd.Replica = "b"
	a.Config.Storage.Etcd.Replica = "a"
	b = &testEnv{t: t, Dir: a.Dir, Issuer: a.Issuer, Config: &cfgB}
	return a.Start(), b.Start()
}

// TestReplicasOnEtcd: what one replica commits, the other serves; exactly
// one replica leads; when the leader stops, the other takes over.
func TestReplicasOnEtcd(t *testing.T) {
	a, b := startReplicas(t)
	tok := a.Attest("agent-1", nil)
	m := a.Mint(tok, "demo")
	id := m["lease_id"].(string)
	r := b.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "active" {
		t.Fatalf("the other replica reads the lease: %d %s", r.Status, r.Body)
	}
	if r := b.Do("DELETE", "/v1/leases/"+id, tok, nil); r.Status != http.StatusOK && r.Status != http.StatusNoContent {
		t.Fatalf("release on the other replica: %d %s", r.Status, r.Body)
	}
	waitFor(t, "the release is seen on the first replica", func() bool {
		r := a.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
		s := r.JSON(t)["state"]
		return s == "released" || s == "revoking"
	})
	for _, e := range []*testEnv{a, b} {
		if r := e.Do("GET", "/readyz", "", nil); r.Status != http.StatusOK {
			t.Fatalf("readyz of a replica: %d %s", r.Status, r.Body)
		}
	}
	leaders := func() (n int, leader, follower *testEnv) {
		for _, e := range []*testEnv{a, b} {
			if e.Server.storage.leader.Leading() {
				n++
				leader = e
			} else {
				follower = e
			}
		}
		return n, leader, follower
	}
	waitFor(t, "one replica leads", func() bool { n, _, _ := leaders(); return n == 1 })
	_, leader, follower := leaders()
	checkpoints := func() int {
		r := follower.Do("GET", "/v1/audit?kind=audit.checkpoint&limit=1000", testOperatorToken, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("audit list: %d %s", r.Status, r.Body)
		}
		return len(r.JSON(t)["records"].([]any))
	}
	before := checkpoints()
	stopped := time.Now()
	leader.Server.Close()
	// A leader that stops cleanly still leads while the jobs that run at
	// shutdown run: the audit checkpoint is signed and recorded.
	if n := checkpoints(); n != before+1 {
		t.Fatalf("%d audit checkpoints after the leader stopped, want %d", n, before+1)
	}
	waitFor(t, "the other replica leads", func() bool { return follower.Server.storage.leader.Leading() })
	t.Logf("the follower led %s after the leader stopped", time.Since(stopped).Round(time.Millisecond))
	tok2 := follower.Attest("agent-2", nil)
	follower.Mint(tok2, "demo")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
