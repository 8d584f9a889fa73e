package policy

import (
	"errors"
	"fmt"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// Config is the policy section of the configuration file: where the Cedar
// policies are and what a policy that fails to evaluate does.
type Config struct {
	// Dir holds *.cedar files, loaded in name order.
	Dir string `yaml:"dir"`
	// Watch reloads the policies when a file in Dir changes (default true);
	// SIGHUP always reloads.
	Watch *bool `yaml:"watch"`
	// OnError is what a policy that fails to evaluate does: deny (the
	// default; an erroring forbid denies, fail closed) or skip (Cedar's
	// semantics: it is ignored). Errors are logged, counted and audited
	// either way.
	OnError broker.PolicyOnError `yaml:"on_error"`
}

// Watching reports whether policy files are watched (watch absent means
// true).
func (p *Config) Watching() bool { return p.Watch == nil || *p.Watch }

// SetDefaults sets the policy section's defaults: on_error deny.
func (p *Config) SetDefaults() { p.OnError = broker.PolicyOnErrorDeny }

// UnmarshalYAML decodes on top of the defaults.
func (p *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type policy Config
	return config.DecodeOnDefaults(p.SetDefaults, (*policy)(p), unmarshal)
}

// Validate checks the section and names the full key path in each error.
func (p *Config) Validate() error {
	var errs []error
	if p.Dir == "" {
		errs = append(errs, errors.New("policy.dir must be set (a directory of *.cedar files)"))
	}
	if p.OnError != broker.PolicyOnErrorDeny && p.OnError != broker.PolicyOnErrorSkip {
		errs = append(errs, fmt.Errorf("policy.on_error %q must be deny or skip", p.OnError))
	}
	return errors.Join(errs...)
}
