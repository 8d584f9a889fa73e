package main

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// benchAgents is how many distinct agents the mint runs draw from: at any
// concurrency the requests spread over this many agents, as a fleet's do,
// so the per-agent indexes and caches see a realistic spread.
const benchAgents = 1000

// mintSpec is one measured mint run.
type mintSpec struct {
	role  string
	c     int           // concurrent connections
	d     time.Duration // measured time, after a one-second warm-up
	fresh bool          // a fresh attestation on every request
	// ceiling measures the crypto ceiling just before and just after the
	// measured time, so the ratio compares figures of the same minutes.
	ceiling bool
	prof    *profiler // profiles of the measured time (nil: none)
	name    string    // the profiles' file names
}

// mintRun drives role on a running server with c connections, the
// requests drawn from benchAgents agents.
func mintRun(s *server, e *env, role string, c int, d time.Duration, fresh bool) loadResult {
	return mintMeasure(s, e, mintSpec{role: role, c: c, d: d, fresh: fresh})
}

// mintMeasure runs spec on s. Re-presenting, connection a sends agent
// (a + i·c) mod benchAgents's attestation on its i-th request, so the
// connections cycle through every agent and no two send the same one at
// once; fresh, every request carries a new attestation (signed
// beforehand) of one of the agents, so valet verifies a signature on
// every mint.
func mintMeasure(s *server, e *env, spec mintSpec) loadResult {
	u, _ := url.Parse(s.url)
	body := []byte(`{"role":"` + spec.role + `","ttl":"15m"}`)
	n := benchAgents
	if spec.fresh {
		n = freshCount(spec.d)
	}
	toks := e.attestations(n, benchAgents, spec.fresh)
	reqs := make([][]byte, len(toks))
	for i, tok := range toks {
		reqs[i] = request(u.Host, "/v1/credentials", tok, body)
	}
	var cursor atomic.Int64
	next := func(conn, i int) []byte {
		if spec.fresh {
			k := int(cursor.Add(1)) - 1
			if k >= len(reqs) {
				fatal("ran out of pre-signed attestations; valet is faster than expected: raise the count")
			}
			return reqs[k]
		}
		return reqs[(conn+i*spec.c)%len(reqs)]
	}
	runLoad(s.url, spec.c, time.Second, 201, next)
	var before float64
	if spec.ceiling {
		before = cryptoCeiling(2 * time.Second)
	}
	cpu0, self0, busy0 := s.cpuTime(), selfCPU(), machineBusy()
	wait := spec.prof.during(s, spec.name, spec.d)
	r := runLoad(s.url, spec.c, spec.d, 201, next)
	cpu1, self1, busy1 := s.cpuTime(), selfCPU(), machineBusy()
	wait()
	r.serverCPU = (cpu1 - cpu0) / time.Duration(r.n)
	r.driverCPU = (self1 - self0) / time.Duration(r.n)
	// What the rest of the machine did meanwhile: busy time neither
	// valet nor this driver spent, as a share of all cores.
	capacity := float64(runtime.NumCPU()) * r.elapsed.Seconds()
	r.others = max(0, ((busy1-busy0)-(cpu1-cpu0)-(self1-self0)).Seconds()/capacity)
	if spec.ceiling {
		r.ceilingBefore, r.ceilingAfter = before, cryptoCeiling(2*time.Second)
	}
	return r
}

// medianResult is the median of each figure of rs (rate, latencies, CPU
// per mint, others' share, crypto ceiling) over the runs.
func medianResult(rs []loadResult) loadResult {
	med := func(v func(loadResult) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = v(r)
		}
		slices.Sort(xs)
		if len(xs)%2 == 1 {
			return xs[len(xs)/2]
		}
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	dur := func(v func(loadResult) time.Duration) time.Duration {
		return time.Duration(med(func(r loadResult) float64 { return float64(v(r)) }))
	}
	out := loadResult{
		rate:      med(func(r loadResult) float64 { return r.rate }),
		p50:       dur(func(r loadResult) time.Duration { return r.p50 }),
		p99:       dur(func(r loadResult) time.Duration { return r.p99 }),
		serverCPU: dur(func(r loadResult) time.Duration { return r.serverCPU }),
		driverCPU: dur(func(r loadResult) time.Duration { return r.driverCPU }),
		others:    med(func(r loadResult) float64 { return r.others }),
	}
	out.ceilingBefore = med(func(r loadResult) float64 { return r.ceiling() })
	out.ceilingAfter = out.ceilingBefore
	for _, r := range rs {
		out.n += r.n
		out.elapsed += r.elapsed
	}
	return out
}

// ceiling is the crypto ceiling of the run's minutes: the mean of the
// measurements before and after it.
func (r loadResult) ceiling() float64 { return (r.ceilingBefore + r.ceilingAfter) / 2 }

// selfCPU is this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the time all cores of the machine spent not idle so far
// (/proc/stat: everything but idle and iowait).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// mintTable measures the jwt backend at each concurrency, re-presenting
// and fresh, each run on a new server, and prints one row per run.
func (b *bench) mintTable(levels []int, d time.Duration) (represented, fresh map[int]loadResult) {
	fmt.Printf("mints through HTTP (jwt backend, durable leases and audit, fsync per commit), %d connections drawing on %d agents:\n", levels[len(levels)-1], benchAgents)
	fmt.Println("  (× ceiling: mints/s over the crypto ceiling measured just before and after the run;")
	fmt.Println("   driver: the load driver's own CPU per mint on the same cores; others: the share of the")
	fmt.Println("   machine other processes used during the run, which the figures could not have)")
	fmt.Printf("  %-36s %9s %9s %9s %10s %9s %9s %8s %7s\n", "connections", "mints/s", "p50", "p99", "ceiling", "× ceiling", "CPU/mint", "driver", "others")
	represented, fresh = map[int]loadResult{}, map[int]loadResult{}
	modes := []struct {
		name  string
		fresh bool
		into  map[int]loadResult
	}{{"re-presenting their attestation", false, represented}, {"fresh attestation every request", true, fresh}}
	row := func(label string, r loadResult) {
		note := ""
		if lo, hi := min(r.ceilingBefore, r.ceilingAfter), max(r.ceilingBefore, r.ceilingAfter); hi > 1.2*lo {
			note = " (ceiling moved: noisy)"
		}
		fmt.Printf("  %-36s %9.0f %9s %9s %10.0f %9.2f %9s %8s %6.0f%%%s\n", label, r.rate,
			r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.ceiling(), r.rate/r.ceiling(),
			r.serverCPU.Round(time.Microsecond), r.driverCPU.Round(time.Microsecond), 100*r.others, note)
	}
	for _, m := range modes {
		for _, c := range levels {
			r := b.mintLoad(c, d, m.fresh, true)
			m.into[c] = r
			row(fmt.Sprintf("%d, %s", c, m.name), r)
		}
	}
	// The top level again, the two modes alternately: the summary takes
	// the medians, as one run on these machines can be 20% off.
	top := levels[len(levels)-1]
	if b.repeat > 1 {
		runs := [][]loadResult{{represented[top]}, {fresh[top]}}
		for range b.repeat - 1 {
			for i, m := range modes {
				r := b.mintLoad(top, d, m.fresh, false)
				runs[i] = append(runs[i], r)
				row(fmt.Sprintf("%d, %s", top, m.name), r)
			}
		}
		for i, m := range modes {
			m.into[top] = medianResult(runs[i])
			row(fmt.Sprintf("%d, %s", top, strings.SplitN(m.name, " ", 2)[0]+", median of "+strconv.Itoa(b.repeat)), m.into[top])
		}
	}
	fmt.Println()
	return represented, fresh
}

// printSummary prints the four figures the performance targets are set
// on, from this run: at the highest concurrency, mint throughput over the
// crypto ceiling, p99 latency, valet against Vault's own JWT login, and
// valet's CPU per mint.
func printSummary(c int, represented, fresh loadResult, vault *vaultLevel) {
	fmt.Printf("summary at %d connections (this run: valet's medians, Vault's fastest of the repeated runs; targets from the performance section of the README):\n", c)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Printf("  %-44s %-40s %s\n", "", "measured", "target")
	fmt.Printf("  %-44s %-40s %s\n", "valet jwt mint vs the crypto ceiling",
		fmt.Sprintf("%.2f× re-presented, %.2f× fresh", represented.rate/represented.ceiling(), fresh.rate/fresh.ceiling()),
		"≥ 0.6×: "+met(represented.rate/represented.ceiling() >= 0.6 && fresh.rate/fresh.ceiling() >= 0.6))
	fmt.Printf("  %-44s %-40s %s\n", "p99 latency",
		fmt.Sprintf("%s re-presented, %s fresh", represented.p99.Round(10*time.Microsecond), fresh.p99.Round(10*time.Microsecond)),
		"≤ 15 ms re-presented, ≤ 25 ms fresh: "+met(represented.p99 <= 15*time.Millisecond && fresh.p99 <= 25*time.Millisecond))
	if vault != nil {
		// Both verify a fresh attestation and hand out a credential,
		// durably, on the same cores: valet its own token (jwt backend),
		// Vault a token of its own.
		ratio := fresh.rate / vault.login.rate
		fmt.Printf("  %-44s %-40s %s\n", "valet jwt mint vs Vault's own JWT login",
			fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s, fresh attestations)", ratio, fresh.rate, vault.login.rate), "≥ 3×: "+met(ratio >= 3))
		fmt.Printf("  %-44s %-40s\n", "  (a Vault token through valet instead)",
			fmt.Sprintf("%.2f× (%.0f/s)", vault.fresh.rate/vault.login.rate, vault.fresh.rate))
	}
	fmt.Printf("  %-44s %-40s %s\n", "valet CPU per mint",
		fmt.Sprintf("%s re-presented, %s fresh", represented.serverCPU.Round(time.Microsecond), fresh.serverCPU.Round(time.Microsecond)),
		"≤ 120 µs re-presented, ≤ 220 µs fresh: "+met(represented.serverCPU <= 120*time.Microsecond && fresh.serverCPU <= 220*time.Microsecond))
	fmt.Printf("  %-44s %-40s\n", "load driver CPU per mint (same cores)",
		fmt.Sprintf("%s re-presented, %s fresh", represented.driverCPU.Round(time.Microsecond), fresh.driverCPU.Round(time.Microsecond)))
	fmt.Println()
}
