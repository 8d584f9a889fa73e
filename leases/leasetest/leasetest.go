// Package leasetest holds what the tests of lease storage and of the
// background duties on it (the revocation queue, the expirer) share: lease
// builders, checks on a store's leases, counters and audit log, and a
// backend whose revocations a test controls. It works on any engine through
// the Store interface.
package leasetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// T0 is the start of every test's fake time. It is well away from the
// zero time and from the Unix epoch, so index keys are ordinary.
var T0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// QuietLog discards the log lines that failure paths write on purpose.
var QuietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// Store is what the helpers need of a lease store.
type Store interface {
	leases.RevocationStore
	audit.Reader
	CreatePending(ctx context.Context, l *leases.Lease) error
	CreateActive(ctx context.Context, l *leases.Lease, now time.Time, e audit.Entry) error
	Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error)
	End(ctx context.Context, id string, reason leases.State, now time.Time, e audit.Entry) (*leases.Lease, error)
	// Counts returns how many leases are in each state.
	Counts() (map[leases.State]int64, error)
}

// NewPending returns a pending lease created at now that expires ttl later.
func NewPending(now time.Time, agent string, ttl time.Duration) *leases.Lease {
	return &leases.Lease{
		ID:        leases.NewID(now),
		AgentID:   agent,
		Role:      "demo",
		Backend:   "jwt",
		State:     leases.StatePending,
		CreatedAt: now,
		ExpiresAt: now.Add(ttl),
	}
}

// MustCreate records l as pending.
func MustCreate(tb testing.TB, s Store, l *leases.Lease) {
	tb.Helper()
	if err := s.CreatePending(context.Background(), l); err != nil {
		tb.Fatalf("CreatePending(%s): %v", l.ID, err)
	}
}

// MustActivate records l as pending and activates it with handle "h-<id>"
// (and l's CredentialExpires as the credential's own expiry).
func MustActivate(tb testing.TB, s Store, l *leases.Lease) *leases.Lease {
	tb.Helper()
	MustCreate(tb, s, l)
	out, err := s.Activate(context.Background(), l.ID, leases.Activation{Handle: "h-" + l.ID, CredentialExpires: l.CredentialExpires}, l.CreatedAt,
		audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: l.AgentID}, Decision: audit.Allow})
	if err != nil {
		tb.Fatalf("Activate(%s): %v", l.ID, err)
	}
	return out
}

// MustEnd ends l for reason at now.
func MustEnd(tb testing.TB, s Store, id string, reason leases.State, now time.Time) *leases.Lease {
	tb.Helper()
	out, err := s.End(context.Background(), id, reason, now,
		audit.Entry{Kind: audit.KindRelease, Actor: audit.Actor{Type: audit.ActorAgent}})
	if err != nil {
		tb.Fatalf("End(%s): %v", id, err)
	}
	return out
}

// SeedActive records the leases ls as active, each with its mint record,
// from many goroutines at once so that their writes share commits: for
// tests that need thousands of leases without paying thousands of fsyncs.
func SeedActive(tb testing.TB, s Store, ls []*leases.Lease) {
	tb.Helper()
	var wg sync.WaitGroup
	var failed sync.Once
	next := make(chan *leases.Lease)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range next {
				l.State = leases.StateActive
				err := s.CreateActive(context.Background(), l, l.CreatedAt,
					audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: l.AgentID}, Decision: audit.Allow})
				if err != nil {
					failed.Do(func() { tb.Errorf("seed lease %s: %v", l.ID, err) })
				}
			}
		}()
	}
	for _, l := range ls {
		next <- l
	}
	close(next)
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
}

// MustGet returns lease id.
func MustGet(tb testing.TB, s Store, id string) *leases.Lease {
	tb.Helper()
	l, err := s.Get(context.Background(), id)
	if err != nil {
		tb.Fatalf("Get(%s): %v", id, err)
	}
	return l
}

// MustCounts returns the per-state counters with absent states as zero.
func MustCounts(tb testing.TB, s Store) map[leases.State]int64 {
	tb.Helper()
	c, err := s.Counts()
	if err != nil {
		tb.Fatalf("Counts: %v", err)
	}
	return c
}

// WantCounts checks every state's counter; states not in want must be 0.
func WantCounts(tb testing.TB, s Store, want map[leases.State]int64) {
	tb.Helper()
	got := MustCounts(tb, s)
	for _, st := range []leases.State{leases.StatePending, leases.StateActive, leases.StateRevoking, leases.StateIrrevocable, leases.StateReleased, leases.StateRevoked, leases.StateExpired} {
		if got[st] != want[st] {
			tb.Errorf("Counts()[%s] = %d, want %d (all: %v)", st, got[st], want[st], got)
		}
	}
}

// AuditKinds lists the kinds of the audit records about lease id, in order.
func AuditKinds(tb testing.TB, s Store, id string) []string {
	tb.Helper()
	recs, err := s.ListAudit(context.Background(), audit.Filter{LeaseID: id, Limit: 1000})
	if err != nil {
		tb.Fatalf("ListAudit: %v", err)
	}
	kinds := make([]string, len(recs))
	for i, r := range recs {
		kinds[i] = r.Kind
	}
	return kinds
}

// CountAudit counts the records of one kind in the whole log.
func CountAudit(tb testing.TB, s Store, kind string) int {
	tb.Helper()
	n := 0
	var after uint64
	for {
		recs, err := s.ListAudit(context.Background(), audit.Filter{Kind: kind, AfterSeq: after, Limit: 1000})
		if err != nil {
			tb.Fatalf("ListAudit: %v", err)
		}
		n += len(recs)
		if len(recs) < 1000 {
			return n
		}
		after = recs[len(recs)-1].Seq
	}
}

// MustVerifyAudit checks that the audit chain is intact.
func MustVerifyAudit(tb testing.TB, s Store) audit.VerifyResult {
	tb.Helper()
	res, err := s.VerifyAudit(context.Background())
	if err != nil {
		tb.Fatalf("VerifyAudit: %v", err)
	}
	if !res.OK {
		tb.Fatalf("VerifyAudit: chain broken: %s", res.Problem)
	}
	return res
}

// Eventually polls cond every few milliseconds until it holds, and fails the
// test if it does not within a generous bound. It waits for goroutines
// under test to reach a state; it never stands in for the passing of time,
// which the Fake clock controls.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// StartExpirer runs e until the test ends.
func StartExpirer(tb testing.TB, e *leases.Expirer) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
}

// StartQueue runs q until the test ends.
func StartQueue(tb testing.TB, q *leases.RevocationQueue) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
}

// FakeBackend is a revocation (its Revoke is a leases.RevokeFunc) whose
// behaviour the test controls: it fails a
// lease's first failures calls (all calls when failures < 0), can hold calls
// until released, and records every call and any overlap of two calls for
// the same lease.
type FakeBackend struct {
	// Mu guards the fields below; a test takes it to read them.
	Mu       sync.Mutex
	failures int
	// Gate, if non-nil, holds calls until it is closed or their ctx ends;
	// GateFor, if set, holds only the calls for which it is true.
	Gate    chan struct{}
	GateFor func(l *leases.Lease) bool
	// Calls and Handles count the calls and record the handle each lease
	// was revoked with, by lease id; Overlap lists the leases revoked by
	// two calls at once.
	Calls   map[string]int
	Handles map[string]string
	running map[string]int
	Overlap []string
	// Clk, if set, records the fake time of every call.
	Clk   clock.Clock
	times map[string][]time.Time // by lease id
	// Note is returned with every successful revocation.
	Note string
	// Unrevocable makes every call answer, like a backend with no way to
	// revoke its credentials, with ErrCannotRevoke (leases.Unrevocable).
	Unrevocable bool
}

// ErrCannotRevoke is the answer of a FakeBackend with Unrevocable set.
var ErrCannotRevoke = errors.New("this backend cannot revoke its credentials (injected)")

// ErrBackendDown is the error of a failing call.
var ErrBackendDown = errors.New("backend unavailable (injected)")

// NewFakeBackend returns a backend whose first failures calls per lease
// fail (all calls when failures < 0).
func NewFakeBackend(failures int) *FakeBackend {
	return &FakeBackend{failures: failures, Calls: map[string]int{}, Handles: map[string]string{}, running: map[string]int{}, times: map[string][]time.Time{}}
}

// Revoke is the leases.RevokeFunc.
func (b *FakeBackend) Revoke(ctx context.Context, l *leases.Lease) (string, error) {
	b.Mu.Lock()
	b.Calls[l.ID]++
	n := b.Calls[l.ID]
	b.Handles[l.ID] = l.Handle
	b.running[l.ID]++
	if b.running[l.ID] > 1 {
		b.Overlap = append(b.Overlap, l.ID)
	}
	if b.Clk != nil {
		b.times[l.ID] = append(b.times[l.ID], b.Clk.Now())
	}
	fail := b.failures < 0 || n <= b.failures
	note, unrevocable := b.Note, b.Unrevocable
	gate := b.Gate
	if b.GateFor != nil && !b.GateFor(l) {
		gate = nil
	}
	b.Mu.Unlock()
	defer func() {
		b.Mu.Lock()
		b.running[l.ID]--
		b.Mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if fail {
		return "", fmt.Errorf("revoke %s: %w", l.ID, ErrBackendDown)
	}
	if unrevocable {
		return "", leases.Unrevocable(ErrCannotRevoke)
	}
	return note, nil
}

// SetFailures changes how many calls per lease fail (negative: all).
func (b *FakeBackend) SetFailures(n int) {
	b.Mu.Lock()
	b.failures = n
	b.Mu.Unlock()
}

// CallsFor is how many calls revoked lease id.
func (b *FakeBackend) CallsFor(id string) int {
	b.Mu.Lock()
	defer b.Mu.Unlock()
	return b.Calls[id]
}

// CallTimes are the fake times of the calls for lease id (with Clk set).
func (b *FakeBackend) CallTimes(id string) []time.Time {
	b.Mu.Lock()
	defer b.Mu.Unlock()
	return slices.Clone(b.times[id])
}

// NewQueue returns a queue on s with the fake backend and clock, and
// deterministic-enough settings for tests.
func NewQueue(s Store, be *FakeBackend, clk clock.Clock, attempts int) *leases.RevocationQueue {
	return MustQueue(leases.RevocationQueueConfig{
		Store:       s,
		Revoke:      be.Revoke,
		Clock:       clk,
		Logger:      QuietLog,
		Attempts:    attempts,
		Backoff:     time.Second,
		MaxBackoff:  8 * time.Second,
		Concurrency: 16,
		Timeout:     10 * time.Second,
	})
}

// MustQueue is NewRevocationQueue for settings a test knows are valid.
func MustQueue(cfg leases.RevocationQueueConfig) *leases.RevocationQueue {
	q, err := leases.NewRevocationQueue(cfg)
	if err != nil {
		panic(err)
	}
	return q
}
