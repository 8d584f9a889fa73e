// Command valet-bench measures valet on this machine and prints one report:
// the ES256 verify+sign rate (the crypto ceiling), mint throughput and
// latency through HTTP at several concurrency levels, the CPU valet's
// detectors add to a mint, start-up time and
// memory with a large lease store, expiry lateness, and replicas on a
// three-member etcd (mints against bbolt, leader failover, keys and
// bytes per lease). Every figure comes
// from the same run on the same machine, so ratios between them hold even
// on a noisy machine.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

func main() {
	var (
		bin       = flag.String("valet", "bin/valet", "path to the valet binary")
		duration  = flag.Duration("duration", 5*time.Second, "measuring time per concurrency level")
		levels    = flag.String("concurrency", "1,16,64", "concurrency levels for the mint benchmark")
		nLeases   = flag.Int("startup-leases", 1_000_000, "leases in the store for the start-up measurement (0 skips)")
		nExpiry   = flag.Int("expiry-leases", 100_000, "leases expiring within one minute for the lateness measurement (0 skips)")
		skipMints = flag.Bool("skip-mint", false, "skip the mint benchmark")
		repeat    = flag.Int("repeat", 3, "runs of the highest mint concurrency (each mode, alternately) and of Vault's JWT login at it; the summary takes valet's medians and Vault's fastest")
		vaultLvls = flag.String("vault-concurrency", "16,64", "concurrency levels for the Vault comparison (empty skips it)")
		bulk      = flag.Int("bulk-revoke", 1000, "Vault leases of one agent to revoke at once (0 skips)")
		awsLvls   = flag.String("aws-concurrency", "16,64", "concurrency levels for the AWS STS mints (empty skips them)")
		ghLvls    = flag.String("github-concurrency", "16,64", "concurrency levels for the GitHub backend (empty skips it)")
		containJ  = flag.Int("contain-jwt", 1000, "jwt leases of one agent a signal revokes, timed to the last confirmed (0 skips)")
		containV  = flag.String("contain-vault", "200,1000", "Vault leases of one agent a signal revokes, timed to the last confirmed (empty skips)")
		strategyN = flag.Int("vault-strategies", 1000, "Vault tokens revoked by accessor vs under a parent token (0 skips)")
		gcpLvls   = flag.String("gcp-concurrency", "16,64", "concurrency levels for the Google Cloud backend (empty skips it)")
		soakD     = flag.Duration("soak", 0, "instead of the benchmark, a soak of this long (make soak)")
		soakRate  = flag.Int("soak-rate", 500, "the soak's mints per second")
		soakHot   = flag.String("soak-hot-window", "1m", "the soak server's audit-archive hot_window (empty: no audit-archive job)")
		soakEvery = flag.Duration("soak-interval", time.Minute, "how often the soak prints a line")
		profDir   = flag.String("profile", "", "write CPU, allocation, heap and goroutine profiles of the server for each mint run into this directory")
		detRounds = flag.Int("detector-rounds", 5, "runs of 64 agents minting with the detectors off and on, each (0 skips)")
		etcdPath  = flag.String("etcd", "deploy/etcd/bin/etcd", "the etcd server for the etcd rows (built with make etcd when absent)")
		etcdLvls  = flag.String("etcd-concurrency", "64", "concurrency levels for mints on bbolt, one and two replicas on etcd (empty skips them)")
		etcdTTLs  = flag.String("etcd-failover", "10s,2s", "leader_ttl values for the leader failover runs (empty skips them)")
		etcdN     = flag.Int("etcd-leases", 10000, "leases minted for the etcd keys and bytes per lease (0 skips)")
	)
	flag.Parse()
	b := &bench{bin: *bin, repeat: max(1, *repeat)}
	if *profDir != "" {
		must(os.MkdirAll(*profDir, 0o755))
		b.prof = &profiler{dir: *profDir}
	}
	fmt.Printf("valet benchmark — %s, %d CPUs, GOMAXPROCS %d, %s\n\n", runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), time.Now().UTC().Format(time.RFC3339))
	if *soakD > 0 {
		b.soak(soakSpec{d: *soakD, rate: *soakRate, release: 0.3, renew: 0.1, ttl: 2 * time.Minute, archive: *soakHot, interval: *soakEvery})
		runCleanups()
		return
	}

	ceiling := cryptoCeiling(3 * time.Second)
	fmt.Printf("crypto ceiling: ES256 verify+sign pairs, all cores: %.0f /s (%s of CPU per pair)\n\n", ceiling,
		(time.Duration(float64(runtime.GOMAXPROCS(0)) * float64(time.Second) / ceiling)).Round(time.Microsecond))

	var represented, fresh map[int]loadResult
	top := 0
	if !*skipMints {
		lv := parseLevels("-concurrency", *levels)
		top = lv[len(lv)-1]
		represented, fresh = b.mintTable(lv, *duration)
	}
	if *etcdLvls != "" || *etcdTTLs != "" || *etcdN > 0 {
		b.etcdSection(etcdBinary(*etcdPath), *etcdLvls, *etcdTTLs, *etcdN, *duration)
	}
	var vaultTop *vaultLevel
	if *vaultLvls != "" {
		vr := b.vaultBench(parseLevels("-vault-concurrency", *vaultLvls), *duration, *bulk)
		printVault(vr)
		for i := range vr.levels {
			if vr.levels[i].c == top {
				vaultTop = &vr.levels[i]
			}
		}
	}
	if *detRounds > 0 {
		runs := b.detectorCost(64, *duration, *detRounds)
		printDetectorCost(64, runs, observeCPU(64, *duration))
	}
	if *containJ > 0 || *containV != "" {
		var vs []int
		if *containV != "" {
			vs = parseLevels("-contain-vault", *containV)
		}
		printContain(b.containBench(*containJ, vs))
	}
	if *strategyN > 0 {
		printStrategies(vaultStrategies(*strategyN, []int{16, 64}))
	}
	if *ghLvls != "" {
		printGitHub(b.githubBench(parseLevels("-github-concurrency", *ghLvls), *duration))
	}
	if *awsLvls != "" {
		printAWS(b.awsBench(parseLevels("-aws-concurrency", *awsLvls), *duration))
	}
	if *gcpLvls != "" {
		printGCP(b.gcpBench(parseLevels("-gcp-concurrency", *gcpLvls), *duration))
	}
	if *nLeases > 0 {
		r := b.startup(*nLeases)
		fmt.Printf("start-up with %d leases in the store: %s to ready, RSS %.0f MiB (store file %.0f MiB; built in %s)\n\n",
			*nLeases, r.ready.Round(time.Millisecond), float64(r.rss)/(1<<20), float64(r.fileSize)/(1<<20), r.built.Round(time.Second))
	}
	if *nExpiry > 0 {
		r := b.expiry(*nExpiry)
		fmt.Printf("expiry lateness, %d leases expiring within one minute: p50 %s, p99 %s, max %s (%d expired)\n\n",
			*nExpiry, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.max.Round(time.Millisecond), r.n)
	}
	if top > 0 {
		printSummary(top, represented[top], fresh[top], vaultTop)
	}
}

// parseLevels reads a comma-separated list of concurrency levels.
func parseLevels(flagName, v string) []int {
	var out []int
	for _, f := range strings.Split(v, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			fatal("bad %s %q", flagName, v)
		}
		out = append(out, c)
	}
	return out
}

// cleanups run before the bench exits, also on failure: they stop the
// servers it started.
var cleanups []func()

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "valet-bench: "+format+"\n", args...)
	runCleanups()
	os.Exit(1)
}

func runCleanups() {
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanups = nil
}

type bench struct {
	bin    string
	prof   *profiler // nil: no profiles
	repeat int       // runs of the top concurrency whose medians the summary takes
}

// cryptoCeiling measures how many (ES256 verify of an attestation + ES256
// sign of a token) pairs the machine does per second on all cores: the
// most a mint could ever reach with this cryptography.
func cryptoCeiling(d time.Duration) float64 {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	msg := bytes.Repeat([]byte("x"), 300)
	h := sha256.Sum256(msg)
	sig, _ := ecdsa.SignASN1(rand.Reader, key, h[:])
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				hh := sha256.Sum256(msg)
				if !ecdsa.VerifyASN1(&key.PublicKey, hh[:], sig) {
					panic("verify")
				}
				if _, err := ecdsa.SignASN1(rand.Reader, key, hh[:]); err != nil {
					panic(err)
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds()
}

// env is a data directory with a config, a dev issuer and a policy.
type env struct {
	dir    string
	issuer *attest.DevIssuer
}

// benchOperatorToken is the bench server's operator token.
const benchOperatorToken = "valet_op_bench"

const benchPolicy = `
permit(principal in Issuer::"bench", action in [Action::"mint", Action::"renew"], resource)
when { context.ttl_seconds <= 3600 };
forbid(principal, action, resource) when { context.risk >= 70 };
`

const benchConfig = `
listen: 127.0.0.1:0
data_dir: .
public_url: http://valet.bench
issuers:
  - name: bench
    issuer: https://issuer.bench
    audiences: [valet]
    jwks_file: issuer-jwks.json
    algorithms: [ES256]
backends:
  - name: tokens
    type: jwt
roles:
  - name: bench
    backend: tokens
    ttl: 15m
    max_ttl: 1h
    audience: [bench-api]
    scopes: [read]
policy:
  dir: policies
  watch: false
operators:
  tokens:
    - name: bench
      sha256: OPERATOR_SHA256
limits:
  agent_rate: .inf # no per-agent limit
console:
  disabled: true # the bench measures the API; its public_url is not loopback
`

// newEnv writes a bench config; backends and roles are extra YAML list
// items for those sections.
func newEnv(backends, roles string) *env {
	dir, err := os.MkdirTemp("", "valet-bench")
	if err != nil {
		fatal("%v", err)
	}
	iss, err := attest.NewDevIssuer("https://issuer.bench")
	if err != nil {
		fatal("%v", err)
	}
	must(iss.WriteJWKS(filepath.Join(dir, "issuer-jwks.json")))
	must(os.MkdirAll(filepath.Join(dir, "policies"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "policies", "bench.cedar"), []byte(benchPolicy), 0o600))
	cfg := strings.Replace(benchConfig, "OPERATOR_SHA256", broker.HashToken(benchOperatorToken), 1)
	cfg = strings.Replace(cfg, "backends:\n", "backends:\n"+backends, 1)
	cfg = strings.Replace(cfg, "roles:\n", "roles:\n"+roles, 1)
	must(os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cfg), 0o600))
	return &env{dir: dir, issuer: iss}
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

// server is a running `valet serve`.
type server struct {
	cmd   *exec.Cmd
	url   string
	start time.Time
	ready time.Duration
	done  chan struct{}
	pprof string // the pprof listener's address, when profiling
}

func (b *bench) serve(e *env) *server { return b.serveConfig(e, "config.yaml") }

// serveConfig starts `valet serve` with the configuration file config of
// e's directory.
func (b *bench) serveConfig(e *env, config string) *server {
	cmd := exec.Command(b.bin, "serve", "--config", filepath.Join(e.dir, config))
	cmd.Env = append(os.Environ(), "VALET_KEK="+strings.Repeat("5a", 32))
	var pprof string
	if b.prof != nil {
		pprof = freeAddr()
		cmd.Env = append(cmd.Env, "VALET_PPROF_LISTEN="+pprof)
	}
	// The server logs its address once it listens; start-up is measured
	// from exec to the first 200 from /readyz.
	stderr, err := cmd.StderrPipe()
	must(err)
	s := &server{cmd: cmd, start: time.Now(), done: make(chan struct{}), pprof: pprof}
	must(cmd.Start())
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "valet is serving" {
				addr <- line.Addr
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(s.done) }()
	select {
	case a := <-addr:
		s.url = "http://" + a
	case <-s.done:
		fatal("valet serve exited: %v", cmd.ProcessState)
	case <-time.After(5 * time.Minute):
		fatal("valet serve did not start")
	}
	// Ready means /readyz answers 200.
	for {
		resp, err := http.Get(s.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	s.ready = time.Since(s.start)
	return s
}

func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *server) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// mintLoad runs c agents minting back to back for d (after a one-second
// warm-up) against a fresh server. With fresh set, every request carries a
// new attestation (signed beforehand), so valet verifies a signature on
// every mint; otherwise each agent re-presents its own, as agents do.
func (b *bench) mintLoad(c int, d time.Duration, fresh, profile bool) loadResult {
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	s := b.serve(e)
	defer s.stop()
	name := fmt.Sprintf("jwt-%d-represented", c)
	if fresh {
		name = fmt.Sprintf("jwt-%d-fresh", c)
	}
	var prof *profiler
	if profile {
		prof = b.prof
	}
	return mintMeasure(s, e, mintSpec{role: "bench", c: c, d: d, fresh: fresh, ceiling: true, prof: prof, name: name})
}

// attestations signs n attestations for agents distinct agents in
// parallel: attestation i is agent i%agents's, and with fresh set each has
// a subject-unique jti of its own.
func (e *env) attestations(n, agents int, fresh bool) []string {
	out := make([]string, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				sub, jti := fmt.Sprintf("agent-%d", i%agents), fmt.Sprintf("agent-%d", i%agents)
				if fresh {
					jti = fmt.Sprintf("agent-%d-%d", i%agents, i)
				}
				tok, err := e.issuer.Sign(map[string]any{"sub": sub, "aud": "valet", "exp": time.Now().Add(time.Hour).Unix(), "jti": jti})
				must(err)
				out[i] = tok
			}
		}()
	}
	wg.Wait()
	return out
}

// freshCount is how many distinct attestations a fresh run of d signs in
// advance: enough for a generous rate.
func freshCount(d time.Duration) int { return int(20000 * (d.Seconds() + 1)) }

// cpuTime is the server process's user+system CPU time so far.
func (s *server) cpuTime() time.Duration { return procCPU(s.cmd.Process.Pid) }

// procCPU is process pid's user+system CPU time so far (0 once it is
// gone).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}

// fill writes n active leases straight into the store of e, expiring at
// expiry(i), through the store's own API (each with its audit record, as a
// jwt mint writes them), from many goroutines so writes share commits.
func fill(e *env, n int, expiry func(i int) time.Time) {
	st, err := bolt.Open(filepath.Join(e.dir, "valet.db"), bolt.Options{MaxBatch: 2048})
	must(err)
	defer st.Close()
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 512; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				now := time.Now()
				l := &leases.Lease{
					ID: leases.NewID(now), AgentID: fmt.Sprintf("bench/agent-%d", i%5000), Role: "bench", Backend: "tokens",
					State: leases.StateActive, CreatedAt: now, ExpiresAt: expiry(i), MaxExpires: expiry(i),
					Lineage: leases.Lineage{Issuer: "https://issuer.bench", JTI: fmt.Sprintf("jti-%d", i)},
				}
				l.Handle = l.ID
				must(st.CreateActive(ctx, l, now, auditEntry(l)))
			}
		}()
	}
	wg.Wait()
}

type startupResult struct {
	ready    time.Duration
	rss      int64
	fileSize int64
	built    time.Duration
}

func (b *bench) startup(n int) startupResult {
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	t0 := time.Now()
	far := time.Now().Add(24 * time.Hour)
	fill(e, n, func(i int) time.Time { return far.Add(time.Duration(i) * time.Millisecond) })
	built := time.Since(t0)
	fi, _ := os.Stat(filepath.Join(e.dir, "valet.db"))
	// Drop the file from the page cache is not possible without root
	// tricks; the figure is a warm start.
	s := b.serve(e)
	r := startupResult{ready: s.ready, rss: s.rss(), fileSize: fi.Size(), built: built}
	s.stop()
	return r
}

type expiryResult struct {
	p50, p99, max time.Duration
	n             int
}

func (b *bench) expiry(n int) expiryResult {
	e := newEnv("", "")
	defer os.RemoveAll(e.dir)
	// Expiries spread evenly over one minute, starting once the store is
	// filled and the server is up.
	base := time.Now().Add(45 * time.Second)
	fill(e, n, func(i int) time.Time { return base.Add(time.Duration(i) * time.Minute / time.Duration(n)) })
	if time.Now().After(base) {
		fatal("filling %d leases took longer than 45s; lower -expiry-leases", n)
	}
	s := b.serve(e)
	time.Sleep(time.Until(base.Add(time.Minute + 5*time.Second)))
	s.stop()

	st, err := bolt.Open(filepath.Join(e.dir, "valet.db"), bolt.Options{ReadOnly: true})
	must(err)
	defer st.Close()
	var late []time.Duration
	var before string
	for {
		ls, err := st.List(context.Background(), leases.Filter{State: leases.StateExpired, Limit: 1000, Before: before})
		must(err)
		for _, l := range ls {
			late = append(late, l.EndedAt.Sub(l.ExpiresAt))
		}
		if len(ls) < 1000 {
			break
		}
		before = ls[len(ls)-1].ID
	}
	if len(late) == 0 {
		fatal("no lease expired")
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	return expiryResult{p50: late[len(late)/2], p99: late[len(late)*99/100], max: late[len(late)-1], n: len(late)}
}

func auditEntry(l *leases.Lease) audit.Entry {
	return audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: l.AgentID},
		Decision: audit.Allow, Role: l.Role, LeaseID: l.ID, AgentID: l.AgentID}
}
