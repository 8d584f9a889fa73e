package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// BenchmarkCreateActive records leases as jwt mints do (an active lease
// with its agent and lineage, and its mint record, in one transaction)
// from 64 writers at once, drawn from 1,000 agents: the store's share of a
// mint under load, with its group commit. commits/op is how many commits
// a lease took (the share of an fsync).
func BenchmarkCreateActive(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "valet.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var n atomic.Int64
	tx0 := lastCommittedTx(b, s.db)
	st0 := s.db.Stats().TxStats
	b.SetParallelism(32) // 64 writers on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			now := time.Now()
			agent := fmt.Sprintf("bench/agent-%d", i%1000)
			l := &leases.Lease{
				ID: leases.NewID(now), AgentID: agent, Role: "bench", Backend: "tokens", State: leases.StateActive,
				CreatedAt: now, ExpiresAt: now.Add(15 * time.Minute), MaxExpires: now.Add(time.Hour),
				Lineage:   leases.Lineage{Issuer: "https://issuer.bench", JTI: fmt.Sprintf("agent-%d", i%1000)},
				RequestID: "0123456789abcdef", Renewable: true,
			}
			l.Handle = l.ID
			e := audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: agent}, Decision: audit.Allow,
				Reason: "permitted by policy0", AgentID: agent, Role: "bench", LeaseID: l.ID, PolicyVersion: "sha256:0123456789abcdef",
				PolicyIDs: []string{"policy0"}, RequestID: "0123456789abcdef", Details: map[string]string{"ttl": "15m0s", "backend": "tokens"}}
			if err := s.CreateActive(ctx, l, now, e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(lastCommittedTx(b, s.db)-tx0)/float64(b.N), "commits/op")
	st := s.db.Stats().TxStats
	b.ReportMetric(float64(st.GetNodeCount()-st0.GetNodeCount())/float64(b.N), "nodes/op")
	b.ReportMetric(float64(st.GetWrite()-st0.GetWrite())/float64(b.N), "pagewrites/op")
}
