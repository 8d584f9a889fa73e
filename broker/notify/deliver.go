package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Backoff between attempts: it doubles from BaseBackoff up to MaxBackoff,
// and each wait is shortened by a random part of up to a fifth so that
// receivers coming back from an outage are not hit by every retry at once.
const (
	BaseBackoff = time.Second
	MaxBackoff  = 5 * time.Minute
)

// Headers valet sets on every request.
const (
	HeaderEvent     = "X-Valet-Event"
	HeaderDelivery  = "X-Valet-Delivery"
	HeaderTimestamp = "X-Valet-Timestamp"
	HeaderSignature = "X-Valet-Signature"
	UserAgent       = "valet/notify"
)

// deliver makes up to w.maxAttempts attempts to deliver dv, waiting on the
// Dispatcher's clock between them. It returns when dv is delivered, given
// up on, or dropped because ctx ended; the counters (and w.inFlight) are
// updated before OnResult hears the outcome, so Stats agree with it.
func (d *Dispatcher) deliver(ctx context.Context, w *webhook, dv delivery) {
	for attempt := 1; ; attempt++ {
		retryAfter, err := d.attempt(ctx, w, dv)
		now := d.clk.Now()
		if err == nil {
			w.mu.Lock()
			w.stats.Delivered++
			w.stats.LastDeliveredAt = now
			w.inFlight = false
			w.mu.Unlock()
			d.report(w.name, dv.event, OutcomeOK)
			return
		}
		if ctx.Err() != nil {
			d.drop(w, dv)
			return
		}
		var perm *permanentError
		if errors.As(err, &perm) || attempt >= w.maxAttempts {
			w.mu.Lock()
			w.stats.Failed++
			w.stats.LastError = err.Error()
			w.stats.LastErrorAt = now
			w.inFlight = false
			w.mu.Unlock()
			d.log.Warn("webhook delivery failed; giving up",
				"webhook", w.name, "event", dv.event, "delivery", dv.id, "attempts", attempt, "err", err)
			d.report(w.name, dv.event, OutcomeFailed)
			return
		}
		wait := max(backoff(attempt), min(retryAfter, MaxBackoff))
		w.mu.Lock()
		w.stats.Retries++
		w.stats.LastError = err.Error()
		w.stats.LastErrorAt = now
		w.mu.Unlock()
		d.log.Debug("webhook delivery failed; will retry",
			"webhook", w.name, "event", dv.event, "delivery", dv.id, "attempt", attempt, "retry_in", wait, "err", err)
		d.report(w.name, dv.event, OutcomeRetry)

		t := d.clk.NewTimer(wait)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			d.drop(w, dv)
			return
		}
	}
}

func (d *Dispatcher) drop(w *webhook, dv delivery) {
	w.mu.Lock()
	w.stats.Dropped++
	w.inFlight = false
	w.mu.Unlock()
	d.report(w.name, dv.event, OutcomeDropped)
}

// backoff is the wait after the attempt-th failed attempt: BaseBackoff
// doubled attempt-1 times, at most MaxBackoff, less up to a fifth.
func backoff(attempt int) time.Duration {
	b := MaxBackoff
	if attempt <= 20 { // 2^20 s is well past MaxBackoff; avoid overflow
		b = min(BaseBackoff<<(attempt-1), MaxBackoff)
	}
	return b - rand.N(b/5+1)
}

// permanentError is a failure that retrying will not fix.
type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

// attempt sends dv once. It returns nil on a 2xx answer, a *permanentError
// for answers retrying cannot change, and otherwise a retryable error with
// the wait the receiver asked for (Retry-After), if any. Errors never
// contain the webhook URL or the body.
func (d *Dispatcher) attempt(ctx context.Context, w *webhook, dv delivery) (retryAfter time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(dv.body))
	if err != nil {
		// Config validation makes this unreachable; the error would quote
		// the URL, so do not return it.
		return 0, &permanentError{"cannot build a request for the configured url"}
	}
	ts := strconv.FormatInt(d.clk.Now().Unix(), 10)
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(HeaderEvent, dv.event)
	req.Header.Set(HeaderDelivery, dv.id)
	req.Header.Set(HeaderTimestamp, ts)
	switch {
	case w.format == "set":
		// RFC 8935 section 2: the SET is the body; it carries its own
		// signature, and the receiver may ask for a bearer token.
		req.Header.Set("Content-Type", "application/secevent+jwt")
		req.Header.Set("Accept", "application/json")
		if w.secret != nil {
			req.Header.Set("Authorization", "Bearer "+string(w.secret))
		}
	default:
		req.Header.Set("Content-Type", "application/json")
		if w.secret != nil {
			req.Header.Set(HeaderSignature, sign(w.secret, ts, dv.body))
		}
	}

	resp, err := d.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return 0, fmt.Errorf("no answer within %s", w.timeout)
		}
		// *url.Error quotes the URL, which for Slack is a credential.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("send: %w", err)
	}
	defer resp.Body.Close()
	// Read a little of the answer for the error message (Slack explains
	// its refusals there) and drain the rest so the connection is reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))

	code := resp.StatusCode
	if code >= 200 && code <= 299 {
		return 0, nil
	}
	msg := "receiver answered " + resp.Status
	if s := printable(snippet); s != "" {
		msg += ": " + strconv.Quote(s)
	}
	switch {
	case code == http.StatusTooManyRequests || code >= 500:
		return parseRetryAfter(resp.Header.Get("Retry-After"), d.clk.Now()), errors.New(msg)
	case code >= 300 && code <= 399:
		return 0, &permanentError{msg + " (redirects are not followed; configure the final url)"}
	default:
		return 0, &permanentError{msg}
	}
}

// sign returns the X-Valet-Signature value for body sent at ts.
func sign(secret []byte, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, int64(MaxBackoff/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// printable keeps a response snippet fit for a log line.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, strings.ToValidUTF8(string(b), ""))
	return strings.TrimSpace(s)
}
