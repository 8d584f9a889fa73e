package bolt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/leasetest"
)

// Once pruning has freed thousands of pages, a small write still writes
// only the pages it changes: the list of free pages is not written at each
// commit. (It was: eight bytes per free page in one contiguous run of
// pages, which under a steady churn no run of free pages was long enough
// to hold, so every commit grew the file, and it never reached a
// plateau.)
func TestFreedPagesDoNotWeighOnEachCommit(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	var ls []*leases.Lease
	for i := range 20000 {
		ls = append(ls, leasetest.NewPending(t0, fmt.Sprintf("agent-%d", i%1000), time.Minute))
	}
	leasetest.SeedActive(t, s, ls)
	if _, err := s.ExpireDue(ctx, t0.Add(time.Hour), len(ls)); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := s.PruneEnded(ctx, t0.Add(2*time.Hour), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if n < 1000 {
			break
		}
	}
	if _, err := s.ArchiveAudit(ctx, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	free := s.db.Stats().FreePageN
	if free < 5000 {
		t.Fatalf("only %d free pages after the churn; the test needs thousands", free)
	}
	pageCount := func() int64 { st := s.db.Stats(); return st.TxStats.GetPageCount() }
	before := pageCount()
	l := leasetest.NewPending(t0.Add(3*time.Hour), "agent-x", time.Minute)
	l.State = leases.StateActive
	if err := s.CreateActive(ctx, l, l.CreatedAt, audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: l.AgentID}}); err != nil {
		t.Fatal(err)
	}
	// The list of free pages takes eight bytes a page.
	if pages, list := pageCount()-before, int64(free*8/4096); pages >= list {
		t.Errorf("one lease with its record wrote %d pages with %d pages free (as many as their list takes, %d)", pages, free, list)
	}
}
