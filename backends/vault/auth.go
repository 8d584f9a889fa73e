package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
)

// AuthOptions say how valet logs in to Vault.
type AuthOptions struct {
	// Method is token (default), approle or jwt.
	Method string `yaml:"method"`
	// TokenFile holds a Vault token (method token). It is read again when
	// the token can no longer be renewed, so a rotating agent can refresh
	// it.
	TokenFile string `yaml:"token_file"`
	// Mount is the auth mount path (default approle or jwt).
	Mount string `yaml:"mount"`
	// RoleIDFile and SecretIDFile hold the AppRole credentials. The
	// vault-secret-id-rotation job replaces the secret-id: it writes the
	// new one to SecretIDFile+".next" before it destroys the old one, and
	// then into SecretIDFile; a login tries the ".next" file first, so a
	// crash at any point leaves a secret-id valet can log in with.
	RoleIDFile   string `yaml:"role_id_file"`
	SecretIDFile string `yaml:"secret_id_file"`
	// Role and JWTFile are for Vault's JWT auth (for example valet's own
	// Kubernetes service-account token).
	Role    string `yaml:"role"`
	JWTFile string `yaml:"jwt_file"`
}

func (a *AuthOptions) validate() error {
	switch a.Method {
	case "", "token":
		a.Method = "token"
		if a.TokenFile == "" {
			return errors.New("method token needs token_file")
		}
	case "approle":
		if a.Mount == "" {
			a.Mount = "approle"
		}
		if a.RoleIDFile == "" || a.SecretIDFile == "" {
			return errors.New("method approle needs role_id_file and secret_id_file")
		}
	case "jwt":
		if a.Mount == "" {
			a.Mount = "jwt"
		}
		if a.Role == "" || a.JWTFile == "" {
			return errors.New("method jwt needs role and jwt_file")
		}
	default:
		return fmt.Errorf("method %q must be token, approle or jwt", a.Method)
	}
	return nil
}

// authenticator keeps valet's own Vault token valid: it logs in, renews the
// token in the background with the api's lifetime watcher, and logs in
// again when renewal stops (max TTL reached, token revoked).
type authenticator struct {
	client *api.Client
	opts   AuthOptions
	log    *slog.Logger
	clock  clock.Clock // times the retries and the rate of request logins

	mu          sync.Mutex
	loggedIn    bool
	lastAttempt time.Time
	watcher     *api.LifetimeWatcher
	// roleName is the AppRole role valet logs in as (the login's
	// role_name metadata), for the secret-id rotation.
	roleName string
	// lastLogin and lastRenewal are when valet last logged in and when
	// the watcher last renewed the token; failures counts the logins that
	// failed in a row.
	lastLogin, lastRenewal time.Time
	failures               int
	reloginMu              sync.Mutex
	rotateMu               sync.Mutex // one secret-id rotation at a time

	stopCh chan struct{}
	kick   chan struct{}
	wg     sync.WaitGroup
}

func newAuthenticator(c *api.Client, o AuthOptions, log *slog.Logger, clk clock.Clock) *authenticator {
	return &authenticator{client: c, opts: o, log: log, clock: clk, stopCh: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// start logs in once and starts the renewal loop. A login that fails
// because Vault is unreachable is retried in the background; a bad
// configuration (an unreadable file) is an error.
func (a *authenticator) start() error {
	if _, _, err := a.credentials(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := a.login(ctx)
	cancel()
	if err != nil {
		a.log.Warn("cannot log in to Vault yet; retrying in the background", "err", err)
	}
	a.wg.Add(1)
	go a.loop()
	return nil
}

func (a *authenticator) stop() {
	close(a.stopCh)
	a.mu.Lock()
	if a.watcher != nil {
		a.watcher.Stop()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// ready returns nil once valet holds a token, trying a login now if it
// does not.
func (a *authenticator) ready(ctx context.Context) error {
	a.mu.Lock()
	ok := a.loggedIn
	// While Vault is down, requests fail fast instead of each trying a
	// login: at most one attempt a second comes from here.
	now := a.clock.Now()
	recent := now.Sub(a.lastAttempt) < time.Second
	if !ok && !recent {
		a.lastAttempt = now
	}
	a.mu.Unlock()
	if ok {
		return nil
	}
	if recent {
		return fmt.Errorf("vault login: %w: valet is not logged in to Vault (Vault unreachable?)", backends.ErrUnavailable)
	}
	if err := a.login(ctx); err != nil {
		return fmt.Errorf("vault login: %w: %v", backends.ErrUnavailable, err)
	}
	return nil
}

// relogin logs in again after Vault refused valet's token, if that token
// is dead (revoked or expired); a refusal of a live token is a policy
// problem that a new login would not fix. Concurrent callers share one
// login.
func (a *authenticator) relogin(ctx context.Context, failed string) error {
	a.reloginMu.Lock()
	defer a.reloginMu.Unlock()
	if a.client.Token() != failed {
		return nil // another request already logged in again
	}
	if _, err := a.client.Auth().Token().LookupSelfWithContext(ctx); err == nil {
		return errors.New("valet's Vault token is valid; the refusal comes from its policies")
	}
	return a.login(ctx)
}

// readSecretFile reads a credential file, which must not be empty.
func readSecretFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("vault auth: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("vault auth: %s is empty", p)
	}
	return v, nil
}

// credentials reads the files of the configured method. For AppRole,
// secret_ids lists the secret-ids to try in order: the one a rotation
// left in the ".next" file, if any, then the one in secret_id_file.
func (a *authenticator) credentials() (map[string]string, []string, error) {
	out := map[string]string{}
	var err error
	switch a.opts.Method {
	case "token":
		out["token"], err = readSecretFile(a.opts.TokenFile)
	case "approle":
		if out["role_id"], err = readSecretFile(a.opts.RoleIDFile); err != nil {
			return nil, nil, err
		}
		current, err := readSecretFile(a.opts.SecretIDFile)
		if err != nil {
			return nil, nil, err
		}
		var ids []string
		if next, err := readSecretFile(a.nextSecretIDFile()); err == nil && next != current {
			ids = append(ids, next)
		}
		return out, append(ids, current), nil
	case "jwt":
		out["jwt"], err = readSecretFile(a.opts.JWTFile)
	}
	return out, nil, err
}

// nextSecretIDFile is where a rotation keeps the new secret-id until it
// has replaced the old one.
func (a *authenticator) nextSecretIDFile() string { return a.opts.SecretIDFile + ".next" }

// login obtains a token and (re)starts its lifetime watcher.
func (a *authenticator) login(ctx context.Context) error {
	sec, err := a.obtain(ctx)
	if err == nil {
		err = a.adopt(sec)
	}
	a.mu.Lock()
	if err != nil {
		a.failures++
	} else {
		a.failures = 0
	}
	a.mu.Unlock()
	return err
}

// obtain logs in with the configured method and returns Vault's answer.
func (a *authenticator) obtain(ctx context.Context) (*api.Secret, error) {
	creds, secretIDs, err := a.credentials()
	if err != nil {
		return nil, err
	}
	switch a.opts.Method {
	case "token":
		c, err := a.client.Clone()
		if err != nil {
			return nil, err
		}
		c.SetToken(creds["token"])
		c.SetNamespace(a.client.Namespace())
		self, err := c.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return nil, err
		}
		ttl, _ := self.TokenTTL()
		renewable, _ := self.TokenIsRenewable()
		accessor, _ := self.TokenAccessor()
		return &api.Secret{Auth: &api.SecretAuth{ClientToken: creds["token"], Accessor: accessor, Renewable: renewable, LeaseDuration: int(ttl / time.Second)}}, nil
	case "approle":
		return a.appRoleLogin(ctx, creds["role_id"], secretIDs...)
	default: // jwt
		return a.loginWith(ctx, map[string]any{"role": a.opts.Role, "jwt": creds["jwt"]})
	}
}

// appRoleLogin logs in with roleID and the first of secretIDs that Vault
// accepts.
func (a *authenticator) appRoleLogin(ctx context.Context, roleID string, secretIDs ...string) (*api.Secret, error) {
	var errs []error
	for _, id := range secretIDs {
		sec, err := a.loginWith(ctx, map[string]any{"role_id": roleID, "secret_id": id})
		if err == nil {
			return sec, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// loginWith writes body to the auth mount's login path without a token.
func (a *authenticator) loginWith(ctx context.Context, body map[string]any) (*api.Secret, error) {
	c, err := a.client.Clone()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	c.SetNamespace(a.client.Namespace())
	return c.Logical().WriteWithContext(ctx, "auth/"+a.opts.Mount+"/login", body)
}

// adopt makes the token of a login valet's, and (re)starts its lifetime
// watcher.
func (a *authenticator) adopt(sec *api.Secret) error {
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return errors.New("vault login answered without a token")
	}
	a.client.SetToken(sec.Auth.ClientToken)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loggedIn = true
	a.lastLogin, a.lastRenewal = a.clock.Now(), time.Time{}
	if name := sec.Auth.Metadata["role_name"]; a.opts.Method == "approle" && name != "" {
		a.roleName = name
	}
	if a.watcher != nil {
		a.watcher.Stop()
		a.watcher = nil
	}
	if sec.Auth.Renewable && sec.Auth.LeaseDuration > 0 {
		w, err := a.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
		if err != nil {
			return err
		}
		a.watcher = w
		go w.Start()
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	a.log.Info("logged in to Vault", "method", a.opts.Method, "accessor", sec.Auth.Accessor, "ttl_seconds", sec.Auth.LeaseDuration, "renewable", sec.Auth.Renewable)
	return nil
}

// loop waits for the watcher to finish (renewal no longer possible) and
// logs in again, with backoff while Vault is unreachable.
func (a *authenticator) loop() {
	defer a.wg.Done()
	backoff := time.Second
	for {
		a.mu.Lock()
		w, loggedIn := a.watcher, a.loggedIn
		a.mu.Unlock()
		var done <-chan error
		var renewed <-chan *api.RenewOutput
		if w != nil {
			done, renewed = w.DoneCh(), w.RenewCh()
		}
		var retry <-chan time.Time
		var timer clock.Timer
		if !loggedIn {
			timer = a.clock.NewTimer(backoff)
			retry = timer.C()
		}
		select {
		case <-a.stopCh:
			stopTimer(timer)
			return
		case <-a.kick:
			stopTimer(timer)
			continue
		case <-renewed:
			stopTimer(timer)
			a.mu.Lock()
			a.lastRenewal = a.clock.Now()
			a.mu.Unlock()
			continue
		case err := <-done:
			stopTimer(timer)
			if err != nil {
				a.log.Warn("Vault token renewal stopped; logging in again", "err", err)
			}
		case <-retry:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := a.login(ctx)
		cancel()
		if err != nil {
			a.mu.Lock()
			a.loggedIn = false
			a.watcher = nil
			a.mu.Unlock()
			backoff = min(2*backoff, time.Minute)
			a.log.Warn("Vault login failed; retrying", "in", backoff, "err", err)
			continue
		}
		backoff = time.Second
	}
}

// stopTimer stops t, if there is one.
func stopTimer(t clock.Timer) {
	if t != nil {
		t.Stop()
	}
}
