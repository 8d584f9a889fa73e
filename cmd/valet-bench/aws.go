package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends/aws/awstest"
)

// awsLevel is the AWS result at one concurrency.
type awsLevel struct {
	c    int
	mint loadResult
	sts  time.Duration // the test server's own time per request
}

// awsBench mints AWS STS sessions through valet against the local STS/IAM
// test server, and sets valet's latency beside the server's own response
// time: the difference is what valet adds (attestation, policy, the
// durable intent and activation, the SDK's signing).
func (b *bench) awsBench(levels []int, d time.Duration) []awsLevel {
	srv := awstest.New(awstest.Config{})
	must(srv.Listen("127.0.0.1:0"))
	cleanups = append(cleanups, srv.Stop)
	arn := srv.CreateRole("bench", awstest.RoleOptions{})
	// valet serve inherits the environment: the test server's keys
	// become its AWS credentials through the standard chain.
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		must(os.Setenv(k, v))
	}
	e := newEnv(fmt.Sprintf(`  - name: aws-main
    type: aws
    endpoint: %s
`, srv.URL), fmt.Sprintf(`  - name: bench-aws
    backend: aws-main
    ttl: 15m
    max_ttl: 1h
    renewable: false
    params: {role_arn: %s}
`, arn))
	cleanups = append(cleanups, func() { os.RemoveAll(e.dir) })
	s := b.serve(e)
	cleanups = append(cleanups, s.stop)
	var out []awsLevel
	for _, c := range levels {
		n0, busy0 := srv.Handled()
		r := mintRun(s, e, "bench-aws", c, d, false)
		n1, busy1 := srv.Handled()
		lv := awsLevel{c: c, mint: r}
		if n1 > n0 {
			lv.sts = (busy1 - busy0) / time.Duration(n1-n0)
		}
		out = append(out, lv)
	}
	runCleanups()
	return out
}

func printAWS(levels []awsLevel) {
	fmt.Println("AWS STS sessions (aws backend, local STS/IAM test server verifying SigV4) — valet's overhead over the server's own time:")
	fmt.Printf("  %-12s %10s %10s %10s %14s %16s\n", "agents", "mints/s", "p50", "p99", "STS answer", "valet adds (p50)")
	for _, lv := range levels {
		fmt.Printf("  %-12d %10.0f %10s %10s %14s %16s\n", lv.c, lv.mint.rate, lv.mint.p50.Round(10*time.Microsecond), lv.mint.p99.Round(10*time.Microsecond),
			lv.sts.Round(time.Microsecond), (lv.mint.p50 - lv.sts).Round(10*time.Microsecond))
	}
	fmt.Println()
}
