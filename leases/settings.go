package leases

import (
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/leases/config"
)

// Config is the leases section of the configuration file: how revocation
// is retried and how long ended leases are kept.
type Config struct {
	// RevokeAttempts is how many failed revocations make a lease irrevocable
	// (default 8, at least 1). Irrevocable leases keep being retried, at
	// RevokeMaxBackoff, until their credential can no longer be valid at the
	// backend (Lease.ValidUntil).
	RevokeAttempts    int             `yaml:"revoke_attempts"`
	RevokeBackoff     config.Duration `yaml:"revoke_backoff"`     // first retry delay (default 1s, positive)
	RevokeMaxBackoff  config.Duration `yaml:"revoke_max_backoff"` // default 5m, not less than RevokeBackoff
	RevokeConcurrency int             `yaml:"revoke_concurrency"` // default 16, 1 to 1024
	// Retention is how long ended leases stay queryable (default 7 days).
	// 0 keeps none: an ended lease is deleted by the next housekeeping
	// pass, within a minute. Audit records are kept either way.
	Retention config.Duration `yaml:"retention"`
}

// SetDefaults sets the revocation defaults (see Config).
func (lc *Config) SetDefaults() {
	lc.RevokeAttempts = 8
	lc.RevokeBackoff = config.Duration(time.Second)
	lc.RevokeMaxBackoff = config.Duration(5 * time.Minute)
	lc.RevokeConcurrency = 16
	lc.Retention = config.Duration(7 * 24 * time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (lc *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type leases Config
	return config.DecodeOnDefaults(lc.SetDefaults, (*leases)(lc), unmarshal)
}

// Validate checks the section and names the full key path in each error
// ("leases.revoke_attempts must be at least 1; it is 0").
func (lc *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if lc.RevokeAttempts < 1 {
		add("leases.revoke_attempts must be at least 1; it is %d", lc.RevokeAttempts)
	}
	if lc.RevokeBackoff <= 0 {
		add("leases.revoke_backoff must be positive; it is %s", lc.RevokeBackoff)
	}
	if lc.RevokeMaxBackoff < lc.RevokeBackoff || lc.RevokeMaxBackoff <= 0 {
		add("leases.revoke_max_backoff must be positive and not less than revoke_backoff (%s); it is %s", lc.RevokeBackoff, lc.RevokeMaxBackoff)
	}
	if lc.RevokeConcurrency < 1 || lc.RevokeConcurrency > 1024 {
		add("leases.revoke_concurrency must be between 1 and 1024; it is %d", lc.RevokeConcurrency)
	}
	if lc.Retention < 0 {
		add("leases.retention must not be negative; it is %s", lc.Retention)
	}
	return errors.Join(errs...)
}
