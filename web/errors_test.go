package web

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
)

// TestBrokerErrorPages: a console page for a broker error has the status
// the API gives the same error (503 stays 503, 429 stays 429 with its
// Retry-After, 502 stays 502), shows the client-safe message, and never
// the internal cause, which goes to the log for server errors.
func TestBrokerErrorPages(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		status     int
		retryAfter string
		shows      string
		cause      string // internal text: never on the page; logged for 5xx
	}{
		{"invalid", broker.Errorf(broker.EINVALID, "grant id is malformed"), http.StatusBadRequest, "", "grant id is malformed", ""},
		{"unauthorized", broker.Errorf(broker.EUNAUTHORIZED, "sign in again"), http.StatusUnauthorized, "", "sign in again", ""},
		{"forbidden", broker.Errorf(broker.EFORBIDDEN, "not an approver"), http.StatusForbidden, "", "not an approver", ""},
		{"not found", broker.Errorf(broker.ENOTFOUND, "grant not found"), http.StatusNotFound, "", "grant not found", ""},
		{"conflict", broker.Errorf(broker.ECONFLICT, "grant is denied"), http.StatusConflict, "", "grant is denied", ""},
		{"too large", broker.Errorf(broker.ETOOLARGE, "comment too long"), http.StatusRequestEntityTooLarge, "", "comment too long", ""},
		{"rate limited", &broker.Error{Code: broker.ERATELIMIT, Message: "slow down", RetryAfter: 7 * time.Second},
			http.StatusTooManyRequests, "7", "slow down", ""},
		{"unavailable", broker.Wrap(broker.EUNAVAILABLE, errors.New("dial tcp 10.9.8.7:5432: connection refused"), "the grant store is unavailable; retry later"),
			http.StatusServiceUnavailable, "", "the grant store is unavailable", "10.9.8.7:5432"},
		{"backend error", broker.Wrap(broker.EBADGATEWAY, errors.New("vault at https://vault.internal: permission denied"), "backend v failed"),
			http.StatusBadGateway, "", "backend v failed", "vault.internal"},
		{"internal", broker.Wrap(broker.EINTERNAL, errors.New("bbolt: page 42 corrupt"), "grant store failure"),
			http.StatusInternalServerError, "", "The server log has details", "page 42 corrupt"},
		{"not a broker error", errors.New("bbolt: page 43 corrupt"), http.StatusInternalServerError, "", "The server log has details", "page 43 corrupt"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, nil)
			w := httptest.NewRecorder()
			w.Header().Set("X-Request-Id", "req-7")
			f.console.brokerError(w, httptest.NewRequest("GET", "/ui/grants/x", nil), nil, c.err)
			body := w.Body.String()
			if w.Code != c.status {
				t.Errorf("status %d, want %d", w.Code, c.status)
			}
			if got := w.Header().Get("Retry-After"); got != c.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, c.retryAfter)
			}
			if !strings.Contains(body, c.shows) {
				t.Errorf("page does not say %q:\n%s", c.shows, body)
			}
			if c.cause == "" {
				return
			}
			if strings.Contains(body, c.cause) {
				t.Errorf("page shows the internal cause %q", c.cause)
			}
			if log := f.log.String(); !strings.Contains(log, c.cause) || !strings.Contains(log, "req-7") {
				t.Errorf("the log does not hold the cause %q under the request id:\n%s", c.cause, log)
			}
		})
	}
}
