package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends/gcp/gcptest"
)

// gcpLevel is the Google Cloud result at one concurrency.
type gcpLevel struct {
	c    int
	mint loadResult
	iam  time.Duration // the test server's own time per request
}

// gcpBench mints Google service-account access tokens through valet
// against the local IAM Credentials test server, and sets valet's latency
// beside the server's own response time: the difference is what valet
// adds (attestation, policy, the durable intent and activation, the
// client library).
func (b *bench) gcpBench(levels []int, d time.Duration) []gcpLevel {
	srv, err := gcptest.New(gcptest.Config{})
	must(err)
	must(srv.Listen("127.0.0.1:0"))
	cleanups = append(cleanups, srv.Close)
	account := srv.CreateServiceAccount("bench", gcptest.ServiceAccountOptions{})
	// valet serve inherits the environment: the test server's key file
	// becomes its Application Default Credentials.
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		must(os.Setenv(k, v))
	}
	e := newEnv(fmt.Sprintf(`  - name: gcp-main
    type: gcp
    endpoint: %s
`, srv.URL), fmt.Sprintf(`  - name: bench-gcp
    backend: gcp-main
    ttl: 15m
    max_ttl: 15m
    renewable: false
    params: {service_account: %s}
`, account))
	cleanups = append(cleanups, func() { os.RemoveAll(e.dir) })
	s := b.serve(e)
	cleanups = append(cleanups, s.stop)
	var out []gcpLevel
	for _, c := range levels {
		n0, busy0 := srv.Handled()
		r := mintRun(s, e, "bench-gcp", c, d, false)
		n1, busy1 := srv.Handled()
		lv := gcpLevel{c: c, mint: r}
		if n1 > n0 {
			lv.iam = (busy1 - busy0) / time.Duration(n1-n0)
		}
		out = append(out, lv)
	}
	runCleanups()
	return out
}

func printGCP(levels []gcpLevel) {
	fmt.Println("Google access tokens (gcp backend, local IAM Credentials test server checking bearer tokens) — valet's overhead over the server's own time:")
	fmt.Printf("  %-12s %10s %10s %10s %14s %16s\n", "agents", "mints/s", "p50", "p99", "IAM answer", "valet adds (p50)")
	for _, lv := range levels {
		fmt.Printf("  %-12d %10.0f %10s %10s %14s %16s\n", lv.c, lv.mint.rate, lv.mint.p50.Round(10*time.Microsecond), lv.mint.p99.Round(10*time.Microsecond),
			lv.iam.Round(time.Microsecond), (lv.mint.p50 - lv.iam).Round(10*time.Microsecond))
	}
	fmt.Println()
}
