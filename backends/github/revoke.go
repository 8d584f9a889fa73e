package github

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/valet-broker/valet/backends"
)

// Revoke revokes a lease's installation token with DELETE
// /installation/token, authenticated by the sealed copy kept for it, then
// erases the copy. A token GitHub no longer accepts (401: already revoked
// or expired) counts as revoked, and so does a token whose expiry has
// passed.
//
// A lease without a handle comes from a mint that did not finish: its
// token, if GitHub created one, is found by the lease id when its sealed
// copy was written. When it was not (valet stopped between GitHub's answer
// and the copy, or gave up waiting for GitHub), GitHub offers no way to
// find the token: Revoke returns an error saying so, and the lease stays
// in the revocation queue until the token has expired (at most an hour).
// A mint known to have created nothing (refused before or by GitHub, or
// GitHub unreachable) returns nil.
func (b *Backend) Revoke(ctx context.Context, ref backends.Ref) error {
	id := ref.Handle
	if id == "" {
		id = ref.CorrelationID
	}
	if exp, err := time.Parse(time.RFC3339, ref.Details[detailExpiresAt]); err == nil && !b.clock.Now().Before(exp) {
		return nil // the token has expired at GitHub: nothing is left to revoke
	}
	rec, tok, err := b.tokens.get(id)
	switch {
	case errors.Is(err, errNoToken):
		return b.revokeUnrecorded(ctx, id, ref.Handle != "")
	case err != nil:
		return err
	case rec.Sealed == nil:
		return nil // revoked before: this is a repeat
	}
	now := b.clock.Now()
	if !now.Before(rec.ExpiresAt) {
		// Dead on its own; the sweep deletes the record.
		return nil
	}
	if err := b.revokeToken(ctx, tok); err != nil {
		return err
	}
	if err := b.tokens.erase(id, now); err != nil {
		// The token is revoked; the copy of a dead token goes with the
		// sweep after its expiry.
		b.log.Error("could not erase the sealed copy of a revoked token; the sweep deletes it after its expiry", "lease", id, "err", err)
	}
	return nil
}

// revokeUnrecorded handles a lease whose token has no sealed copy.
func (b *Backend) revokeUnrecorded(ctx context.Context, id string, hadHandle bool) error {
	b.pendingMu.Lock()
	u, unsealed := b.unsealed[id]
	_, settled := b.settled[id]
	b.pendingMu.Unlock()
	switch {
	case unsealed:
		if err := b.revokeToken(ctx, u.token); err != nil {
			return err
		}
		b.pendingMu.Lock()
		delete(b.unsealed, id)
		b.pendingMu.Unlock()
		return nil
	case settled:
		return nil
	case hadHandle:
		return errors.New("the sealed copy of this lease's GitHub token is missing (was the backend's tokens.db removed?): valet cannot revoke the token, which expires on its own within an hour of its mint")
	default:
		return errors.New("GitHub cannot list installation tokens: a token this interrupted mint may have created has no sealed copy and cannot be found; if it exists, it expires on its own within an hour of the mint")
	}
}

// revokeToken revokes an installation token at GitHub. A 401 (GitHub does
// not accept the token: revoked or expired already) is success.
func (b *Backend) revokeToken(ctx context.Context, token string) error {
	c, err := b.tokenClient(token)
	if err != nil {
		return err
	}
	_, err = c.Apps.RevokeInstallationToken(ctx)
	if err == nil || status(err) == http.StatusUnauthorized {
		return nil
	}
	return b.githubError(err, "revoke an installation token")
}

// sealedTokens returns how many tokens the backend holds sealed copies
// of, for tests and operators.
func (b *Backend) sealedTokens() (int, error) { return b.tokens.sealedCount() }
