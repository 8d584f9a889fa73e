package broker

import (
	"errors"
	"fmt"
	"time"
)

// Error codes. Every error valet returns to a client carries one of these; the
// HTTP layer maps each code to exactly one status (broker/api).
const (
	EINVALID      = "invalid"       // the request is malformed or breaks a rule
	EUNAUTHORIZED = "unauthorized"  // no, or no valid, attestation or operator token
	EFORBIDDEN    = "forbidden"     // authenticated, but policy or state says no
	EQUARANTINED  = "quarantined"   // the agent is quarantined until an operator releases it
	ENOTFOUND     = "not_found"     // no such role, lease, grant, ...
	ECONFLICT     = "conflict"      // the object is not in a state that allows this
	ETOOLARGE     = "too_large"     // body or token over its size limit
	ERATELIMIT    = "rate_limited"  // too many requests from this agent
	EUNAVAILABLE  = "unavailable"   // a dependency (backend, store) is down; retry later
	EBADGATEWAY   = "backend_error" // a backend answered with an error
	EINTERNAL     = "internal"      // a bug or an unexpected failure; details only in logs
)

// Error is valet's error type. Message is safe to show to the client and says
// what was wrong and how to fix it; Err, when set, is the internal cause and is
// only logged.
type Error struct {
	Code    string
	Message string
	Err     error
	// RetryAfter, for ERATELIMIT, is how long the client should wait
	// before trying again (0: not known; the HTTP layer says 1s).
	RetryAfter time.Duration
}

// Error returns the message and, if present, the internal cause.
func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// RetryAfterSeconds is RetryAfter in whole seconds, rounded up and at
// least 1: the value of an HTTP Retry-After header (RFC 9110 section
// 10.2.3).
func (e *Error) RetryAfterSeconds() int64 {
	return max(1, int64((e.RetryAfter+time.Second-1)/time.Second))
}

// Unwrap returns the internal cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is a code sentinel for e's code: an *Error that
// holds only a Code, such as &Error{Code: ENOTFOUND}, so that
// errors.Is(err, &Error{Code: ENOTFOUND}) asks whether err carries that
// code. Any other *Error matches only itself (errors.Is compares identity
// before calling Is); messages are never compared, since they are written
// for people and change. Sentinels for one kind of refusal within a code
// are plain errors in the cause chain, such as ErrScopeRefused.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Message == "" && t.Err == nil && t.RetryAfter == 0
}

// Errorf returns an *Error with the given code and a formatted client message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with a client message and an internal cause.
func Wrap(code string, err error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for
// any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the client-safe message of err. Errors that are not an
// *Error, and EINTERNAL errors, get a generic message so internals never leak.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.Code != EINTERNAL {
		return e.Message
	}
	return "internal error; the server log has details under this request id"
}
