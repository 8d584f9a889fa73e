package web

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

func TestConsoleActivityChartCountsPerHour(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	now := time.Date(2030, 5, 17, 14, 20, 0, 0, time.UTC)
	agent := audit.Actor{Type: audit.ActorAgent, ID: "test/a"}
	rec := func(at time.Time, e audit.Entry) {
		t.Helper()
		if err := f.store.Audit(ctx, at, e); err != nil {
			t.Fatal(err)
		}
	}
	// Outside the window: 25 hours ago.
	rec(now.Add(-25*time.Hour), audit.Entry{Kind: audit.KindMint, Actor: agent, Decision: audit.Allow, AgentID: "test/a"})
	// 13:00-14:00: two mints, a denial, a revocation recorded twice
	// (operator's revoke, backend's confirmation) and a release.
	at := time.Date(2030, 5, 17, 13, 10, 0, 0, time.UTC)
	rec(at, audit.Entry{Kind: audit.KindMint, Actor: agent, Decision: audit.Allow, AgentID: "test/a", LeaseID: "L1"})
	rec(at, audit.Entry{Kind: audit.KindMint, Actor: agent, Decision: audit.Allow, AgentID: "test/a", LeaseID: "L2"})
	rec(at, audit.Entry{Kind: audit.KindMint, Actor: agent, Decision: audit.Deny, AgentID: "test/a", Reason: "forbidden by policy"})
	rec(at.Add(time.Minute), audit.Entry{Kind: audit.KindRevoke, Actor: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, AgentID: "test/a", LeaseID: "L1"})
	rec(at.Add(2*time.Minute), audit.Entry{Kind: audit.KindRevoked, Actor: audit.Actor{Type: audit.ActorSystem}, AgentID: "test/a", LeaseID: "L1"})
	// The release in this hour, its confirmation in the next: one
	// revocation, in the hour it began.
	rec(at.Add(49*time.Minute), audit.Entry{Kind: audit.KindRelease, Actor: agent, AgentID: "test/a", LeaseID: "L2"})
	rec(now.Add(-10*time.Minute), audit.Entry{Kind: audit.KindRevoked, Actor: audit.Actor{Type: audit.ActorSystem}, AgentID: "test/a", LeaseID: "L2"})
	// 14:00-now: a renew denial (an agent's denial, not a mint denial).
	rec(now.Add(-time.Minute), audit.Entry{Kind: audit.KindRenew, Actor: agent, Decision: audit.Deny, AgentID: "test/a", Reason: "renew refused"})

	a, err := scanActivity(context.Background(), f.store, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Hours) != 24 || !a.Hours[23].Start.Equal(time.Date(2030, 5, 17, 14, 0, 0, 0, time.UTC)) || !a.From.Equal(now.Truncate(time.Hour).Add(-23*time.Hour)) {
		t.Fatalf("hours from %s, last %s", a.From, a.Hours[len(a.Hours)-1].Start)
	}
	h13, h14 := a.Hours[22], a.Hours[23]
	if h13.Mints != 2 || h13.Denials != 1 || h13.Revocations != 2 {
		t.Fatalf("13:00: %+v", h13)
	}
	if h14.Mints != 0 || h14.Denials != 0 || h14.Revocations != 0 {
		t.Fatalf("14:00: %+v", h14)
	}
	if a.Total.Mints != 2 || a.Truncated {
		t.Fatalf("totals %+v, truncated %v", a.Total, a.Truncated)
	}
	ag := a.Agents["test/a"]
	if ag == nil || ag.Mints != 2 || ag.Denials != 2 || ag.LastDenials[0].Reason != "renew refused" {
		t.Fatalf("agent activity %+v", ag)
	}

	ch := newChart(a)
	var bars []string
	for _, b := range ch.Bars {
		if b.H > 0 {
			bars = append(bars, b.Label)
		}
	}
	if got := strings.Join(bars, "; "); got != "13:00–14:00 UTC: 2 mints; 13:00–14:00 UTC: 1 denials; 13:00–14:00 UTC: 2 revocations" {
		t.Fatalf("bars: %s", got)
	}
	for _, b := range ch.Bars {
		if b.Y+b.H != ch.PlotTop+ch.PlotH || b.X < ch.PlotLeft || b.X+b.W > ch.PlotLeft+ch.PlotW {
			t.Fatalf("bar outside the plot: %+v", b)
		}
	}
}

func TestConsoleActivityScanIsBounded(t *testing.T) {
	f := newFixture(t, nil)
	now := f.clock.Now()
	entries := make([]audit.Entry, 0, 1000)
	for i := 0; i < 1000; i++ {
		entries = append(entries, audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: "test/a"}, Decision: audit.Allow, AgentID: "test/a"})
	}
	for i := 0; i < activityMaxRecords/1000+1; i++ {
		if err := f.store.Audit(context.Background(), now, entries...); err != nil {
			t.Fatal(err)
		}
	}
	a, err := scanActivity(context.Background(), f.store, now)
	if err != nil {
		t.Fatal(err)
	}
	if a.Scanned != activityMaxRecords || !a.Truncated || a.Total.Mints != activityMaxRecords {
		t.Fatalf("scanned %d, truncated %v, mints %d", a.Scanned, a.Truncated, a.Total.Mints)
	}
	if !strings.Contains(a.window(), "latest 50000 audit records") {
		t.Fatalf("window %q", a.window())
	}
}
