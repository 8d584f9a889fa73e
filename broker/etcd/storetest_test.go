package etcd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/storetest"
	"github.com/valet-broker/valet/leases/audit"
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

// TestNestedPrefixesRefused: a valet whose prefix lies inside another's,
// or whose prefix holds another valet's keys, does not open: each would
// read the other's records as its own.
func TestNestedPrefixesRefused(t *testing.T) {
	outer := newPrefix()
	s := openReplica(t, outer)
	if err := s.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
		t.Fatal(err)
	}
	for _, inner := range []string{outer + "sub/", outer + "g/"} {
		_, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: inner, Logger: leasetest.QuietLog})
		if !errors.Is(err, ErrNestedPrefix) || !strings.Contains(err.Error(), "inside the prefix "+strconv.Quote(outer)) {
			t.Fatalf("Open(%q) inside %q: %v, want ErrNestedPrefix naming the outer prefix", inner, outer, err)
		}
	}
	// The other way round: a valet under a longer prefix first, then one
	// on the prefix that holds it.
	top := newPrefix()
	in := openReplica(t, top+"team-a/")
	if err := in.Audit(context.Background(), time.Now(), audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), Options{Client: cluster.ClientT(t), Prefix: top, Logger: leasetest.QuietLog})
	if !errors.Is(err, ErrNestedPrefix) || !strings.Contains(err.Error(), top+"team-a/") {
		t.Fatalf("Open(%q) over %q: %v, want ErrNestedPrefix naming a foreign key", top, top+"team-a/", err)
	}
	// Siblings do not nest.
	openReplica(t, top[:len(top)-1]+"-b/")
}
