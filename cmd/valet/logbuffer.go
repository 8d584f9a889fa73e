package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker/api"
)

// maxLogPending is how many bytes of log lines a lineBuffer holds before it
// writes them without waiting for its interval.
const maxLogPending = 64 << 10

// lineBuffer writes log lines to w in batches, as nginx's buffered
// access_log does: a line waits at most interval (it is written with the
// lines after it in one write call), less once maxLogPending bytes wait, and
// not at all when interval is 0. bufferedHandler holds only the request
// lines (api.RequestLogMessage below Warn) and writes every other record at
// once, with the lines that wait before it; Flush writes what waits. One
// write system call per batch instead of one per request is a few percent
// of a mint's CPU under load; a crash loses at most interval of request
// lines (the audit log, not these lines, is valet's record).
type lineBuffer struct {
	w        io.Writer
	interval time.Duration

	mu    sync.Mutex
	buf   []byte
	timer *time.Timer
	armed bool
}

func newLineBuffer(w io.Writer, interval time.Duration) *lineBuffer {
	return &lineBuffer{w: w, interval: interval}
}

// Write queues p (one log line; slog handlers write a record per call). It
// never fails: an error writing a batch is not the caller's.
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.interval <= 0 {
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	switch {
	case len(b.buf) >= maxLogPending:
		b.flushLocked()
	case !b.armed:
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.interval, b.Flush)
		} else {
			b.timer.Reset(b.interval)
		}
	}
	return len(p), nil
}

// Flush writes the lines that wait.
func (b *lineBuffer) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

func (b *lineBuffer) flushLocked() {
	if b.armed {
		b.timer.Stop()
		b.armed = false
	}
	if len(b.buf) == 0 {
		return
	}
	_, _ = b.w.Write(b.buf)
	if cap(b.buf) > 4*maxLogPending {
		b.buf = nil // a burst's buffer is not kept
	} else {
		b.buf = b.buf[:0]
	}
}

// bufferedHandler is a slog handler writing into a lineBuffer that flushes
// it after each record but the request lines below Warn: start-up,
// leadership, job and error lines are never late, and stay in order with
// the request lines before them.
type bufferedHandler struct {
	slog.Handler
	buf *lineBuffer
}

func (h bufferedHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn || r.Message != api.RequestLogMessage {
		h.buf.Flush()
	}
	return err
}

func (h bufferedHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return bufferedHandler{h.Handler.WithAttrs(attrs), h.buf}
}

func (h bufferedHandler) WithGroup(name string) slog.Handler {
	return bufferedHandler{h.Handler.WithGroup(name), h.buf}
}
