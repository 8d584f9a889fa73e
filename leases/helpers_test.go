package leases

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// t0 is the start of every test's fake time. It is well away from the
// zero time and from the Unix epoch, so index keys are ordinary.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// quietLog discards the log lines that failure paths write on purpose.
var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// MustOpenStore opens a BoltStore on a fresh file in tb.TempDir() and closes
// it when the test ends.
func MustOpenStore(tb testing.TB) *BoltStore {
	tb.Helper()
	return mustOpenStoreAt(tb, filepath.Join(tb.TempDir(), "valet.db"))
}

// mustOpenStoreAt opens (or reopens) the store at path; closing it twice is
// harmless, so tests may close it early to reopen the file.
func mustOpenStoreAt(tb testing.TB, path string) *BoltStore {
	tb.Helper()
	s, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// newPending returns a pending lease created at now that expires ttl later.
func newPending(now time.Time, agent string, ttl time.Duration) *Lease {
	return &Lease{
		ID:        NewID(now),
		AgentID:   agent,
		Role:      "demo",
		Backend:   "jwt",
		State:     StatePending,
		CreatedAt: now,
		ExpiresAt: now.Add(ttl),
	}
}

// mustCreate records l as pending.
func mustCreate(tb testing.TB, s *BoltStore, l *Lease) {
	tb.Helper()
	if err := s.CreatePending(context.Background(), l); err != nil {
		tb.Fatalf("CreatePending(%s): %v", l.ID, err)
	}
}

// mustActivate records l as pending and activates it with handle "h-<id>".
func mustActivate(tb testing.TB, s *BoltStore, l *Lease) *Lease {
	tb.Helper()
	mustCreate(tb, s, l)
	out, err := s.Activate(context.Background(), l.ID, Activation{Handle: "h-" + l.ID}, l.CreatedAt,
		audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: l.AgentID}, Decision: audit.Allow})
	if err != nil {
		tb.Fatalf("Activate(%s): %v", l.ID, err)
	}
	return out
}

// mustEnd ends l for reason at now.
func mustEnd(tb testing.TB, s *BoltStore, id string, reason State, now time.Time) *Lease {
	tb.Helper()
	out, err := s.End(context.Background(), id, reason, now,
		audit.Entry{Kind: audit.KindRelease, Actor: audit.Actor{Type: audit.ActorAgent}})
	if err != nil {
		tb.Fatalf("End(%s): %v", id, err)
	}
	return out
}

// seedActive writes active leases in one transaction through the same
// index-maintaining path as the store methods, for tests that need thousands
// of leases without paying thousands of fsyncs.
func seedActive(tb testing.TB, s *BoltStore, ls []*Lease) {
	tb.Helper()
	err := s.Update(context.Background(), func(tx *bbolt.Tx) error {
		for _, l := range ls {
			l.State = StateActive
			if err := putLease(tx, nil, l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("seed leases: %v", err)
	}
}

func mustGet(tb testing.TB, s *BoltStore, id string) *Lease {
	tb.Helper()
	l, err := s.Get(context.Background(), id)
	if err != nil {
		tb.Fatalf("Get(%s): %v", id, err)
	}
	return l
}

// mustCounts returns the per-state counters with absent states as zero.
func mustCounts(tb testing.TB, s *BoltStore) map[State]int64 {
	tb.Helper()
	c, err := s.Counts()
	if err != nil {
		tb.Fatalf("Counts: %v", err)
	}
	return c
}

// wantCounts checks every state's counter; states not in want must be 0.
func wantCounts(tb testing.TB, s *BoltStore, want map[State]int64) {
	tb.Helper()
	got := mustCounts(tb, s)
	for _, st := range []State{StatePending, StateActive, StateRevoking, StateIrrevocable, StateReleased, StateRevoked, StateExpired} {
		if got[st] != want[st] {
			tb.Errorf("Counts()[%s] = %d, want %d (all: %v)", st, got[st], want[st], got)
		}
	}
}

// auditKinds lists the kinds of the audit records about lease id, in order.
func auditKinds(tb testing.TB, s *BoltStore, id string) []string {
	tb.Helper()
	recs, err := audit.List(s.DB(), audit.Filter{LeaseID: id, Limit: 1000})
	if err != nil {
		tb.Fatalf("audit.List: %v", err)
	}
	kinds := make([]string, len(recs))
	for i, r := range recs {
		kinds[i] = r.Kind
	}
	return kinds
}

// countAudit counts the records of one kind in the whole log.
func countAudit(tb testing.TB, s *BoltStore, kind string) int {
	tb.Helper()
	n := 0
	var after uint64
	for {
		recs, err := audit.List(s.DB(), audit.Filter{Kind: kind, AfterSeq: after, Limit: 1000})
		if err != nil {
			tb.Fatalf("audit.List: %v", err)
		}
		n += len(recs)
		if len(recs) < 1000 {
			return n
		}
		after = recs[len(recs)-1].Seq
	}
}

// mustVerifyAudit checks that the audit chain is intact.
func mustVerifyAudit(tb testing.TB, s *BoltStore) audit.VerifyResult {
	tb.Helper()
	res, err := audit.Verify(s.DB())
	if err != nil {
		tb.Fatalf("audit.Verify: %v", err)
	}
	if !res.OK {
		tb.Fatalf("audit.Verify: chain broken: %s", res.Problem)
	}
	return res
}

// eventually polls cond every few milliseconds until it holds, and fails the
// test if it does not within a generous bound. It waits for goroutines
// under test to reach a state; it never stands in for the passing of time,
// which the Fake clock controls.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// startExpirer runs e until the test ends.
func startExpirer(tb testing.TB, e *Expirer) {
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

// startQueue runs q until the test ends.
func startQueue(tb testing.TB, q *RevocationQueue) {
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

// fakeBackend is a RevokeFunc whose behaviour the test controls: it fails a
// lease's first failures calls (all calls when failures < 0), can hold calls
// until released, and records every call and any overlap of two calls for
// the same lease.
type fakeBackend struct {
	mu       sync.Mutex
	failures int
	gate     chan struct{}       // if non-nil, calls wait until it is closed or ctx ends
	gateFor  func(l *Lease) bool // if set, only calls for which it is true wait at gate
	calls    map[string]int
	handles  map[string]string
	running  map[string]int
	overlap  []string
	clk      clock.Clock            // if set, the fake time of every call is recorded
	times    map[string][]time.Time // by lease id
}

var errBackendDown = errors.New("backend unavailable (injected)")

func newFakeBackend(failures int) *fakeBackend {
	return &fakeBackend{failures: failures, calls: map[string]int{}, handles: map[string]string{}, running: map[string]int{}, times: map[string][]time.Time{}}
}

func (b *fakeBackend) Revoke(ctx context.Context, l *Lease) error {
	b.mu.Lock()
	b.calls[l.ID]++
	n := b.calls[l.ID]
	b.handles[l.ID] = l.Handle
	b.running[l.ID]++
	if b.running[l.ID] > 1 {
		b.overlap = append(b.overlap, l.ID)
	}
	if b.clk != nil {
		b.times[l.ID] = append(b.times[l.ID], b.clk.Now())
	}
	fail := b.failures < 0 || n <= b.failures
	gate := b.gate
	if b.gateFor != nil && !b.gateFor(l) {
		gate = nil
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.running[l.ID]--
		b.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail {
		return fmt.Errorf("revoke %s: %w", l.ID, errBackendDown)
	}
	return nil
}

// setFailures changes how many calls per lease fail (negative: all).
func (b *fakeBackend) setFailures(n int) {
	b.mu.Lock()
	b.failures = n
	b.mu.Unlock()
}

func (b *fakeBackend) callsFor(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[id]
}

func (b *fakeBackend) callTimes(id string) []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.times[id])
}

// newQueue returns a queue on s with the fake backend and clock, and
// deterministic-enough settings for tests.
func newQueue(s *BoltStore, be *fakeBackend, clk clock.Clock, attempts int) *RevocationQueue {
	return mustQueue(RevocationQueueConfig{
		Store:       s,
		Revoke:      be.Revoke,
		Clock:       clk,
		Logger:      quietLog,
		Attempts:    attempts,
		Backoff:     time.Second,
		MaxBackoff:  8 * time.Second,
		Concurrency: 16,
		Timeout:     10 * time.Second,
	})
}

// mustQueue is NewRevocationQueue for settings a test knows are valid.
func mustQueue(cfg RevocationQueueConfig) *RevocationQueue {
	q, err := NewRevocationQueue(cfg)
	if err != nil {
		panic(err)
	}
	return q
}

// lastCommittedTx is the id of the last committed write transaction (bbolt
// numbers them; a read transaction sees the id of the last commit).
func lastCommittedTx(tb testing.TB, db *bbolt.DB) int {
	tb.Helper()
	var id int
	if err := db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		tb.Fatalf("read txid: %v", err)
	}
	return id
}
