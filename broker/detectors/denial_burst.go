package detectors

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// DenialBurstName names the denial-burst detector
// (signals.detectors.denial_burst, source detector:denial_burst).
const DenialBurstName = "denial_burst"

// DenialBurstConfig is signals.detectors.denial_burst: a burst of denied
// requests of one authenticated agent (refused by the policy, for an
// unknown role, while quarantined).
//
// Denials are counted in a sliding window of Window: the count is the
// current window's (windows aligned to the clock) plus the previous
// window's in proportion to how much of it the sliding window still
// covers. The detector fires when that count reaches Threshold.
type DenialBurstConfig struct {
	Common `yaml:",inline"`
	// Window is the sliding window (default 1m, at least 1s).
	Window config.Duration `yaml:"window"`
	// Threshold is how many denials within Window fire (default 10, at
	// least 1).
	Threshold int `yaml:"threshold"`
}

// SetDefaults sets severity medium, window 1m and threshold 10.
func (c *DenialBurstConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityMedium)
	c.Window, c.Threshold = config.Duration(time.Minute), 10
}

// UnmarshalYAML decodes on top of the defaults.
func (c *DenialBurstConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain DenialBurstConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *DenialBurstConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	if c.Window < config.Duration(time.Second) {
		errs = append(errs, fmt.Errorf("%s.window must be at least 1s; it is %s", field, c.Window))
	}
	if c.Threshold < 1 {
		errs = append(errs, fmt.Errorf("%s.threshold must be at least 1 denial; it is %d", field, c.Threshold))
	}
	return errors.Join(errs...)
}

// denialBurst is the denial-burst detector.
type denialBurst struct {
	cfg    DenialBurstConfig
	window time.Duration
	agents *table[burstState]
}

// burstState is one agent's denials in the current and previous window.
type burstState struct {
	start     time.Time // of the current window
	cur, prev int
	fired     time.Time
}

func newDenialBurst(cfg DenialBurstConfig, max int) *denialBurst {
	return &denialBurst{cfg: cfg, window: cfg.Window.D(), agents: newTable[burstState](max)}
}

func (d *denialBurst) Name() string                { return DenialBurstName }
func (d *denialBurst) Policy() broker.SignalPolicy { return d.cfg.policy() }

// Observe counts a denial (ObserveDenied) and fires when the agent's
// count in the sliding window reaches the threshold.
func (d *denialBurst) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveDenied {
		return nil
	}
	st, fresh, mu := d.agents.get(o.AgentID)
	defer mu.Unlock()
	start := o.Time.Truncate(d.window)
	switch {
	case fresh:
		st.start = start
	case start.Equal(st.start.Add(d.window)):
		st.start, st.prev, st.cur = start, st.cur, 0
	case start.After(st.start):
		st.start, st.prev, st.cur = start, 0, 0
	}
	st.cur++
	covered := 1 - float64(o.Time.Sub(st.start))/float64(d.window)
	count := float64(st.prev)*max(covered, 0) + float64(st.cur)
	if count < float64(d.cfg.Threshold) || !d.cfg.cool(st.fired, o.Time) {
		return nil
	}
	st.fired = o.Time
	n := int(math.Round(count))
	return d.cfg.detection(agent(o.AgentID),
		fmt.Sprintf("agent %s was denied %d requests within %s (threshold %d); the latest: %s", o.AgentID, n, d.window, d.cfg.Threshold, clip(o.Reason, 200)),
		map[string]string{"denials": itoa(n), "window": d.window.String(), "threshold": itoa(d.cfg.Threshold),
			"last_reason": clip(o.Reason, 256), "last_role": o.Role})
}
