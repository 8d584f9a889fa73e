package detectors

import (
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// RenewalHoldName names the renewal-hold detector
// (signals.detectors.renewal_hold, source detector:renewal_hold).
const RenewalHoldName = "renewal_hold"

// RenewalHoldConfig is signals.detectors.renewal_hold: renewals that keep
// a lease at its maximum, topping it up again and again, for longer than
// Hold. A renewal tops the lease up when the lease still had at least
// half of the time the renewal gives it left (an agent that renews when
// its credential nears its end does not). The lease has been held since
// the first of an unbroken run of top-ups; the detector fires once per
// run, on the top-up that makes the run longer than Hold.
type RenewalHoldConfig struct {
	Common `yaml:",inline"`
	// Hold is how long top-ups may keep a lease at its maximum (default
	// 1h; 0: the second top-up in a row fires).
	Hold config.Duration `yaml:"hold"`
}

// SetDefaults sets severity low and hold 1h.
func (c *RenewalHoldConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityLow)
	c.Hold = config.Duration(time.Hour)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *RenewalHoldConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain RenewalHoldConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *RenewalHoldConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	return errors.Join(append(errs, notNegative(field+".hold", c.Hold, "0 fires on the second top-up in a row"))...)
}

// renewalHold is the renewal-hold detector.
type renewalHold struct {
	cfg    RenewalHoldConfig
	leases *table[holdState]
}

// holdState is one lease's run of top-ups.
type holdState struct {
	since   time.Time // the run's first top-up; zero: no run
	topUps  int
	firedIn time.Time // the run it fired in (its since)
	fired   time.Time
}

func newRenewalHold(cfg RenewalHoldConfig, max int) *renewalHold {
	return &renewalHold{cfg: cfg, leases: newTable[holdState](max)}
}

func (d *renewalHold) Name() string                { return RenewalHoldName }
func (d *renewalHold) Policy() broker.SignalPolicy { return d.cfg.policy() }

// Observe follows a lease's renewals (ObserveRenew) and fires when a run
// of top-ups has held it longer than Hold.
func (d *renewalHold) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveRenew {
		return nil
	}
	gives, left := o.ExpiresAt.Sub(o.Time), o.RenewedFrom.Sub(o.Time)
	st, _, mu := d.leases.get(o.LeaseID)
	defer mu.Unlock()
	if gives <= 0 || 2*left < gives {
		st.since, st.topUps = time.Time{}, 0 // the run is broken
		return nil
	}
	if st.since.IsZero() {
		st.since = o.Time
	}
	st.topUps++
	held := o.Time.Sub(st.since)
	if held <= d.cfg.Hold.D() || st.firedIn.Equal(st.since) || !d.cfg.cool(st.fired, o.Time) {
		return nil
	}
	st.firedIn, st.fired = st.since, o.Time
	return d.cfg.detection(agents.Subject{Kind: agents.SubjectLease, ID: o.LeaseID},
		fmt.Sprintf("lease %s of agent %s (role %s) has been kept at its maximum by %d renewals for %s (hold %s)",
			o.LeaseID, o.AgentID, o.Role, st.topUps, held.Round(time.Second), d.cfg.Hold),
		map[string]string{"lease_id": o.LeaseID, "role": o.Role, "held_since": at(st.since), "held": held.Round(time.Second).String(),
			"top_ups": itoa(st.topUps), "hold": d.cfg.Hold.String(), "expires_at": at(o.ExpiresAt)})
}
