package builtin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/config"
)

// SigningKeySettings are the settings of signing-key-rotation.
type SigningKeySettings struct {
	// Backends names the backends whose signing keys rotate (default:
	// every backend that signs with keys of its own, the jwt backends).
	Backends []string `yaml:"backends"`
	// Prepublish is how long a new key is published in the JWKS before it
	// signs anything (default 1h). It must be at least the JWKS's
	// Cache-Control max-age (5m), so that a resource server that caches
	// the JWKS for that long holds the new key before it sees a token
	// signed with it.
	Prepublish config.Duration `yaml:"prepublish"`
}

// SetDefaults sets prepublish 1h.
func (s *SigningKeySettings) SetDefaults() { s.Prepublish = config.Duration(time.Hour) }

// Validate checks the settings; field is the job's key path.
func (s *SigningKeySettings) Validate(field string) error {
	if s.Prepublish.D() < broker.JWKSMaxAge {
		return fmt.Errorf("%s.prepublish must be at least %s (the JWKS's Cache-Control max-age): a resource server may not "+
			"see a key published for less before tokens signed with it arrive; it is %s", field, config.Duration(broker.JWKSMaxAge), s.Prepublish)
	}
	return nil
}

func signingKeyRotation() Definition {
	return Definition{
		Description: "Publishes a new signing key for each jwt backend, switches to it after prepublish, and drops keys whose tokens have all expired",
		Schedule:    "@daily", Timeout: time.Minute, Default: true,
		Settings: func() any { s := config.Defaulted[SigningKeySettings](nil); return &s },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			s := settings.(*SigningKeySettings)
			rotators, err := selectBackends[backends.KeyRotator](deps.Backends, s.Backends, "with signing keys of its own")
			if err != nil {
				return nil, err
			}
			return &signingKeyJob{rotators: rotators, prepublish: s.Prepublish.D()}, nil
		},
	}
}

// signingKeyJob rotates the signing keys of its backends.
type signingKeyJob struct {
	rotators   map[string]backends.KeyRotator
	prepublish time.Duration
}

// Run rotates each backend's key: the new key is published now and signs
// from now+prepublish. Changes name, per backend, the new key id, when it
// signs, and the ids of keys dropped.
func (j *signingKeyJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	ch := map[string]string{}
	var errs []error
	names := slices.Sorted(maps.Keys(j.rotators))
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return jobs.Result{Changes: ch}, err
		}
		r, err := j.rotators[name].RotateKey(now, now.Add(j.prepublish))
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
			continue
		}
		ch[name+".key_id"] = r.KeyID
		ch[name+".signs_from"] = r.ActiveFrom.UTC().Format(time.RFC3339)
		ch[name+".published"] = strings.Join(r.Published, ",")
		if len(r.Dropped) > 0 {
			ch[name+".dropped"] = strings.Join(r.Dropped, ",")
		}
	}
	if len(names) == 0 {
		ch["backends"] = "none"
	}
	return jobs.Result{Changes: ch}, errors.Join(errs...)
}
