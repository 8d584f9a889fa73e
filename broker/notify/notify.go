package notify

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
)

const (
	// QueueSize bounds the events waiting for one webhook. When it is full
	// the oldest waiting event is dropped: the newest events (a request
	// still waiting for approval) are the ones operators can act on.
	QueueSize = 1024
)

// Outcomes passed to Options.OnResult.
const (
	OutcomeOK      = "ok"      // the receiver answered 2xx
	OutcomeRetry   = "retry"   // the attempt failed and will be retried
	OutcomeFailed  = "failed"  // the attempt failed and valet gave up
	OutcomeDropped = "dropped" // the event was discarded: queue full or shutting down
)

// Options configures a Dispatcher.
type Options struct {
	// Webhooks are the receivers, as validated by Config.Validate,
	// used as given (build them with WebhookConfig.SetDefaults);
	// SecretFile paths must be absolute (or relative to the working
	// directory).
	Webhooks []WebhookConfig
	// Clock times retries (nil: clock.Real{}).
	Clock clock.Clock
	// Client sends the requests (nil: a client that does not follow
	// redirects). Each attempt is bounded by the webhook's Timeout whatever
	// the client.
	Client *http.Client
	// Logger receives delivery failures (nil: slog.Default()). Log records
	// never carry a request body, a secret or a webhook URL (Slack webhook
	// URLs are credentials).
	Logger *slog.Logger
	// SETs signs the Security Event Tokens of set receivers (required
	// when there is one).
	SETs SETSigner
	// OnResult, if set, is called after every delivery attempt with the
	// webhook name, the event type and OutcomeOK, OutcomeRetry or
	// OutcomeFailed, and with OutcomeDropped for every event discarded
	// unsent. Each event ends in exactly one of ok, failed or dropped.
	// It is called from Notify and from the delivery goroutines, so it must
	// be safe for concurrent use and must not block.
	OnResult func(webhook, event, outcome string)
}

// SETSigner signs a SET about an event for a receiver (broker/ssf's
// Transmitter): ok is false for an event that has no SET.
type SETSigner interface {
	Sign(e broker.Event, audience string) (set []byte, ok bool, err error)
}

// WebhookStats is what one webhook has done since the Dispatcher started.
type WebhookStats struct {
	Name string `json:"name"`
	// Delivered counts events the receiver accepted (2xx).
	Delivered uint64 `json:"delivered"`
	// Retries counts failed attempts that were retried.
	Retries uint64 `json:"retries"`
	// Failed counts events given up on: a permanent error (4xx other than
	// 429) or MaxAttempts failed attempts.
	Failed uint64 `json:"failed"`
	// Dropped counts events discarded unsent: the queue was full, or the
	// Dispatcher stopped before they were delivered.
	Dropped uint64 `json:"dropped"`
	// Pending counts events queued or being delivered (including one
	// waiting to be retried).
	Pending int `json:"pending"`
	// LastError is the most recent failed attempt's error, and
	// LastErrorAt when it happened (by the Dispatcher's clock).
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// LastDeliveredAt is when the receiver last accepted an event.
	LastDeliveredAt time.Time `json:"last_delivered_at,omitzero"`
}

// Dispatcher delivers events to webhooks: Notify queues, Run delivers.
// Delivery is best-effort: a slow or failing receiver never holds up the
// caller of Notify, and what cannot be delivered is counted in Stats.
type Dispatcher struct {
	hooks    []*webhook
	sets     SETSigner
	clk      clock.Clock
	client   *http.Client
	log      *slog.Logger
	onResult func(webhook, event, outcome string)

	started   atomic.Bool
	stop      chan struct{} // closed by Close
	closeOnce sync.Once
}

var _ broker.Notifier = (*Dispatcher)(nil)

// New reads each webhook's secret file and returns a Dispatcher; call Run
// to start delivering. It returns an error naming the webhook when a secret
// file cannot be read or is empty, when a format is unknown, when timeout is
// not positive or when max_attempts is below 1.
func New(opts Options) (*Dispatcher, error) {
	d := &Dispatcher{
		sets:     opts.SETs,
		clk:      opts.Clock,
		client:   opts.Client,
		log:      opts.Logger,
		onResult: opts.OnResult,
		stop:     make(chan struct{}),
	}
	if d.clk == nil {
		d.clk = clock.Real{}
	}
	if d.client == nil {
		d.client = &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			// A redirect would resend the signed body (or, for 301-303, drop
			// it) somewhere the operator did not configure; report it
			// instead so the URL gets fixed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	for i, c := range opts.Webhooks {
		w, err := newWebhook(c)
		if err == nil && w.format == "set" && d.sets == nil {
			err = errors.New("format set needs valet's SSF transmitter, which was not given")
		}
		if err != nil {
			return nil, fmt.Errorf("notifications.webhooks[%d] %q: %w", i, c.Name, err)
		}
		d.hooks = append(d.hooks, w)
	}
	return d, nil
}

func newWebhook(c WebhookConfig) (*webhook, error) {
	w := &webhook{
		name:        c.Name,
		url:         c.URL,
		audience:    c.Audience,
		format:      c.Format,
		timeout:     c.Timeout.D(),
		maxAttempts: c.MaxAttempts,
		wake:        make(chan struct{}, 1),
	}
	switch w.format {
	case "json", "slack":
	case "set":
		if w.audience == "" {
			w.audience = w.url
		}
		if len(c.Events) == 0 {
			c.Events = slices.Sorted(maps.Keys(SETEvents))
		}
	default:
		return nil, fmt.Errorf("format %q must be json, slack or set", c.Format)
	}
	if w.timeout <= 0 {
		return nil, fmt.Errorf("timeout must be positive; it is %s", c.Timeout)
	}
	if w.maxAttempts < 1 {
		return nil, fmt.Errorf("max_attempts must be at least 1; it is %d", c.MaxAttempts)
	}
	if len(c.Events) > 0 {
		w.events = map[string]bool{}
		for _, e := range c.Events {
			w.events[e] = true
		}
	}
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			// The *PathError names the file and the reason.
			return nil, fmt.Errorf("secret_file: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return nil, fmt.Errorf("secret_file %s is empty; put the HMAC key in it (e.g. `openssl rand -hex 32`)", c.SecretFile)
		}
		w.secret = []byte(s)
	}
	return w, nil
}

// Notify queues e for every webhook that wants its type. It never blocks:
// when a webhook's queue is full its oldest waiting event is dropped, and
// after Close (or once Run has returned) e is dropped. Dropped events are
// counted in Stats and reported to OnResult.
func (d *Dispatcher) Notify(e broker.Event) {
	for _, w := range d.hooks {
		if w.events != nil && !w.events[e.Type] {
			continue
		}
		// The body is built now, on the caller's goroutine, so it captures
		// the grant as it is at the event and is the same on every retry.
		id := rand.Text()
		body, err := d.body(w, e, id)
		if errors.Is(err, errNoSET) {
			continue
		}
		if err != nil {
			// Only a grant scope holding a value JSON cannot encode gets
			// here; count it so it is visible.
			w.recordFailure(d.clk.Now(), fmt.Errorf("encode %s event: %w", e.Type, err))
			d.log.Error("webhook payload cannot be encoded", "webhook", w.name, "event", e.Type, "err", err)
			d.report(w.name, e.Type, OutcomeFailed)
			continue
		}
		dropped, first := w.push(delivery{id: id, event: e.Type, body: body})
		if dropped != nil {
			if first {
				d.log.Warn("webhook queue is full; dropping the oldest notifications until it drains (see notify stats for the count)",
					"webhook", w.name, "queue_size", QueueSize)
			}
			d.report(w.name, dropped.event, OutcomeDropped)
		}
	}
}

// Run delivers queued events until ctx ends or Close is called, with one
// goroutine per webhook so each receiver gets its events in order and a
// slow receiver delays no other. When it stops, in-flight attempts are
// abandoned and queued events dropped (and counted). Run may be called
// once.
func (d *Dispatcher) Run(ctx context.Context) {
	if !d.started.CompareAndSwap(false, true) {
		panic("notify: Dispatcher.Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-d.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for _, w := range d.hooks {
		wg.Go(func() { d.work(ctx, w) })
	}
	wg.Wait()
}

// Close stops delivery: Run returns once its workers have abandoned their
// in-flight attempts, queued events are dropped, and later Notify calls
// drop their events. It is idempotent and always returns nil (it exists to
// satisfy io.Closer).
func (d *Dispatcher) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		for _, w := range d.hooks {
			d.shutdown(w)
		}
	})
	return nil
}

// Stats returns each webhook's counters, in configuration order.
func (d *Dispatcher) Stats() []WebhookStats {
	out := make([]WebhookStats, 0, len(d.hooks))
	for _, w := range d.hooks {
		out = append(out, w.snapshot())
	}
	return out
}

func (d *Dispatcher) report(webhook, event, outcome string) {
	if d.onResult != nil {
		d.onResult(webhook, event, outcome)
	}
}

// work delivers w's events one at a time until ctx ends.
func (d *Dispatcher) work(ctx context.Context, w *webhook) {
	defer d.shutdown(w)
	for {
		dv, ok := w.next(ctx)
		if !ok {
			return
		}
		d.deliver(ctx, w, dv)
	}
}

// shutdown closes w's queue and drops what was waiting in it.
func (d *Dispatcher) shutdown(w *webhook) {
	for _, dv := range w.close() {
		d.report(w.name, dv.event, OutcomeDropped)
	}
}

// delivery is one event on its way to one webhook.
type delivery struct {
	id    string // X-Valet-Delivery and the payload's id, the same on every attempt
	event string
	body  []byte
}

// webhook is one receiver with its queue and counters.
type webhook struct {
	name        string
	url         string // never logged: Slack webhook URLs are credentials
	audience    string // the aud of a set receiver's SETs
	format      string
	secret      []byte
	events      map[string]bool // nil: all
	timeout     time.Duration
	maxAttempts int

	wake chan struct{} // capacity 1: the queue may have something

	mu          sync.Mutex
	queue       []delivery
	inFlight    bool // next has handed out a delivery that deliver has not finished
	closed      bool
	overflowing bool // a drop has been logged since the queue last drained
	stats       WebhookStats
}

// push queues dv, dropping the oldest waiting delivery if the queue is full
// (or dv itself once the queue is closed). It returns the dropped delivery,
// if any, and whether it is the first drop since the queue last drained.
func (w *webhook) push(dv delivery) (dropped *delivery, first bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.stats.Dropped++
		return &dv, false
	}
	if len(w.queue) >= QueueSize {
		old := w.queue[0]
		w.queue[0] = delivery{} // let the body be collected
		w.queue = w.queue[1:]
		dropped = &old
		w.stats.Dropped++
		first = !w.overflowing
		w.overflowing = true
	}
	w.queue = append(w.queue, dv)
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return dropped, first
}

// next waits for a delivery; it reports false once ctx ends or the queue
// is closed.
func (w *webhook) next(ctx context.Context) (delivery, bool) {
	for {
		w.mu.Lock()
		switch {
		case w.closed:
			w.mu.Unlock()
			return delivery{}, false
		case len(w.queue) > 0:
			dv := w.queue[0]
			w.queue[0] = delivery{}
			w.queue = w.queue[1:]
			if len(w.queue) == 0 {
				w.queue = nil
				w.overflowing = false
			}
			w.inFlight = true
			w.mu.Unlock()
			return dv, true
		}
		w.mu.Unlock()
		select {
		case <-w.wake:
		case <-ctx.Done():
			return delivery{}, false
		}
	}
}

// close marks the queue closed and returns what was waiting, counted as
// dropped.
func (w *webhook) close() []delivery {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	q := w.queue
	w.queue = nil
	w.stats.Dropped += uint64(len(q))
	return q
}

func (w *webhook) snapshot() WebhookStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	s.Name = w.name
	s.Pending = len(w.queue)
	if w.inFlight {
		s.Pending++
	}
	return s
}

func (w *webhook) recordFailure(at time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats.Failed++
	w.stats.LastError = err.Error()
	w.stats.LastErrorAt = at
}
