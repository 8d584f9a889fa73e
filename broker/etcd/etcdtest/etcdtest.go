// Package etcdtest starts a real etcd cluster of three members inside the
// test process (go.etcd.io/etcd/server/v3/embed) on free loopback ports,
// with etcd's default limits (128 operations and 1.5 MiB per
// transaction), and can stop and restart each member, so tests of the
// etcd engine run against what production runs. Nothing outside tests
// and the local HA setup imports it: the server module stays out of the
// valet binary.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running cluster of embedded members.
type Cluster struct {
	dir     string
	members []*Member
	initial string
}

// Member is one etcd member.
type Member struct {
	Name       string
	ClientURL  string
	peerURL    string
	dir        string
	mu         sync.Mutex
	etcd       *embed.Etcd
	hasStarted bool
}

// Start starts a cluster of n members under dir and returns once every
// member serves clients. It fails with a message when a member cannot
// start.
func Start(dir string, n int) (*Cluster, error) {
	c := &Cluster{dir: dir}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), dir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
		m.ClientURL, m.peerURL = "http://"+freeAddr(), "http://"+freeAddr()
		initial = append(initial, m.Name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	c.initial = strings.Join(initial, ",")
	errs := make(chan error, n)
	for _, m := range c.members {
		go func() { errs <- c.start(m, "new") }()
	}
	for range n {
		if err := <-errs; err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// StartT starts a 3-member cluster in t.TempDir() and stops it when the
// test ends.
func StartT(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := Start(tb.TempDir(), 3)
	if err != nil {
		tb.Fatalf("start an embedded etcd cluster: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (c *Cluster) start(m *Member, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cu, _ := url.Parse(m.ClientURL)
	pu, _ := url.Parse(m.peerURL)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = "valet-test"
	cfg.ClusterState = state
	cfg.Logger = "zap"
	cfg.LogLevel = "panic" // closing members logs errors on purpose
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("member %s did not become ready within 60s", m.Name)
	}
	m.mu.Lock()
	m.etcd, m.hasStarted = e, true
	m.mu.Unlock()
	return nil
}

// Endpoints are the client URLs of every member.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Members are the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

// Client returns a client of every member.
func (c *Cluster) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second})
}

// ClientT is Client closed when the test ends.
func (c *Cluster) ClientT(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cl, err := c.Client()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cl.Close() })
	return cl
}

// StopMember stops member i as a crash would leave it (its data stays).
func (c *Cluster) StopMember(i int) {
	m := c.members[i]
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e != nil {
		e.Server.HardStop()
		e.Close()
	}
}

// RestartMember starts member i again from its data.
func (c *Cluster) RestartMember(i int) error {
	return c.start(c.members[i], "existing")
}

// Leader returns the index of the member that leads the raft group, or
// -1.
func (c *Cluster) Leader() int {
	for i, m := range c.members {
		m.mu.Lock()
		e := m.etcd
		m.mu.Unlock()
		if e != nil && e.Server.Leader() == e.Server.MemberID() {
			return i
		}
	}
	return -1
}

// Stop stops every member.
func (c *Cluster) Stop() {
	for i := range c.members {
		c.StopMember(i)
	}
}
