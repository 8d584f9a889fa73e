package detectors

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// mintObservations are the observations of mints of 64 agents, each
// with its own lineage and address, as the mint flow makes them.
func mintObservations() []broker.Observation {
	obs := make([]broker.Observation, 64)
	for i := range obs {
		obs[i] = broker.Observation{Kind: broker.ObserveMint, AgentID: fmt.Sprintf("k8s/ns/agents/sa/agent-%d", i), Role: "bench",
			LeaseID: "01KBENCHLEASE0000000000000", SourceIP: fmt.Sprintf("10.0.%d.7", i),
			Lineage: broker.Lineage{Issuer: "https://k8s", JTI: fmt.Sprintf("jti-%d", i), PodUID: fmt.Sprintf("pod-%d", i)}}
	}
	return obs
}

// BenchmarkDetectorsPerMint is what every default detector together adds
// to one mint, 64 agents minting at once (run with -cpu to vary the
// cores): the observation handed to each, none firing.
func BenchmarkDetectorsPerMint(b *testing.B) {
	cfg := config.Defaulted(func(c *Config) { c.MintRate.Ceiling = 1 << 30 })
	ds, err := New(context.Background(), cfg, Deps{})
	if err != nil {
		b.Fatal(err)
	}
	obs := mintObservations()
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	var next atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 goroutines
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			o := obs[n%64]
			o.Time = t0.Add(time.Duration(n) * time.Microsecond)
			o.ExpiresAt = o.Time.Add(15 * time.Minute)
			for _, d := range ds {
				if got := d.Observe(o); got != nil {
					b.Fatalf("%s fired: %+v", d.Name(), got)
				}
			}
		}
	})
}

// TestDetectorsConcurrent: every detector is safe for concurrent use
// (run with -race).
func TestDetectorsConcurrent(t *testing.T) {
	ds, err := New(context.Background(), config.Defaulted[Config](nil), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	obs := mintObservations()
	kinds := []string{broker.ObserveMint, broker.ObserveDenied, broker.ObserveRenew, broker.ObserveReplay, broker.ObserveEndedUse, broker.ObserveLineageRevoked}
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				o := obs[(w*7+i)%64]
				o.Kind = kinds[i%len(kinds)]
				o.Time = t0.Add(time.Duration(i) * time.Second)
				o.ExpiresAt, o.RenewedFrom, o.LineageID = o.Time.Add(time.Hour), o.Time.Add(50*time.Minute), "pod:pod-3"
				for _, d := range ds {
					d.Observe(o)
				}
			}
		}()
	}
	wg.Wait()
}
