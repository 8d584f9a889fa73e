package broker_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/valet-broker/valet/broker"
)

// TestErrorIs: errors.Is matches a *broker.Error by its code, through a
// code sentinel (an *Error with only a Code), or by identity; never by
// message text.
func TestErrorIs(t *testing.T) {
	notFound := broker.Errorf(broker.ENOTFOUND, "lease %q not found", "x")
	cause := errors.New("cause")
	cases := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"code sentinel, same code", notFound, &broker.Error{Code: broker.ENOTFOUND}, true},
		{"code sentinel, wrapped error", fmt.Errorf("get: %w", broker.Wrap(broker.EUNAVAILABLE, cause, "store down")), &broker.Error{Code: broker.EUNAVAILABLE}, true},
		{"code sentinel, other code", notFound, &broker.Error{Code: broker.ECONFLICT}, false},
		{"the same error", notFound, notFound, true},
		{"another error with the same code and message", notFound, broker.Errorf(broker.ENOTFOUND, "lease %q not found", "x"), false},
		{"another error with the same message and another code", broker.Errorf(broker.ECONFLICT, "no"), broker.Errorf(broker.EFORBIDDEN, "no"), false},
		{"the cause", broker.Wrap(broker.EINVALID, cause, "bad"), cause, true},
		{"a sentinel in the cause", broker.Wrap(broker.EINVALID, fmt.Errorf("%w: x", broker.ErrScopeRefused), "bad"), broker.ErrScopeRefused, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := errors.Is(c.err, c.target); got != c.want {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", c.err, c.target, got, c.want)
			}
		})
	}
}
