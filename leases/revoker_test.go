package leases_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// awaitAttempts waits until lease id has recorded n failed attempts and the
// queue sleeps on its retry timer, and returns the lease.
func awaitAttempts(t *testing.T, s *bolt.Store, clk *clock.Fake, id string, n int) *leases.Lease {
	t.Helper()
	var l *leases.Lease
	leasetest.Eventually(t, fmt.Sprintf("attempt %d is recorded and the retry is scheduled", n), func() bool {
		l = leasetest.MustGet(t, s, id)
		return l.RevokeAttempts == n && clk.Waiters() == 1
	})
	return l
}

// checkRetryDelay checks that the attempt recorded at now scheduled its
// retry within the jittered backoff for that attempt.
func checkRetryDelay(t *testing.T, l *leases.Lease, now time.Time, base time.Duration) {
	t.Helper()
	if d := l.NextAttempt.Sub(now); d < base/2 || d > base {
		t.Errorf("after attempt %d the retry is in %v, want within [%v, %v]", l.RevokeAttempts, d, base/2, base)
	}
}

func TestRevocationRetriesWithBackoff(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(3) // three failures, then success
	be.Clk = clk
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
	leasetest.StartQueue(t, leasetest.NewQueue(s, be, clk, 5))

	wantCalls := []time.Time{t0}
	for n := 1; n <= 3; n++ {
		got := awaitAttempts(t, s, clk, l.ID, n)
		checkRetryDelay(t, got, clk.Now(), time.Second<<(n-1))
		if got.State != leases.StateRevoking || got.EndReason != leases.StateReleased || !strings.Contains(got.LastError, "injected") {
			t.Errorf("after attempt %d: %s/%s last error %q; want revoking/released with the backend's error", n, got.State, got.EndReason, got.LastError)
		}
		if c := leasetest.MustCounts(t, s); c[leases.StateRevoking] != 1 {
			t.Errorf("counts %v, want the lease revoking", c)
		}
		// Not a moment early.
		clk.Set(got.NextAttempt.Add(-time.Nanosecond))
		clk.Set(got.NextAttempt)
		wantCalls = append(wantCalls, got.NextAttempt)
	}
	leasetest.Eventually(t, "the lease is released", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateReleased })

	if got := be.CallTimes(l.ID); !slices.EqualFunc(got, wantCalls, time.Time.Equal) {
		t.Errorf("backend called at %v, want exactly at %v", got, wantCalls)
	}
	done := leasetest.MustGet(t, s, l.ID)
	if done.RevokeAttempts != 3 || done.LastError != "" || !done.NextAttempt.IsZero() || done.EndReason != "" {
		t.Errorf("released lease keeps attempts %d, last error %q, next %v, reason %q; want 3 and the rest cleared",
			done.RevokeAttempts, done.LastError, done.NextAttempt, done.EndReason)
	}
	want := []string{audit.KindMint, audit.KindRelease, audit.KindRevokeFailed, audit.KindRevokeFailed, audit.KindRevokeFailed, audit.KindRevoked}
	if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, want) {
		t.Errorf("audit kinds = %v, want %v", kinds, want)
	}
	recs, _ := s.ListAudit(context.Background(), audit.Filter{LeaseID: l.ID, Kind: audit.KindRevokeFailed})
	for i, r := range recs {
		if r.Details["attempt"] != fmt.Sprint(i+1) || r.Details["backend"] != "jwt" || r.Actor.Type != audit.ActorSystem {
			t.Errorf("revoke_failed record %d details %v actor %v", i, r.Details, r.Actor)
		}
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateReleased: 1})
	if _, ok, _ := s.NextRevocation(); ok {
		t.Error("the revocation queue is not empty")
	}
	leasetest.MustVerifyAudit(t, s)
}

func TestRevocationBecomesIrrevocable(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(-1) // always fails
	be.Clk = clk
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0)
	leasetest.StartQueue(t, leasetest.NewQueue(s, be, clk, 2))

	steps := []struct {
		attempts  int
		wantState leases.State
		wantKind  string
		base      time.Duration
	}{
		{1, leases.StateRevoking, audit.KindRevokeFailed, time.Second},
		{2, leases.StateIrrevocable, audit.KindIrrevocable, 2 * time.Second},
		{3, leases.StateIrrevocable, audit.KindRevokeFailed, 4 * time.Second}, // still retried, no second irrevocable record
		{4, leases.StateIrrevocable, audit.KindRevokeFailed, 8 * time.Second},
		{5, leases.StateIrrevocable, audit.KindRevokeFailed, 8 * time.Second}, // capped at MaxBackoff
	}
	for _, st := range steps {
		got := awaitAttempts(t, s, clk, l.ID, st.attempts)
		if got.State != st.wantState || got.EndReason != leases.StateRevoked {
			t.Errorf("after %d failures: %s/%s, want %s/revoked", st.attempts, got.State, got.EndReason, st.wantState)
		}
		checkRetryDelay(t, got, clk.Now(), st.base)
		kinds := leasetest.AuditKinds(t, s, l.ID)
		if last := kinds[len(kinds)-1]; last != st.wantKind {
			t.Errorf("after %d failures the last audit record is %s, want %s", st.attempts, last, st.wantKind)
		}
		c := leasetest.MustCounts(t, s)
		if st.wantState == leases.StateIrrevocable && (c[leases.StateIrrevocable] != 1 || c[leases.StateRevoking] != 0) {
			t.Errorf("counts %v, want the lease counted as irrevocable", c)
		}
		if st.wantState == leases.StateIrrevocable {
			listed, err := s.List(context.Background(), leases.Filter{State: leases.StateIrrevocable})
			if err != nil || len(listed) != 1 || listed[0].ID != l.ID {
				t.Errorf("List(irrevocable) = %v, %v; want the lease, visible to operators", listed, err)
			}
		}
		if st.attempts == len(steps) {
			// The backend recovers: the next retry revokes it for its
			// original reason.
			be.SetFailures(0)
		}
		clk.Set(got.NextAttempt)
	}
	leasetest.Eventually(t, "the irrevocable lease is finally revoked", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateRevoked })
	if n := be.CallsFor(l.ID); n != 6 {
		t.Errorf("backend called %d times, want 6", n)
	}
	if n := leasetest.CountAudit(t, s, audit.KindIrrevocable); n != 1 {
		t.Errorf("%d irrevocable records, want 1", n)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateRevoked: 1})
	leasetest.MustVerifyAudit(t, s)
}

// TestRevocationGivesUpAfterExpiry keeps the backend failing: once the
// lease's expiry plus ExpiryGrace has passed the credential is dead on its
// own, and the queue records that without calling the backend again.
func TestRevocationGivesUpAfterExpiry(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(-1)
	be.Clk = clk
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", 10*time.Second))
	leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
	leasetest.StartQueue(t, leasetest.NewQueue(s, be, clk, 3))
	deadline := l.ExpiresAt.Add(leases.ExpiryGrace)

	for n := 1; ; n++ {
		got := awaitAttempts(t, s, clk, l.ID, n)
		clk.Set(got.NextAttempt)
		if !got.NextAttempt.Before(deadline) {
			break
		}
		if n > 50 {
			t.Fatal("the lease was never given up")
		}
	}
	leasetest.Eventually(t, "the lease is expired", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateExpired })
	for _, at := range be.CallTimes(l.ID) {
		if !at.Before(deadline) {
			t.Errorf("backend called at +%v, after expiry plus grace (+%v)", at.Sub(t0), deadline.Sub(t0))
		}
	}
	kinds := leasetest.AuditKinds(t, s, l.ID)
	if kinds[len(kinds)-1] != audit.KindExpire || !slices.Contains(kinds, audit.KindIrrevocable) || slices.Contains(kinds, audit.KindRevoked) {
		t.Errorf("audit kinds = %v, want irrevocable on the way and an expiry at the end, never revoked", kinds)
	}
	recs, _ := s.ListAudit(context.Background(), audit.Filter{LeaseID: l.ID, Newest: true, Limit: 1})
	if !strings.Contains(recs[0].Reason, "expired") {
		t.Errorf("last record's reason = %q, want it to say the credential expired", recs[0].Reason)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateExpired: 1})
	if _, ok, _ := s.NextRevocation(); ok {
		t.Error("the revocation queue is not empty")
	}
}

func TestRevokeNow(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name      string
		failures  int
		ttl       time.Duration
		end       bool // end the lease before RevokeNow
		twice     bool // call RevokeNow again with the same (stale) lease
		wantState leases.State
		wantCalls int
		wantKinds []string
		wantSeen  []string // outcomes reported to OnAttempt
	}{
		{name: "succeeds inline", end: true, ttl: time.Hour, wantState: leases.StateReleased, wantCalls: 1,
			wantKinds: []string{audit.KindMint, audit.KindRelease, audit.KindRevoked}, wantSeen: []string{"revoked"}},
		{name: "failure stays queued", end: true, ttl: time.Hour, failures: 1, wantState: leases.StateRevoking, wantCalls: 1,
			wantKinds: []string{audit.KindMint, audit.KindRelease, audit.KindRevokeFailed}, wantSeen: []string{"failed"}},
		{name: "twice is harmless", end: true, ttl: time.Hour, twice: true, wantState: leases.StateReleased, wantCalls: 2,
			wantKinds: []string{audit.KindMint, audit.KindRelease, audit.KindRevoked}, wantSeen: []string{"revoked", "revoked"}},
		{name: "past expiry and grace needs no backend", end: true, ttl: -2 * leases.ExpiryGrace, wantState: leases.StateExpired, wantCalls: 0,
			wantKinds: []string{audit.KindMint, audit.KindRelease, audit.KindExpire}, wantSeen: []string{"expired"}},
		{name: "within the grace the backend is still called", end: true, ttl: -leases.ExpiryGrace / 2, wantState: leases.StateReleased, wantCalls: 1,
			wantKinds: []string{audit.KindMint, audit.KindRelease, audit.KindRevoked}, wantSeen: []string{"revoked"}},
		{name: "active lease is not revoked", ttl: time.Hour, wantState: leases.StateActive, wantCalls: 0,
			wantKinds: []string{audit.KindMint}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := MustOpenStore(t)
			clk := clock.NewFake(t0)
			be := leasetest.NewFakeBackend(tc.failures)
			q := leasetest.NewQueue(s, be, clk, 3)
			var seen []string
			q.Cfg().OnAttempt = func(outcome string) { seen = append(seen, outcome) }
			l := leasetest.NewPending(t0.Add(-time.Hour), "a", 0)
			l.ExpiresAt = t0.Add(tc.ttl)
			l = leasetest.MustActivate(t, s, l)
			if tc.end {
				l = leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
			}
			got, err := q.RevokeNow(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			if tc.twice {
				if got, err = q.RevokeNow(ctx, l); err != nil {
					t.Fatal(err)
				}
			}
			if stored := leasetest.MustGet(t, s, l.ID); got.State != tc.wantState || stored.State != tc.wantState {
				t.Errorf("RevokeNow returned %s, stored %s; want %s", got.State, stored.State, tc.wantState)
			}
			if n := be.CallsFor(l.ID); n != tc.wantCalls {
				t.Errorf("backend called %d times, want %d", n, tc.wantCalls)
			}
			if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, tc.wantKinds) {
				t.Errorf("audit kinds = %v, want %v", kinds, tc.wantKinds)
			}
			if !slices.Equal(seen, tc.wantSeen) {
				t.Errorf("reported outcomes = %v, want %v", seen, tc.wantSeen)
			}
			if tc.wantState == leases.StateRevoking {
				checkRetryDelay(t, got, t0, time.Second)
				due, _ := s.DueRevocations(got.NextAttempt, 10)
				if len(due) != 1 || due[0].ID != l.ID {
					t.Errorf("failed lease is not queued for its retry: %v", due)
				}
			}
			leasetest.MustVerifyAudit(t, s)
		})
	}
}

// TestRevokeNowWaitsForTheQueuesAttempt: when the queue's own worker is
// revoking the lease at the moment the broker calls RevokeNow (it saw the
// lease in the queue as soon as End committed), RevokeNow answers with that
// attempt's outcome, not with the state from before it: an API that answers
// "revoked: 4" must show those leases revoked.
func TestRevokeNowWaitsForTheQueuesAttempt(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	be.Gate = make(chan struct{})
	q := leasetest.NewQueue(s, be, clk, 3)
	leasetest.StartQueue(t, q)

	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	l = leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0)
	q.Kick()
	leasetest.Eventually(t, "the queue's worker is revoking the lease", func() bool { return q.Claimed(l.ID) })

	type result struct {
		l   *leases.Lease
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, err := q.RevokeNow(context.Background(), l)
		done <- result{got, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("RevokeNow answered %s (%v) while the queue's attempt was still running", r.l.State, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	close(be.Gate)
	r := <-done
	if r.err != nil || r.l.State != leases.StateRevoked {
		t.Fatalf("RevokeNow = %+v, %v; want the lease as the queue's attempt left it: revoked", r.l, r.err)
	}
	if n := be.CallsFor(l.ID); n != 1 {
		t.Errorf("backend called %d times, want once: RevokeNow must not make a second attempt", n)
	}
}

// TestRevokeNowFailureIsRetried: the broker ends a lease and calls RevokeNow
// while the queue sleeps on a timer for a much later retry. When RevokeNow
// fails, the queue must still retry this lease at its own time.
func TestRevokeNowFailureIsRetried(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(1)
	q := leasetest.NewQueue(s, be, clk, 5)
	ctx := context.Background()

	// Another lease waits for a retry an hour from now.
	other := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "other", 2*time.Hour))
	leasetest.MustEnd(t, s, other.ID, leases.StateRevoked, t0)
	if _, err := s.RevocationFailed(ctx, other.ID, "down", t0.Add(time.Hour), false, t0, audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	leasetest.StartQueue(t, q)
	leasetest.Eventually(t, "the queue sleeps until the other lease's retry", func() bool { return clk.Waiters() == 1 })

	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	l = leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
	got, err := q.RevokeNow(ctx, l)
	if err != nil || got.State != leases.StateRevoking || got.RevokeAttempts != 1 {
		t.Fatalf("RevokeNow = %+v, %v; want a failed first attempt", got, err)
	}
	leasetest.Eventually(t, "the queue sleeps until the retry", func() bool { return clk.Waiters() == 1 })
	clk.Set(got.NextAttempt)
	leasetest.Eventually(t, "the queue retries and revokes the lease", func() bool { return leasetest.MustGet(t, s, l.ID).State == leases.StateReleased })
	if n := be.CallsFor(other.ID); n != 0 {
		t.Errorf("the other lease was retried %d times before its time", n)
	}
}

// TestRevocationNeverOverlaps: RevokeNow from many goroutines and the queue's
// own workers race for the same leases while the backend holds every call;
// no lease may be revoked by two calls at once.
func TestRevocationNeverOverlaps(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	be.Gate = make(chan struct{})
	q := leasetest.MustQueue(leases.RevocationQueueConfig{Store: s, Revoke: be.Revoke, Clock: clk, Logger: quietLog,
		Attempts: 8, Backoff: time.Second, MaxBackoff: 5 * time.Minute, Concurrency: 4, Timeout: leases.DefaultRevokeTimeout})
	const n = 20
	var ended []*leases.Lease
	for i := range n {
		l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, fmt.Sprint("agent-", i), time.Hour))
		ended = append(ended, leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0))
	}
	leasetest.StartQueue(t, q)

	var wg sync.WaitGroup
	for range 3 {
		for _, l := range ended {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := q.RevokeNow(context.Background(), l); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	// Hold the backend until every lease is claimed, by a worker of the
	// queue or by one of the RevokeNow calls, so that all of them race.
	leasetest.Eventually(t, "every lease is claimed", func() bool {
		return q.InFlight() == n
	})
	close(be.Gate)
	wg.Wait()
	leasetest.Eventually(t, "every lease is released", func() bool {
		c := leasetest.MustCounts(t, s)
		return c[leases.StateReleased] == n
	})

	be.Mu.Lock()
	if len(be.Overlap) > 0 {
		t.Errorf("leases revoked by two calls at once: %v", be.Overlap)
	}
	be.Mu.Unlock()
	for _, l := range ended {
		if kinds := leasetest.AuditKinds(t, s, l.ID); countOf(kinds, audit.KindRevoked) != 1 {
			t.Errorf("lease %s has audit kinds %v, want exactly one revoked record", l.AgentID, kinds)
		}
	}
	leasetest.MustVerifyAudit(t, s)
}

func countOf(xs []string, x string) int {
	n := 0
	for _, y := range xs {
		if y == x {
			n++
		}
	}
	return n
}

func TestRevocationTimeout(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	be.Gate = make(chan struct{}) // never opened: the backend hangs until its context ends
	q := leasetest.NewQueue(s, be, clk, 5)
	q.Cfg().Timeout = 50 * time.Millisecond
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	l = leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)

	got, err := q.RevokeNow(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != leases.StateRevoking || got.RevokeAttempts != 1 || !strings.Contains(got.LastError, context.DeadlineExceeded.Error()) {
		t.Errorf("after a hung backend call: %s, %d attempts, last error %q; want a recorded timeout", got.State, got.RevokeAttempts, got.LastError)
	}
}

func TestBackoff(t *testing.T) {
	cases := []struct {
		name          string
		base, max     time.Duration
		wantByAttempt []time.Duration // the upper bound d for attempts 1, 2, ...
	}{
		{"doubles up to the cap", time.Second, 10 * time.Second,
			[]time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}},
		{"cap equal to the base", time.Second, time.Second,
			[]time.Duration{time.Second, time.Second, time.Second}},
		{"tiny base", time.Nanosecond, 4 * time.Nanosecond,
			[]time.Duration{time.Nanosecond, 2, 4, 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := leasetest.MustQueue(leases.RevocationQueueConfig{Attempts: 1, Backoff: tc.base, MaxBackoff: tc.max, Concurrency: 1, Timeout: time.Second})
			for i, d := range tc.wantByAttempt {
				attempt := i + 1
				seen := map[time.Duration]bool{}
				for range 2000 {
					got := q.Backoff(attempt)
					if got < d/2 || got > d {
						t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, got, d/2, d)
					}
					seen[got] = true
				}
				if d >= time.Millisecond && len(seen) < 10 {
					t.Errorf("backoff(%d) took only %d distinct values: no jitter", attempt, len(seen))
				}
			}
			if got := q.Backoff(1000); got > tc.max {
				t.Errorf("backoff(1000) = %v, above the cap %v", got, tc.max)
			}
		})
	}
}

// TestNewRevocationQueueTakesSettingsAsGiven: the queue uses exactly the
// settings it is given (valet's validated leases.* keys) and refuses the
// ones it cannot use, naming the key, instead of replacing them with
// defaults.
func TestNewRevocationQueueTakesSettingsAsGiven(t *testing.T) {
	valid := leases.RevocationQueueConfig{Attempts: 3, Backoff: 2 * time.Second, MaxBackoff: 2 * time.Second, Concurrency: 2, Timeout: time.Second}
	q, err := leases.NewRevocationQueue(valid)
	if err != nil {
		t.Fatal(err)
	}
	handle, recovery := q.Slots()
	if c := q.Cfg(); c.Attempts != 3 || c.Backoff != 2*time.Second || c.MaxBackoff != 2*time.Second || c.Concurrency != 2 || c.Timeout != time.Second || handle != 2 || recovery != 1 {
		t.Errorf("queue settings = attempts %d backoff %v max %v concurrency %d (slots %d, recovery %d) timeout %v; want them as given, recovery max(1, 2/4)",
			c.Attempts, c.Backoff, c.MaxBackoff, c.Concurrency, handle, recovery, c.Timeout)
	}

	cases := []struct {
		name string
		edit func(*leases.RevocationQueueConfig)
		want string
	}{
		{"zero attempts", func(c *leases.RevocationQueueConfig) { c.Attempts = 0 }, "leases.revoke_attempts must be at least 1; it is 0"},
		{"zero backoff", func(c *leases.RevocationQueueConfig) { c.Backoff = 0 }, "leases.revoke_backoff must be positive; it is 0s"},
		{"zero max backoff", func(c *leases.RevocationQueueConfig) { c.MaxBackoff = 0 }, "leases.revoke_max_backoff must be positive and not less than revoke_backoff (2s); it is 0s"},
		{"max backoff below backoff", func(c *leases.RevocationQueueConfig) { c.MaxBackoff = time.Second }, "leases.revoke_max_backoff must be positive and not less than revoke_backoff (2s); it is 1s"},
		{"zero concurrency", func(c *leases.RevocationQueueConfig) { c.Concurrency = 0 }, "leases.revoke_concurrency must be at least 1; it is 0"},
		{"negative concurrency", func(c *leases.RevocationQueueConfig) { c.Concurrency = -1 }, "leases.revoke_concurrency must be at least 1; it is -1"},
		{"zero timeout", func(c *leases.RevocationQueueConfig) { c.Timeout = 0 }, "revocation timeout must be positive; it is 0s"},
		{"negative recovery concurrency", func(c *leases.RevocationQueueConfig) { c.RecoveryConcurrency = -1 }, "recovery concurrency must not be negative; it is -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.edit(&cfg)
			q, err := leases.NewRevocationQueue(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewRevocationQueue = %v, %v; want an error containing %q", q, err, tc.want)
			}
		})
	}
}

// TestRevocationQueueStoreFailure: when the store fails, RevokeNow reports
// the failure instead of pretending the lease was handled.
func TestRevocationQueueStoreFailure(t *testing.T) {
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	q := leasetest.NewQueue(s, be, clk, 3)
	l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
	l = leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
	s.Close()
	if _, err := q.RevokeNow(context.Background(), l); !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		t.Errorf("RevokeNow on a failed store = %v, want the store's error", err)
	}
	if n := be.CallsFor(l.ID); n != 1 {
		t.Errorf("backend called %d times, want 1", n)
	}
}

// TestRecoveryNeverStarvesRevocationsByHandle: many leases recovered from a
// crash wait to be revoked by correlation id, and each such attempt hangs
// at the backend. Releases made while the backend is down must still be
// retried and confirmed as soon as it is back: recovery has slots of its
// own, and the queue looks past the recovery leases ahead of them.
func TestRecoveryNeverStarvesRevocationsByHandle(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(-1) // down
	be.Gate = make(chan struct{})
	be.GateFor = func(l *leases.Lease) bool { return l.Handle == "" }
	const recovering, released = 40, 50
	for i := range recovering {
		leasetest.MustCreate(t, s, leasetest.NewPending(t0, fmt.Sprint("crashed-", i), time.Hour))
	}
	if rec, err := s.RecoverPending(ctx, t0); err != nil || len(rec) != recovering {
		t.Fatalf("RecoverPending = %d, %v", len(rec), err)
	}
	q := leasetest.MustQueue(leases.RevocationQueueConfig{Store: s, Revoke: be.Revoke, Clock: clk, Logger: quietLog,
		Attempts: 3, Backoff: time.Second, MaxBackoff: 8 * time.Second, Concurrency: 4, Timeout: time.Hour})
	leasetest.StartQueue(t, q)
	t.Cleanup(func() { close(be.Gate) }) // runs before the queue is stopped
	var ids []string
	for i := range released {
		l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, fmt.Sprint("agent-", i), time.Hour))
		leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
		ids = append(ids, l.ID)
	}
	q.Kick()
	leasetest.Eventually(t, "every release is attempted while recovery hangs", func() bool {
		for _, id := range ids {
			if leasetest.MustGet(t, s, id).RevokeAttempts == 0 {
				return false
			}
		}
		return true
	})
	leasetest.Eventually(t, "the queue sleeps until the retries", func() bool { return clk.Waiters() == 1 })
	// The backend is back: the next retries confirm every release.
	be.SetFailures(0)
	clk.Advance(time.Second)
	leasetest.Eventually(t, "every release is confirmed", func() bool { return leasetest.MustCounts(t, s)[leases.StateReleased] == released })
	hung := 0
	for _, l := range mustList(t, s, leases.Filter{State: leases.StateRevoking, Limit: 1000}) {
		hung += be.CallsFor(l.ID)
	}
	if hung != 1 {
		t.Errorf("%d recovery attempts started, want 1 (RecoveryConcurrency defaults to Concurrency/4)", hung)
	}
}

func mustList(tb testing.TB, s *bolt.Store, f leases.Filter) []*leases.Lease {
	tb.Helper()
	ls, err := s.List(context.Background(), f)
	if err != nil {
		tb.Fatal(err)
	}
	return ls
}

// readCounter is a store that counts the leases its queue walks read.
type readCounter struct {
	*bolt.Store
	reads atomic.Int64
}

func (c *readCounter) EachDueRevocation(now time.Time, want func(bool) bool, fn func(l *leases.Lease) bool) error {
	return c.Store.EachDueRevocation(now, want, func(l *leases.Lease) bool {
		c.reads.Add(1)
		return fn(l)
	})
}

// TestMassRevocationReadsEachLeaseBoundedTimes: when many leases wait to be
// revoked at once (a mass revocation), each finished attempt must not make
// the queue read every waiting lease again (that made 1,000 revocations
// take seconds): reads grow with the number of leases, not its square.
func TestMassRevocationReadsEachLeaseBoundedTimes(t *testing.T) {
	s := MustOpenStore(t)
	c := &readCounter{Store: s}
	clk := clock.NewFake(t0)
	be := leasetest.NewFakeBackend(0)
	const n = 600
	var ls []*leases.Lease
	for i := range n {
		l := leasetest.NewPending(t0, fmt.Sprint("agent-", i%7), time.Hour)
		l.Handle = "h-" + l.ID
		ls = append(ls, l)
	}
	leasetest.SeedActive(t, s, ls)
	for _, l := range ls {
		leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0)
	}
	q := leasetest.MustQueue(leases.RevocationQueueConfig{Store: c, Revoke: be.Revoke, Clock: clk, Logger: quietLog,
		Attempts: 3, Backoff: time.Second, MaxBackoff: 8 * time.Second, Concurrency: 16, Timeout: time.Hour})
	leasetest.StartQueue(t, q)
	leasetest.Eventually(t, "every lease is revoked", func() bool { return leasetest.MustCounts(t, s)[leases.StateRevoked] == n })
	if got := c.reads.Load(); got > 40*n {
		t.Fatalf("the queue read %d leases to revoke %d (%.0f per lease); want at most %d", got, n, float64(got)/n, 40*n)
	}
}
