package detectors

import (
	"errors"
	"fmt"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// RevokedUseName names the revoked-use detector
// (signals.detectors.revoked_use, source detector:revoked_use).
const RevokedUseName = "revoked_use"

// RevokedUseConfig is signals.detectors.revoked_use: a resource server
// introspects (POST /v1/introspect) a token whose lease was revoked or
// released more than Grace before: someone still uses a credential that
// ended. A token that expired is not this pattern.
type RevokedUseConfig struct {
	Common `yaml:",inline"`
	// Grace is how long after its lease ended a token may still be
	// introspected without a signal, for requests under way when it
	// ended (default 1m; 0: none).
	Grace config.Duration `yaml:"grace"`
}

// SetDefaults sets severity medium and grace 1m.
func (c *RevokedUseConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityMedium)
	c.Grace = config.Duration(time.Minute)
}

// UnmarshalYAML decodes on top of the defaults.
func (c *RevokedUseConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain RevokedUseConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *RevokedUseConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	return errors.Join(append(errs, notNegative(field+".grace", c.Grace, "0 allows none"))...)
}

// revokedUse is the revoked-use detector.
type revokedUse struct {
	cfg RevokedUseConfig
	// fired is when the detector last fired for each agent.
	fired *table[time.Time]
}

func newRevokedUse(cfg RevokedUseConfig, max int) *revokedUse {
	return &revokedUse{cfg: cfg, fired: newTable[time.Time](max)}
}

func (d *revokedUse) Name() string                { return RevokedUseName }
func (d *revokedUse) Policy() broker.SignalPolicy { return d.cfg.policy() }

// Observe fires for the introspection of a token whose lease ended on
// purpose (ObserveEndedUse) more than Grace before.
func (d *revokedUse) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveEndedUse {
		return nil
	}
	after := o.Time.Sub(o.EndedAt)
	if after <= d.cfg.Grace.D() {
		return nil
	}
	fired, _, mu := d.fired.get(o.AgentID)
	defer mu.Unlock()
	if !d.cfg.cool(*fired, o.Time) {
		return nil
	}
	*fired = o.Time
	return d.cfg.detection(agent(o.AgentID),
		fmt.Sprintf("a resource server introspected the token of lease %s of agent %s (role %s), %s %s ago",
			o.LeaseID, o.AgentID, o.Role, o.LeaseState, after.Round(time.Second)),
		map[string]string{"lease_id": o.LeaseID, "role": o.Role, "lease_state": string(o.LeaseState), "ended_at": at(o.EndedAt),
			"since_end": after.Round(time.Second).String(), "grace": d.cfg.Grace.String()})
}
