// Package detectors holds valet's built-in detectors: each is a
// broker.Detector that watches what the flows observe (mints, denials,
// renewals, replayed attestations, introspections of ended leases' tokens,
// lineage revocations) and raises a signal, through the broker's one
// signal pipeline, when it sees its pattern:
//
//   - mint_rate: an agent mints far above its own rolling baseline, or
//     over a hard ceiling (mint_rate.go);
//   - new_role: an agent mints a role it never minted, once past its
//     learning period (new_role.go);
//   - denial_burst: a burst of denied requests of one agent
//     (denial_burst.go);
//   - replay: an attestation whose jti was used before, or one from a
//     lineage a signal or an operator revoked (replay.go);
//   - revoked_use: a resource server introspects a token whose lease was
//     revoked or released (revoked_use.go);
//   - new_network: an agent holding live leases asks from a network it
//     never used (new_network.go);
//   - renewal_hold: renewals keep a lease topped up for longer than
//     allowed (renewal_hold.go).
//
// Each is configured under signals.detectors.<name> (Config) and is
// deterministic: it reads time only from the observations (the broker's
// clock), never a clock of its own. Each keeps its state in memory, for
// at most signals.detectors.max_tracked agents (leases, lineages), the
// least recently seen evicted first; what one needs across restarts (the
// roles agents minted, the lineages signals revoked) is read from storage
// when New builds it. Observe does O(1) work under a lock of its own
// state and never touches storage, so that a mint pays a few map lookups
// for all of them.
package detectors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Config is signals.detectors: each built-in detector's settings, and how
// many agents (leases, lineages) each keeps state for.
type Config struct {
	// MaxTracked bounds what each detector keeps in memory: the agents
	// (mint_rate, new_role, denial_burst, replay, revoked_use,
	// new_network), the leases (renewal_hold) or the revoked lineages
	// (replay) it tracks (default 10000, at least 1). Beyond it the least
	// recently seen is forgotten, and starts afresh when seen again.
	MaxTracked  int               `yaml:"max_tracked"`
	MintRate    MintRateConfig    `yaml:"mint_rate"`
	NewRole     NewRoleConfig     `yaml:"new_role"`
	DenialBurst DenialBurstConfig `yaml:"denial_burst"`
	Replay      ReplayConfig      `yaml:"replay"`
	RevokedUse  RevokedUseConfig  `yaml:"revoked_use"`
	NewNetwork  NewNetworkConfig  `yaml:"new_network"`
	RenewalHold RenewalHoldConfig `yaml:"renewal_hold"`
}

// SetDefaults sets max_tracked 10000 and each detector's defaults.
func (c *Config) SetDefaults() {
	c.MaxTracked = 10000
	c.MintRate.SetDefaults()
	c.NewRole.SetDefaults()
	c.DenialBurst.SetDefaults()
	c.Replay.SetDefaults()
	c.RevokedUse.SetDefaults()
	c.NewNetwork.SetDefaults()
	c.RenewalHold.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (c *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type plain Config
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the section at key path field (signals.detectors) and
// names the full key path in each error.
func (c *Config) Validate(field string) error {
	var errs []error
	if c.MaxTracked < 1 {
		errs = append(errs, fmt.Errorf("%s.max_tracked must be at least 1; it is %d", field, c.MaxTracked))
	}
	errs = append(errs,
		c.MintRate.Validate(field+"."+MintRateName),
		c.NewRole.Validate(field+"."+NewRoleName),
		c.DenialBurst.Validate(field+"."+DenialBurstName),
		c.Replay.Validate(field+"."+ReplayName),
		c.RevokedUse.Validate(field+"."+RevokedUseName),
		c.NewNetwork.Validate(field+"."+NewNetworkName),
		c.RenewalHold.Validate(field+"."+RenewalHoldName),
	)
	return errors.Join(errs...)
}

// Common are the keys of every detector.
type Common struct {
	// Enabled turns the detector on (default true).
	Enabled bool `yaml:"enabled"`
	// Severity is the severity of its signals, which sets the risk
	// points they add (signals.points).
	Severity agents.Severity `yaml:"severity"`
	// Action is what its signals ask for: alert (default), revoke or
	// quarantine the subject.
	Action agents.Action `yaml:"action"`
	// Cooldown is how long after a signal about a subject the detector
	// raises no other about it (default 15m; 0: one for every match).
	Cooldown config.Duration `yaml:"cooldown"`
}

// setDefaults sets enabled, action alert, cooldown 15m and severity s.
func (c *Common) setDefaults(s agents.Severity) {
	*c = Common{Enabled: true, Severity: s, Action: agents.ActionAlert, Cooldown: config.Duration(15 * time.Minute)}
}

// validate checks the common keys at key path field.
func (c *Common) validate(field string) []error {
	var errs []error
	if !c.Severity.Valid() {
		errs = append(errs, fmt.Errorf("%s.severity %q must be info, low, medium, high or critical", field, c.Severity))
	}
	if !c.Action.Valid() {
		errs = append(errs, fmt.Errorf("%s.action %q must be alert, revoke or quarantine", field, c.Action))
	}
	return append(errs, notNegative(field+".cooldown", c.Cooldown, "0 raises a signal for every match"))
}

// notNegative refuses a negative duration at key path field, saying what
// 0 does.
func notNegative(field string, d config.Duration, zero string) error {
	if d < 0 {
		return fmt.Errorf("%s must not be negative (%s); it is %s", field, zero, d)
	}
	return nil
}

// policy is what the detector's signals may make valet do: its action
// and the milder ones.
func (c *Common) policy() broker.SignalPolicy {
	return broker.SignalPolicy{AllowedActions: slices.Clone(agents.Actions[:slices.Index(agents.Actions, c.Action)+1])}
}

// detection is a signal of the detector about subject. The reason is
// made one line of at most broker.MaxSignalReason bytes, as a signal's
// must be (it quotes agent ids and denial reasons).
func (c *Common) detection(subject agents.Subject, reason string, evidence map[string]string) []broker.Detection {
	return []broker.Detection{{Subject: subject, Severity: c.Severity, Action: c.Action, Reason: clip(reason, broker.MaxSignalReason-len("…")),
		Evidence: evidence}}
}

// cool reports whether a signal last raised at fired (zero: never) is
// more than the cooldown before now, so another may be raised.
func (c *Common) cool(fired, now time.Time) bool {
	return fired.IsZero() || now.Sub(fired) >= c.Cooldown.D()
}

// AgentLister reads agent records (broker.AgentStore's ListAgents).
type AgentLister interface {
	ListAgents(ctx context.Context, f agents.Filter) ([]*agents.Agent, error)
}

// SignalLister reads signals, newest first (broker.SignalStore's
// ListSignals).
type SignalLister interface {
	ListSignals(ctx context.Context, f agents.SignalFilter) ([]*agents.Signal, error)
}

// Deps are what New reads the detectors' state from.
type Deps struct {
	// Clock is the broker's: New reads the signals of the replay
	// detector's remember window up to its now.
	Clock clock.Clock
	// Agents are the agent records: new_role learns the roles each
	// agent minted before this start, and when valet first saw it.
	// Without them it learns from the mints it sees.
	Agents AgentLister
	// Signals are the signals: replay learns the lineages revoked by a
	// signal within its remember window. Without them it learns from the
	// revocations it sees.
	Signals SignalLister
}

// New builds the enabled detectors of cfg (as Config.Validate accepted
// it), in a fixed order, and loads what they need from storage (see
// Deps). It fails only if storage cannot be read.
func New(ctx context.Context, cfg Config, deps Deps) ([]broker.Detector, error) {
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	var out []broker.Detector
	if cfg.MintRate.Enabled {
		out = append(out, newMintRate(cfg.MintRate, cfg.MaxTracked))
	}
	if cfg.NewRole.Enabled {
		d := newNewRole(cfg.NewRole, cfg.MaxTracked)
		if err := d.load(ctx, deps.Agents); err != nil {
			return nil, fmt.Errorf("detector %s: read agent records: %w", NewRoleName, err)
		}
		out = append(out, d)
	}
	if cfg.DenialBurst.Enabled {
		out = append(out, newDenialBurst(cfg.DenialBurst, cfg.MaxTracked))
	}
	if cfg.Replay.Enabled {
		d := newReplay(cfg.Replay, cfg.MaxTracked)
		if err := d.load(ctx, deps.Signals, deps.Clock.Now()); err != nil {
			return nil, fmt.Errorf("detector %s: read signals: %w", ReplayName, err)
		}
		out = append(out, d)
	}
	if cfg.RevokedUse.Enabled {
		out = append(out, newRevokedUse(cfg.RevokedUse, cfg.MaxTracked))
	}
	if cfg.NewNetwork.Enabled {
		out = append(out, newNewNetwork(cfg.NewNetwork, cfg.MaxTracked))
	}
	if cfg.RenewalHold.Enabled {
		out = append(out, newRenewalHold(cfg.RenewalHold, cfg.MaxTracked))
	}
	return out, nil
}

// agent is the subject naming an agent.
func agent(id string) agents.Subject { return agents.Subject{Kind: agents.SubjectAgent, ID: id} }

// at formats a time for evidence and reasons.
func at(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// itoa formats a count for evidence.
func itoa(n int) string { return strconv.Itoa(n) }

// clip makes s, a reason or a piece of evidence quoted from elsewhere,
// one line of valid UTF-8 (control characters become spaces) of at most
// n bytes of whole characters, and "…" when it was longer.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
