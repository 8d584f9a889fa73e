package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/leases/config"
)

// countingSink is a bytes.Buffer counting its writes, safe for the lineBuffer's timer goroutine.
type countingSink struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *countingSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *countingSink) state() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

// messages are the "msg" of the JSON lines in out, in order.
func messages(t *testing.T, out string) []string {
	t.Helper()
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var rec struct{ Msg string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		msgs = append(msgs, rec.Msg)
	}
	return msgs
}

// TestLogRequestLinesWaitForTheirBatch: request lines wait (an hour here)
// and go out together in one write; any other line takes every waiting
// line with it, in order; Flush writes what waits.
func TestLogRequestLinesWaitForTheirBatch(t *testing.T) {
	for _, other := range []struct {
		name string
		log  func(l *slog.Logger)
		msg  string
	}{
		{"info line", func(l *slog.Logger) { l.Info("valet is serving") }, "valet is serving"},
		{"warning", func(l *slog.Logger) { l.Warn("careful") }, "careful"},
		{"request line at error", func(l *slog.Logger) { l.Error(api.RequestLogMessage, "n", 3) }, api.RequestLogMessage},
	} {
		t.Run(other.name, func(t *testing.T) {
			var sink countingSink
			log, flush := newLogger(&sink, LogConfig{Level: "info", FlushInterval: config.Duration(time.Hour)})
			log.Info(api.RequestLogMessage, "n", 1)
			log.Info(api.RequestLogMessage, "n", 2)
			log.Debug("below the level")
			if out, _ := sink.state(); out != "" {
				t.Fatalf("request lines written before their batch: %q", out)
			}
			other.log(log)
			out, writes := sink.state()
			want := strings.Join([]string{api.RequestLogMessage, api.RequestLogMessage, other.msg}, ",")
			if got := strings.Join(messages(t, out), ","); got != want {
				t.Fatalf("after the %s the log holds %q, want %q", other.name, got, want)
			}
			if writes != 1 {
				t.Fatalf("three lines took %d writes, want 1", writes)
			}
			log.Info(api.RequestLogMessage, "n", 4)
			if out2, _ := sink.state(); out2 != out {
				t.Fatalf("a request line was written at once: %q", out2)
			}
			flush()
			if out, _ := sink.state(); !strings.HasSuffix(strings.TrimSpace(out), `"n":4}`) {
				t.Fatalf("Flush did not write the waiting line: %q", out)
			}
		})
	}
}

// TestLogLinesGoOutWithinTheInterval: a waiting line is written by the
// timer, with no later record or Flush.
func TestLogLinesGoOutWithinTheInterval(t *testing.T) {
	var sink countingSink
	log, _ := newLogger(&sink, LogConfig{Level: "info", FlushInterval: config.Duration(20 * time.Millisecond)})
	log.Info(api.RequestLogMessage, "line", "alone")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if out, _ := sink.state(); strings.Contains(out, `"line":"alone"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the line was never written by the timer")
		}
		time.Sleep(time.Millisecond)
	}
	// The timer re-arms for the next line.
	log.Info(api.RequestLogMessage, "line", "again")
	for {
		if out, _ := sink.state(); strings.Contains(out, `"line":"again"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the second line was never written by the timer")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLogFlushIntervalZeroWritesEachLine: 0 means no batching at all.
func TestLogFlushIntervalZeroWritesEachLine(t *testing.T) {
	var sink countingSink
	log, _ := newLogger(&sink, LogConfig{Level: "info"})
	log.Info(api.RequestLogMessage)
	log.Info(api.RequestLogMessage)
	if out, writes := sink.state(); len(messages(t, out)) != 2 || writes != 2 {
		t.Fatalf("log = %q in %d writes, want two lines in 2", out, writes)
	}
}

// TestLogBatchBoundedInBytes: a burst larger than maxLogPending is written
// without waiting for the interval.
func TestLogBatchBoundedInBytes(t *testing.T) {
	var sink countingSink
	log, _ := newLogger(&sink, LogConfig{Level: "info", FlushInterval: config.Duration(time.Hour)})
	line := strings.Repeat("x", 1000)
	for range maxLogPending/1000 + 1 {
		log.Info(api.RequestLogMessage, "pad", line)
	}
	out, writes := sink.state()
	if writes != 1 || len(out) < maxLogPending {
		t.Fatalf("a burst of %d bytes: %d bytes in %d writes, want at least %d in 1", maxLogPending+1000, len(out), writes, maxLogPending)
	}
}
