package main

import (
	"fmt"
	"os"
	"time"

	"github.com/valet-broker/valet/backends/gcp/gcptest"
)

// gcpBench mints Google service-account access tokens through valet
// against the local IAM Credentials test server, and sets valet's latency
// beside the server's own response time: the difference is what valet
// adds (attestation, policy, the durable intent and activation, the
// client library).
func (b *bench) gcpBench(levels []int, d time.Duration) []overheadLevel {
	srv, err := gcptest.New(gcptest.Config{})
	must(err)
	must(srv.Listen("127.0.0.1:0"))
	cleanups = append(cleanups, srv.Close)
	account := srv.CreateServiceAccount("bench", gcptest.ServiceAccountOptions{})
	// valet serve inherits the environment: the test server's key file
	// becomes its Application Default Credentials.
	exportEnv(srv.Env())
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
	out := overheadRun(s, e, "bench-gcp", levels, d, srv.Handled)
	runCleanups()
	return out
}

func printGCP(levels []overheadLevel) {
	printOverhead("Google access tokens (gcp backend, local IAM Credentials test server checking bearer tokens) — valet's overhead over the server's own time:", "IAM answer", levels)
}
