package audit

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
)

// Sink receives committed records, e.g. to copy them to a SIEM. Write must
// not block for long: it is called on the commit path.
type Sink interface {
	Write(recs []Record)
}

// LineSink writes each record as one JSON line to w from a background
// goroutine. The bbolt log stays the record of truth: if w falls more than
// the buffer behind, records are dropped from the copy (never from the log)
// and counted in Dropped.
type LineSink struct {
	ch      chan []Record
	w       io.Writer
	closer  io.Closer
	dropped atomic.Uint64
	done    chan struct{}
	once    sync.Once
	log     *slog.Logger

	mu     sync.RWMutex // guards closed against a Write racing Close
	closed bool
}

// OpenSink opens a sink by its config value: "stdout" or a file path
// (appended to, created with mode 0600).
func OpenSink(target string, log *slog.Logger) (*LineSink, error) {
	if target == "stdout" {
		return NewLineSink(os.Stdout, nil, log), nil
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return NewLineSink(f, f, log), nil
}

// NewLineSink starts a sink writing to w; closer, if non-nil, is closed by
// Close.
func NewLineSink(w io.Writer, closer io.Closer, log *slog.Logger) *LineSink {
	if log == nil {
		log = slog.Default()
	}
	s := &LineSink{ch: make(chan []Record, 4096), w: w, closer: closer, done: make(chan struct{}), log: log}
	go s.run()
	return s
}

// Write queues records; it never blocks. After Close it drops them.
func (s *LineSink) Write(recs []Record) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.dropped.Add(uint64(len(recs)))
		return
	}
	select {
	case s.ch <- recs:
	default:
		if s.dropped.Add(uint64(len(recs))) == uint64(len(recs)) {
			s.log.Warn("audit sink is falling behind; dropping records from the copy (the audit log itself is complete)")
		}
	}
}

// Dropped is how many records the copy lost.
func (s *LineSink) Dropped() uint64 { return s.dropped.Load() }

func (s *LineSink) run() {
	defer close(s.done)
	bw := bufio.NewWriter(s.w)
	enc := json.NewEncoder(bw)
	for recs := range s.ch {
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				s.log.Error("audit sink write failed", "err", err)
			}
		}
		if len(s.ch) == 0 {
			if err := bw.Flush(); err != nil {
				s.log.Error("audit sink flush failed", "err", err)
			}
		}
	}
	_ = bw.Flush()
}

// Close flushes queued records and closes the file.
func (s *LineSink) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.ch)
		s.mu.Unlock()
	})
	<-s.done
	if s.closer != nil {
		return s.closer.Close()
	}
	return nil
}

// Config is the audit section of the configuration file: an optional
// JSON-lines copy of the audit log for a SIEM.
type Config struct {
	// Sink is "", "stdout" or a file path (see OpenSink).
	Sink string `yaml:"sink"`
}
