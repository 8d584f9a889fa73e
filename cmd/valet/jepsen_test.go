package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/valet-broker/valet/broker/etcd"
	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// This file is a Jepsen-style test of valet's replicas: real `valet serve`
// processes (the binary the other end-to-end tests build, without the
// race detector, so three of them and a racing test process fit on two
// cores) on one configuration, one data_dir and one etcd prefix, over a
// real 3-member etcd cluster in the test process whose peer ports sit
// behind proxies. Agents mint, renew, release and redeem approved grants
// through every replica, as behind a load balancer, while a nemesis
// kills replicas and etcd members and partitions a member. Afterwards
// the history and the store are checked against valet's promises. One
// configuration means one replica name (storage.etcd.replica defaults to
// the host's name): the replicas share it, as replicas on one host do.
// Everything it needs is built (go) or runs in the test process (etcd),
// so it never skips.

// jepsenConfig is the storage section the replicas share. leader_ttl 1s
// and request_timeout 2s keep failovers and stalls short enough to
// measure several in a few minutes.
const jepsenConfig = `
storage:
  engine: etcd
  etcd:
    endpoints: [%s]
    prefix: /valet-jepsen/
    leader_ttl: 1s
    request_timeout: 2s
`

// jepsenReplica is one running `valet serve`.
type jepsenReplica struct {
	slot int
	p    *proc
	url  string
}

// jepsenCluster is the etcd cluster and the valet replicas on it.
type jepsenCluster struct {
	t      *testing.T
	etcd   *etcdtest.Cluster
	env    *testEnv
	config string
	begin  time.Time

	mu       sync.Mutex
	replicas []*jepsenReplica // by slot; a restarted replica replaces its slot
	leads    []leadEvent      // every "this replica leads" logged, in order
	logs     [][]string       // the last log lines of each slot
}

// leadEvent is a replica's log line saying it became the leader.
type leadEvent struct {
	r  *jepsenReplica
	at time.Time
}

func newJepsenCluster(t *testing.T, n int) *jepsenCluster {
	t.Helper()
	ec, err := etcdtest.StartProxied(t.TempDir(), 3)
	if err != nil {
		t.Fatalf("start an embedded etcd cluster: %v", err)
	}
	t.Cleanup(ec.Stop)
	eps := strings.Join(ec.Endpoints(), ", ")
	e := newTestEnvYAML(t, func(y string) string {
		// A short mint_timeout shortens the grace after which the leader
		// recovers what a killed replica left mid-mint (twice it plus a
		// minute).
		y = strings.Replace(y, "\nlimits:\n", "\nlimits:\n  mint_timeout: 1s\n", 1)
		return y + fmt.Sprintf(jepsenConfig, eps)
	})
	c := &jepsenCluster{t: t, etcd: ec, env: e, config: filepath.Join(e.Dir, "config.yaml"), begin: time.Now(),
		replicas: make([]*jepsenReplica, n), logs: make([][]string, n)}
	// The replicas start together, as a deployment's pods do.
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); c.start(i) }()
	}
	wg.Wait()
	for i, r := range c.replicas {
		if r == nil {
			t.Fatalf("replica %d did not start", i)
		}
	}
	return c
}

// start starts the replica of slot i (again); on failure the test has
// failed and the slot keeps what it had.
func (c *jepsenCluster) start(i int) {
	r := &jepsenReplica{slot: i}
	onLine := func(line []byte) {
		var l struct {
			Msg   string `json:"msg"`
			Level string `json:"level"`
		}
		_ = json.Unmarshal(line, &l)
		leads := strings.HasPrefix(l.Msg, "this replica leads")
		c.mu.Lock()
		defer c.mu.Unlock()
		if leads {
			c.leads = append(c.leads, leadEvent{r: r, at: time.Now()})
		}
		if leads || l.Level == "ERROR" || l.Level == "WARN" {
			c.logs[i] = append(c.logs[i], string(line))
			if len(c.logs[i]) > 40 {
				c.logs[i] = c.logs[i][len(c.logs[i])-40:]
			}
		}
	}
	// startServeConfig fails the test (and ends its goroutine) when the
	// process does not start; the deferred send reports that as nil.
	done := make(chan *proc, 1)
	go func() {
		var p *proc
		defer func() { done <- p }()
		p = startServeConfig(c.t, c.config, onLine)
	}()
	p := <-done
	if p == nil {
		return
	}
	c.mu.Lock()
	r.p, r.url = p, p.url
	c.replicas[i] = r
	c.mu.Unlock()
}

// urls are the replicas' addresses as a load balancer knows them (a
// killed replica's stays until it is started again).
func (c *jepsenCluster) urls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.replicas))
	for i, r := range c.replicas {
		out[i] = r.url
	}
	return out
}

// leader is the slot of the replica that leads now, from the log: the
// last replica that said it leads and has not been killed since; -1.
func (c *jepsenCluster) leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for j := len(c.leads) - 1; j >= 0; j-- {
		r := c.leads[j].r
		if c.replicas[r.slot] != r || r.p == nil {
			continue
		}
		select {
		case <-r.p.done:
		default:
			return r.slot
		}
	}
	return -1
}

// leadSince returns the first lead event after t of a slot other than
// not, if any.
func (c *jepsenCluster) leadSince(t time.Time, not int) (leadEvent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range c.leads {
		if ev.at.After(t) && ev.r.slot != not {
			return ev, true
		}
	}
	return leadEvent{}, false
}

// kill SIGKILLs the replica of slot i.
func (c *jepsenCluster) kill(i int) {
	c.mu.Lock()
	r := c.replicas[i]
	c.mu.Unlock()
	r.p.kill()
}

// dumpLogs writes the replicas' last warnings and errors to the test log
// when the test failed.
func (c *jepsenCluster) dumpLogs() {
	if !c.t.Failed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, lines := range c.logs {
		c.t.Logf("replica %d, last warnings and errors:\n%s", i, strings.Join(lines, "\n"))
	}
}

// attempt is one HTTP request to one replica.
type attempt struct {
	call, ret time.Duration // since the test began
	status    int           // 0: no answer
	body      []byte
}

// answered reports whether the replica answered with something other
// than a server error: an outcome the client knows.
func (a attempt) answered() bool { return a.status != 0 && a.status < 500 }

// lbClient sends requests to the replicas as a load balancer would: to
// one replica, and on no answer or a 5xx to the next, until one answers
// or the deadline passes.
type lbClient struct {
	c      *jepsenCluster
	http   *http.Client
	next   atomic.Int64
	stalls *stallLog
}

// do sends the request and returns every attempt, the last one answered
// unless the deadline (45s) passed.
func (lb *lbClient) do(method, path, bearer string, body any) []attempt {
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	var out []attempt
	first := time.Now()
	deadline := first.Add(45 * time.Second)
	for time.Now().Before(deadline) {
		urls := lb.c.urls()
		u := urls[int(lb.next.Add(1))%len(urls)]
		a := attempt{call: time.Since(lb.c.begin)}
		req, _ := http.NewRequest(method, u+path, bytes.NewReader(raw))
		if raw != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := lb.http.Do(req)
		if err == nil {
			a.body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				a.status = resp.StatusCode
			}
		}
		a.ret = time.Since(lb.c.begin)
		out = append(out, a)
		if a.answered() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lb.stalls != nil {
		lb.stalls.add(first, time.Now())
	}
	return out
}

// last is the final attempt.
func last(as []attempt) attempt { return as[len(as)-1] }

// stallLog keeps how long each agent request took, from its first
// attempt to its answer, to find the longest stall around a fault.
type stallLog struct {
	mu   sync.Mutex
	reqs []stall
}

type stall struct {
	from, to time.Time
}

func (s *stallLog) add(from, to time.Time) {
	s.mu.Lock()
	s.reqs = append(s.reqs, stall{from, to})
	s.mu.Unlock()
}

// worst is the longest of the requests keep selects, and how many it
// selected.
func (s *stallLog) worst(keep func(stall) bool) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w time.Duration
	n := 0
	for _, r := range s.reqs {
		if keep(r) {
			n++
			w = max(w, r.to.Sub(r.from))
		}
	}
	return w, n
}

// underWay selects the requests under way at some time in [from, to].
func underWay(from, to time.Time) func(stall) bool {
	return func(r stall) bool { return !r.to.Before(from) && !r.from.After(to) }
}

// startedIn selects the requests that started in [from, to].
func startedIn(from, to time.Time) func(stall) bool {
	return func(r stall) bool { return !r.from.Before(from) && !r.from.After(to) }
}

// jepsenLease is a lease whose credential reached an agent.
type jepsenLease struct {
	id, agent, token string
	short            bool // minted with a TTL that runs out during the test
	grant            string
	released         bool // the agent's release was answered 200
}

// jepsenHistory is what the agents saw.
type jepsenHistory struct {
	mu     sync.Mutex
	leases map[string]*jepsenLease
	redeem []porcupine.Operation
	// redeemWins are the leases the 201 answers to redeems of each
	// grant named; grantIDs every grant approved.
	redeemWins                              map[string][]string
	grantIDs                                []string
	mints, renews, releases, grantsApproved int
}

// jepsenMinted is the lease of agent sub that a 201 answer (to a mint or a
// redeem of grant) carries, with its access token; for a renewal's
// answer, only the token.
func jepsenMinted(body []byte, sub, grant string) *jepsenLease {
	var m struct {
		LeaseID    string `json:"lease_id"`
		Credential struct {
			AccessToken string `json:"access_token"`
		} `json:"credential"`
	}
	_ = json.Unmarshal(body, &m)
	return &jepsenLease{id: m.LeaseID, agent: "test/" + sub, token: m.Credential.AccessToken, grant: grant}
}

func (h *jepsenHistory) addLease(l *jepsenLease) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.leases[l.id] != nil {
		panic("two 201 answers carry lease " + l.id)
	}
	h.leases[l.id] = l
}

// TestJepsenReplicas: three valet replicas on a 3-member etcd cluster,
// agents working through all of them, a nemesis that kills and
// partitions; then every promise is checked and the failover gap of a
// killed leader is measured.
func TestJepsenReplicas(t *testing.T) {
	c := newJepsenCluster(t, 3)
	defer c.dumpLogs()
	stalls := &stallLog{}
	lb := &lbClient{c: c, http: &http.Client{Timeout: 5 * time.Second}, stalls: stalls}
	opLB := &lbClient{c: c, http: &http.Client{Timeout: 5 * time.Second}}
	h := &jepsenHistory{leases: map[string]*jepsenLease{}, redeemWins: map[string][]string{}}
	waitFor(t, "a replica leads", func() bool { return c.leader() >= 0 })

	stop := make(chan struct{})
	stopAgents := sync.OnceFunc(func() { close(stop) })
	var agents sync.WaitGroup
	// A fault that fails the test (t.Fatal) returns through here: the
	// agents stop before the test ends, so none reports a failure after
	// it (which panics the test binary and hides the first failure).
	defer func() { stopAgents(); agents.Wait() }()
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		failures.Add(1)
		t.Errorf(format, args...)
	}
	const nAgents = 6
	for a := range nAgents {
		agents.Add(1)
		go func() {
			defer agents.Done()
			runAgent(c, lb, opLB, h, fmt.Sprintf("jepsen-%d", a), a, stop, fail)
		}()
	}

	// The nemesis: one fault per round, with the agents at work before,
	// during and after it. hold lets the agents work for a while, with a
	// fault in place or between faults: how long a fault lasts is part of
	// the schedule, not a wait for something to happen.
	hold := func() { time.Sleep(1500 * time.Millisecond) }
	// A fault returns when the cut-off etcd member noticed it has no
	// leader (zero for the others): requests that reach it before then
	// wait out request_timeout; those after, not.
	rounds := []struct {
		name  string
		fault func() (noticed time.Time)
	}{
		{"SIGKILL a replica that does not lead, start it again", func() time.Time {
			victim := (c.leader() + 1) % 3
			c.kill(victim)
			hold()
			c.start(victim)
			return time.Time{}
		}},
		{"crash the etcd member that leads the raft group, start it again", func() time.Time {
			m := max(c.etcd.Leader(), 0)
			c.etcd.StopMember(m)
			hold()
			if err := c.etcd.RestartMember(m); err != nil {
				t.Fatalf("restart etcd member %d: %v", m, err)
			}
			return time.Time{}
		}},
		{"rotate the signing key on the leader (the others read the shared key file)", func() time.Time {
			// Not a fault: the leader's rotation job, run by an operator,
			// writes the key file every replica must follow.
			rotateSigningKey(t, c)
			hold()
			return time.Time{}
		}},
		{"partition the etcd member that leads the raft group, heal it", func() time.Time {
			m := max(c.etcd.Leader(), 0)
			c.etcd.Partition(m)
			noticed := mustBeCutOff(t, c.etcd, m)
			hold()
			c.etcd.Heal(m)
			return noticed
		}},
		{"partition a follower member, heal it", func() time.Time {
			m := (max(c.etcd.Leader(), 0) + 1) % 3
			c.etcd.Partition(m)
			noticed := mustBeCutOff(t, c.etcd, m)
			hold()
			c.etcd.Heal(m)
			return noticed
		}},
	}
	type window struct {
		name              string
		from, noticed, to time.Time
	}
	var windows []window
	for _, r := range rounds {
		hold()
		from := time.Now()
		noticed := r.fault()
		windows = append(windows, window{r.name, from, noticed, time.Now()})
	}

	// The leader's kill, during a mass revocation.
	hold()
	massIDs := seedMassAgent(t, c, lb, h)
	leader := c.leader()
	if leader < 0 {
		t.Fatal("no replica leads before the leader's kill")
	}
	follower := (leader + 1) % 3
	revoked := make(chan attempt, 1)
	go func() {
		// An operator revokes everything of the agent through a replica
		// that does not lead, while the leader dies.
		fl := &lbClient{c: c, http: &http.Client{Timeout: 30 * time.Second}}
		fl.next.Store(int64(follower - 1))
		revoked <- last(fl.do("POST", "/v1/leases/revoke", testOperatorToken, map[string]any{"agent_id": "test/jepsen-mass", "reason": "mass revocation under a leader kill"}))
	}()
	killed := time.Now()
	c.kill(leader)
	ev, ok := waitLead(c, killed, leader, 30*time.Second)
	if !ok {
		t.Fatal("no other replica led within 30s of the leader's kill")
	}
	gap := ev.at.Sub(killed)
	if r := <-revoked; r.status != http.StatusOK {
		t.Fatalf("the mass revocation during the leader's kill: %d %s", r.status, r.body)
	}
	hold()
	c.start(leader)
	hold()
	stopAgents()
	agents.Wait()
	// The longest wait of an agent for an answer (retrying on the other
	// replicas) among the requests under way during each fault.
	for _, w := range windows {
		worst, n := stalls.worst(underWay(w.from, w.to))
		t.Logf("%s: the longest agent request under way took %s (%d requests)", w.name, worst.Round(time.Millisecond), n)
		if !w.noticed.IsZero() {
			worst, n := stalls.worst(startedIn(w.noticed, w.to))
			t.Logf("%s: once the member noticed (%s after the cut), the longest agent request took %s (%d requests)",
				w.name, w.noticed.Sub(w.from).Round(time.Millisecond), worst.Round(time.Millisecond), n)
		}
	}
	worst, n := stalls.worst(underWay(killed, ev.at))
	t.Logf("failover: SIGKILL of the leader replica %d; replica %d led %s later (leader_ttl 1s); the longest agent request under way took %s (%d requests, retried on the other replicas)",
		leader, ev.r.slot, gap.Round(time.Millisecond), worst.Round(time.Millisecond), n)
	if failures.Load() > 0 {
		t.FailNow()
	}

	checkJepsen(t, c, h, massIDs)
}

// rotateSigningKey runs the signing-key-rotation job on the leader
// replica (jobs run only there), retrying while the lead moves.
func rotateSigningKey(t *testing.T, c *jepsenCluster) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	waitFor(t, "the leader rotates the signing key", func() bool {
		l := c.leader()
		if l < 0 {
			return false
		}
		req, _ := http.NewRequest("POST", c.urls()[l]+"/v1/jobs/signing-key-rotation/run", nil)
		req.Header.Set("Authorization", "Bearer "+testOperatorToken)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// mustBeCutOff checks that a partition took, and returns when member m
// noticed: it refuses a request for want of a leader.
func mustBeCutOff(t *testing.T, ec *etcdtest.Cluster, m int) time.Time {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{ec.Members()[m].ClientURL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	waitFor(t, fmt.Sprintf("etcd member %d refuses for want of a leader", m), func() bool {
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 500*time.Millisecond)
		defer cancel()
		_, err := cl.Txn(ctx).Then(clientv3.OpGet("/valet-jepsen/health")).Commit()
		return rpctypes.Error(err) == rpctypes.ErrNoLeader
	})
	return time.Now()
}

func waitLead(c *jepsenCluster, since time.Time, not int, within time.Duration) (leadEvent, bool) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ev, ok := c.leadSince(since, not); ok {
			return ev, true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return leadEvent{}, false
}

// runAgent is one agent at work until stop: it mints (some leases short
// enough to expire during the test), renews and releases its leases, and
// asks for the elevated role, which an operator approves and the agent
// then redeems twice at once on two replicas.
func runAgent(c *jepsenCluster, lb, opLB *lbClient, h *jepsenHistory, sub string, n int, stop chan struct{}, fail func(string, ...any)) {
	tok := c.env.Attest(sub, nil)
	var mine []*jepsenLease
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(10+rng.IntN(20)) * time.Millisecond):
		}
		switch op := rng.IntN(10); {
		case op < 4 || len(mine) == 0:
			short := rng.IntN(2) == 0
			ttl := "10m" // renewable up to the role's max_ttl of 1h
			if short {
				ttl = "3s"
			}
			a := last(lb.do("POST", "/v1/credentials", tok, map[string]any{"role": "demo", "ttl": ttl}))
			if a.status != http.StatusCreated {
				fail("%s: mint answered %d %s", sub, a.status, a.body)
				continue
			}
			l := jepsenMinted(a.body, sub, "")
			l.short = short
			h.addLease(l)
			mine = append(mine, l)
			h.mu.Lock()
			h.mints++
			h.mu.Unlock()
		case op < 6:
			l := mine[rng.IntN(len(mine))]
			if l.grant != "" {
				continue // minted at the role's maximum
			}
			a := last(lb.do("POST", "/v1/leases/"+l.id+"/renew", tok, map[string]any{"ttl": "20m"}))
			// A short lease may have run out, or a released one ended:
			// 409. A live one renews.
			if a.status != http.StatusOK && (a.status != http.StatusConflict || (!l.short && !l.released)) {
				fail("%s: renew of %s answered %d %s", sub, l.id, a.status, a.body)
			}
			h.mu.Lock()
			if a.status == http.StatusOK {
				// The renewal is a new token, for 20 minutes.
				l.token, l.short = jepsenMinted(a.body, sub, "").token, false
			}
			h.renews++
			h.mu.Unlock()
		case op < 8:
			i := rng.IntN(len(mine))
			l := mine[i]
			a := last(lb.do("DELETE", "/v1/leases/"+l.id, tok, nil))
			if a.status != http.StatusOK {
				fail("%s: release of %s answered %d %s", sub, l.id, a.status, a.body)
				continue
			}
			var v struct {
				State string `json:"state"`
			}
			_ = json.Unmarshal(a.body, &v)
			h.mu.Lock()
			if v.State == "released" || v.State == "revoking" {
				l.released = true
			}
			h.releases++
			h.mu.Unlock()
			mine = slices.Delete(mine, i, i+1)
		default:
			if l := grantFlow(c, lb, opLB, h, sub, tok, fail); l != nil {
				mine = append(mine, l)
			}
		}
	}
}

// grantFlow asks for the elevated role, has an operator approve it, then
// redeems it twice at once through two replicas while reading it, and
// records every attempt in the redeem history.
func grantFlow(c *jepsenCluster, lb, opLB *lbClient, h *jepsenHistory, sub, tok string, fail func(string, ...any)) *jepsenLease {
	a := last(lb.do("POST", "/v1/credentials", tok, map[string]any{"role": "elevated", "reason": "jepsen", "ttl": "1h"}))
	if a.status != http.StatusAccepted {
		fail("%s: request for elevated answered %d %s", sub, a.status, a.body)
		return nil
	}
	var g struct {
		GrantID string `json:"grant_id"`
	}
	_ = json.Unmarshal(a.body, &g)
	if a := last(opLB.do("POST", "/v1/grants/"+g.GrantID+"/approve", testOperatorToken, map[string]any{"comment": "ok"})); a.status != http.StatusOK {
		// An approval retried after a lost answer finds it approved.
		if r := last(opLB.do("GET", "/v1/grants/"+g.GrantID, testOperatorToken, nil)); !bytes.Contains(r.body, []byte(`"state":"approved"`)) {
			fail("%s: approve of %s answered %d %s", sub, g.GrantID, a.status, a.body)
			return nil
		}
	}
	h.mu.Lock()
	h.grantsApproved++
	h.grantIDs = append(h.grantIDs, g.GrantID)
	h.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won *jepsenLease
	for k := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine starts on its own replica.
			one := &lbClient{c: c, http: lb.http, stalls: lb.stalls}
			one.next.Store(int64(k - 1))
			read := k == 2
			method, path := "POST", "/v1/grants/"+g.GrantID+"/redeem"
			if read {
				method, path = "GET", "/v1/grants/"+g.GrantID
			}
			as := one.do(method, path, tok, nil)
			for _, at := range as {
				in := etcdtest.RedeemInput{Grant: g.GrantID, Read: read}
				var out etcdtest.RedeemOutput
				ret := at.ret.Nanoseconds()
				switch {
				case read && at.status == http.StatusOK:
					out.Redeemed = bytes.Contains(at.body, []byte(`"state":"redeemed"`))
				case read:
					continue // a read without an answer says nothing
				case at.status == http.StatusCreated:
					out.Won = true
				case at.status == http.StatusConflict:
					out.Refused = true
				case at.status >= 400 && at.status < 500:
					fail("%s: redeem of %s answered %d %s", sub, g.GrantID, at.status, at.body)
					out.Failed = true
				default:
					out.Unknown = true
					ret = -1 // it may take effect any time later
				}
				mu.Lock()
				h.mu.Lock()
				h.redeem = append(h.redeem, porcupine.Operation{ClientId: k, Input: in, Call: at.call.Nanoseconds(), Output: out, Return: ret})
				h.mu.Unlock()
				if out.Won {
					l := jepsenMinted(at.body, sub, g.GrantID)
					h.addLease(l)
					h.mu.Lock()
					h.redeemWins[g.GrantID] = append(h.redeemWins[g.GrantID], l.id)
					h.mu.Unlock()
					won = l
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return won
}

// seedMassAgent mints leases of one agent for the mass revocation and
// returns their ids.
func seedMassAgent(t *testing.T, c *jepsenCluster, lb *lbClient, h *jepsenHistory) []string {
	t.Helper()
	tok := c.env.Attest("jepsen-mass", nil)
	var ids []string
	for range 60 {
		a := last(lb.do("POST", "/v1/credentials", tok, map[string]any{"role": "demo", "ttl": "1h"}))
		if a.status != http.StatusCreated {
			t.Fatalf("mint for the mass revocation: %d %s", a.status, a.body)
		}
		l := jepsenMinted(a.body, "jepsen-mass", "")
		h.addLease(l)
		ids = append(ids, l.id)
	}
	return ids
}

// checkJepsen checks the promises once the faults are healed and the
// leader had time to finish its duties (waiting on conditions), reading
// the store directly (broker/etcd on the replicas' prefix) and through
// the replicas.
func checkJepsen(t *testing.T, c *jepsenCluster, h *jepsenHistory, massIDs []string) {
	t.Helper()
	s, err := etcd.Open(context.Background(), etcd.Options{Client: c.etcd.ClientT(t), Prefix: "/valet-jepsen/", Logger: leasetest.QuietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitQuiet(t, c, h, s)
	st := readJepsenStore(t, s)
	checkLeases(t, h, st, massIDs)
	checkGrants(t, h, st, s)
	checkRedeemHistory(t, h)
	checkTokens(t, c, h, st)
	// The audit chain verifies, in the store and through `valet audit
	// verify` against a replica.
	leasetest.MustVerifyAudit(t, s)
	out, errOut, code := runCLI(t, []string{"VALET_ADDR=" + c.urls()[0], "VALET_TOKEN=" + testOperatorToken}, "audit", "verify")
	if code != 0 {
		t.Errorf("valet audit verify: exit %d\n%s%s", code, out, errOut)
	}

	wins, byState := 0, map[leases.State]int{}
	for _, w := range h.redeemWins {
		wins += len(w)
	}
	for _, l := range st.leases {
		byState[l.State]++
	}
	t.Logf("%d mints, %d renewals, %d releases, %d grants approved (%d redeemed), %d redeem operations checked linearizable; leases now %v",
		h.mints, h.renews, h.releases, h.grantsApproved, wins, len(h.redeem), byState)
}

// waitQuiet waits until the replicas are ready and the leader finished
// its duties: every short lease expired, every queued revocation done,
// every grant a killed replica left mid-redeem recovered. What is still
// active then is not due for minutes: nothing changes while the checks
// read.
func waitQuiet(t *testing.T, c *jepsenCluster, h *jepsenHistory, s *etcd.Store) {
	t.Helper()
	for i, u := range c.urls() {
		waitFor(t, fmt.Sprintf("replica %d is ready", i), func() bool {
			r, err := http.Get(u + "/readyz")
			if err != nil {
				return false
			}
			r.Body.Close()
			return r.StatusCode == http.StatusOK
		})
	}
	waitFor(t, "a replica leads", func() bool { return c.leader() >= 0 })
	waitLong(t, time.Minute, "no lease is left pending, revoking or irrevocable, and none is active within a minute of its expiry", func() bool {
		counts, err := s.Counts()
		if err != nil || counts[leases.StatePending]+counts[leases.StateRevoking]+counts[leases.StateIrrevocable] > 0 {
			return false
		}
		active, err := s.List(context.Background(), leases.Filter{State: leases.StateActive, Limit: 1000})
		if err != nil {
			return false
		}
		for _, l := range active {
			if l.ExpiresAt.Before(time.Now().Add(time.Minute)) {
				return false
			}
		}
		return true
	})
	// A replica killed between a redeem and its lease left the grant
	// redeemed without one: once no mint can be under way (twice
	// mint_timeout plus a minute), the leader's grant-expiry job (every
	// 30s) names the lease or gives the grant back.
	stuck := func() (n int) {
		for _, id := range h.grantIDs {
			g, err := s.Grants().Get(context.Background(), id)
			if err == nil && g.State == grants.StateRedeemed && g.LeaseID == "" {
				n++
			}
		}
		return n
	}
	if n := stuck(); n > 0 {
		since := time.Now()
		waitLong(t, 2*time.Minute, fmt.Sprintf("the %d grants redeemed without a lease are recovered", n), func() bool { return stuck() == 0 })
		t.Logf("%d grants left redeemed without naming their lease (a replica killed mid-redeem, or the write naming it failed) were recovered %s later",
			n, time.Since(since).Round(time.Second))
	}
}

// jepsenStore is every lease as the store has it, with the audit records
// about each lease and each grant.
type jepsenStore struct {
	leases    map[string]*leases.Lease
	kinds     map[string][]string // lease id -> its records' kinds, in order
	grantRecs map[string][]string // grant id -> its records, described
	leasesOf  map[string][]string // grant id -> the leases naming it
}

func readJepsenStore(t *testing.T, s *etcd.Store) *jepsenStore {
	t.Helper()
	st := &jepsenStore{leases: map[string]*leases.Lease{}, kinds: map[string][]string{}, grantRecs: map[string][]string{}, leasesOf: map[string][]string{}}
	before := ""
	for {
		page, err := s.List(context.Background(), leases.Filter{Limit: 1000, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range page {
			st.leases[l.ID] = l
			if l.GrantID != "" {
				st.leasesOf[l.GrantID] = append(st.leasesOf[l.GrantID], l.ID)
			}
		}
		if len(page) < 1000 {
			break
		}
		before = page[len(page)-1].ID
	}
	var after uint64
	for {
		recs, err := s.ListAudit(context.Background(), audit.Filter{AfterSeq: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.LeaseID != "" {
				st.kinds[r.LeaseID] = append(st.kinds[r.LeaseID], r.Kind)
			}
			if g := r.Details["grant_id"]; g != "" {
				st.grantRecs[g] = append(st.grantRecs[g], fmt.Sprintf("%s %s %s %s lease %q: %s",
					r.Time.Format("15:04:05.000"), r.Kind, r.Decision, r.RequestID, r.LeaseID, r.Reason))
			}
		}
		if len(recs) < 1000 {
			return st
		}
		after = recs[len(recs)-1].Seq
	}
}

// checkLeases: every credential an agent received has its lease, in the
// state the agent's actions and the time explain; every lease ended
// once (one end record, and one revoked record for those ended before
// their expiry); the mass revocation finished on the new leader.
func checkLeases(t *testing.T, h *jepsenHistory, st *jepsenStore, massIDs []string) {
	t.Helper()
	for id, l := range h.leases {
		got, ok := st.leases[id]
		if !ok {
			t.Errorf("lease %s was answered 201 but is not in the store", id)
			continue
		}
		switch {
		case l.released && got.State != leases.StateReleased && got.State != leases.StateRevoked:
			t.Errorf("lease %s was released by its agent but is %s", id, got.State)
		case l.short && got.State == leases.StateActive:
			t.Errorf("lease %s of 3s is still active", id)
		}
		if got.AgentID != l.agent || got.GrantID != l.grant {
			t.Errorf("lease %s: agent %s grant %q, want %s %q", id, got.AgentID, got.GrantID, l.agent, l.grant)
		}
	}
	now := time.Now()
	for id, l := range st.leases {
		ks := st.kinds[id]
		expire, revoked := countOf(ks, audit.KindExpire), countOf(ks, audit.KindRevoked)
		ended := countOf(ks, audit.KindRelease) + countOf(ks, audit.KindRevoke)
		switch l.State {
		case leases.StateExpired:
			if expire != 1 || revoked != 0 || ended != 0 {
				t.Errorf("expired lease %s: audit %v, want exactly one %s", id, ks, audit.KindExpire)
			}
		case leases.StateReleased, leases.StateRevoked:
			if revoked != 1 || ended != 1 || expire != 0 {
				t.Errorf("%s lease %s: audit %v, want one release or revoke and one %s", l.State, id, ks, audit.KindRevoked)
			}
		case leases.StateActive:
			if expire+revoked+ended != 0 || !now.Before(l.ExpiresAt) {
				t.Errorf("active lease %s (expires %s): audit %v", id, l.ExpiresAt, ks)
			}
		default:
			t.Errorf("lease %s is %s after every duty finished", id, l.State)
		}
	}
	for _, id := range massIDs {
		if l := st.leases[id]; l == nil || l.State != leases.StateRevoked {
			t.Errorf("lease %s of the mass revocation: %v", id, l)
		}
	}
}

func countOf(ks []string, k string) int {
	n := 0
	for _, x := range ks {
		if x == k {
			n++
		}
	}
	return n
}

// checkGrants: no grant was redeemed twice (at most one lease per grant,
// and the one a 201 named), and every grant tells the truth: redeemed
// and naming its one lease, or approved (given back after a failed or
// interrupted mint) with none.
func checkGrants(t *testing.T, h *jepsenHistory, st *jepsenStore, s *etcd.Store) {
	t.Helper()
	for g, ids := range st.leasesOf {
		if len(ids) > 1 {
			t.Errorf("grant %s has %d leases: %v", g, len(ids), ids)
		}
	}
	for g, wins := range h.redeemWins {
		if len(wins) != 1 || len(st.leasesOf[g]) != 1 || st.leasesOf[g][0] != wins[0] {
			t.Errorf("grant %s: 201 answers named %v, the store has %v", g, wins, st.leasesOf[g])
		}
	}
	for _, id := range h.grantIDs {
		g, err := s.Grants().Get(context.Background(), id)
		if err != nil {
			t.Errorf("grant %s: %v", id, err)
			continue
		}
		switch ls := st.leasesOf[id]; {
		case g.State == grants.StateRedeemed && len(ls) == 1 && g.LeaseID == ls[0]:
		case g.State == grants.StateApproved && len(ls) == 0:
		default:
			t.Errorf("grant %s is %s naming lease %q; the store has leases %v for it; its audit:\n%s",
				id, g.State, g.LeaseID, ls, strings.Join(st.grantRecs[id], "\n"))
		}
	}
}

// checkRedeemHistory checks with porcupine that the redeems and reads
// the agents saw through every replica are linearizable, and shows the
// operations of each grant whose history is not.
func checkRedeemHistory(t *testing.T, h *jepsenHistory) {
	t.Helper()
	history := closeHistory(h.redeem)
	if porcupine.CheckOperations(etcdtest.RedeemModel, history) {
		return
	}
	t.Errorf("the redeem history of %d operations is not linearizable", len(history))
	byGrant := map[string][]porcupine.Operation{}
	for _, op := range history {
		g := op.Input.(etcdtest.RedeemInput).Grant
		byGrant[g] = append(byGrant[g], op)
	}
	for g, ops := range byGrant {
		if porcupine.CheckOperations(etcdtest.RedeemModel, ops) {
			continue
		}
		slices.SortFunc(ops, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
		var lines []string
		for _, op := range ops {
			lines = append(lines, fmt.Sprintf("  client %d [%s, %s] %+v -> %+v", op.ClientId,
				time.Duration(op.Call).Round(time.Millisecond), time.Duration(op.Return).Round(time.Millisecond), op.Input, op.Output))
		}
		t.Errorf("grant %s:\n%s", g, strings.Join(lines, "\n"))
	}
}

// checkTokens: every replica publishes the same signing keys (files in
// the shared data_dir), and answers introspection from the lease's
// state: the JWT backend has nothing to call, its revocation is the
// lease's end.
func checkTokens(t *testing.T, c *jepsenCluster, h *jepsenHistory, st *jepsenStore) {
	t.Helper()
	urls := c.urls()
	var jwks []string
	for _, u := range urls {
		r, err := http.Get(u + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		jwks = append(jwks, string(b))
	}
	for i := range jwks {
		if jwks[i] != jwks[0] {
			t.Errorf("replicas publish different signing keys:\nreplica 0: %s\nreplica %d: %s", jwks[0], i, jwks[i])
		}
	}
	checked := 0
	for id, l := range h.leases {
		stored := st.leases[id]
		if checked >= 150 || stored == nil {
			continue
		}
		now := time.Now()
		if stored.ActiveAt(now) != stored.ActiveAt(now.Add(5*time.Second)) {
			continue // about to expire: either answer is right
		}
		checked++
		for i, u := range urls {
			e := *c.env
			e.URL = u
			if got := introspect(t, &e, l.token)["active"] == true; got != stored.ActiveAt(now) {
				t.Errorf("replica %d introspects the token of lease %s (%s) as active=%v", i, id, stored.State, got)
			}
		}
	}
}

// closeHistory gives the operations whose outcome is unknown (Return -1)
// a return after every other: they may have taken effect at any time.
func closeHistory(ops []porcupine.Operation) []porcupine.Operation {
	var end int64
	for _, op := range ops {
		end = max(end, op.Return, op.Call)
	}
	out := slices.Clone(ops)
	for i := range out {
		if out[i].Return < 0 {
			out[i].Return = end + 1
		}
	}
	return out
}

// waitLong is waitFor with room for the leader's duties after faults.
func waitLong(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out (%s) waiting until %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
