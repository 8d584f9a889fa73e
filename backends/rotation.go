package backends

import (
	"context"
	"errors"
	"time"

	"github.com/valet-broker/valet/backends/kek"
)

// The capabilities below are what valet's scheduled jobs (broker/jobs/
// builtin) call to keep a backend's own secrets short-lived. Like the
// others, each is implemented only by backends that can.

// KEKRewrapper is implemented by backends that keep values sealed under
// the key-encryption key (the jwt backend's signing keys, the github
// backend's app keys and tokens); the kek-rotation job calls it.
type KEKRewrapper interface {
	// RewrapKEK re-seals under Deps.KEK every value the backend keeps
	// that only Deps.PreviousKEK opens, each file atomically, so that a
	// crash leaves every value under one KEK or the other and a restart
	// with both still opens all of them. Values that neither opens are
	// counted Unreadable and left as they are. It returns the counts,
	// never key material.
	RewrapKEK(ctx context.Context) (kek.Report, error)
}

// LoginSecretRotator is implemented by backends that log in to their
// service with a secret of their own that they can replace (the vault
// backend's AppRole secret-id); the vault-secret-id-rotation job calls it.
type LoginSecretRotator interface {
	// RotateLoginSecret replaces the login secret: it obtains a new one,
	// keeps it durably beside the old one, logs in with it, destroys the
	// old one at the service and makes the new one the only one. A crash
	// between any two steps leaves a secret valet can log in with, and
	// the next call finishes the interrupted rotation. It returns an
	// error wrapping ErrNoLoginSecret when the backend logs in without a
	// secret it could rotate (a token file, a JWT).
	RotateLoginSecret(ctx context.Context) (LoginSecretRotation, error)
}

// ErrNoLoginSecret is wrapped by RotateLoginSecret's error when the
// backend's login method has no secret to rotate.
var ErrNoLoginSecret = errors.New("the backend's login method has no secret valet can rotate")

// LoginSecretRotation is what a rotation changed: the accessors (public
// ids) of the secrets, never a secret.
type LoginSecretRotation struct {
	// Method is the login method (approle).
	Method string
	// NewAccessor is the accessor of the secret valet now logs in with.
	NewAccessor string
	// OldAccessor is the accessor of the secret destroyed, "" when the
	// old secret was already gone at the service.
	OldAccessor string
	// Resumed says that the rotation finished one a crash interrupted.
	Resumed bool
}

// LoginChecker is implemented by backends that hold a login of their own
// at their service (valet's Vault token); the vault-token-health job calls
// it.
type LoginChecker interface {
	// CheckLogin checks that the backend's own login is valid now, and
	// logs in again if it is not. It returns the login's state, and an
	// error when the backend holds no valid login afterwards (the service
	// unreachable, re-authentication refused).
	CheckLogin(ctx context.Context) (LoginHealth, error)
}

// LoginHealth is the state of a backend's own login.
type LoginHealth struct {
	// Method is the login method (token, approle, jwt).
	Method string
	// Accessor is the login token's accessor (its public id).
	Accessor string
	// TTL is how long the login token has left; Renewable says whether
	// it can be extended. ExpiresAt is when it ends without renewal.
	TTL       time.Duration
	Renewable bool
	ExpiresAt time.Time
	// LastRenewal is when the token was last renewed in the background
	// (zero: not since the last login); LastLogin when valet last logged
	// in.
	LastRenewal, LastLogin time.Time
	// Relogged says that the check found the login dead and logged in
	// again.
	Relogged bool
	// LoginFailures counts the background logins that failed in a row
	// before this check (0 when the last one succeeded).
	LoginFailures int
}

// DatabaseRootRotator is implemented by backends that front a database
// whose root credential their service manages (Vault's database secrets
// engine); the vault-database-root-rotation job calls it.
type DatabaseRootRotator interface {
	// RotateDatabaseRoot has the service replace the root credential of
	// the connection configured at mount/connection with one it generates
	// and tells nobody (Vault: POST <mount>/rotate-root/<connection>).
	// Credentials issued through the connection keep working.
	RotateDatabaseRoot(ctx context.Context, mount, connection string) error
}
