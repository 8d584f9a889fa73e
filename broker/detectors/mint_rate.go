package detectors

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/config"
)

// MintRateName names the mint-rate detector (signals.detectors.mint_rate,
// source detector:mint_rate).
const MintRateName = "mint_rate"

// MintRateConfig is signals.detectors.mint_rate: an agent minting far
// above its own rolling baseline, or over a hard ceiling.
//
// Mints are counted per agent in windows of Window, aligned to the clock
// (every whole minute for 1m). The baseline is the agent's mean count per
// window over about the last Baseline: each earlier window's count
// weighs half as much as one Baseline later (windows without mints count
// as 0). The detector fires, once per window at most, when the current
// window's count exceeds Ceiling, or, once the agent has been watched
// for Baseline, when it is at least MinMints and more than Factor times
// the baseline.
type MintRateConfig struct {
	Common `yaml:",inline"`
	// Window is the counting window (default 1m, at least 1s).
	Window config.Duration `yaml:"window"`
	// Baseline is the baseline's half-life, and how long an agent is
	// watched before it applies (default 1h, at least Window).
	Baseline config.Duration `yaml:"baseline"`
	// Factor is how many times its baseline an agent's count must
	// exceed (default 10, more than 1).
	Factor float64 `yaml:"factor"`
	// MinMints is the least count in a window that fires on the baseline
	// (default 30; 0: any count above Factor × baseline).
	MinMints int `yaml:"min_mints"`
	// Ceiling is the most mints an agent may make in one window whatever
	// its baseline (default 600, at least 1).
	Ceiling int `yaml:"ceiling"`
}

// SetDefaults sets severity medium, window 1m, baseline 1h, factor 10,
// min_mints 30, ceiling 600.
func (c *MintRateConfig) SetDefaults() {
	c.Common.setDefaults(agents.SeverityMedium)
	c.Window, c.Baseline = config.Duration(time.Minute), config.Duration(time.Hour)
	c.Factor, c.MinMints, c.Ceiling = 10, 30, 600
}

// UnmarshalYAML decodes on top of the defaults.
func (c *MintRateConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain MintRateConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the settings at key path field.
func (c *MintRateConfig) Validate(field string) error {
	errs := c.Common.validate(field)
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(field+"."+format, args...)) }
	if c.Window < config.Duration(time.Second) {
		add("window must be at least 1s; it is %s", c.Window)
	}
	if c.Baseline < c.Window {
		add("baseline must be at least the window (%s); it is %s", c.Window, c.Baseline)
	}
	if !(c.Factor > 1) || math.IsInf(c.Factor, 1) {
		add("factor must be a number greater than 1; it is %g", c.Factor)
	}
	if c.MinMints < 0 {
		add("min_mints must not be negative; it is %d", c.MinMints)
	}
	if c.Ceiling < 1 {
		add("ceiling must be at least 1 mint per window; it is %d", c.Ceiling)
	}
	return errors.Join(errs...)
}

// mintRate is the mint-rate detector.
type mintRate struct {
	cfg    MintRateConfig
	window time.Duration
	// decay is the weight one window later of a window's count, so that
	// it halves in cfg.Baseline.
	decay  float64
	agents *table[rateState]
}

// rateState is one agent's count and baseline.
type rateState struct {
	start time.Time // of the current window
	count int       // mints in the current window
	// sum/weight is the baseline: the decayed sum of the earlier
	// windows' counts over the decayed sum of their weights, so that it
	// is a mean from the first window on.
	sum, weight float64
	since       time.Time // first mint seen
	firedIn     time.Time // the window it last fired in
	fired       time.Time // when it last fired
}

func newMintRate(cfg MintRateConfig, max int) *mintRate {
	return &mintRate{cfg: cfg, window: cfg.Window.D(), decay: math.Exp2(-cfg.Window.D().Seconds() / cfg.Baseline.D().Seconds()),
		agents: newTable[rateState](max)}
}

func (d *mintRate) Name() string                { return MintRateName }
func (d *mintRate) Policy() broker.SignalPolicy { return d.cfg.policy() }

// Observe counts a mint (ObserveMint) and fires when the agent's count
// in the current window is over the ceiling, or, past its learning,
// over Factor × its baseline and MinMints.
func (d *mintRate) Observe(o broker.Observation) []broker.Detection {
	if o.Kind != broker.ObserveMint {
		return nil
	}
	st, fresh, mu := d.agents.get(o.AgentID)
	defer mu.Unlock()
	start := o.Time.Truncate(d.window)
	if fresh {
		st.start, st.since = start, o.Time
	} else if start.After(st.start) {
		st.roll(start, d.window, d.decay)
	}
	st.count++
	if st.firedIn.Equal(st.start) || !d.cfg.cool(st.fired, o.Time) {
		return nil
	}
	baseline := st.baseline()
	var why string
	switch {
	case st.count > d.cfg.Ceiling:
		why = fmt.Sprintf("over the ceiling of %d", d.cfg.Ceiling)
	case o.Time.Sub(st.since) >= d.cfg.Baseline.D() && st.count >= d.cfg.MinMints && float64(st.count) > d.cfg.Factor*baseline:
		why = fmt.Sprintf("more than %g times its baseline of %.1f", d.cfg.Factor, baseline)
	default:
		return nil
	}
	st.firedIn, st.fired = st.start, o.Time
	return d.cfg.detection(agent(o.AgentID),
		fmt.Sprintf("agent %s minted %d credentials in the %s window from %s, %s", o.AgentID, st.count, d.window, at(st.start), why),
		map[string]string{"mints": itoa(st.count), "window": d.window.String(), "window_start": at(st.start),
			"baseline": strconv.FormatFloat(baseline, 'f', 2, 64), "factor": strconv.FormatFloat(d.cfg.Factor, 'g', -1, 64),
			"min_mints": itoa(d.cfg.MinMints), "ceiling": itoa(d.cfg.Ceiling), "watched_since": at(st.since)})
}

// roll closes the current window and the empty ones up to start, adding
// them to the baseline.
func (st *rateState) roll(start time.Time, window time.Duration, decay float64) {
	st.sum = st.sum*decay + float64(st.count)*(1-decay)
	st.weight = st.weight*decay + (1 - decay)
	if empty := int64(start.Sub(st.start)/window) - 1; empty > 0 {
		f := math.Pow(decay, float64(empty))
		st.sum *= f
		st.weight = st.weight*f + (1 - f)
	}
	st.start, st.count = start, 0
}

// baseline is the mean count per window before the current one (0
// before the first window closed).
func (st *rateState) baseline() float64 {
	if st.weight == 0 {
		return 0
	}
	return st.sum / st.weight
}
