package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// exportEnv sets KEY=value pairs in the bench's environment, which the
// valet serve it starts inherits (a test server's credentials for valet).
func exportEnv(kvs []string) {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		must(os.Setenv(k, v))
	}
}

// overheadLevel is a backend's result at one concurrency, beside the time
// its test server spent answering.
type overheadLevel struct {
	c      int
	mint   loadResult
	server time.Duration // the test server's own time per request
}

// overheadRun mints role on s at each concurrency and reads, around each
// run, how many requests the backend's test server answered and the time
// it spent (handled): valet's latency beside the server's own.
func overheadRun(s *server, e *env, role string, levels []int, d time.Duration, handled func() (int64, time.Duration)) []overheadLevel {
	var out []overheadLevel
	for _, c := range levels {
		n0, busy0 := handled()
		r := mintRun(s, e, role, c, d, false)
		n1, busy1 := handled()
		lv := overheadLevel{c: c, mint: r}
		if n1 > n0 {
			lv.server = (busy1 - busy0) / time.Duration(n1-n0)
		}
		out = append(out, lv)
	}
	return out
}

// printOverhead prints levels under title; answer names the server's own
// time.
func printOverhead(title, answer string, levels []overheadLevel) {
	fmt.Println(title)
	fmt.Printf("  %-12s %10s %10s %10s %14s %16s\n", "agents", "mints/s", "p50", "p99", answer, "valet adds (p50)")
	for _, lv := range levels {
		fmt.Printf("  %-12d %10.0f %10s %10s %14s %16s\n", lv.c, lv.mint.rate, lv.mint.p50.Round(10*time.Microsecond), lv.mint.p99.Round(10*time.Microsecond),
			lv.server.Round(time.Microsecond), (lv.mint.p50 - lv.server).Round(10*time.Microsecond))
	}
	fmt.Println()
}
