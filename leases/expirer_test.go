package leases_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// expiryLog records what an Expirer's OnExpire saw.
type expiryLog struct {
	mu    sync.Mutex
	at    map[string]time.Time // lease id -> the time it was expired at
	order []time.Time          // ExpiresAt of each expired lease, in callback order
	twice []string             // leases reported more than once
}

func newExpiryLog() *expiryLog { return &expiryLog{at: map[string]time.Time{}} }

func (x *expiryLog) onExpire(ls []*leases.Lease, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, l := range ls {
		if _, dup := x.at[l.ID]; dup {
			x.twice = append(x.twice, l.ID)
		}
		x.at[l.ID] = now
		x.order = append(x.order, l.ExpiresAt)
	}
}

func (x *expiryLog) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.at)
}

// expirerIdle reports whether the Expirer has nothing due: the earliest
// expiry in the index is in the future and its timer is armed, or the
// index is empty.
func expirerIdle(s leases.ExpiryStore, clk *clock.Fake) bool {
	next, ok, err := s.NextExpiry()
	if err != nil {
		return false
	}
	return !ok || next.After(clk.Now()) && clk.Waiters() == 1
}

func TestExpirerExpiresInOrderWhenDue(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	a := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Minute))
	b := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "b", 2*time.Minute))
	c := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "c", 2*time.Minute)) // same instant as b
	d := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "d", 5*time.Minute))
	all := []*leases.Lease{a, b, c, d}

	log := newExpiryLog()
	e := leases.NewExpirer(s, clk, quietLog)
	e.OnExpire = log.onExpire
	leasetest.StartExpirer(t, e)
	leasetest.Eventually(t, "the expirer arms its timer", func() bool { return clk.Waiters() == 1 })

	steps := []struct {
		name string
		to   time.Time
		want map[string]time.Time // expired so far, with the time they expired at
	}{
		{"just before the first expiry", a.ExpiresAt.Add(-time.Nanosecond), map[string]time.Time{}},
		{"at the first expiry", a.ExpiresAt, map[string]time.Time{a.ID: a.ExpiresAt}},
		{"just before the next two", b.ExpiresAt.Add(-time.Nanosecond), map[string]time.Time{a.ID: a.ExpiresAt}},
		{"two at the same instant", b.ExpiresAt, map[string]time.Time{a.ID: a.ExpiresAt, b.ID: b.ExpiresAt, c.ID: c.ExpiresAt}},
		{"long after the last", t0.Add(time.Hour), map[string]time.Time{a.ID: a.ExpiresAt, b.ID: b.ExpiresAt, c.ID: c.ExpiresAt, d.ID: t0.Add(time.Hour)}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			clk.Set(st.to)
			leasetest.Eventually(t, "the expirer is idle", func() bool { return log.len() >= len(st.want) && expirerIdle(s, clk) })
			for _, l := range all {
				got := leasetest.MustGet(t, s, l.ID)
				at, want := st.want[l.ID]
				switch {
				case want && (got.State != leases.StateExpired || !got.EndedAt.Equal(at)):
					t.Errorf("lease %s = %s ended %v, want expired at %v", l.AgentID, got.State, got.EndedAt, at)
				case !want && got.State != leases.StateActive:
					t.Errorf("lease %s (expires %v) = %s at %v, want still active", l.AgentID, l.ExpiresAt, got.State, st.to)
				}
			}
			if n := log.len(); n != len(st.want) {
				t.Errorf("OnExpire reported %d leases, want %d", n, len(st.want))
			}
		})
	}
	if !slices.IsSortedFunc(log.order, func(x, y time.Time) int { return x.Compare(y) }) {
		t.Errorf("leases expired out of order: %v", log.order)
	}
	if _, ok, _ := s.NextExpiry(); ok {
		t.Error("expiry index is not empty after everything expired")
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateExpired: 4})
	for _, l := range all {
		if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, []string{audit.KindMint, audit.KindExpire}) {
			t.Errorf("audit kinds for %s = %v, want mint then expire", l.AgentID, kinds)
		}
	}
	leasetest.MustVerifyAudit(t, s)
}

func TestExpirerNotify(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	late := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "late", 10*time.Minute))
	log := newExpiryLog()
	e := leases.NewExpirer(s, clk, quietLog)
	e.OnExpire = log.onExpire
	leasetest.StartExpirer(t, e)
	leasetest.Eventually(t, "the expirer arms its timer for the only lease", func() bool {
		return clk.Waiters() == 1 && e.ArmedAt().Equal(late.ExpiresAt)
	})

	// Without a Notify the Expirer does not know about an earlier lease:
	// it sleeps until the deadline it armed.
	unnoticed := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "unnoticed", 2*time.Minute))
	clk.Set(unnoticed.ExpiresAt)
	if got := leasetest.MustGet(t, s, unnoticed.ID); got.State != leases.StateActive || clk.Waiters() != 1 {
		t.Fatalf("lease expired without a Notify (state %s): the expirer is not waiting on its timer", got.State)
	}
	e.Notify(unnoticed.ExpiresAt)
	leasetest.Eventually(t, "the notified lease, already due, expires", func() bool { return leasetest.MustGet(t, s, unnoticed.ID).State == leases.StateExpired })
	leasetest.Eventually(t, "the expirer re-arms for the late lease", func() bool { return e.ArmedAt().Equal(late.ExpiresAt) })

	// A Notify of an earlier expiry re-arms the timer before it is due.
	early := leasetest.MustActivate(t, s, leasetest.NewPending(clk.Now(), "early", 3*time.Minute))
	e.Notify(early.ExpiresAt)
	leasetest.Eventually(t, "the expirer re-arms for the earlier lease", func() bool {
		return e.ArmedAt().Equal(early.ExpiresAt) && clk.Waiters() == 1
	})
	if got := leasetest.MustGet(t, s, early.ID); got.State != leases.StateActive {
		t.Fatalf("early lease is %s before its expiry", got.State)
	}
	clk.Set(early.ExpiresAt)
	leasetest.Eventually(t, "the early lease expires at its time", func() bool { return leasetest.MustGet(t, s, early.ID).State == leases.StateExpired })
	if got := leasetest.MustGet(t, s, early.ID); !got.EndedAt.Equal(early.ExpiresAt) {
		t.Errorf("early lease ended at %v, want %v", got.EndedAt, early.ExpiresAt)
	}
	if got := leasetest.MustGet(t, s, late.ID); got.State != leases.StateActive {
		t.Errorf("late lease is %s before its expiry", got.State)
	}

	// A Notify of a later expiry leaves the armed deadline alone.
	later := leasetest.MustActivate(t, s, leasetest.NewPending(clk.Now(), "later", time.Hour))
	leasetest.Eventually(t, "the expirer re-arms for the late lease", func() bool { return e.ArmedAt().Equal(late.ExpiresAt) })
	e.Notify(later.ExpiresAt)
	if got := e.ArmedAt(); !got.Equal(late.ExpiresAt) {
		t.Errorf("armed for %v after a later Notify, want %v", got, late.ExpiresAt)
	}
}

// TestExpirerManyLeases expires thousands of leases spread over ten
// minutes, plus a burst larger than one batch at a single instant, while the
// clock moves in steps: none may expire before its time, each must expire at
// the first step that reaches it.
func TestExpirerManyLeases(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	rng := rand.New(rand.NewPCG(1, 2))
	const spread, burst = 5000, 1500
	burstAt := t0.Add(30 * time.Second)
	var ls []*leases.Lease
	for i := range spread + burst {
		l := leasetest.NewPending(t0, fmt.Sprint("agent-", i%50), 0)
		l.ExpiresAt = t0.Add(time.Second + time.Duration(rng.IntN(600_000))*time.Millisecond)
		if i >= spread {
			l.ExpiresAt = burstAt
		}
		ls = append(ls, l)
	}
	leasetest.SeedActive(t, s, ls)
	expiries := make([]time.Time, len(ls))
	for i, l := range ls {
		expiries[i] = l.ExpiresAt
	}
	slices.SortFunc(expiries, func(x, y time.Time) int { return x.Compare(y) })
	dueBy := func(now time.Time) int {
		return sort.Search(len(expiries), func(i int) bool { return expiries[i].After(now) })
	}

	log := newExpiryLog()
	e := leases.NewExpirer(s, clk, quietLog)
	e.OnExpire = log.onExpire
	leasetest.StartExpirer(t, e)
	leasetest.Eventually(t, "the expirer arms its timer", func() bool { return clk.Waiters() == 1 })

	const step = 7 * time.Second
	end := t0.Add(11 * time.Minute)
	for now := t0.Add(step); !now.After(end); now = now.Add(step) {
		clk.Set(now)
		want := dueBy(now)
		leasetest.Eventually(t, fmt.Sprintf("%d leases expired by %v", want, now.Sub(t0)), func() bool {
			return log.len() >= want && expirerIdle(s, clk)
		})
		if got := log.len(); got != want {
			t.Fatalf("at +%v: %d leases expired, want %d", now.Sub(t0), got, want)
		}
		if c := leasetest.MustCounts(t, s); c[leases.StateActive] != int64(len(ls)-want) || c[leases.StateExpired] != int64(want) {
			t.Fatalf("at +%v: counts %v, want %d active and %d expired", now.Sub(t0), c, len(ls)-want, want)
		}
	}

	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.twice) > 0 {
		t.Errorf("%d leases expired twice", len(log.twice))
	}
	if !slices.IsSortedFunc(log.order, func(x, y time.Time) int { return x.Compare(y) }) {
		t.Error("leases expired out of order")
	}
	early, late := 0, 0
	for _, l := range ls {
		at, ok := log.at[l.ID]
		switch {
		case !ok:
			t.Fatalf("lease expiring at +%v never expired", l.ExpiresAt.Sub(t0))
		case at.Before(l.ExpiresAt):
			early++
		case !at.Before(l.ExpiresAt.Add(step)):
			late++
		}
	}
	if early > 0 || late > 0 {
		t.Errorf("%d leases expired early and %d late (after the first step past their expiry)", early, late)
	}
	if _, ok, _ := s.NextExpiry(); ok {
		t.Error("expiry index is not empty")
	}
	if n := leasetest.CountAudit(t, s, audit.KindExpire); n != len(ls) {
		t.Errorf("%d expire records, want %d", n, len(ls))
	}
	leasetest.MustVerifyAudit(t, s)
}
