package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/detectors"
	"github.com/valet-broker/valet/leases/config"
)

// detectorsOff turns every built-in detector off.
const detectorsOff = `signals:
  detectors:
    mint_rate: {enabled: false}
    new_role: {enabled: false}
    denial_burst: {enabled: false}
    replay: {enabled: false}
    revoked_use: {enabled: false}
    new_network: {enabled: false}
    renewal_hold: {enabled: false}
`

// detectorsOn keeps every built-in detector on with its defaults, but
// for the mint-rate ceiling: each bench agent mints about a hundred
// times a second, which the default ceiling (600 a minute) would rightly
// flag. The bench measures what watching costs, not raising signals.
const detectorsOn = `signals:
  detectors:
    mint_rate: {ceiling: 100000000}
`

// detectorRun is one mint run with the detectors on or off.
type detectorRun struct {
	on bool
	r  loadResult
}

// detectorCost runs c agents re-presenting their attestation against a
// fresh server, rounds times with the detectors off and rounds times
// with them on, alternately (off first), so that the machine's drift
// weighs on both alike.
func (b *bench) detectorCost(c int, d time.Duration, rounds int) []detectorRun {
	var out []detectorRun
	for range rounds {
		for _, on := range []bool{false, true} {
			section := detectorsOff
			if on {
				section = detectorsOn
			}
			e := newEnv("", "")
			appendConfig(e, section)
			s := b.serve(e)
			r := mintRun(s, e, "bench", c, d, false)
			s.stop()
			os.RemoveAll(e.dir)
			out = append(out, detectorRun{on: on, r: r})
		}
	}
	return out
}

// observeCPU measures the detectors directly, in this process: c
// goroutines hand the observation of a mint (each goroutine an agent of
// its own) to every default detector (the mint-rate ceiling raised as in
// detectorsOn) for d, and it returns the process's CPU time per mint.
// Nothing else runs meanwhile, so this is the detectors' own cost, without
// the noise of two servers compared.
func observeCPU(c int, d time.Duration) time.Duration {
	cfg := config.Defaulted(func(c *detectors.Config) { c.MintRate.Ceiling = 100000000 })
	ds, err := detectors.New(context.Background(), cfg, detectors.Deps{})
	must(err)
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	cpu0 := processCPU()
	for i := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := broker.Observation{Kind: broker.ObserveMint, AgentID: fmt.Sprintf("bench/agent-%d", i), Role: "bench",
				LeaseID: "01KBENCHLEASE0000000000000", SourceIP: "127.0.0.1",
				Lineage: broker.Lineage{Issuer: "https://issuer.bench", JTI: fmt.Sprintf("agent-%d", i)}}
			for k := 0; ; k++ {
				if k%64 == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
				o.Time = time.Now()
				o.ExpiresAt = o.Time.Add(15 * time.Minute)
				for _, det := range ds {
					det.Observe(o)
				}
				n.Add(1)
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	return (processCPU() - cpu0) / time.Duration(n.Load())
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	must(syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// printDetectorCost prints each run's valet CPU per mint and the ratio
// of the medians, and the detectors' own CPU per mint measured in this
// process (direct) against the median mint: what the detectors add.
func printDetectorCost(c int, runs []detectorRun, direct time.Duration) {
	fmt.Printf("detectors' cost per mint, %d agents re-presenting their attestation (alternate runs, fresh server each):\n", c)
	var off, on []time.Duration
	var line []string
	for _, r := range runs {
		state := "off"
		if r.on {
			state = "on"
			on = append(on, r.r.serverCPU)
		} else {
			off = append(off, r.r.serverCPU)
		}
		line = append(line, fmt.Sprintf("%s %s (%.0f/s)", state, r.r.serverCPU.Round(time.Microsecond), r.r.rate))
	}
	fmt.Printf("  runs: %s\n", strings.Join(line, ", "))
	mOff, mOn := median(off), median(on)
	fmt.Printf("  valet CPU per mint, median: detectors off %s, on %s; on/off %.3f (%+.1f%%; target ≤ +5%%)\n",
		mOff.Round(time.Microsecond), mOn.Round(time.Microsecond), float64(mOn)/float64(mOff), 100*(float64(mOn)/float64(mOff)-1))
	fmt.Printf("  the detectors alone, %d goroutines in this process: %s of CPU per mint, %.2f%% of the median mint with them off\n\n",
		c, direct.Round(10*time.Nanosecond), 100*float64(direct)/float64(mOff))
}

// median is the middle value of v (the mean of the two middle ones for
// an even count), 0 for none.
func median[T time.Duration | float64](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
