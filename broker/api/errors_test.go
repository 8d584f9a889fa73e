package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
)

// TestErrorTable: every code has exactly its status and a title, wrapped
// or not; anything else is a 500.
func TestErrorTable(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
		title  string
	}{
		{"invalid", broker.Errorf(broker.EINVALID, "x"), http.StatusBadRequest, "Invalid request"},
		{"unauthorized", broker.Errorf(broker.EUNAUTHORIZED, "x"), http.StatusUnauthorized, "Unauthenticated"},
		{"forbidden", broker.Errorf(broker.EFORBIDDEN, "x"), http.StatusForbidden, "Forbidden"},
		{"quarantined", broker.Errorf(broker.EQUARANTINED, "x"), http.StatusForbidden, "Agent quarantined"},
		{"not found", broker.Errorf(broker.ENOTFOUND, "x"), http.StatusNotFound, "Not found"},
		{"conflict", broker.Errorf(broker.ECONFLICT, "x"), http.StatusConflict, "Conflict"},
		{"too large", broker.Errorf(broker.ETOOLARGE, "x"), http.StatusRequestEntityTooLarge, "Too large"},
		{"rate limited", broker.Errorf(broker.ERATELIMIT, "x"), http.StatusTooManyRequests, "Rate limited"},
		{"unavailable", broker.Errorf(broker.EUNAVAILABLE, "x"), http.StatusServiceUnavailable, "Unavailable"},
		{"backend error", broker.Errorf(broker.EBADGATEWAY, "x"), http.StatusBadGateway, "Backend error"},
		{"internal", broker.Errorf(broker.EINTERNAL, "x"), http.StatusInternalServerError, "Internal error"},
		{"wrapped", fmt.Errorf("context: %w", broker.Errorf(broker.EUNAVAILABLE, "x")), http.StatusServiceUnavailable, "Unavailable"},
		{"not a broker error", errors.New("disk full"), http.StatusInternalServerError, "Internal error"},
		{"a code valet does not have", &broker.Error{Code: "teapot", Message: "x"}, http.StatusInternalServerError, "Internal error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := StatusOf(c.err); got != c.status {
				t.Errorf("StatusOf = %d, want %d", got, c.status)
			}
			if got := Title(broker.ErrorCode(c.err)); got != c.title {
				t.Errorf("Title = %q, want %q", got, c.title)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"whole seconds", &broker.Error{Code: broker.ERATELIMIT, RetryAfter: 7 * time.Second}, "7"},
		{"rounded up", &broker.Error{Code: broker.ERATELIMIT, RetryAfter: 1500 * time.Millisecond}, "2"},
		{"not said", &broker.Error{Code: broker.ERATELIMIT}, "1"},
		{"not a broker error", errors.New("x"), "1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RetryAfter(c.err); got != c.want {
				t.Errorf("RetryAfter = %q, want %q", got, c.want)
			}
		})
	}
}
