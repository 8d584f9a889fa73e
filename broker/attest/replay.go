package attest

import (
	"context"
	"errors"
	"time"
)

// ReplayCache remembers consumed jti values until the token expires. A
// storage engine's implementation keeps these promises:
//
//   - Consume is compare-and-swap: the check that key is not consumed and
//     the write that consumes it happen in one transaction, so of
//     concurrent calls with the same key exactly one succeeds, on every
//     replica.
//   - A consumed key stays consumed until exp (rounded up to the second),
//     across restarts; after exp it no longer counts as consumed, whether
//     or not it has been removed yet. Expiry is read from the stored
//     value, never left to the engine's own TTLs.
type ReplayCache interface {
	// Consume records key until exp; it returns ErrReplay if key was
	// already consumed and has not expired. Any other error means the
	// cache could not answer, and the verification fails as unavailable.
	Consume(ctx context.Context, key string, exp time.Time) error
}

// ErrReplay is returned by ReplayCache.Consume for a key that was already
// consumed and has not expired.
var ErrReplay = errors.New("attestation was already used (jti replay)")
