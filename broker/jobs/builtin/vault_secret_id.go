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

// BackendsSettings are the settings of a job that works on some of the
// configured backends.
type BackendsSettings struct {
	// Backends names the backends the job works on (default: every
	// backend that can).
	Backends []string `yaml:"backends"`
}

// SetDefaults sets every capable backend.
func (s *BackendsSettings) SetDefaults() {}

// Validate refuses an empty or repeated name; field is the job's key
// path.
func (s *BackendsSettings) Validate(field string) error {
	var errs []error
	seen := map[string]bool{}
	for i, name := range s.Backends {
		switch {
		case name == "":
			errs = append(errs, fmt.Errorf("%s.backends[%d] must name a backend", field, i))
		case seen[name]:
			errs = append(errs, fmt.Errorf("%s.backends[%d] %q is named twice", field, i, name))
		}
		seen[name] = true
	}
	return errors.Join(errs...)
}

func vaultSecretIDRotation() Definition {
	return Definition{
		Description: "Replaces the AppRole secret-id each vault backend logs in with: generates a new one, logs in with it, destroys the old one",
		Schedule:    "@daily", Timeout: time.Minute, Default: true,
		Settings: func() any { return &BackendsSettings{} },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			s := settings.(*BackendsSettings)
			rotators, err := selectBackends[backends.LoginSecretRotator](deps.Backends, s.Backends, "that logs in to Vault")
			if err != nil {
				return nil, err
			}
			return &secretIDJob{rotators: rotators, named: len(s.Backends) > 0}, nil
		},
	}
}

// secretIDJob rotates the login secrets of its backends.
type secretIDJob struct {
	rotators map[string]backends.LoginSecretRotator
	// named says the backends were named in the settings: one without a
	// secret to rotate is then an error, not skipped.
	named bool
}

// Run rotates each backend's secret-id in turn. Changes name, per
// backend, the accessor of the new secret-id and of the one destroyed
// (never a secret-id), whether it finished a rotation a crash had
// interrupted, or why the backend was skipped.
func (j *secretIDJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	ch := map[string]string{}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(j.rotators)) {
		if err := ctx.Err(); err != nil {
			return jobs.Result{Changes: ch}, err
		}
		r, err := j.rotators[name].RotateLoginSecret(ctx)
		switch {
		case errors.Is(err, backends.ErrNoLoginSecret) && !j.named:
			ch[name] = "skipped: logs in with method " + r.Method
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
			continue
		}
		ch[name+".new_accessor"] = r.NewAccessor
		ch[name+".destroyed_accessor"] = r.OldAccessor
		if r.OldAccessor == "" {
			ch[name+".destroyed_accessor"] = "none (the old secret-id was already gone)"
		}
		ch[name+".resumed"] = strconv.FormatBool(r.Resumed)
	}
	if len(j.rotators) == 0 {
		ch["backends"] = "none"
	}
	return jobs.Result{Changes: ch}, errors.Join(errs...)
}
