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
	// RoleIDFile and SecretIDFile hold the AppRole credentials.
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
	reloginMu   sync.Mutex

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
	if _, err := a.credentials(); err != nil {
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

// credentials reads the files of the configured method.
func (a *authenticator) credentials() (map[string]string, error) {
	read := func(p string) (string, error) {
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
	out := map[string]string{}
	var err error
	switch a.opts.Method {
	case "token":
		out["token"], err = read(a.opts.TokenFile)
	case "approle":
		if out["role_id"], err = read(a.opts.RoleIDFile); err == nil {
			out["secret_id"], err = read(a.opts.SecretIDFile)
		}
	case "jwt":
		out["jwt"], err = read(a.opts.JWTFile)
	}
	return out, err
}

// login obtains a token and (re)starts its lifetime watcher.
func (a *authenticator) login(ctx context.Context) error {
	creds, err := a.credentials()
	if err != nil {
		return err
	}
	var sec *api.Secret
	switch a.opts.Method {
	case "token":
		c, err := a.client.Clone()
		if err != nil {
			return err
		}
		c.SetToken(creds["token"])
		c.SetNamespace(a.client.Namespace())
		self, err := c.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return err
		}
		ttl, _ := self.TokenTTL()
		renewable, _ := self.TokenIsRenewable()
		sec = &api.Secret{Auth: &api.SecretAuth{ClientToken: creds["token"], Renewable: renewable, LeaseDuration: int(ttl / time.Second)}}
	case "approle":
		c, _ := a.client.Clone()
		c.ClearToken()
		c.SetNamespace(a.client.Namespace())
		sec, err = c.Logical().WriteWithContext(ctx, "auth/"+a.opts.Mount+"/login", map[string]any{"role_id": creds["role_id"], "secret_id": creds["secret_id"]})
	case "jwt":
		c, _ := a.client.Clone()
		c.ClearToken()
		c.SetNamespace(a.client.Namespace())
		sec, err = c.Logical().WriteWithContext(ctx, "auth/"+a.opts.Mount+"/login", map[string]any{"role": a.opts.Role, "jwt": creds["jwt"]})
	}
	if err != nil {
		return err
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return errors.New("vault login answered without a token")
	}
	a.client.SetToken(sec.Auth.ClientToken)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loggedIn = true
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
	a.log.Info("logged in to Vault", "method", a.opts.Method, "ttl_seconds", sec.Auth.LeaseDuration, "renewable", sec.Auth.Renewable)
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
