package main

import (
	"fmt"
	"os"
	"time"

	"github.com/valet-broker/valet/backends/aws/awstest"
)

// awsBench mints AWS STS sessions through valet against the local STS/IAM
// test server, and sets valet's latency beside the server's own response
// time: the difference is what valet adds (attestation, policy, the
// durable intent and activation, the SDK's signing).
func (b *bench) awsBench(levels []int, d time.Duration) []overheadLevel {
	srv := awstest.New(awstest.Config{})
	must(srv.Listen("127.0.0.1:0"))
	cleanups = append(cleanups, srv.Stop)
	arn := srv.CreateRole("bench", awstest.RoleOptions{})
	// valet serve inherits the environment: the test server's keys
	// become its AWS credentials through the standard chain.
	exportEnv(srv.Env())
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
	out := overheadRun(s, e, "bench-aws", levels, d, srv.Handled)
	runCleanups()
	return out
}

func printAWS(levels []overheadLevel) {
	printOverhead("AWS STS sessions (aws backend, local STS/IAM test server verifying SigV4) — valet's overhead over the server's own time:", "STS answer", levels)
}
