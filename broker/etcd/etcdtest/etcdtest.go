// Package etcdtest starts a real etcd cluster of three members inside the
// test process (go.etcd.io/etcd/server/v3/embed) on free loopback ports,
// with etcd's default limits (128 operations and 1.5 MiB per
// transaction), and can stop and restart each member, so tests of the
// etcd engine run against what production runs. Nothing outside tests
// and the local HA setup imports it: the server module stays out of the
// valet binary.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/valet-broker/valet/backends/freeport"
)

// Cluster is a running cluster of embedded members.
type Cluster struct {
	dir     string
	members []*Member
	initial string
	// peers is the network of peer proxies (StartProxied), nil without.
	peers *peerNet
}

// Member is one etcd member.
type Member struct {
	Name      string
	ClientURL string
	// peerURL is the advertised peer URL (the proxy's, behind one);
	// listenPeer is where the member listens.
	peerURL    string
	listenPeer string
	dir        string
	mu         sync.Mutex
	etcd       *embed.Etcd
	id         string
	hasStarted bool
	proxy      *peerProxy
}

// Start starts a cluster of n members under dir and returns once every
// member serves clients. It fails with a message when a member cannot
// start.
func Start(dir string, n int) (*Cluster, error) {
	return start(dir, n, false)
}

// StartProxied is Start with a TCP proxy in front of each member's peer
// port, so that Partition can cut a member off from the others while
// its clients still reach it.
func StartProxied(dir string, n int) (*Cluster, error) {
	return start(dir, n, true)
}

// start starts the cluster, again on other ports when a member found its
// port taken: freeAddr's port is free when it returns, but another test's
// listener or outgoing connection (the kernel hands out the same range)
// can take it before the member binds it.
func start(dir string, n int, proxied bool) (*Cluster, error) {
	for attempt := 1; ; attempt++ {
		c, err := startOnce(dir, n, proxied)
		if err == nil || attempt == 5 || !portTaken(err) {
			return c, err
		}
		for i := range n {
			if err := os.RemoveAll(filepath.Join(dir, fmt.Sprintf("m%d", i))); err != nil {
				return nil, err
			}
		}
	}
}

// portTaken reports whether err is a listener's "address already in
// use" (embed may not wrap the system call's error).
func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func startOnce(dir string, n int, proxied bool) (*Cluster, error) {
	c := &Cluster{dir: dir}
	if proxied {
		c.peers = &peerNet{cut: map[string]bool{}}
	}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), dir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
		m.ClientURL, m.listenPeer = "http://"+freeAddr(), "http://"+freeAddr()
		m.peerURL = m.listenPeer
		if proxied {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				c.Stop()
				return nil, err
			}
			m.peerURL = "http://" + ln.Addr().String()
			m.proxy = newPeerProxy(c.peers, ln, strings.TrimPrefix(m.listenPeer, "http://"), m.memberID)
		}
		initial = append(initial, m.Name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	c.initial = strings.Join(initial, ",")
	errs := make(chan error, n)
	for _, m := range c.members {
		go func() { errs <- c.start(m, "new") }()
	}
	// Every member's start ends (started or failed) before a failure
	// stops those that started: none is left starting in a directory
	// that a new attempt reuses.
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.Stop()
		return nil, first
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

// freeAddr returns a loopback address whose port is free now, below the
// kernel's ephemeral range (backends/freeport); a variable, so a test can
// hand out a taken one.
var freeAddr = func() string {
	addr, err := freeport.Addr()
	if err != nil {
		panic(err)
	}
	return addr
}

func (c *Cluster) start(m *Member, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cu, _ := url.Parse(m.ClientURL)
	pu, _ := url.Parse(m.peerURL)
	lpu, _ := url.Parse(m.listenPeer)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*lpu}, []url.URL{*pu}
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
	m.id = e.Server.MemberID().String()
	m.mu.Unlock()
	return nil
}

// memberID is the member's id as etcd writes it (hex), "" before it
// first started.
func (m *Member) memberID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id
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

// Partition cuts member i off from the other members: the connections
// between its peer port and theirs are closed, in both directions, and
// new ones are closed as they come, until Heal. Its clients still reach
// it (a member in a minority: it answers nothing that needs a quorum).
// It needs a cluster started with StartProxied.
func (c *Cluster) Partition(i int) { c.setCut(i, true) }

// Heal ends the partition of member i.
func (c *Cluster) Heal(i int) { c.setCut(i, false) }

func (c *Cluster) setCut(i int, cut bool) {
	if c.peers == nil {
		panic("etcdtest: Partition needs a cluster started with StartProxied")
	}
	c.peers.setCut(c.members[i].memberID(), cut)
}

// Stop stops every member (and the proxies).
func (c *Cluster) Stop() {
	for i := range c.members {
		c.StopMember(i)
	}
	for _, m := range c.members {
		if m.proxy != nil {
			m.proxy.close()
		}
	}
}
