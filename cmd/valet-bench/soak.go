package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// soakSpec is a soak run: a steady mint rate for a long time, with some
// leases released and some renewed, against a server whose leases end and
// are pruned within the run, so the store must reach a steady state.
type soakSpec struct {
	d        time.Duration
	rate     int     // mints per second
	release  float64 // share of leases the agent releases
	renew    float64 // share of leases the agent renews
	ttl      time.Duration
	archive  string // the audit-archive job's hot_window ("" leaves the job out)
	interval time.Duration
}

// soakConfig is the bench server's configuration for a soak: short lease
// lives, a one-minute retention, housekeeping twice a minute.
func soakConfig(spec soakSpec) (roles, jobs string) {
	roles = fmt.Sprintf(`  - name: soak
    backend: tokens
    ttl: %s
    max_ttl: 1h
`, spec.ttl)
	jobs = `leases:
  retention: 1m
jobs:
  - name: housekeeping
    schedule: "@every 30s"
`
	if spec.archive != "" {
		jobs += fmt.Sprintf(`  - name: audit-archive
    schedule: "@every 30s"
    hot_window: %s
`, spec.archive)
	}
	return roles, jobs
}

// soakCounters are what the soak's connections count.
type soakCounters struct {
	mints, releases, renews, server5xx, other, behind atomic.Int64

	mu       sync.Mutex
	refusals map[int]int // other statuses over 299, by status
}

// soak runs spec and prints one line a minute (every spec.interval): the
// requests and 5xx answers, the server's RSS, live Go heap and
// goroutines, the database's size and the archive's, the active leases and
// the expiry backlog. At the end it waits for the expirer and prints the
// backlog left, and with -profile it writes the heap and a goroutine dump.
func (b *bench) soak(spec soakSpec) {
	roles, extra := soakConfig(spec)
	e := newEnv("", roles)
	defer os.RemoveAll(e.dir)
	cfg, err := os.ReadFile(filepath.Join(e.dir, "config.yaml"))
	must(err)
	must(os.WriteFile(filepath.Join(e.dir, "config.yaml"), append(cfg, extra...), 0o600))
	s := b.serve(e)
	defer s.stop()
	u, _ := url.Parse(s.url)

	toks := e.attestations(benchAgents, benchAgents, false)
	mints := make([][]byte, len(toks))
	for i, tok := range toks {
		mints[i] = request(u.Host, "/v1/credentials", tok, []byte(`{"role":"soak"}`))
	}
	renewBody := []byte(fmt.Sprintf(`{"ttl":%q}`, spec.ttl.String()))

	fmt.Printf("soak: %s at %d mints/s from %d agents, %.0f%% released, %.0f%% renewed, ttl %s, leases.retention 1m, housekeeping every 30s",
		spec.d, spec.rate, benchAgents, 100*spec.release, 100*spec.renew, spec.ttl)
	if spec.archive != "" {
		fmt.Printf(", audit hot window %s", spec.archive)
	}
	fmt.Println()
	fmt.Printf("  %6s %8s %6s %9s %9s %10s %8s %10s %10s %9s %8s\n", "min", "mints", "5xx", "RSS MiB", "live heap", "goroutines", "db MiB", "archive MiB", "free pages", "active", "backlog")

	ctr := soakCounters{refusals: map[int]int{}}
	followups := make(chan []byte, 1<<20)
	jobs := make(chan int, spec.rate) // at most a second of mints waiting
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn, err := dial(u.Host)
			must(err)
			defer cn.c.Close()
			for {
				var req []byte
				agent := -1
				select {
				case req = <-followups:
				default:
					select {
					case req = <-followups:
					case agent = <-jobs:
						req = mints[agent]
					case <-stop:
						return
					}
				}
				st, loc, err := cn.roundTripLocation(req)
				if err != nil {
					fatal("soak: %v", err)
				}
				switch {
				case st >= 500:
					ctr.server5xx.Add(1)
				case st >= 300:
					ctr.other.Add(1)
					ctr.mu.Lock()
					ctr.refusals[st]++
					ctr.mu.Unlock()
				case agent >= 0:
					ctr.mints.Add(1)
					b.followUp(spec, u.Host, toks[agent], loc, renewBody, followups, &ctr)
				}
			}
		}()
	}
	// The mints arrive at a steady rate, whatever valet's answers take:
	// a server that falls behind shows as "behind", not as a lower rate.
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		start, sent, agent := time.Now(), 0, 0
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				due := int(now.Sub(start).Seconds() * float64(spec.rate))
				for ; sent < due; sent++ {
					select {
					case jobs <- agent:
					default:
						ctr.behind.Add(1)
					}
					agent = (agent + 1) % benchAgents
				}
			}
		}
	}()

	// Every sampleEvery the server's metrics are read; each line gives
	// the medians of the interval's samples (one sample catches the heap
	// anywhere in a housekeeping or archive pass), the sizes at its end.
	const sampleEvery = 5 * time.Second
	start := time.Now()
	tick := time.NewTicker(sampleEvery)
	var last int64
	var heaps, gors []float64
	var peak float64
	// Steady state: once a lease's whole life (ttl), the retention and
	// two housekeeping passes have gone by, nothing should grow.
	warm := spec.ttl + time.Minute + 2*30*time.Second
	var lines []soakLine
	for next := spec.interval; time.Since(start) < spec.d; {
		<-tick.C
		m := s.metrics()
		heaps, gors = append(heaps, liveHeap(m)), append(gors, m["go_goroutines"])
		if b.prof != nil && time.Since(start) > warm && liveHeap(m) > peak {
			// The heap at its highest after warm-up, to compare with
			// the one at the end.
			peak = liveHeap(m)
			b.prof.fetch(s, "/debug/pprof/heap", "soak.heap.peak.pprof")
		}
		if time.Since(start) < next-sampleEvery/2 {
			continue
		}
		next += spec.interval
		n := ctr.mints.Load()
		l := soakLine{at: time.Since(start), heap: median(heaps), goroutines: median(gors),
			db: fileMiB(filepath.Join(e.dir, "valet.db"))}
		lines = append(lines, l)
		fmt.Printf("  %6.1f %8d %6d %9.0f %9.1f %10.0f %8.1f %10.1f %10.0f %9.0f %8s\n", l.at.Minutes(), n-last, ctr.server5xx.Load(),
			m["process_resident_memory_bytes"]/(1<<20), l.heap/(1<<20), l.goroutines,
			l.db, dirMiB(filepath.Join(e.dir, "audit", "archive")), m["valet_db_free_pages"],
			m["valet_active_leases"], backlog(m))
		last = n
		heaps, gors = heaps[:0], gors[:0]
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	// Let the expirer catch up with what expired while the last requests
	// were answered, then read what is left.
	time.Sleep(5 * time.Second)
	m := s.metrics()
	fmt.Printf("  end: %d mints, %d releases, %d renewals; %d 5xx, %d other refusals %v, %d mints not sent (valet behind); expiry backlog %s\n",
		ctr.mints.Load(), ctr.releases.Load(), ctr.renews.Load(), ctr.server5xx.Load(), ctr.other.Load(), ctr.refusals, ctr.behind.Load(), backlog(m))
	var steady []soakLine
	for _, l := range lines {
		if l.at > warm {
			steady = append(steady, l)
		}
	}
	if len(steady) < 2 {
		fmt.Printf("  steady state: the soak is too short to judge (it starts after %s)\n", warm)
	} else {
		fmt.Printf("  steady state, %d lines after %s (targets: 0 5xx, each within ±10%%, no backlog at the end):\n", len(steady), warm)
		for _, c := range []struct {
			name string
			v    func(soakLine) float64
			unit float64
		}{{"live heap MiB", func(l soakLine) float64 { return l.heap }, 1 << 20}, {"goroutines", func(l soakLine) float64 { return l.goroutines }, 1},
			{"db MiB", func(l soakLine) float64 { return l.db }, 1}} {
			lo, hi, mean := spread(steady, c.v)
			dev := 100 * max(hi-mean, mean-lo) / mean
			fmt.Printf("    %-14s %8.1f – %8.1f, mean %8.1f: ±%.1f%% %s\n", c.name, lo/c.unit, hi/c.unit, mean/c.unit, dev, metOrNot(dev <= 10))
		}
		fmt.Printf("    %-14s %d %s; expiry backlog at the end %s\n", "5xx", ctr.server5xx.Load(), metOrNot(ctr.server5xx.Load() == 0), backlog(m))
	}
	if b.prof != nil {
		b.prof.fetch(s, "/debug/pprof/heap", "soak.heap.pprof")
		b.prof.fetch(s, "/debug/pprof/goroutine?debug=1", "soak.goroutines.txt")
	}
	fmt.Println()
}

// soakLine is one printed line of the soak.
type soakLine struct {
	at               time.Duration
	heap, goroutines float64 // medians of the interval's samples
	db               float64 // MiB at the line
}

// spread returns the least, the greatest and the mean of v over lines.
func spread(lines []soakLine, v func(soakLine) float64) (lo, hi, mean float64) {
	lo, hi = v(lines[0]), v(lines[0])
	for _, l := range lines {
		x := v(l)
		lo, hi, mean = min(lo, x), max(hi, x), mean+x
	}
	return lo, hi, mean / float64(len(lines))
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// followUp schedules what the agent does with the lease at loc: release
// it or renew it, after a random part of its life, or nothing.
func (b *bench) followUp(spec soakSpec, host, tok, loc string, renewBody []byte, out chan<- []byte, ctr *soakCounters) {
	if loc == "" {
		return
	}
	p := rand.Float64()
	after := time.Duration(rand.Int64N(int64(spec.ttl) * 8 / 10))
	switch {
	case p < spec.release:
		req := requestMethod("DELETE", host, loc, tok, nil)
		time.AfterFunc(after, func() { ctr.releases.Add(1); out <- req })
	case p < spec.release+spec.renew:
		req := request(host, loc+"/renew", tok, renewBody)
		time.AfterFunc(after, func() { ctr.renews.Add(1); out <- req })
	}
}

// metrics scrapes the server's /metrics into name -> value (the series
// without labels, and the first of those with).
func (s *server) metrics() map[string]float64 { return scrape(s.url + "/metrics") }

// scrape reads a Prometheus text exposition at url into name -> value
// (the series without labels, and the first of those with); empty when
// it cannot be read.
func scrape(url string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(url)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		if _, seen := out[name]; seen {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err == nil {
			out[name] = v
		}
	}
	return out
}

// liveHeap is the heap the server's last collection found live, or from
// a valet without that metric the heap in use.
func liveHeap(m map[string]float64) float64 {
	if v, ok := m["go_gc_heap_live_bytes"]; ok {
		return v
	}
	return m["go_memstats_heap_inuse_bytes"]
}

// backlog is the expiry backlog the server reports ("-" from a valet
// without the metric).
func backlog(m map[string]float64) string {
	v, ok := m["valet_lease_expiry_backlog"]
	if !ok {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fileMiB(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return float64(fi.Size()) / (1 << 20)
}

func dirMiB(dir string) float64 {
	var total int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			total += fi.Size()
		}
	}
	return float64(total) / (1 << 20)
}
