package broker

import (
	"errors"

	"github.com/valet-broker/valet/backends"
)

// backendKinds maps the error kinds a backend reports (backends.Error) to
// the codes clients see: the one place a backend's error becomes a broker
// error. backends.ErrUnavailable is not here: it is wrapped, not an
// *backends.Error, and its details are for the log (see backendError).
var backendKinds = []struct {
	kind error
	code string
}{
	{backends.ErrInvalid, EINVALID},
	{backends.ErrForbidden, EFORBIDDEN},
	{backends.ErrConflict, ECONFLICT},
	{backends.ErrBadResponse, EBADGATEWAY},
}

// fromBackend returns err as the broker reports it: a *backends.Error of a
// kind in backendKinds becomes an *Error with the mapped code and the
// backend's message (the backend's error stays in the chain, so errors.Is
// still finds its kind); any other error, and nil, is returned unchanged.
func fromBackend(err error) error {
	var be *backends.Error
	if !errors.As(err, &be) {
		return err
	}
	for _, k := range backendKinds {
		if errors.Is(be.Kind, k.kind) {
			return &Error{Code: k.code, Message: be.Message, Err: err}
		}
	}
	return err
}
