package agents

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

func TestRiskDecay(t *testing.T) {
	const hl = time.Hour
	cases := []struct {
		name string
		risk Risk
		at   time.Time
		want int
	}{
		{"as set", Risk{Score: 60, At: t0}, t0, 60},
		{"one half-life later", Risk{Score: 60, At: t0}, t0.Add(hl), 30},
		{"two half-lives later", Risk{Score: 60, At: t0}, t0.Add(2 * hl), 15},
		{"rounded to the nearest", Risk{Score: 70, At: t0}, t0.Add(time.Second), 70},
		{"before it was set reads the score", Risk{Score: 60, At: t0}, t0.Add(-hl), 60},
		{"long gone", Risk{Score: 90, At: t0}, t0.Add(10 * hl), 0},
		{"the zero risk", Risk{}, t0, 0},
		{"capped at 100", Risk{Score: 250, At: t0}, t0, 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.risk.Value(c.at, hl); got != c.want {
				t.Fatalf("Value = %d, want %d", got, c.want)
			}
		})
	}
}

func TestRiskRaise(t *testing.T) {
	const hl = time.Hour
	cases := []struct {
		name   string
		from   Risk
		points int
		at     time.Time
		want   int
	}{
		{"from nothing", Risk{}, 60, t0, 60},
		{"adds to the decayed score", Risk{Score: 60, At: t0}, 10, t0.Add(hl), 40},
		{"caps at 100", Risk{Score: 60, At: t0}, 60, t0, 100},
		{"negative points add nothing", Risk{Score: 20, At: t0}, -50, t0, 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.from.Raise(c.points, c.at, hl)
			if got := r.Value(c.at, hl); got != c.want || !r.At.Equal(c.at) {
				t.Fatalf("Raise = %+v (value %d), want value %d at %s", r, got, c.want, c.at)
			}
		})
	}
}

func TestSee(t *testing.T) {
	a := New("test/a", t0)
	if err := a.See(Sighting{AgentID: a.ID, First: t0.Add(time.Minute), Last: t0.Add(2 * time.Minute), Roles: []string{"b", "a"}}); err != nil {
		t.Fatal(err)
	}
	if !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(t0.Add(2*time.Minute)) || !slices.Equal(a.Roles, []string{"a", "b"}) {
		t.Fatalf("after a sighting: %+v", a)
	}
	if err := a.See(Sighting{First: t0.Add(time.Minute), Last: t0.Add(time.Minute), Roles: []string{"a"}}); !errors.Is(err, ErrUnchanged) {
		t.Fatalf("a sighting that adds nothing: %v, want ErrUnchanged", err)
	}
	if err := a.See(Sighting{First: t0.Add(-time.Hour), Last: t0}); err != nil || !a.FirstSeen.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("an earlier sighting: %v, first seen %s", err, a.FirstSeen)
	}
	var many []string
	for i := range MaxRoles + 10 {
		many = append(many, fmt.Sprintf("role-%03d", i))
	}
	if err := a.See(Sighting{First: t0, Last: t0, Roles: many}); err != nil || len(a.Roles) != MaxRoles {
		t.Fatalf("roles beyond the bound: %v, %d roles kept", err, len(a.Roles))
	}
}

func TestApplyAndRelease(t *testing.T) {
	const hl = time.Hour
	a := New("test/a", t0)
	sig := func(id string, at time.Time) *Signal {
		return &Signal{ID: id, Severity: SeverityHigh, Reason: "r " + id, Source: Source{Kind: SourceREST, Name: "siem"},
			Action: ActionQuarantine, ReceivedAt: at}
	}
	q := &Quarantine{Since: t0, Reason: "signal 1", By: audit.Actor{Type: audit.ActorDetector, ID: "siem"}, SignalID: "1"}
	if !a.Apply(sig("1", t0), 60, hl, q) {
		t.Fatal("the first quarantining signal did not quarantine")
	}
	if !a.QuarantinedAt(t0) || a.Risk.Value(t0, hl) != 60 || a.Signals[0].RiskAfter != 60 {
		t.Fatalf("after the signal: %+v", a)
	}
	// A second signal raises the risk but keeps the first quarantine.
	if a.Apply(sig("2", t0.Add(time.Minute)), 60, hl, &Quarantine{Since: t0.Add(time.Minute), Reason: "signal 2"}) {
		t.Fatal("a quarantined agent was quarantined again")
	}
	if a.Quarantine.SignalID != "1" || a.Signals[0].ID != "2" || a.Risk.Value(t0.Add(time.Minute), hl) != 100 {
		t.Fatalf("after the second signal: %+v", a)
	}
	if err := a.Isolate(Quarantine{Since: t0.Add(2 * time.Minute)}); !errors.Is(err, ErrState) {
		t.Fatalf("quarantining a quarantined agent: %v, want ErrState", err)
	}
	rel := Release{At: t0.Add(3 * time.Minute), By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, Reason: "checked"}
	if err := a.Release(rel); err != nil {
		t.Fatal(err)
	}
	if a.QuarantinedAt(rel.At) || a.LastRelease.Reason != "checked" {
		t.Fatalf("after release: %+v", a)
	}
	if err := a.Release(rel); !errors.Is(err, ErrState) {
		t.Fatalf("releasing a released agent: %v, want ErrState", err)
	}
	for i := range MaxRecentSignals + 5 {
		a.Apply(sig(fmt.Sprint(i+10), t0.Add(time.Hour)), 0, hl, nil)
	}
	if len(a.Signals) != MaxRecentSignals {
		t.Fatalf("%d recent signals kept, want %d", len(a.Signals), MaxRecentSignals)
	}
}

func TestAutomaticRelease(t *testing.T) {
	a := New("test/a", t0)
	a.Apply(&Signal{ID: "1", ReceivedAt: t0, Action: ActionQuarantine}, 60, time.Hour,
		&Quarantine{Since: t0, Reason: "r", ReleaseAt: t0.Add(time.Hour)})
	if !a.QuarantinedAt(t0.Add(59*time.Minute)) || a.QuarantinedAt(t0.Add(time.Hour)) {
		t.Fatal("the quarantine does not end at its release time")
	}
	if err := a.ReleaseDue(t0.Add(30 * time.Minute)); !errors.Is(err, ErrUnchanged) {
		t.Fatalf("release before its time: %v", err)
	}
	if err := a.ReleaseDue(t0.Add(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if a.Quarantine != nil || !a.LastRelease.At.Equal(t0.Add(time.Hour)) || a.LastRelease.By != audit.SystemActor {
		t.Fatalf("after the automatic release: %+v", a)
	}
}

func TestCursor(t *testing.T) {
	a := &Agent{ID: "k8s/ns/sa.with.dots", LastSeen: t0}
	at, id, ok := ParseCursor(a.Cursor())
	if !ok || id != a.ID || !at.Equal(t0) {
		t.Fatalf("round trip: %v %q %v", at, id, ok)
	}
	for _, bad := range []string{"", "x", "12", ".a", "-5.a", "+5.a", "99999999999999999999.a", "1x.a"} {
		if _, _, ok := ParseCursor(bad); ok {
			t.Errorf("ParseCursor(%q) accepted", bad)
		}
	}
}

// Gates keeps only flagged agents: a gate with neither quarantine nor
// risk is dropped by Set and by Replace.
func TestGates(t *testing.T) {
	var g Gates
	q := Gate{Quarantine: &Quarantine{Reason: "signal"}}
	risky := Gate{Risk: Risk{Score: 5}}
	g.Set("a", q)
	g.Set("b", risky)
	if g.Get("a").Quarantine == nil || g.Get("b").Risk.Score != 5 || g.Get("c") != (Gate{}) {
		t.Fatalf("after Set: a %+v, b %+v, c %+v", g.Get("a"), g.Get("b"), g.Get("c"))
	}
	g.Set("a", Gate{})
	if g.Get("a").Quarantine != nil || len(g.m) != 1 {
		t.Fatalf("a cleared gate is kept: %v", g.m)
	}
	g.Replace(map[string]Gate{"c": risky, "d": {}})
	if len(g.m) != 1 || g.Get("c").Risk.Score != 5 || g.Get("b") != (Gate{}) {
		t.Fatalf("after Replace: %v, want only c", g.m)
	}
}
