package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)

// entry returns the i-th entry of a varied test log.
func entry(i int) Entry {
	kinds := []string{KindMint, KindRenew, KindRelease}
	return Entry{Kind: kinds[i%3], Actor: Actor{Type: ActorAgent, ID: fmt.Sprint("agent-", i%2)}, Decision: Allow,
		Reason: fmt.Sprint("reason ", i), AgentID: fmt.Sprint("agent-", i%2), Role: "demo", LeaseID: fmt.Sprint("lease-", i%4)}
}

// decodeLines parses JSON lines back into records.
func decodeLines(t *testing.T, data []byte) []Record {
	t.Helper()
	var out []Record
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r Record
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("line %q is not a record: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestLineSinkWritesCommittedRecords(t *testing.T) {
	cases := []struct {
		name  string
		perTx []int
	}{
		{"nothing", nil},
		{"one", []int{1}},
		{"batches", []int{3, 1, 5, 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var head Head
			var buf bytes.Buffer
			sink := NewLineSink(&buf, nil, quietLog)
			var want []Record
			i := 0
			for _, n := range tc.perTx {
				var es []Entry
				for range n {
					es = append(es, entry(i))
					i++
				}
				// What an engine hands the sink once a transaction commits.
				recs, _, next, err := Chain(head, t0, es...)
				if err != nil {
					t.Fatal(err)
				}
				head = next
				sink.Write(recs)
				want = append(want, recs...)
			}
			if err := sink.Close(); err != nil {
				t.Fatal(err)
			}
			// After Close every record is in the writer, one per line.
			if lines := bytes.Count(buf.Bytes(), []byte("\n")); lines != len(want) {
				t.Errorf("%d lines, want %d", lines, len(want))
			}
			got := decodeLines(t, buf.Bytes())
			if len(got) != len(want) {
				t.Fatalf("sink wrote %d records, want %d", len(got), len(want))
			}
			for i := range want {
				g, w := got[i], want[i]
				if !g.Time.Equal(w.Time) {
					t.Errorf("record %d time %v, want %v", i, g.Time, w.Time)
				}
				g.Time, w.Time = time.Time{}, time.Time{}
				if !reflect.DeepEqual(g, w) {
					t.Errorf("line %d = %+v, want %+v", i, g, w)
				}
			}
			if sink.Dropped() != 0 {
				t.Errorf("Dropped = %d, want 0", sink.Dropped())
			}
		})
	}
}

// blockingWriter blocks every Write until released, and reports when the
// first Write started.
type blockingWriter struct {
	started chan struct{}
	once    sync.Once
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestLineSinkDropsWhenFull(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	sink := NewLineSink(w, nil, quietLog)
	rec := func(seq uint64) []Record { return []Record{{Seq: seq, Entry: entry(int(seq))}} }

	// The first batch reaches the writer and blocks it there.
	sink.Write(rec(1))
	<-w.started
	// The queue holds cap(ch) more batches; every batch after that is
	// dropped, and Write returns at once.
	queued := cap(sink.ch)
	const dropped = 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range queued + dropped {
			sink.Write(rec(uint64(i + 2)))
		}
		// A batch of several records counts each record.
		sink.Write([]Record{{Seq: 1000}, {Seq: 1001}, {Seq: 1002}})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Write blocked on a full sink")
	}
	if got := sink.Dropped(); got != dropped+3 {
		t.Errorf("Dropped = %d, want %d", got, dropped+3)
	}

	close(w.release)
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	got := decodeLines(t, w.buf.Bytes())
	w.mu.Unlock()
	if len(got) != 1+queued {
		t.Fatalf("sink wrote %d records, want %d (the blocked one and the queue)", len(got), 1+queued)
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) {
			t.Fatalf("line %d holds record %d, want %d: the copy must keep the log's order", i, r.Seq, i+1)
		}
	}
}

type closeRecorder struct {
	bytes.Buffer
	closed int
}

func (c *closeRecorder) Close() error { c.closed++; return nil }

func TestLineSinkCloseClosesTheFile(t *testing.T) {
	c := &closeRecorder{}
	sink := NewLineSink(c, c, quietLog)
	sink.Write([]Record{{Seq: 1}})
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if c.closed != 1 || len(decodeLines(t, c.Bytes())) != 1 {
		t.Errorf("closed %d times with %q written; want closed once after the record", c.closed, c.String())
	}
}

func TestOpenSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(`{"seq":1}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sink, err := OpenSink(path, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write([]Record{{Seq: 2}, {Seq: 3}})
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := decodeLines(t, data)
	if len(got) != 3 || got[0].Seq != 1 || got[2].Seq != 3 {
		t.Errorf("file holds %d records, want the old one followed by the two new ones", len(got))
	}

	fresh := filepath.Join(t.TempDir(), "new.jsonl")
	sink, err = OpenSink(fresh, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	sink.Close()
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("new sink file: %v, %v; want mode 0600", fi, err)
	}

	if _, err := OpenSink(filepath.Join(t.TempDir(), "missing", "dir", "audit.jsonl"), quietLog); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenSink in a missing directory = %v, want not exist", err)
	}
}

func TestLineSinkWriteAfterCloseDrops(t *testing.T) {
	var buf bytes.Buffer
	s := NewLineSink(&buf, nil, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Write([]Record{{Seq: 1}, {Seq: 2}})
	if s.Dropped() != 2 || buf.Len() != 0 {
		t.Fatalf("after Close: dropped %d, wrote %q", s.Dropped(), buf.String())
	}
}
