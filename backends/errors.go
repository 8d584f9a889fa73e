package backends

import (
	"errors"
	"fmt"
)

// Error kinds. A backend reports a failure the client can act on as an
// *Error of one of these kinds (Errorf); the broker maps each kind to its
// own error code in one place, and shows the client the Error's message.
// Any other error from a backend is internal: it is logged, and the client
// sees only that the backend failed (or, for ErrUnavailable, that it is
// unavailable).
var (
	// ErrInvalid: the request cannot be served as asked (a scope the role
	// does not grant, a lease too short for the backend). The broker
	// answers EINVALID.
	ErrInvalid = errors.New("invalid request")
	// ErrForbidden: the backend will not issue this credential to this
	// agent (its attestation lacks an attribute the role needs). The
	// broker answers EFORBIDDEN.
	ErrForbidden = errors.New("refused for this agent")
	// ErrConflict: the credential's state does not allow the operation
	// (too little time left to renew). The broker answers ECONFLICT.
	ErrConflict = errors.New("conflicts with the credential's state")
	// ErrBadResponse: the backend answered, but not with a credential valet
	// can hand out (a secret without a lease, a TTL longer than the
	// lease's); the message says what to change at the backend. The broker
	// answers EBADGATEWAY.
	ErrBadResponse = errors.New("unusable answer from the backend")
	// ErrUnavailable marks errors caused by the backend being unreachable,
	// down or sealed. Wrap it (fmt.Errorf("...: %w", ErrUnavailable)): the
	// details are logged and the broker answers EUNAVAILABLE with a generic
	// message.
	ErrUnavailable = errors.New("backend unavailable")
)

// Error is a backend failure the client may be told about: Kind is one of
// the error kinds above (errors.Is matches it) and Message says what was
// wrong, for the client to read. Message must hold no secret and nothing
// about the backend the client may not know.
type Error struct {
	Kind    error
	Message string
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the kind.
func (e *Error) Unwrap() error { return e.Kind }

// Errorf returns an *Error of kind with a formatted message.
func Errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}
