package bolt

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

// logCount counts the log records whose message contains a text.
type logCount struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.Key + "=" + a.Value.String()); return true })
	l.msgs = append(l.msgs, b.String())
	return nil
}
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCount) WithGroup(string) slog.Handler      { return l }

func (l *logCount) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// spoil breaks the stored record of lease id: garbage, or gone while its
// index entries stay.
func spoil(tb testing.TB, s *Store, id string, missing bool) {
	tb.Helper()
	err := s.update(context.Background(), func(tx *bbolt.Tx) error {
		if missing {
			return tx.Bucket(bucketLeases).Delete([]byte(id))
		}
		return tx.Bucket(bucketLeases).Put([]byte(id), []byte(`{"id": "`+id+`", "state": `))
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// TestBatchesSurviveOneBadLease: every store operation over many leases
// (expiry, the revocation queue, start-up recovery, listing, pruning) skips
// a lease record it cannot read, reports it once, and processes the others.
func TestBatchesSurviveOneBadLease(t *testing.T) {
	ctx := context.Background()
	batches := []struct {
		name string
		// setup makes two leases in the state the batch works on, the bad
		// one first in the batch's order; run runs the batch and checks
		// that the good one was processed.
		setup func(t *testing.T, s *Store) (bad, good string)
		run   func(t *testing.T, s *Store, good string)
	}{
		{name: "expiry", setup: func(t *testing.T, s *Store) (string, string) {
			bad := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "bad", time.Minute))
			good := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "good", 2*time.Minute))
			return bad.ID, good.ID
		}, run: func(t *testing.T, s *Store, good string) {
			for range 3 {
				out, err := s.ExpireDue(ctx, t0.Add(time.Hour), 10)
				if err != nil {
					t.Fatalf("ExpireDue: %v", err)
				}
				if len(out) > 0 && out[0].ID != good {
					t.Fatalf("ExpireDue ended %s", out[0].ID)
				}
			}
			if st := leasetest.MustGet(t, s, good).State; st != leases.StateExpired {
				t.Errorf("the good lease is %s, want expired", st)
			}
			if next, ok, _ := s.NextExpiry(); ok {
				t.Errorf("the expiry index still holds an entry at %v: the expirer would spin on it", next)
			}
		}},
		{name: "revocation queue", setup: func(t *testing.T, s *Store) (string, string) {
			bad := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "bad", time.Hour))
			leasetest.MustEnd(t, s, bad.ID, leases.StateReleased, t0)
			good := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "good", time.Hour))
			leasetest.MustEnd(t, s, good.ID, leases.StateReleased, t0.Add(time.Second))
			return bad.ID, good.ID
		}, run: func(t *testing.T, s *Store, good string) {
			clk := clock.NewFake(t0.Add(time.Second))
			be := leasetest.NewFakeBackend(0)
			leasetest.StartQueue(t, leasetest.NewQueue(s, be, clk, 3))
			leasetest.Eventually(t, "the good lease is released", func() bool { return leasetest.MustGet(t, s, good).State == leases.StateReleased })
		}},
		{name: "start-up recovery", setup: func(t *testing.T, s *Store) (string, string) {
			bad, good := leasetest.NewPending(t0, "bad", time.Hour), leasetest.NewPending(t0, "good", time.Hour)
			leasetest.MustCreate(t, s, bad)
			leasetest.MustCreate(t, s, good)
			return bad.ID, good.ID
		}, run: func(t *testing.T, s *Store, good string) {
			out, err := s.RecoverPending(ctx, t0)
			if err != nil || len(out) != 1 || out[0].ID != good {
				t.Fatalf("RecoverPending = %v, %v; want the good lease", out, err)
			}
		}},
		{name: "listing", setup: func(t *testing.T, s *Store) (string, string) {
			good := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "good", time.Hour))
			bad := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(time.Second), "bad", time.Hour)) // newest: listed first
			return bad.ID, good.ID
		}, run: func(t *testing.T, s *Store, good string) {
			for _, f := range []leases.Filter{{}, {State: leases.StateActive}} {
				ls, err := s.List(ctx, f)
				if err != nil || len(ls) != 1 || ls[0].ID != good {
					t.Errorf("List(%+v) = %v, %v; want the good lease", f, ls, err)
				}
			}
		}},
		{name: "pruning", setup: func(t *testing.T, s *Store) (string, string) {
			var ids []string
			for _, a := range []string{"bad", "good"} {
				l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, a, time.Hour))
				leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0)
				if _, err := s.RevocationDone(ctx, l.ID, leases.StateReleased, t0, audit.Entry{}); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, l.ID)
			}
			return ids[0], ids[1]
		}, run: func(t *testing.T, s *Store, good string) {
			n, err := s.PruneEnded(ctx, t0.Add(time.Hour), 10)
			if err != nil || n != 1 {
				t.Fatalf("PruneEnded = %d, %v; want the good lease pruned", n, err)
			}
			if _, err := s.Get(ctx, good); err == nil {
				t.Error("the good lease was not pruned")
			}
		}},
	}
	for _, b := range batches {
		for _, missing := range []bool{false, true} {
			name := b.name + "/garbage"
			if missing {
				name = b.name + "/missing"
			}
			t.Run(name, func(t *testing.T) {
				var logs logCount
				s, err := Open(t.TempDir()+"/valet.db", Options{Logger: slog.New(&logs)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				bad, good := b.setup(t, s)
				spoil(t, s, bad, missing)
				b.run(t, s, good)
				if n := logs.count("id=" + bad); n != 1 {
					t.Errorf("the bad lease was reported %d times, want once: %v", n, logs.msgs)
				}
			})
		}
	}
}
