package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// SignalsConfig is the broker's part of the signals section: how signals
// move an agent's risk score, what each severity does, how long
// quarantines and signals last, and the REST signal sources. (The
// section's issuers and SSF transmitters are verified by broker/attest;
// cmd/valet assembles the section.)
type SignalsConfig struct {
	// HalfLife is how long a risk score takes to decay to half (default
	// 6h, at least 1m): a score s raised at t0 reads s·2^(−(t−t0)/half_life)
	// at t, rounded to the nearest integer.
	HalfLife config.Duration `yaml:"half_life"`
	// Points are what a signal of each severity adds to the risk score of
	// the agents it concerns (capped at 100).
	Points RiskPoints `yaml:"points"`
	// Actions are what a signal of each severity does unless its source
	// says otherwise (alert, revoke or quarantine).
	Actions SeverityActions `yaml:"actions"`
	// AutoRelease, when positive, ends a quarantine that a signal imposed
	// on its own that long after it began; 0 (the default) keeps every
	// quarantine until an operator releases it. An operator's quarantine
	// never ends on its own.
	AutoRelease config.Duration `yaml:"auto_release"`
	// Retention is how long signals are kept (default 30 days); 0 keeps
	// none past the next housekeeping pass. Their audit records stay.
	Retention config.Duration `yaml:"retention"`
	// Sources are the senders of POST /v1/signals besides operators.
	Sources []SignalSourceConfig `yaml:"sources"`
}

// RiskPoints are the risk points of each severity, each 0 to 100.
type RiskPoints struct {
	Info     int `yaml:"info"`
	Low      int `yaml:"low"`
	Medium   int `yaml:"medium"`
	High     int `yaml:"high"`
	Critical int `yaml:"critical"`
}

// Of returns the points of severity s.
func (p RiskPoints) Of(s agents.Severity) int {
	switch s {
	case agents.SeverityInfo:
		return p.Info
	case agents.SeverityLow:
		return p.Low
	case agents.SeverityMedium:
		return p.Medium
	case agents.SeverityHigh:
		return p.High
	default:
		return p.Critical
	}
}

// SetDefaults sets info 0, low 10, medium 30, high 60, critical 90.
func (p *RiskPoints) SetDefaults() {
	*p = RiskPoints{Info: 0, Low: 10, Medium: 30, High: 60, Critical: 90}
}

// SeverityActions names an action for each severity. In a source's
// policy an empty one means the signals.actions of that severity.
type SeverityActions struct {
	Info     agents.Action `yaml:"info"`
	Low      agents.Action `yaml:"low"`
	Medium   agents.Action `yaml:"medium"`
	High     agents.Action `yaml:"high"`
	Critical agents.Action `yaml:"critical"`
}

// Of returns the action of severity s ("" when not set).
func (a SeverityActions) Of(s agents.Severity) agents.Action {
	switch s {
	case agents.SeverityInfo:
		return a.Info
	case agents.SeverityLow:
		return a.Low
	case agents.SeverityMedium:
		return a.Medium
	case agents.SeverityHigh:
		return a.High
	default:
		return a.Critical
	}
}

// SetDefaults sets info and low alert, medium revoke, high and critical
// quarantine.
func (a *SeverityActions) SetDefaults() {
	*a = SeverityActions{Info: agents.ActionAlert, Low: agents.ActionAlert, Medium: agents.ActionRevoke,
		High: agents.ActionQuarantine, Critical: agents.ActionQuarantine}
}

// validate checks each action; inherit allows "" (a source's override).
// allowed, when set, are the only actions that may be named.
func (a SeverityActions) validate(field string, inherit bool, allowed []agents.Action) []error {
	var errs []error
	for _, s := range agents.Severities {
		v := a.Of(s)
		switch {
		case v == "" && inherit:
		case !v.Valid():
			errs = append(errs, fmt.Errorf("%s.%s %q must be alert, revoke or quarantine", field, s, v))
		case allowed != nil && !slices.Contains(allowed, v):
			errs = append(errs, fmt.Errorf("%s.%s %q is not among allowed_actions (%s)", field, s, v, joinActions(allowed)))
		}
	}
	return errs
}

// SignalPolicy is what a source's signals may make valet do.
type SignalPolicy struct {
	// AllowedActions are the actions its signals may ask for or cause
	// (default all three). A REST source asking for another is refused;
	// an SSF event mapped to a stronger one gets the strongest allowed.
	AllowedActions []agents.Action `yaml:"allowed_actions"`
	// Actions override signals.actions for this source, per severity.
	Actions SeverityActions `yaml:"actions"`
}

// SetDefaults allows every action.
func (p *SignalPolicy) SetDefaults() { p.AllowedActions = slices.Clone(agents.Actions) }

// Validate checks the policy at key path field.
func (p SignalPolicy) Validate(field string) error {
	var errs []error
	if len(p.AllowedActions) == 0 {
		errs = append(errs, fmt.Errorf("%s.allowed_actions must not be empty (leave it out to allow alert, revoke and quarantine)", field))
	}
	for i, a := range p.AllowedActions {
		if !a.Valid() {
			errs = append(errs, fmt.Errorf("%s.allowed_actions[%d] %q must be alert, revoke or quarantine", field, i, a))
		}
	}
	errs = append(errs, p.Actions.validate(field+".actions", true, p.AllowedActions)...)
	return errors.Join(errs...)
}

// SignalSourceConfig is one sender of POST /v1/signals (signals.sources):
// a SIEM, a runtime security tool, a model monitor. It authenticates with
// a static token (stored as its SHA-256) or with an ID token (a JWT) of
// one of signals.issuers whose subject is Subject.
type SignalSourceConfig struct {
	Name string `yaml:"name"`
	// TokenSHA256 is the hex SHA-256 of the source's bearer token (`valet
	// token hash` prints it).
	TokenSHA256 string `yaml:"token_sha256"`
	// Issuer names one of signals.issuers; Subject is the sub its ID
	// tokens must carry.
	Issuer  string `yaml:"issuer"`
	Subject string `yaml:"subject"`
	// Rate is how many signals per second the source may send (default 5;
	// positive; .inf for no limit), in bursts of Burst (default 20, at
	// least 1).
	Rate         float64 `yaml:"rate"`
	Burst        int     `yaml:"burst"`
	SignalPolicy `yaml:",inline"`
}

// SetDefaults sets rate 5, burst 20 and every action allowed.
func (c *SignalSourceConfig) SetDefaults() {
	c.Rate, c.Burst = 5, 20
	c.SignalPolicy.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (c *SignalSourceConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type source SignalSourceConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*source)(c), unmarshal)
}

// SetDefaults sets the section's defaults (see SignalsConfig).
func (c *SignalsConfig) SetDefaults() {
	c.HalfLife = config.Duration(6 * time.Hour)
	c.Points.SetDefaults()
	c.Actions.SetDefaults()
	c.AutoRelease = 0
	c.Retention = config.Duration(30 * 24 * time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *SignalsConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type signals SignalsConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*signals)(c), unmarshal)
}

// Validate checks the broker's keys of the signals section and names the
// full key path in each error. issuers are the names of signals.issuers.
func (c *SignalsConfig) Validate(issuers map[string]bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.HalfLife < config.Duration(time.Minute) {
		add("signals.half_life must be at least 1m; it is %s", c.HalfLife)
	}
	for _, s := range agents.Severities {
		if p := c.Points.Of(s); p < 0 || p > 100 {
			add("signals.points.%s must be between 0 and 100; it is %d", s, p)
		}
	}
	errs = append(errs, c.Actions.validate("signals.actions", false, nil)...)
	if c.AutoRelease < 0 {
		add("signals.auto_release must not be negative (0 keeps quarantines until an operator releases them); it is %s", c.AutoRelease)
	}
	if c.Retention < 0 {
		add("signals.retention must not be negative; it is %s", c.Retention)
	}
	names := map[string]bool{}
	sums := map[string]int{}
	for i, s := range c.Sources {
		f := fmt.Sprintf("signals.sources[%d]", i)
		errs = append(errs, config.CheckName(f+".name", s.Name, names)...)
		switch {
		case s.TokenSHA256 != "" && s.Issuer != "":
			add("%s: give token_sha256 or issuer and subject, not both", f)
		case s.TokenSHA256 != "":
			if b, err := hex.DecodeString(s.TokenSHA256); err != nil || len(b) != sha256.Size {
				add("%s.token_sha256 must be the hex SHA-256 of the source's token (64 hex digits); `valet token hash` prints it", f)
			} else if j, dup := sums[strings.ToLower(s.TokenSHA256)]; dup {
				add("%s.token_sha256 is the token of signals.sources[%d] too; a token must name one source", f, j)
			} else {
				sums[strings.ToLower(s.TokenSHA256)] = i
			}
			if s.Subject != "" {
				add("%s.subject applies only with issuer", f)
			}
		case s.Issuer != "":
			if !issuers[s.Issuer] {
				add("%s.issuer %q is not one of signals.issuers", f, s.Issuer)
			}
			if s.Subject == "" {
				add("%s.subject must be set: the sub of the source's ID tokens", f)
			}
		default:
			add("%s needs token_sha256, or issuer and subject", f)
		}
		if !(s.Rate > 0) {
			add("%s.rate must be a positive number of signals per second (.inf for no limit); it is %g", f, s.Rate)
		}
		if s.Burst < 1 {
			add("%s.burst must be at least 1; it is %d", f, s.Burst)
		}
		errs = append(errs, s.SignalPolicy.Validate(f))
	}
	return errors.Join(errs...)
}

// HalfLifeD is the half-life as a time.Duration.
func (c *SignalsConfig) HalfLifeD() time.Duration { return c.HalfLife.D() }

func joinActions(as []agents.Action) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

// finite reports whether a rate sets a limit (is not +Inf).
func finite(r float64) bool { return !math.IsInf(r, 1) }
