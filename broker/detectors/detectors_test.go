package detectors

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// start is where the tests' clocks start: a whole hour, so that windows
// aligned to the clock start with the test.
var start = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// harness drives one detector with observations stamped by a fake clock,
// as the broker does, and keeps what it detects.
type harness struct {
	t     *testing.T
	d     broker.Detector
	clock *clock.Fake
	fired []broker.Detection
}

// newHarness builds the only enabled detector of cfg (edited from the
// defaults, every detector off) with deps at start.
func newHarness(t *testing.T, edit func(*Config), deps Deps) *harness {
	t.Helper()
	cfg := config.Defaulted(func(c *Config) {
		for _, cm := range c.commons() {
			cm.Enabled = false
		}
		edit(c)
	})
	if err := cfg.Validate("signals.detectors"); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(start)
	deps.Clock = clk
	ds, err := New(context.Background(), cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Fatalf("%d detectors enabled, want 1", len(ds))
	}
	return &harness{t: t, d: ds[0], clock: clk}
}

// commons are the common settings of every detector.
func (c *Config) commons() []*Common {
	return []*Common{&c.MintRate.Common, &c.NewRole.Common, &c.DenialBurst.Common, &c.Replay.Common, &c.RevokedUse.Common,
		&c.NewNetwork.Common, &c.RenewalHold.Common}
}

// observe hands o, stamped now, to the detector and returns what it
// detected.
func (h *harness) observe(o broker.Observation) []broker.Detection {
	o.Time = h.clock.Now()
	got := h.d.Observe(o)
	h.fired = append(h.fired, got...)
	return got
}

// only returns the one detection so far, failing unless there is exactly
// one.
func (h *harness) only() broker.Detection {
	h.t.Helper()
	if len(h.fired) != 1 {
		h.t.Fatalf("%d detections, want 1: %+v", len(h.fired), h.fired)
	}
	return h.fired[0]
}

// quiet fails if anything was detected.
func (h *harness) quiet() {
	h.t.Helper()
	if len(h.fired) != 0 {
		h.t.Fatalf("detected %+v, want nothing", h.fired)
	}
}

// wantDetection checks a detection's subject, severity, action, the
// words its reason contains and its evidence.
func wantDetection(t *testing.T, d broker.Detection, subject agents.Subject, sev agents.Severity, reason []string, evidence map[string]string) {
	t.Helper()
	if d.Subject != subject || d.Severity != sev || d.Action != agents.ActionAlert {
		t.Fatalf("detection %+v, want %s about %s asking alert", d, sev, subject)
	}
	for _, w := range reason {
		if !strings.Contains(d.Reason, w) {
			t.Fatalf("reason %q does not say %q", d.Reason, w)
		}
	}
	for k, v := range evidence {
		if d.Evidence[k] != v {
			t.Fatalf("evidence %s = %q, want %q (all: %v)", k, d.Evidence[k], v, d.Evidence)
		}
	}
}

// detectorCase is a run of observations and what it should raise.
type detectorCase struct {
	name string
	// edit changes the configuration (the detector under test is on).
	edit func(*Config)
	deps Deps
	run  func(h *harness, rng *rand.Rand)
	// count is how many detections the run raises; the first's subject
	// (when not the test's), reason words and evidence are checked.
	count    int
	subject  agents.Subject
	reason   []string
	evidence map[string]string
}

// runCases runs each case with the detector that on turns on, a seeded
// random source and a fake clock at start, and checks its detections:
// about subject (unless the case names another), of severity sev,
// asking alert.
func runCases(t *testing.T, on func(*Config), subject agents.Subject, sev agents.Severity, cases []detectorCase) {
	t.Helper()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(cfg *Config) {
				on(cfg)
				if c.edit != nil {
					c.edit(cfg)
				}
			}, c.deps)
			c.run(h, rand.New(rand.NewPCG(uint64(i), 42)))
			if len(h.fired) != c.count {
				t.Fatalf("%d detections, want %d: %+v", len(h.fired), c.count, h.fired)
			}
			if c.count == 0 {
				return
			}
			if c.subject == (agents.Subject{}) {
				c.subject = subject
			}
			wantDetection(t, h.fired[0], c.subject, sev, c.reason, c.evidence)
		})
	}
}

func mint(agentID, role string) broker.Observation {
	return broker.Observation{Kind: broker.ObserveMint, AgentID: agentID, Role: role, LeaseID: "01LEASE"}
}

// TestNewBuildsEnabledDetectors: every detector is on by default, each
// under its name, asking alert; a detector turned off is not built, and a
// detector's allowed actions go up to its action.
func TestNewBuildsEnabledDetectors(t *testing.T) {
	cfg := config.Defaulted[Config](nil)
	if err := cfg.Validate("signals.detectors"); err != nil {
		t.Fatal(err)
	}
	ds, err := New(context.Background(), cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Name())
		if p := d.Policy(); !slices.Equal(p.AllowedActions, []agents.Action{agents.ActionAlert}) {
			t.Errorf("%s allows %v, want alert", d.Name(), p.AllowedActions)
		}
	}
	want := []string{MintRateName, NewRoleName, DenialBurstName, ReplayName, RevokedUseName, NewNetworkName, RenewalHoldName}
	if !slices.Equal(names, want) {
		t.Fatalf("detectors %v, want %v", names, want)
	}
	for _, n := range want {
		if !config.ValidName(n) {
			t.Errorf("detector name %q is not a configured name", n)
		}
	}

	cfg.NewRole.Enabled = false
	cfg.Replay.Action = agents.ActionRevoke
	ds, err = New(context.Background(), cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Name() == NewRoleName {
			t.Fatal("a detector turned off was built")
		}
		if d.Name() == ReplayName && !slices.Equal(d.Policy().AllowedActions, []agents.Action{agents.ActionAlert, agents.ActionRevoke}) {
			t.Fatalf("replay allows %v, want alert and revoke", d.Policy().AllowedActions)
		}
	}
}

// failingLister fails every read.
type failingLister struct{}

func (failingLister) ListAgents(context.Context, agents.Filter) ([]*agents.Agent, error) {
	return nil, errors.New("store down")
}
func (failingLister) ListSignals(context.Context, agents.SignalFilter) ([]*agents.Signal, error) {
	return nil, errors.New("store down")
}

// TestNewFailsWhenStorageFails: a detector that cannot read what it
// needs does not start without it.
func TestNewFailsWhenStorageFails(t *testing.T) {
	for _, c := range []struct {
		name string
		deps Deps
		want string
	}{
		{"agent records", Deps{Agents: failingLister{}}, "detector new_role: read agent records: store down"},
		{"signals", Deps{Signals: failingLister{}}, "detector replay: read signals: store down"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(context.Background(), config.Defaulted[Config](nil), c.deps)
			if err == nil || err.Error() != c.want {
				t.Fatalf("New: %v, want %q", err, c.want)
			}
		})
	}
}

// TestConfigValidate: each bad setting is refused with its full key path.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"max_tracked", func(c *Config) { c.MaxTracked = 0 }, "signals.detectors.max_tracked must be at least 1; it is 0"},
		{"severity", func(c *Config) { c.NewRole.Severity = "severe" }, `signals.detectors.new_role.severity "severe" must be info, low, medium, high or critical`},
		{"action", func(c *Config) { c.Replay.Action = "nuke" }, `signals.detectors.replay.action "nuke" must be alert, revoke or quarantine`},
		{"cooldown", func(c *Config) { c.DenialBurst.Cooldown = -1 }, "signals.detectors.denial_burst.cooldown must not be negative"},
		{"window", func(c *Config) { c.MintRate.Window = config.Duration(time.Millisecond) }, "signals.detectors.mint_rate.window must be at least 1s; it is 1ms"},
		{"baseline below the window", func(c *Config) { c.MintRate.Baseline = config.Duration(30 * time.Second) },
			"signals.detectors.mint_rate.baseline must be at least the window (1m0s); it is 30s"},
		{"factor", func(c *Config) { c.MintRate.Factor = 1 }, "signals.detectors.mint_rate.factor must be a number greater than 1; it is 1"},
		{"min_mints", func(c *Config) { c.MintRate.MinMints = -1 }, "signals.detectors.mint_rate.min_mints must not be negative; it is -1"},
		{"ceiling", func(c *Config) { c.MintRate.Ceiling = 0 }, "signals.detectors.mint_rate.ceiling must be at least 1 mint per window; it is 0"},
		{"learning", func(c *Config) { c.NewRole.Learning = -1 }, "signals.detectors.new_role.learning must not be negative"},
		{"threshold", func(c *Config) { c.DenialBurst.Threshold = 0 }, "signals.detectors.denial_burst.threshold must be at least 1 denial; it is 0"},
		{"remember", func(c *Config) { c.Replay.Remember = -1 }, "signals.detectors.replay.remember must not be negative"},
		{"grace", func(c *Config) { c.RevokedUse.Grace = -1 }, "signals.detectors.revoked_use.grace must not be negative"},
		{"ipv4_prefix", func(c *Config) { c.NewNetwork.IPv4Prefix = 33 }, "signals.detectors.new_network.ipv4_prefix must be between 0 and 32; it is 33"},
		{"ipv6_prefix", func(c *Config) { c.NewNetwork.IPv6Prefix = -1 }, "signals.detectors.new_network.ipv6_prefix must be between 0 and 128; it is -1"},
		{"max_networks", func(c *Config) { c.NewNetwork.MaxNetworks = 0 }, "signals.detectors.new_network.max_networks must be at least 1; it is 0"},
		{"hold", func(c *Config) { c.RenewalHold.Hold = -1 }, "signals.detectors.renewal_hold.hold must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := config.Defaulted(c.edit)
			err := cfg.Validate("signals.detectors")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want %q", err, c.want)
			}
		})
	}
}

// TestClip: quoted text becomes one line of valid UTF-8 within its bound.
func TestClip(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"short", "short"},
		{"two\nlines", "two lines"},
		{"héllo wörld", "hé…"},
		{"bad \xff byte", "bad \uFFFD byte"},
	} {
		n := 20
		if c.want == "hé…" {
			n = 3
		}
		if got := clip(c.in, n); got != c.want {
			t.Errorf("clip(%q, %d) = %q, want %q", c.in, n, got, c.want)
		}
	}
}
