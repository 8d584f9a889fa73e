package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/broker/detectors"
	"github.com/valet-broker/valet/broker/jobs"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
	"github.com/valet-broker/valet/web"
	"time"
)

// Config is valet's server configuration file, read from YAML. Unknown keys
// are errors. Each section belongs to the package that uses it (its type,
// defaults and Validate); Config assembles them, holds the server's own
// keys (listen, data_dir, public_url, kek_file, trusted_proxies, tls, log)
// and checks what spans sections. Validate names the offending key's full
// path in every message. Defaults come only from absent keys (see
// leases/config); DefaultConfig and config.Defaulted build a configuration
// in Go the same way.
type Config struct {
	Listen    string `yaml:"listen"`
	DataDir   string `yaml:"data_dir"`
	PublicURL string `yaml:"public_url"`
	// KEKFile holds the hex key-encryption key for signing keys at rest.
	// VALET_KEK in the environment takes precedence.
	KEKFile string `yaml:"kek_file"`
	// KEKPreviousFile holds the previous key-encryption key while valet
	// switches to a new one (VALET_KEK_PREVIOUS takes precedence): it
	// still opens what it sealed, until the kek-rotation job has sealed
	// everything again under the new one (`valet kek finish`).
	KEKPreviousFile string `yaml:"kek_previous_file"`

	// TrustedProxies are the reverse proxies, as CIDR prefixes or single
	// addresses, whose X-Forwarded-For header names the client (the
	// right-most address in it that is not itself a trusted proxy). From
	// any other peer the header is ignored. Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`

	TLS       *TLSConfig            `yaml:"tls"`
	Issuers   []attest.IssuerConfig `yaml:"issuers"`
	Backends  []backends.Config     `yaml:"backends"`
	Roles     []broker.Role         `yaml:"roles"`
	Policy    policy.Config         `yaml:"policy"`
	Operators OperatorsConfig       `yaml:"operators"`
	Limits    broker.LimitsConfig   `yaml:"limits"`
	Leases    leases.Config         `yaml:"leases"`
	Audit     audit.Config          `yaml:"audit"`
	Log       LogConfig             `yaml:"log"`
	Storage   StorageConfig         `yaml:"storage"`

	Notifications notify.Config              `yaml:"notifications"`
	Console       web.ConsoleConfig          `yaml:"console"`
	Introspection broker.IntrospectionConfig `yaml:"introspection"`
	Signals       SignalsConfig              `yaml:"signals"`
	// Jobs changes the scheduled jobs (broker/jobs; valet's jobs are in
	// broker/jobs/builtin and run by default).
	Jobs []jobs.Spec `yaml:"jobs"`

	// ConfigDir is the directory of the config file (set by LoadConfig);
	// backends resolve relative paths in their options against it.
	ConfigDir string `yaml:"-"`
}

// TLSConfig turns on HTTPS, optionally with client certificates.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is "none" (default), "verify_if_given" or "require".
	ClientAuth string `yaml:"client_auth"`
}

// verifiesClientCerts reports whether the server asks for TLS client
// certificates and can verify them.
func (t *TLSConfig) verifiesClientCerts() bool {
	return t != nil && t.ClientCAFile != "" && (t.ClientAuth == "verify_if_given" || t.ClientAuth == "require")
}

// OperatorsConfig says who may act as an operator: static tokens (checked
// by broker.Operators) and SSO issuers (verified by broker/attest, their
// identity read as broker.OperatorFromClaims says).
type OperatorsConfig struct {
	Tokens  []broker.OperatorToken        `yaml:"tokens"`
	Issuers []attest.OperatorIssuerConfig `yaml:"issuers"`
}

// IssuerConfigs returns the attestation-issuer part of each operator
// issuer, in order, for the token verifier.
func (c OperatorsConfig) IssuerConfigs() []attest.IssuerConfig {
	out := make([]attest.IssuerConfig, 0, len(c.Issuers))
	for _, ic := range c.Issuers {
		out = append(out, ic.IssuerConfig)
	}
	return out
}

// OperatorIssuers returns what broker.Operators needs of each operator
// issuer, in order.
func (c OperatorsConfig) OperatorIssuers() []broker.OperatorIssuer {
	out := make([]broker.OperatorIssuer, 0, len(c.Issuers))
	for i := range c.Issuers {
		out = append(out, c.Issuers[i].OperatorIssuer())
	}
	return out
}

// SignalsConfig is the signals section: the broker's keys (risk,
// actions, quarantine, the REST signal sources), and the issuers of the
// sources' ID tokens and the SSF transmitters, whose tokens broker/attest
// verifies.
type SignalsConfig struct {
	broker.SignalsConfig `yaml:",inline"`
	// Issuers are the issuers of the signal sources' ID tokens (same
	// keys as issuers[]); a source names one with its subject.
	Issuers []attest.IssuerConfig `yaml:"issuers"`
	// Transmitters are the SSF transmitters whose SETs valet accepts at
	// POST /v1/signals/set.
	Transmitters []attest.TransmitterConfig `yaml:"transmitters"`
	// Detectors are valet's built-in detectors.
	Detectors detectors.Config `yaml:"detectors"`
}

// SetDefaults sets the broker's and the detectors' defaults of the
// section.
func (c *SignalsConfig) SetDefaults() {
	c.SignalsConfig.SetDefaults()
	c.Detectors.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults. The broker's part is
// decoded inline through a type without methods: its own UnmarshalYAML
// would see issuers and transmitters as unknown keys.
func (c *SignalsConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type brokerPart broker.SignalsConfig
	type section struct {
		*brokerPart  `yaml:",inline"`
		Issuers      []attest.IssuerConfig      `yaml:"issuers"`
		Transmitters []attest.TransmitterConfig `yaml:"transmitters"`
		Detectors    *detectors.Config          `yaml:"detectors"`
	}
	sec := section{brokerPart: (*brokerPart)(&c.SignalsConfig), Detectors: &c.Detectors}
	if err := config.DecodeOnDefaults(c.SetDefaults, &sec, unmarshal); err != nil {
		return err
	}
	c.Issuers, c.Transmitters = sec.Issuers, sec.Transmitters
	return nil
}

// SignalIssuers returns what broker.SignalSources needs of each signals
// issuer.
func (c *SignalsConfig) SignalIssuers() []broker.SignalIssuer {
	out := make([]broker.SignalIssuer, 0, len(c.Issuers))
	for _, ic := range c.Issuers {
		out = append(out, broker.SignalIssuer{Name: ic.Name, Issuer: ic.Issuer})
	}
	return out
}

// LogConfig sets the log level (debug, info, warn, error; default info)
// and how long a request line (msg "http", one per request) may wait to be
// written with the ones after it (flush_interval, a duration from 0 to 1s,
// default 100ms; 0 writes each line at once). Every other line is written
// at once.
type LogConfig struct {
	Level         string          `yaml:"level"`
	FlushInterval config.Duration `yaml:"flush_interval"`
}

// DefaultListen is the address valet listens on when listen is absent.
const DefaultListen = "127.0.0.1:8750"

// LoadConfig reads and strictly decodes a YAML config file, with defaults
// for absent keys, and validates it. Relative paths in the file are
// resolved against the file's directory.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var cfg Config
	if err := config.DecodeStrict(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.ResolvePaths(filepath.Dir(path))
	if abs, err := filepath.Abs(filepath.Dir(path)); err == nil {
		cfg.ConfigDir = abs
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

// ResolvePaths makes every relative file path in the config relative to
// base (the config file's directory) instead of the working directory.
func (c *Config) ResolvePaths(base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.KEKFile)
	abs(&c.KEKPreviousFile)
	abs(&c.Policy.Dir)
	if c.TLS != nil {
		abs(&c.TLS.CertFile)
		abs(&c.TLS.KeyFile)
		abs(&c.TLS.ClientCAFile)
	}
	for i := range c.Issuers {
		abs(&c.Issuers[i].JWKSFile)
		abs(&c.Issuers[i].CAFile)
	}
	for i := range c.Operators.Issuers {
		abs(&c.Operators.Issuers[i].JWKSFile)
		abs(&c.Operators.Issuers[i].CAFile)
	}
	if c.Audit.Sink != "stdout" {
		abs(&c.Audit.Sink)
	}
	for i := range c.Notifications.Webhooks {
		abs(&c.Notifications.Webhooks[i].SecretFile)
	}
	if c.Console.OIDC != nil {
		abs(&c.Console.OIDC.ClientSecretFile)
		abs(&c.Console.OIDC.CAFile)
	}
	c.Introspection.ResolvePaths(abs)
	for i := range c.Signals.Issuers {
		abs(&c.Signals.Issuers[i].JWKSFile)
		abs(&c.Signals.Issuers[i].CAFile)
	}
	for i := range c.Signals.Transmitters {
		abs(&c.Signals.Transmitters[i].JWKSFile)
		abs(&c.Signals.Transmitters[i].CAFile)
	}
}

// ParseConfig strictly decodes YAML (unknown keys are errors), with
// defaults for absent keys, and validates.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	if err := config.DecodeStrict(b, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// DefaultConfig returns a configuration with every default set and nothing
// else: the starting point for a configuration built in Go. Lists (issuers,
// roles, webhooks) are empty; build their elements with config.Defaulted.
func DefaultConfig() *Config {
	var c Config
	c.SetDefaults()
	return &c
}

// SetDefaults sets every default of the top level and of its sections,
// overwriting what was there.
func (c *Config) SetDefaults() {
	c.Listen = DefaultListen
	c.PublicURL = "http://" + DefaultListen
	c.Limits.SetDefaults()
	c.Leases.SetDefaults()
	c.Console.SetDefaults()
	c.Log.SetDefaults()
	c.Policy.SetDefaults()
	c.Signals.SetDefaults()
	c.Storage.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults. public_url, when absent,
// is http://<listen>; console.oidc.redirect_url, when absent, is
// <public_url>/ui/auth/callback.
func (c *Config) UnmarshalYAML(unmarshal func(any) error) error {
	type file Config
	if err := config.DecodeOnDefaults(c.SetDefaults, (*file)(c), unmarshal); err != nil {
		return err
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if !keys.Has("public_url") {
		c.PublicURL = "http://" + c.Listen
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.Console.OIDC != nil && !keys.Has("console", "oidc", "redirect_url") {
		c.Console.OIDC.RedirectURL = c.PublicURL + "/ui/auth/callback"
	}
	return nil
}

// SetDefaults sets level info.
func (lc *LogConfig) SetDefaults() {
	lc.Level = "info"
	lc.FlushInterval = config.Duration(100 * time.Millisecond)
}

// UnmarshalYAML decodes on top of the defaults.
func (lc *LogConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type logConfig LogConfig
	return config.DecodeOnDefaults(lc.SetDefaults, (*logConfig)(lc), unmarshal)
}

// Broker returns the broker's part of the configuration. Its slices are
// the file's: the broker reads the roles where the file holds them.
func (c *Config) Broker() *broker.Config {
	return &broker.Config{PublicURL: c.PublicURL, Roles: c.Roles, Limits: c.Limits, Leases: c.Leases, Signals: c.Signals.SignalsConfig}
}

// Role returns the role named name, or nil.
func (c *Config) Role(name string) *broker.Role { return c.Broker().Role(name) }

// Validate checks the whole configuration, each section with its owner's
// Validate, and names the offending key's full path in each error, e.g.
// "issuers[1].audiences must not be empty".
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen %q must be host:port", c.Listen)
	}
	if c.DataDir == "" {
		add("data_dir must be set")
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("public_url %q must be an absolute http(s) URL", c.PublicURL)
	}
	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			add("tls.cert_file and tls.key_file must both be set")
		}
		switch c.TLS.ClientAuth {
		case "", "none":
		case "verify_if_given", "require":
			if c.TLS.ClientCAFile == "" {
				add("tls.client_ca_file must be set when tls.client_auth is %q", c.TLS.ClientAuth)
			}
		default:
			add("tls.client_auth %q must be none, verify_if_given or require", c.TLS.ClientAuth)
		}
	}

	for i, p := range c.TrustedProxies {
		if _, err := clientip.ParsePrefix(p); err != nil {
			add("trusted_proxies[%d] %q %v", i, p, err)
		}
	}

	if len(c.Issuers) == 0 {
		add("issuers must list at least one trusted attestation issuer")
	}
	errs = append(errs, attest.ValidateIssuers("issuers", c.Issuers))
	errs = append(errs, attest.ValidateIssuers("operators.issuers", c.Operators.IssuerConfigs()))
	for i, oi := range c.Operators.Issuers {
		errs = append(errs, oi.OperatorIdentityConfig.Validate(fmt.Sprintf("operators.issuers[%d]", i)))
		for _, ai := range c.Issuers {
			if oi.Name == ai.Name {
				// Replay protection keys consumed ids by issuer name.
				add("operators.issuers[%d].name %q is also an attestation issuer's name; use distinct names", i, oi.Name)
			}
			if oi.Issuer != "" && oi.Issuer == ai.Issuer {
				add("operators.issuers[%d].issuer %q is also trusted for agents; an agent token must never be an operator credential", i, oi.Issuer)
			}
		}
	}

	errs = append(errs, backends.ValidateConfigs(c.Backends))
	backendNames := map[string]bool{}
	for _, b := range c.Backends {
		backendNames[b.Name] = true
	}
	errs = append(errs, broker.ValidateRoles(c.Roles, backendNames))
	errs = append(errs, c.Policy.Validate())
	errs = append(errs, broker.ValidateOperatorTokens(c.Operators.Tokens))
	errs = append(errs, c.Limits.Validate())
	errs = append(errs, c.Leases.Validate())
	errs = append(errs, c.Storage.Validate())
	errs = append(errs, c.Console.Validate())
	errs = append(errs, c.Notifications.Validate())
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	if c.Log.FlushInterval > config.Duration(time.Second) {
		add("log.flush_interval must be between 0 (each line at once) and 1s; it is %s", c.Log.FlushInterval)
	}
	roleNames := map[string]bool{}
	for _, r := range c.Roles {
		roleNames[r.Name] = true
	}
	errs = append(errs, c.Introspection.Validate(roleNames, c.TLS.verifiesClientCerts()))
	errs = append(errs, c.validateSignals()...)
	if _, err := c.resolveJobs(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// resolveJobs resolves the jobs section (jobdefs.Resolve) for the
// configured storage engine: on etcd the audit log stays in etcd, so the
// default audit-archive job is left out and one configured is refused.
func (c *Config) resolveJobs() ([]jobs.Resolved, error) {
	resolved, err := jobdefs.Resolve(c.Jobs)
	if err != nil || c.Storage.Engine != engineEtcd {
		return resolved, err
	}
	out := resolved[:0]
	for _, r := range resolved {
		if r.Type != jobdefs.AuditArchive {
			out = append(out, r)
			continue
		}
		if r.Field != "" {
			return nil, fmt.Errorf("%s: the audit-archive job needs storage.engine bbolt (on etcd the audit log stays in etcd)", r.Field)
		}
	}
	return out, nil
}

// validateSignals checks the signals section: each part with its owner's
// Validate, and that a signals issuer shares no name with an issuer of
// agents or operators (replay protection keys consumed ids by issuer
// name), nor, with the same iss, an audience (a credential must mean one
// thing: an agent's attestation must not be a signal source's ID token).
func (c *Config) validateSignals() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	errs = append(errs, attest.ValidateIssuers("signals.issuers", c.Signals.Issuers))
	sigIssuers := map[string]bool{}
	others := append(append([]attest.IssuerConfig{}, c.Issuers...), c.Operators.IssuerConfigs()...)
	for i, si := range c.Signals.Issuers {
		sigIssuers[si.Name] = true
		for _, o := range others {
			if si.Name == o.Name {
				add("signals.issuers[%d].name %q is also the name of an issuer of agents or operators; use distinct names", i, si.Name)
			}
			if si.Issuer != "" && si.Issuer == o.Issuer && slices.ContainsFunc(si.Audiences, func(a string) bool { return slices.Contains(o.Audiences, a) }) {
				add("signals.issuers[%d] trusts iss %q with an audience that issuer %s of agents or operators accepts too; give signal sources an audience of their own",
					i, si.Issuer, o.Name)
			}
		}
	}
	errs = append(errs, c.Signals.SignalsConfig.Validate(sigIssuers), c.Signals.Detectors.Validate("signals.detectors"))
	agentIssuers := map[string]bool{}
	for _, ic := range c.Issuers {
		agentIssuers[ic.Name] = true
	}
	errs = append(errs, attest.ValidateTransmitters(c.Signals.Transmitters, agentIssuers))
	return errs
}

// ParseKEK decodes a hex key-encryption key (64 hex digits, AES-256).
func ParseKEK(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 32 {
		return nil, errors.New("the key-encryption key must be 64 hex digits (32 bytes); generate one with `openssl rand -hex 32`")
	}
	return b, nil
}
