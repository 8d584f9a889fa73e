package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
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

// printDetectorCost prints each run's valet CPU per mint and the ratio
// of the medians: what the detectors add to a mint.
func printDetectorCost(c int, runs []detectorRun) {
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
	fmt.Printf("  valet CPU per mint, median: detectors off %s, on %s; on/off %.3f (%+.1f%%; target ≤ +5%%)\n\n",
		mOff.Round(time.Microsecond), mOn.Round(time.Microsecond), float64(mOn)/float64(mOff), 100*(float64(mOn)/float64(mOff)-1))
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
