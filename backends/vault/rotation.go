package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
)

var (
	_ backends.LoginSecretRotator  = (*Backend)(nil)
	_ backends.LoginChecker        = (*Backend)(nil)
	_ backends.DatabaseRootRotator = (*Backend)(nil)
)

// RotateLoginSecret implements backends.LoginSecretRotator for AppRole:
//
//  1. it looks up the accessor of the secret-id in secret_id_file
//     (auth/<mount>/role/<role>/secret-id/lookup);
//  2. it generates a new secret-id (auth/<mount>/role/<role>/secret-id,
//     metadata valet_backend=<name>) and writes it, durably, to
//     secret_id_file.next;
//  3. it logs in with the new secret-id and makes that token valet's;
//  4. it destroys the old secret-id by its accessor
//     (auth/<mount>/role/<role>/secret-id-accessor/destroy);
//  5. it writes the new secret-id to secret_id_file and removes the
//     .next file.
//
// A login tries the .next file first, then secret_id_file, so a crash
// between any two steps leaves a secret-id valet can log in with; a call
// that finds a .next file finishes the interrupted rotation from step 3.
// A crash during step 2, after Vault created the secret-id and before the
// file was written, leaves a secret-id nobody holds, which expires with
// the role's secret_id_ttl. The token obtained with the old secret-id is
// not revoked (tokens created through a token role that is not orphan
// would die with it); it expires with its TTL. Only accessors are logged
// and returned, never a secret-id.
func (b *Backend) RotateLoginSecret(ctx context.Context) (backends.LoginSecretRotation, error) {
	a := b.auth
	r := backends.LoginSecretRotation{Method: a.opts.Method}
	if a.opts.Method != "approle" {
		return r, fmt.Errorf("backend %s logs in to Vault with method %s: %w", b.name, a.opts.Method, backends.ErrNoLoginSecret)
	}
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	if err := a.ready(ctx); err != nil {
		return r, err
	}
	a.mu.Lock()
	role := a.roleName
	a.mu.Unlock()
	if role == "" {
		return r, errors.New("vault did not name valet's AppRole role (role_name) at login: cannot address its secret-ids")
	}
	rolePath := "auth/" + a.opts.Mount + "/role/" + role
	creds, _, err := a.credentials()
	if err != nil {
		return r, err
	}
	current, err := readSecretFile(a.opts.SecretIDFile)
	if err != nil {
		return r, err
	}
	oldAccessor, err := b.secretIDAccessor(ctx, rolePath, current)
	if err != nil {
		return r, err
	}

	// An interrupted rotation left its new secret-id: finish with it if
	// Vault still knows it.
	var next string
	if n, err := readSecretFile(a.nextSecretIDFile()); err == nil && n != current {
		acc, err := b.secretIDAccessor(ctx, rolePath, n)
		if err != nil {
			return r, err
		}
		if acc != "" {
			next, r.NewAccessor, r.Resumed = n, acc, true
		}
	}
	if next == "" {
		sec, err := b.write(ctx, rolePath+"/secret-id", map[string]any{"metadata": fmt.Sprintf(`{"valet_backend":%q}`, b.name)})
		if err != nil {
			return r, b.vaultError(err, "generate a secret-id ("+rolePath+"/secret-id)")
		}
		id, _ := secretString(sec, "secret_id")
		acc, _ := secretString(sec, "secret_id_accessor")
		if id == "" || acc == "" {
			return r, errors.New("vault answered the secret-id generation without a secret-id and its accessor")
		}
		if err := kek.WriteFile(a.nextSecretIDFile(), []byte(id+"\n")); err != nil {
			// Nobody holds the new secret-id: take it back.
			b.destroySecretID(context.WithoutCancel(ctx), rolePath, acc)
			return r, fmt.Errorf("keep the new secret-id beside secret_id_file (the directory must be writable by valet): %w", err)
		}
		next, r.NewAccessor = id, acc
	}

	sec, err := a.appRoleLogin(ctx, creds["role_id"], next)
	if err != nil {
		return r, fmt.Errorf("vault refused a login with the new secret-id (accessor %s); valet keeps the old one: %w", r.NewAccessor, err)
	}
	if err := a.adopt(sec); err != nil {
		return r, err
	}
	if oldAccessor != "" && oldAccessor != r.NewAccessor {
		if err := b.destroySecretID(ctx, rolePath, oldAccessor); err != nil {
			return r, err
		}
		r.OldAccessor = oldAccessor
	}
	if err := kek.WriteFile(a.opts.SecretIDFile, []byte(next+"\n")); err != nil {
		return r, fmt.Errorf("write the new secret-id to secret_id_file (valet logs in with the .next file until then): %w", err)
	}
	if err := os.Remove(a.nextSecretIDFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return r, err
	}
	b.log.Info("rotated valet's AppRole secret-id", "role", role, "new_accessor", r.NewAccessor, "destroyed_accessor", r.OldAccessor, "resumed", r.Resumed)
	return r, nil
}

// secretIDAccessor returns the accessor of secretID, or "" when Vault no
// longer knows it.
func (b *Backend) secretIDAccessor(ctx context.Context, rolePath, secretID string) (string, error) {
	sec, err := b.write(ctx, rolePath+"/secret-id/lookup", map[string]any{"secret_id": secretID})
	if err != nil {
		return "", b.vaultError(err, "look up a secret-id's accessor ("+rolePath+"/secret-id/lookup)")
	}
	acc, _ := secretString(sec, "secret_id_accessor")
	return acc, nil
}

// destroySecretID destroys a secret-id by its accessor; one already gone
// is destroyed.
func (b *Backend) destroySecretID(ctx context.Context, rolePath, accessor string) error {
	_, err := b.write(ctx, rolePath+"/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": accessor})
	if err != nil && !accessorGone(err) {
		return b.vaultError(err, "destroy the secret-id with accessor "+accessor+" ("+rolePath+"/secret-id-accessor/destroy)")
	}
	return nil
}

// accessorGone reports Vault 1.13's answer to destroying a secret-id
// accessor it does not know (a 500 saying "failed to find accessor
// entry").
func accessorGone(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusInternalServerError {
		return false
	}
	for _, e := range re.Errors {
		if strings.Contains(e, "failed to find accessor entry") {
			return true
		}
	}
	return false
}

func secretString(sec *api.Secret, key string) (string, bool) {
	if sec == nil {
		return "", false
	}
	s, ok := sec.Data[key].(string)
	return s, ok
}

// CheckLogin implements backends.LoginChecker: it looks up valet's own
// token (auth/token/lookup-self) and, if valet holds none or Vault no
// longer accepts it, logs in again. It fails when Vault cannot be asked
// or the new login is refused.
func (b *Backend) CheckLogin(ctx context.Context) (backends.LoginHealth, error) {
	a := b.auth
	a.mu.Lock()
	h := backends.LoginHealth{Method: a.opts.Method, LastLogin: a.lastLogin, LastRenewal: a.lastRenewal, LoginFailures: a.failures}
	loggedIn := a.loggedIn
	a.mu.Unlock()
	var self *api.Secret
	var err error
	if loggedIn {
		self, err = b.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil && !isPermissionDenied(err) {
			return h, b.vaultError(err, "look up valet's own token")
		}
	}
	if !loggedIn || err != nil {
		if err := a.login(ctx); err != nil {
			return h, fmt.Errorf("re-authentication to Vault failed: %w", err)
		}
		h.Relogged = true
		a.mu.Lock()
		h.LastLogin, h.LastRenewal = a.lastLogin, a.lastRenewal
		a.mu.Unlock()
		if self, err = b.client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
			return h, b.vaultError(err, "look up valet's own token after logging in again")
		}
	}
	h.Accessor, _ = self.TokenAccessor()
	h.TTL, _ = self.TokenTTL()
	h.Renewable, _ = self.TokenIsRenewable()
	if h.TTL > 0 {
		h.ExpiresAt = b.clock.Now().Add(h.TTL).Truncate(time.Second)
	}
	return h, nil
}

// RotateDatabaseRoot implements backends.DatabaseRootRotator with
// POST <mount>/rotate-root/<connection>: Vault sets a password of its own
// on the connection's root user and keeps it.
func (b *Backend) RotateDatabaseRoot(ctx context.Context, mount, connection string) error {
	if _, err := b.write(ctx, mount+"/rotate-root/"+connection, nil); err != nil {
		return b.vaultError(err, "rotate the root credential of connection "+connection+" ("+mount+"/rotate-root/"+connection+")")
	}
	return nil
}
