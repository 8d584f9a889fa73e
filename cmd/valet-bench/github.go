package main

import (
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/valet-broker/valet/backends/github/githubtest"
)

// githubLevel is the GitHub comparison at one concurrency.
type githubLevel struct {
	c             int
	direct, valet loadResult
}

// githubBench measures mints of GitHub installation tokens through valet
// (durable pending lease, token created at the GitHub test server, its
// sealed copy fsynced, lease activated) beside the test server's own token
// creation (the same POST, with an app JWT, straight to it), at each
// concurrency: the difference is what valet adds.
func (b *bench) githubBench(levels []int, d time.Duration) []githubLevel {
	srv, err := githubtest.Start(githubtest.Options{})
	must(err)
	cleanups = append(cleanups, srv.Close)
	e := newEnv(fmt.Sprintf(`  - name: github
    type: github
    base_url: %s
    apps:
      - {name: bench, app_id: %d, private_key_file: %s}
`, srv.URL, srv.AppID, srv.KeyFile), `  - name: bench-github
    backend: github
    ttl: 15m
    max_ttl: 1h
    params: {installation: 42, repositories: [widgets], permissions: {contents: read}}
`)
	cleanups = append(cleanups, func() { os.RemoveAll(e.dir) })
	s := b.serve(e)
	cleanups = append(cleanups, s.stop)
	u, _ := url.Parse(srv.URL)
	var out []githubLevel
	for _, c := range levels {
		appJWT, err := srv.AppJWT() // nine minutes: one per level
		must(err)
		direct := request(u.Host, "/api/v3/app/installations/42/access_tokens", appJWT,
			[]byte(`{"repositories":["widgets"],"permissions":{"contents":"read"}}`))
		next := func(agent, i int) []byte { return direct }
		runLoad(srv.URL, c, time.Second, 201, next)
		lv := githubLevel{c: c, direct: runLoad(srv.URL, c, d, 201, next)}
		lv.valet = mintRun(s, e, "bench-github", c, d, false)
		out = append(out, lv)
	}
	runCleanups()
	return out
}

func printGitHub(levels []githubLevel) {
	fmt.Println("GitHub installation tokens (GitHub test server in the bench process) — valet vs the test server's own token creation, same run:")
	fmt.Printf("  %-12s %-44s %10s %10s %10s %12s %12s\n", "concurrency", "path", "per s", "p50", "p99", "added p50", "added p99")
	for _, lv := range levels {
		fmt.Printf("  %-12d %-44s %10.0f %10s %10s\n", lv.c, "test server: POST .../access_tokens", lv.direct.rate,
			lv.direct.p50.Round(10*time.Microsecond), lv.direct.p99.Round(10*time.Microsecond))
		fmt.Printf("  %-12d %-44s %10.0f %10s %10s %12s %12s\n", lv.c, "valet mint, re-presented attestation", lv.valet.rate,
			lv.valet.p50.Round(10*time.Microsecond), lv.valet.p99.Round(10*time.Microsecond),
			(lv.valet.p50 - lv.direct.p50).Round(10*time.Microsecond), (lv.valet.p99 - lv.direct.p99).Round(10*time.Microsecond))
	}
	fmt.Println()
}
