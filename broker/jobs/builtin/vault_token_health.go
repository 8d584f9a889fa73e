package builtin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/jobs"
)

func vaultTokenHealth() Definition {
	return Definition{
		Description: "Checks the Vault token of each vault backend, logs in again if Vault no longer accepts it, and fails (alerting after three failures in a row) while it cannot",
		Schedule:    "@every 5m", Timeout: 30 * time.Second, Default: true,
		Settings: func() any { return &BackendsSettings{} },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			s := settings.(*BackendsSettings)
			checkers, err := selectBackends[backends.LoginChecker](deps.Backends, s.Backends, "that logs in to Vault")
			if err != nil {
				return nil, err
			}
			return &tokenHealthJob{checkers: checkers}, nil
		},
	}
}

// tokenHealthJob checks the logins of its backends.
type tokenHealthJob struct {
	checkers map[string]backends.LoginChecker
}

// Run checks each backend's login. Changes name, per backend, the login
// method, the token's accessor, TTL in seconds, whether it is renewable,
// its expiry, its last renewal and login, whether the check logged in
// again, and how many background logins had failed in a row.
func (j *tokenHealthJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	ch := map[string]string{}
	var errs []error
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, name := range slices.Sorted(maps.Keys(j.checkers)) {
		h, err := j.checkers[name].CheckLogin(ctx)
		ch[name+".method"] = h.Method
		ch[name+".login_failures"] = strconv.Itoa(h.LoginFailures)
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
			continue
		}
		ch[name+".accessor"] = h.Accessor
		ch[name+".ttl_seconds"] = strconv.FormatInt(int64(h.TTL/time.Second), 10)
		ch[name+".renewable"] = strconv.FormatBool(h.Renewable)
		ch[name+".expires_at"] = stamp(h.ExpiresAt)
		ch[name+".last_renewal"] = stamp(h.LastRenewal)
		ch[name+".last_login"] = stamp(h.LastLogin)
		ch[name+".relogged"] = strconv.FormatBool(h.Relogged)
	}
	if len(j.checkers) == 0 {
		ch["backends"] = "none"
	}
	return jobs.Result{Changes: ch}, errors.Join(errs...)
}
