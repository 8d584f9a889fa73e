package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

var replayStart = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// openReplayStore opens a store at path, closed when the test ends.
func openReplayStore(tb testing.TB, path string) *Store {
	tb.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func TestReplayCache(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "valet.db")
	clk := clock.NewFake(replayStart)
	st := openReplayStore(t, path)
	c := st.ReplayCache(clk)
	exp := replayStart.Add(time.Minute)

	if err := c.Consume(ctx, "iss/a", exp); err != nil {
		t.Fatal(err)
	}
	if err := c.Consume(ctx, "iss/a", exp); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("second consume: %v, want ErrReplay", err)
	}
	if err := c.Consume(ctx, "iss/b", exp); err != nil {
		t.Fatalf("another key: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Consume(cancelled, "iss/c", exp); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}

	// The record survives a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	c = openReplayStore(t, path).ReplayCache(clk)
	if err := c.Consume(ctx, "iss/a", exp); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("after reopen: %v, want ErrReplay", err)
	}

	// Once expired, the key can be consumed again (an expired entry
	// that Purge has not removed yet does not count).
	clk.Set(exp)
	if err := c.Consume(ctx, "iss/a", replayStart.Add(time.Hour)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := c.Consume(ctx, "iss/a", replayStart.Add(time.Hour)); !errors.Is(err, attest.ErrReplay) {
		t.Fatalf("re-consumed key: %v, want ErrReplay", err)
	}
}

func TestReplayCacheConcurrent(t *testing.T) {
	clk := clock.NewFake(replayStart)
	c := openReplayStore(t, filepath.Join(t.TempDir(), "valet.db")).ReplayCache(clk)
	const n = 64
	var wg sync.WaitGroup
	results := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- c.Consume(context.Background(), "iss/same-jti", replayStart.Add(time.Minute))
		}()
	}
	wg.Wait()
	close(results)
	ok, replays := 0, 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, attest.ErrReplay):
			replays++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || replays != n-1 {
		t.Fatalf("%d succeeded and %d were replays; want 1 and %d", ok, replays, n-1)
	}
}

func TestReplayCachePurge(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(replayStart)
	st := openReplayStore(t, filepath.Join(t.TempDir(), "valet.db"))
	db, c := st.db, st.ReplayCache(clk)

	// More expired entries than one purge transaction takes, consumed
	// concurrently so their writes share commits.
	const expired, live = 2500, 10
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for i := 0; i < expired+live; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			exp := replayStart.Add(time.Minute)
			if i >= expired {
				exp = replayStart.Add(time.Hour)
			}
			if err := c.Consume(ctx, fmt.Sprintf("iss/%d", i), exp); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	// A key consumed, expired and consumed again: its old index entry
	// must not make Purge delete the new record.
	if err := c.Consume(ctx, "iss/again", replayStart.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if err := c.Consume(ctx, "iss/again", replayStart.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	n, err := c.Purge(replayStart.Add(2 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if n != expired {
		t.Fatalf("Purge deleted %d, want %d", n, expired)
	}
	if n, err := c.Purge(replayStart.Add(2 * time.Minute)); err != nil || n != 0 {
		t.Fatalf("second Purge: %d, %v; want 0", n, err)
	}
	keys, index := bucketSizes(t, db)
	if keys != live+1 || index != live+1 {
		t.Fatalf("after purge: %d keys and %d index entries, want %d each", keys, index, live+1)
	}
	for _, k := range []string{"iss/2500", "iss/2509", "iss/again"} {
		if err := c.Consume(ctx, k, replayStart.Add(time.Hour)); !errors.Is(err, attest.ErrReplay) {
			t.Errorf("%s after purge: %v, want ErrReplay", k, err)
		}
	}
	if err := c.Consume(ctx, "iss/0", replayStart.Add(time.Hour)); err != nil {
		t.Errorf("purged key: %v", err)
	}
	if n, err := c.Purge(replayStart.Add(2 * time.Hour)); err != nil || n != live+2 {
		t.Fatalf("final Purge: %d, %v; want %d", n, err, live+2)
	}
}

// TestReplayCachePurgePastAMalformedIndexEntry: an expiry index entry
// too short to hold an expiry, sorted before every real one, must not stop
// every later purge.
func TestReplayCachePurgePastAMalformedIndexEntry(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(replayStart)
	st := openReplayStore(t, filepath.Join(t.TempDir(), "valet.db"))
	db, c := st.db, st.ReplayCache(clk)
	for i := range 3 {
		if err := c.Consume(ctx, fmt.Sprintf("iss/%d", i), replayStart.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("attest.jti")).Bucket([]byte("expiry")).Put([]byte{0, 0}, nil)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Purge(replayStart.Add(2 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	if keys, index := bucketSizes(t, db); keys != 0 || index != 0 {
		t.Fatalf("after purge: %d keys and %d index entries left, want none", keys, index)
	}
}

// bucketSizes counts the entries of the replay cache's two buckets.
func bucketSizes(t *testing.T, db *bbolt.DB) (keys, index int) {
	t.Helper()
	err := db.View(func(tx *bbolt.Tx) error {
		root := tx.Bucket([]byte("attest.jti"))
		if root == nil {
			return errors.New("no attest.jti bucket")
		}
		keys = root.Bucket([]byte("keys")).Stats().KeyN
		index = root.Bucket([]byte("expiry")).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys, index
}
