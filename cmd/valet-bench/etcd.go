package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The rows for several replicas on etcd. The cluster is three etcd server
// processes (the binary `make etcd` builds), not members inside the bench:
// their CPU is then theirs, counted apart from the load driver's, and each
// runs with etcd's defaults (a WAL fsync before every commit is
// acknowledged, 100 ms heartbeat, 1 s election timeout), as bbolt's fsync
// per commit does on the other side of the comparison.

// etcdPrefix is the bench replicas' storage.etcd.prefix.
const etcdPrefix = "/valet-bench/"

// etcdCluster is a running three-member etcd cluster on loopback.
type etcdCluster struct {
	dir     string
	members []*etcdMember
	once    sync.Once
}

// etcdMember is one etcd server process.
type etcdMember struct {
	name   string
	client string // its client URL
	cmd    *exec.Cmd
	done   chan struct{}
}

// etcdBinary returns path, building the etcd server there with `make
// etcd` first when it is absent.
func etcdBinary(path string) string {
	if _, err := os.Stat(path); err == nil {
		return path
	}
	fmt.Fprintf(os.Stderr, "valet-bench: %s is absent; building it with make etcd\n", path)
	cmd := exec.Command("make", "etcd")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fatal("make etcd: %v (the etcd rows need the etcd server; -etcd names it)", err)
	}
	if _, err := os.Stat(path); err != nil {
		fatal("make etcd did not build %s: %v", path, err)
	}
	return path
}

// startEtcd starts three members of bin with etcd's default settings on
// free loopback ports, their data in a new temporary directory, and
// returns once every member reports itself healthy.
func startEtcd(bin string) *etcdCluster {
	dir, err := os.MkdirTemp("", "valet-bench-etcd")
	must(err)
	c := &etcdCluster{dir: dir}
	cleanups = append(cleanups, c.stop)
	var initial, peers []string
	for i := range 3 {
		m := &etcdMember{name: fmt.Sprintf("m%d", i), client: "http://" + freeAddr(), done: make(chan struct{})}
		peers = append(peers, "http://"+freeAddr())
		initial = append(initial, m.name+"="+peers[i])
		c.members = append(c.members, m)
	}
	for i, m := range c.members {
		logf, err := os.Create(filepath.Join(dir, m.name+".log"))
		must(err)
		m.cmd = exec.Command(bin, "--name", m.name, "--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "valet-bench",
			"--initial-cluster-state", "new", "--log-level", "error")
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		must(m.cmd.Start())
		go func() { m.cmd.Wait(); logf.Close(); close(m.done) }()
	}
	deadline := time.Now().Add(time.Minute)
	for _, m := range c.members {
		for !healthy(m.client) {
			select {
			case <-m.done:
				log, _ := os.ReadFile(filepath.Join(dir, m.name+".log"))
				fatal("etcd member %s exited at start: %s", m.name, log)
			default:
			}
			if time.Now().After(deadline) {
				fatal("etcd member %s was not healthy within a minute", m.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

// healthy reports whether the member at client answers /health with
// health true (it has a leader and commits).
func healthy(client string) bool {
	resp, err := http.Get(client + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b [64]byte
	n, _ := resp.Body.Read(b[:])
	return resp.StatusCode == 200 && strings.Contains(string(b[:n]), `"health":"true"`)
}

// stop stops every member (SIGTERM, then SIGKILL after 10s) and removes
// their data; it may be called again.
func (c *etcdCluster) stop() {
	c.once.Do(func() {
		for _, m := range c.members {
			if m.cmd != nil && m.cmd.Process != nil {
				_ = m.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, m := range c.members {
			if m.cmd == nil || m.cmd.Process == nil {
				continue
			}
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
				_ = m.cmd.Process.Kill()
				<-m.done
			}
		}
		os.RemoveAll(c.dir)
	})
}

func (c *etcdCluster) endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.client)
	}
	return out
}

// cpuTime is the members' user+system CPU time so far, together.
func (c *etcdCluster) cpuTime() time.Duration {
	var t time.Duration
	for _, m := range c.members {
		t += procCPU(m.cmd.Process.Pid)
	}
	return t
}

// etcdCounters are the cluster's commit counters at one moment.
type etcdCounters struct {
	proposals float64 // raft proposals committed (member m0's count)
	fsyncs    float64 // WAL fsyncs, summed over the members
	fsyncSecs float64 // the time they took, summed
	// committed are the replicas' transactions that committed: every
	// one writes its replica's marker key (<prefix>w/<replica>), so the
	// markers' versions count them.
	committed float64
}

func (c *etcdCluster) counters(cl *clientv3.Client) etcdCounters {
	var out etcdCounters
	resp, err := cl.Get(context.Background(), etcdPrefix+"w/", clientv3.WithPrefix())
	must(err)
	for _, kv := range resp.Kvs {
		out.committed += float64(kv.Version)
	}
	for i, m := range c.members {
		v := scrape(m.client + "/metrics")
		if i == 0 {
			out.proposals = v["etcd_server_proposals_committed_total"]
		}
		out.fsyncs += v["etcd_disk_wal_fsync_duration_seconds_count"]
		out.fsyncSecs += v["etcd_disk_wal_fsync_duration_seconds_sum"]
	}
	return out
}

// client connects to every member.
func (c *etcdCluster) client() *clientv3.Client {
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 5 * time.Second})
	must(err)
	return cl
}

// etcdStorage is the storage section of a replica named replica.
func etcdStorage(c *etcdCluster, replica string, leaderTTL time.Duration) string {
	return fmt.Sprintf("storage:\n  engine: etcd\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n    leader_ttl: %s\n    replica: %s\n",
		strings.Join(c.endpoints(), ", "), etcdPrefix, leaderTTL, replica)
}

// replicas starts n `valet serve` replicas of e on c, one after the
// other (the first writes the shared keys into e's directory), each
// with its own configuration file: e's config, the storage section and
// extra.
func (b *bench) replicas(e *env, c *etcdCluster, n int, leaderTTL time.Duration, extra string) []*server {
	base, err := os.ReadFile(filepath.Join(e.dir, "config.yaml"))
	must(err)
	var out []*server
	for i := range n {
		name := string(rune('a' + i))
		file := "config-" + name + ".yaml"
		must(os.WriteFile(filepath.Join(e.dir, file), []byte(string(base)+etcdStorage(c, name, leaderTTL)+extra), 0o600))
		s := b.serveConfig(e, file)
		cleanups = append(cleanups, s.stop)
		out = append(out, s)
	}
	return out
}

func hostsOf(ss []*server) []string {
	var out []string
	for _, s := range ss {
		u, err := url.Parse(s.url)
		must(err)
		out = append(out, u.Host)
	}
	return out
}

// etcdMintResult is one measured run of mints on etcd.
type etcdMintResult struct {
	loadResult               // serverCPU: every replica's CPU per mint, together
	etcdCPU    time.Duration // the three members' CPU per mint, together
	proposals  float64       // raft proposals committed per second
	committed  float64       // the replicas' transactions committed per second
	fsyncs     float64       // WAL fsyncs per second, each member's on average
	fsyncTime  time.Duration // the mean time of one WAL fsync
}

// etcdMintLoad runs c connections of agents re-presenting their
// attestation for d (after a one-second warm-up) against n replicas on a
// new cluster, the connections dealt to the replicas round-robin, with
// the crypto ceiling measured just before and after as the mint table
// does.
func (b *bench) etcdMintLoad(bin string, n, c int, d time.Duration) etcdMintResult {
	cl := startEtcd(bin)
	defer cl.stop()
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	ss := b.replicas(e, cl, n, 10*time.Second, "")
	defer func() {
		for _, s := range ss {
			s.stop()
		}
	}()
	hosts := hostsOf(ss)
	body := []byte(`{"role":"bench","ttl":"15m"}`)
	toks := e.attestations(benchAgents, benchAgents, false)
	reqs := make([][][]byte, len(hosts))
	for h, host := range hosts {
		for _, tok := range toks {
			reqs[h] = append(reqs[h], request(host, "/v1/credentials", tok, body))
		}
	}
	next := func(conn, i int) []byte { return reqs[conn%len(hosts)][(conn+i*c)%benchAgents] }
	valetCPU := func() time.Duration {
		var t time.Duration
		for _, s := range ss {
			t += s.cpuTime()
		}
		return t
	}
	ec := cl.client()
	defer ec.Close()
	runLoadOn(hosts, c, time.Second, 201, next)
	before := cryptoCeiling(2 * time.Second)
	k0 := cl.counters(ec)
	v0, e0, self0, busy0 := valetCPU(), cl.cpuTime(), selfCPU(), machineBusy()
	r := runLoadOn(hosts, c, d, 201, next)
	v1, e1, self1, busy1 := valetCPU(), cl.cpuTime(), selfCPU(), machineBusy()
	k1 := cl.counters(ec)
	r.serverCPU = (v1 - v0) / time.Duration(r.n)
	r.driverCPU = (self1 - self0) / time.Duration(r.n)
	capacity := float64(runtime.NumCPU()) * r.elapsed.Seconds()
	r.others = max(0, ((busy1-busy0)-(v1-v0)-(e1-e0)-(self1-self0)).Seconds()/capacity)
	r.ceilingBefore, r.ceilingAfter = before, cryptoCeiling(2*time.Second)
	return etcdMintResult{loadResult: r, etcdCPU: (e1 - e0) / time.Duration(r.n),
		proposals: (k1.proposals - k0.proposals) / r.elapsed.Seconds(),
		committed: (k1.committed - k0.committed) / r.elapsed.Seconds(),
		fsyncs:    (k1.fsyncs - k0.fsyncs) / float64(len(cl.members)) / r.elapsed.Seconds(),
		fsyncTime: time.Duration(float64(time.Second) * (k1.fsyncSecs - k0.fsyncSecs) / max(1, k1.fsyncs-k0.fsyncs))}
}

// etcdTable measures, at each concurrency, one valet on bbolt, one
// replica on a three-member etcd and two replicas on it, and prints one
// row per run.
func (b *bench) etcdTable(bin string, levels []int, d time.Duration) {
	fmt.Printf("mints on etcd (jwt backend, agents re-presenting their attestation, %d agents; etcd: three local\n", benchAgents)
	fmt.Println("  etcd processes (deploy/etcd/bin/etcd, default settings: a WAL fsync per commit), outside the")
	fmt.Println("  bench process, their CPU counted apart as \"etcd\"; two replicas share one prefix and take the")
	fmt.Println("  connections round-robin; txn/s: valet's etcd transactions committed per second (its replicas'")
	fmt.Println("  marker key's versions); mint/txn: mints per committed transaction; lost/s: raft proposals")
	fmt.Println("  committed per second that were no such transaction, mostly ones whose compare failed (another")
	fmt.Println("  replica moved the audit head first; valet retries them); fsync/s: WAL fsyncs per second of each")
	fmt.Println("  member, fsync: their mean time; valet, etcd, driver: CPU per mint; others: the machine's share")
	fmt.Println("  used by anything else)")
	fmt.Printf("  %-30s %8s %8s %8s %8s %6s %8s %8s %7s %6s %7s %7s %7s %7s %8s\n", "setup", "mints/s", "p50", "p99", "ceiling", "× ceil",
		"valet", "etcd", "driver", "others", "txn/s", "mint/txn", "lost/s", "fsync/s", "fsync")
	us := func(t time.Duration) string { return t.Round(time.Microsecond).String() }
	ms := func(t time.Duration) string { return t.Round(10 * time.Microsecond).String() }
	for _, c := range levels {
		a := b.mintLoad(c, d, false, false)
		fmt.Printf("  %-30s %8.0f %8s %8s %8.0f %6.2f %8s %8s %7s %5.0f%% %7s %7s %7s %7s %8s\n", fmt.Sprintf("%d conns, one valet on bbolt", c),
			a.rate, ms(a.p50), ms(a.p99), a.ceiling(), a.rate/a.ceiling(), us(a.serverCPU), "-", us(a.driverCPU), 100*a.others, "-", "-", "-", "-", "-")
		for _, n := range []int{1, 2} {
			r := b.etcdMintLoad(bin, n, c, d)
			what := "one valet on etcd"
			if n == 2 {
				what = "two valets on etcd"
			}
			fmt.Printf("  %-30s %8.0f %8s %8s %8.0f %6.2f %8s %8s %7s %5.0f%% %7.0f %7.2f %7.0f %7.0f %8s\n", fmt.Sprintf("%d conns, %s", c, what),
				r.rate, ms(r.p50), ms(r.p99), r.ceiling(), r.rate/r.ceiling(), us(r.serverCPU), us(r.etcdCPU), us(r.driverCPU),
				100*r.others, r.committed, r.rate/r.committed, max(0, r.proposals-r.committed), r.fsyncs, ms(r.fsyncTime))
		}
	}
	fmt.Println()
}

// failoverResult is what one leader kill measured.
type failoverResult struct {
	ttl       time.Duration
	newLeader time.Duration // from the kill to the other replica's valet_leader 1
	gap       time.Duration // the longest time any agent went without a successful mint
	before    time.Duration // the same before the kill, for reference
	retried   int64         // mint attempts that failed and were retried on the other replica
	mints     int
}

// failoverAgents and failoverPace are the light load of a failover run:
// each agent mints, then waits failoverPace.
const (
	failoverAgents = 16
	failoverPace   = 50 * time.Millisecond
)

// failover starts two replicas with leader_ttl ttl under a light load,
// SIGKILLs the one that leads and measures the time until the other
// leads and the longest time an agent, retrying on the other replica
// when its own fails, went without a successful mint.
func (b *bench) failover(bin string, ttl time.Duration) failoverResult {
	cl := startEtcd(bin)
	defer cl.stop()
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	ss := b.replicas(e, cl, 2, ttl, "")
	defer func() {
		for _, s := range ss {
			s.stop()
		}
	}()
	lead := -1
	for deadline := time.Now().Add(ttl + 30*time.Second); lead < 0; {
		for i, s := range ss {
			if s.metrics()["valet_leader"] == 1 {
				lead = i
			}
		}
		if lead < 0 && time.Now().After(deadline) {
			fatal("failover: no replica leads %s after start", ttl+30*time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	hosts := hostsOf(ss)
	toks := e.attestations(failoverAgents, failoverAgents, false)
	body := []byte(`{"role":"bench","ttl":"15m"}`)
	stop := make(chan struct{})
	var retried atomic.Int64
	times := make([][]time.Time, failoverAgents)
	var wg sync.WaitGroup
	for a := range failoverAgents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := a % len(hosts)
			var cn *conn
			defer func() {
				if cn != nil {
					cn.c.Close()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if cn == nil {
					var err error
					if cn, err = dial(hosts[h]); err != nil {
						// A dead replica refuses at once: try the other.
						retried.Add(1)
						h = (h + 1) % len(hosts)
						time.Sleep(time.Millisecond)
						continue
					}
				}
				st, err := cn.roundTrip(request(hosts[h], "/v1/credentials", toks[a], body))
				if err != nil || st != 201 {
					retried.Add(1)
					cn.c.Close()
					cn = nil
					h = (h + 1) % len(hosts)
					continue
				}
				times[a] = append(times[a], time.Now())
				time.Sleep(failoverPace)
			}
		}()
	}
	time.Sleep(3 * time.Second)
	killed := time.Now()
	must(ss[lead].cmd.Process.Kill())
	other := ss[1-lead]
	var newLeader time.Duration
	for deadline := killed.Add(ttl + 30*time.Second); newLeader == 0; {
		if other.metrics()["valet_leader"] == 1 {
			newLeader = time.Since(killed)
		} else if time.Now().After(deadline) {
			fatal("failover: replica %d did not lead within %s of the kill", 1-lead, ttl+30*time.Second)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	r := failoverResult{ttl: ttl, newLeader: newLeader, retried: retried.Load()}
	for _, ts := range times {
		r.mints += len(ts)
		if len(ts) == 0 || ts[len(ts)-1].Before(killed) {
			fatal("failover: an agent minted nothing after the kill")
		}
		for i := 1; i < len(ts); i++ {
			g := ts[i].Sub(ts[i-1])
			if ts[i].Before(killed) {
				r.before = max(r.before, g)
			} else {
				r.gap = max(r.gap, g)
			}
		}
	}
	return r
}

func printFailover(rs []failoverResult) {
	fmt.Printf("leader failover: two replicas on etcd, %d agents each minting every %s (half on each replica; an agent\n", failoverAgents, failoverPace)
	fmt.Println("  whose replica fails retries at once on the other), the leading replica SIGKILLed; new leader: until the")
	fmt.Println("  other replica's valet_leader is 1; longest gap: the longest any agent went between two successful mints")
	fmt.Printf("  %-12s %12s %16s %22s %9s %7s\n", "leader_ttl", "new leader", "longest gap", "(before the kill)", "retried", "mints")
	for _, r := range rs {
		fmt.Printf("  %-12s %12s %16s %22s %9d %7d\n", r.ttl, r.newLeader.Round(time.Millisecond), r.gap.Round(time.Millisecond),
			r.before.Round(time.Millisecond), r.retried, r.mints)
	}
	fmt.Println()
}

// footprint is what lies under a prefix: keys and their bytes (key and
// value), in total and by family (the key's first one or two segments
// after the prefix: l, li/e, a/r, ...).
type footprint struct {
	keys, bytes int64
	families    map[string][2]int64 // family -> keys, bytes
}

// indexed are the families whose second segment names the index.
var indexed = map[string]bool{"li": true, "gi": true, "agi": true, "si": true, "a": true, "r": true}

func family(key string) string {
	segs := strings.SplitN(key, "/", 3)
	if len(segs) >= 2 && indexed[segs[0]] {
		return segs[0] + "/" + segs[1]
	}
	return segs[0]
}

// footprintOf reads every key under prefix, a page of 2,000 at a time.
func footprintOf(cl *clientv3.Client, prefix string) footprint {
	f := footprint{families: map[string][2]int64{}}
	ctx := context.Background()
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		resp, err := cl.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(2000))
		must(err)
		for _, kv := range resp.Kvs {
			n := int64(len(kv.Key) + len(kv.Value))
			f.keys++
			f.bytes += n
			fam := family(strings.TrimPrefix(string(kv.Key), prefix))
			v := f.families[fam]
			f.families[fam] = [2]int64{v[0] + 1, v[1] + n}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return f
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// dbSize is the largest backend database size of the members (etcd's
// status DbSize: the file, history and free pages included) and its size
// in use.
func dbSize(cl *clientv3.Client, c *etcdCluster) (size, inUse int64) {
	for _, ep := range c.endpoints() {
		st, err := cl.Status(context.Background(), ep)
		must(err)
		size, inUse = max(size, st.DbSize), max(inUse, st.DbSizeInUse)
	}
	return size, inUse
}

// footprintResult is the keys and bytes under the prefix before, after
// minting n leases, and after releasing and pruning them.
type footprintResult struct {
	n                              int
	base, minted, pruned           footprint
	db0, db1, db2, db3             int64
	inUse0, inUse1, inUse2, inUse3 int64
}

// leaseFootprint mints n leases through one replica (agents re-presenting
// their attestation), reads what lies under the prefix, then releases
// every lease, waits for the revocation queue to empty, runs housekeeping
// with leases.retention 0 and reads again.
func (b *bench) leaseFootprint(bin string, n int) footprintResult {
	c := startEtcd(bin)
	defer c.stop()
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	ss := b.replicas(e, c, 1, 10*time.Second, "leases:\n  retention: 0s\n")
	s := ss[0]
	defer s.stop()
	cl := c.client()
	defer cl.Close()
	host := hostsOf(ss)[0]
	toks := e.attestations(benchAgents, benchAgents, false)
	body := []byte(`{"role":"bench","ttl":"15m"}`)

	r := footprintResult{n: n}
	r.base = footprintOf(cl, etcdPrefix)
	r.db0, r.inUse0 = dbSize(cl, c)
	// Mint n leases from 32 connections, keeping each lease's place and
	// its agent.
	locs := make([]string, n)
	each := func(do func(k int, cn *conn)) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cn, err := dial(host)
				must(err)
				defer cn.c.Close()
				for k := int(next.Add(1)) - 1; k < n; k = int(next.Add(1)) - 1 {
					do(k, cn)
				}
			}()
		}
		wg.Wait()
	}
	each(func(k int, cn *conn) {
		st, loc, err := cn.roundTripLocation(request(host, "/v1/credentials", toks[k%benchAgents], body))
		if err != nil || st != 201 || loc == "" {
			fatal("footprint: mint %d: status %d, location %q, %v", k, st, loc, err)
		}
		locs[k] = loc
	})
	r.minted = footprintOf(cl, etcdPrefix)
	r.db1, r.inUse1 = dbSize(cl, c)
	each(func(k int, cn *conn) {
		st, err := cn.roundTrip(requestMethod("DELETE", host, locs[k], toks[k%benchAgents], nil))
		if err != nil || st != 200 {
			fatal("footprint: release %s: status %d, %v", locs[k], st, err)
		}
	})
	for deadline := time.Now().Add(2 * time.Minute); ; {
		m := s.metrics()
		if v, ok := m["valet_revocation_queue_depth"]; ok && v == 0 {
			break
		}
		if time.Now().After(deadline) {
			fatal("footprint: the revocation queue did not empty within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	req, _ := http.NewRequest("POST", s.url+"/v1/jobs/housekeeping/run", nil)
	req.Header.Set("Authorization", "Bearer "+benchOperatorToken)
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	must(err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		fatal("footprint: housekeeping run: status %d", resp.StatusCode)
	}
	r.pruned = footprintOf(cl, etcdPrefix)
	r.db2, r.inUse2 = dbSize(cl, c)
	// What a compacted, defragmented cluster keeps (README: run etcd
	// with --auto-compaction-retention and defragment regularly).
	ctx := context.Background()
	rev, err := cl.Get(ctx, etcdPrefix, clientv3.WithCountOnly())
	must(err)
	_, err = cl.Compact(ctx, rev.Header.Revision, clientv3.WithCompactPhysical())
	must(err)
	for _, ep := range c.endpoints() {
		_, err := cl.Defragment(ctx, ep)
		must(err)
	}
	r.db3, r.inUse3 = dbSize(cl, c)
	return r
}

func printFootprint(r footprintResult) {
	n := float64(r.n)
	fmt.Printf("etcd keys and bytes per lease: %d jwt leases minted through one replica, then all released and\n", r.n)
	fmt.Println("  pruned (leases.retention 0, housekeeping run); bytes are key+value under the prefix, the audit")
	fmt.Println("  records with them (never pruned on etcd); db: etcd's status DbSize (history and free pages")
	fmt.Println("  included; etcd's default: no compaction) and its size in use, growth per lease from before")
	fmt.Println("  the first mint; last, after compacting to the current revision and defragmenting every member")
	row := func(what string, f footprint, db, inUse int64) {
		fmt.Printf("  %-22s %6.2f keys %8.0f bytes   db +%6.0f bytes (in use +%6.0f)   by family:", what,
			float64(f.keys-r.base.keys)/n, float64(f.bytes-r.base.bytes)/n, float64(db-r.db0)/n, float64(inUse-r.inUse0)/n)
		fams := make([]string, 0, len(f.families))
		for k := range f.families {
			fams = append(fams, k)
		}
		sort.Slice(fams, func(i, j int) bool { return f.families[fams[i]][1] > f.families[fams[j]][1] })
		for _, k := range fams {
			d := [2]int64{f.families[k][0] - r.base.families[k][0], f.families[k][1] - r.base.families[k][1]}
			if d[0] == 0 { // the same keys, rewritten (the marker, job state)
				continue
			}
			fmt.Printf(" %s %.2f/%.0fB", k, float64(d[0])/n, float64(d[1])/n)
		}
		fmt.Println()
	}
	row("after minting", r.minted, r.db1, r.inUse1)
	row("after release, prune", r.pruned, r.db2, r.inUse2)
	fmt.Printf("  %-22s %34s db +%6.0f bytes (in use +%6.0f)\n", "compacted, defragmented", "", float64(r.db3-r.db0)/n, float64(r.inUse3-r.inUse0)/n)
	fmt.Println()
}

// etcdSection runs the etcd rows the flags ask for: the mint table at
// levels, a failover run for each leader_ttl in ttls, and the footprint
// of n leases (empty or 0 skips each).
func (b *bench) etcdSection(bin, levels, ttls string, n int, d time.Duration) {
	if levels != "" {
		b.etcdTable(bin, parseLevels("-etcd-concurrency", levels), d)
	}
	if ttls != "" {
		var rs []failoverResult
		for _, f := range strings.Split(ttls, ",") {
			ttl, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil || ttl < time.Second || ttl%time.Second != 0 {
				fatal("bad -etcd-failover %q: each leader_ttl is a whole number of seconds, at least 1s", ttls)
			}
			rs = append(rs, b.failover(bin, ttl))
		}
		printFailover(rs)
	}
	if n > 0 {
		printFootprint(b.leaseFootprint(bin, n))
	}
}
