package etcd

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/storetest"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// cluster is the one embedded 3-member cluster of this package's tests;
// each test works under a prefix of its own.
var cluster *etcdtest.Cluster

func TestMain(m *testing.M) {
	dir, err := mkTemp()
	if err != nil {
		panic(err)
	}
	cluster, err = etcdtest.Start(dir, 3)
	if err != nil {
		panic(err)
	}
	code := m.Run()
	cluster.Stop()
	rmTemp(dir)
	os.Exit(code)
}

var prefixes atomic.Int64

// openReplica opens a store on its own client under prefix, closed when
// the test ends.
func openReplica(t *testing.T, prefix string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: prefix, Logger: leasetest.QuietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newPrefix() string { return fmt.Sprintf("/test-%d/", prefixes.Add(1)) }

func engine(s *Store) storetest.Engine {
	return storetest.Engine{Store: s, Grants: s.Grants(), Replay: func(clk clock.Clock) storetest.ReplayCache { return s.ReplayCache(clk) }}
}

// TestStoragePromises runs the suite every engine runs, with two replicas
// (two stores, each on its own client) on one prefix.
func TestStoragePromises(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Engine, storetest.Engine) {
		p := newPrefix()
		return engine(openReplica(t, p)), engine(openReplica(t, p))
	})
}
