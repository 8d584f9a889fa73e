package notify

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/valet-broker/valet/leases/config"
)

// Config is the notifications section of the configuration file: the
// webhooks that hear about grants and break-glass use.
type Config struct {
	Webhooks []WebhookConfig `yaml:"webhooks"`
}

// WebhookConfig is one notification receiver.
type WebhookConfig struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Format is json (valet's event JSON, default), slack (a Slack
	// incoming-webhook message) or set (an OpenID Shared Signals receiver:
	// each mass revocation of an agent's leases is pushed as a signed CAEP
	// session-revoked Security Event Token, RFC 8935).
	Format string `yaml:"format"`
	// SecretFile holds the HMAC key that signs each body
	// (X-Valet-Signature: sha256=<hex>); for format set, the bearer token
	// the receiver expects (Authorization: Bearer).
	SecretFile string `yaml:"secret_file"`
	// Audience is the aud of the SETs a set receiver gets (default: its
	// url); set receivers only.
	Audience string `yaml:"audience"`
	// Events selects event types (default all; for format set, the one it
	// carries, agent.leases_revoked): grant.requested, grant.approved,
	// grant.denied, grant.expired, grant.redeemed, break_glass,
	// break_glass.reviewed, job.failing, signal, agent.quarantined,
	// agent.released, agent.leases_revoked.
	Events []string `yaml:"events"`
	// Timeout bounds one delivery attempt (default 5s, positive).
	Timeout config.Duration `yaml:"timeout"`
	// MaxAttempts is how many times an event is sent before valet gives up
	// (default 8, at least 1; 1 means no retries; backoff doubles from 1s).
	MaxAttempts int `yaml:"max_attempts"`
}

// Events are the event types valet sends to webhooks.
var Events = map[string]bool{
	"grant.requested": true, "grant.approved": true, "grant.denied": true, "grant.expired": true,
	"grant.redeemed": true, "break_glass": true, "break_glass.reviewed": true, "job.failing": true,
	"signal": true, "agent.quarantined": true, "agent.released": true, "agent.leases_revoked": true,
}

// SETEvents are the event types a set receiver can get: those a
// broker.Event becomes a SET for.
var SETEvents = map[string]bool{"agent.leases_revoked": true}

// SetDefaults sets format json, timeout 5s and max_attempts 8.
func (w *WebhookConfig) SetDefaults() {
	w.Format = "json"
	w.Timeout = config.Duration(5 * time.Second)
	w.MaxAttempts = 8
}

// UnmarshalYAML decodes on top of the defaults. A set receiver's
// audience, when absent, is its url.
func (w *WebhookConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type webhook WebhookConfig
	if err := config.DecodeOnDefaults(w.SetDefaults, (*webhook)(w), unmarshal); err != nil {
		return err
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if w.Format == "set" && !keys.Has("audience") {
		w.Audience = w.URL
	}
	return nil
}

// Validate checks the section and names the full key path in each error
// ("notifications.webhooks[0].timeout must be positive").
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	hooks := map[string]bool{}
	for i, w := range c.Webhooks {
		f := fmt.Sprintf("notifications.webhooks[%d]", i)
		if w.Name == "" || hooks[w.Name] {
			add("%s.name must be set and unique", f)
		} else if !config.ValidName(w.Name) {
			add("%s.name %q must be %s", f, w.Name, config.NameRule)
		}
		hooks[w.Name] = true
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("%s.url %q must be an absolute http(s) URL", f, w.URL)
		}
		switch w.Format {
		case "json", "slack":
			if w.Audience != "" {
				add("%s.audience applies only to format set", f)
			}
		case "set":
			if w.Audience == "" {
				add("%s.audience must not be empty (leave it out for the url)", f)
			}
		default:
			add("%s.format %q must be json, slack or set", f, w.Format)
		}
		if w.Timeout <= 0 {
			add("%s.timeout must be positive; it is %s", f, w.Timeout)
		}
		if w.MaxAttempts < 1 {
			add("%s.max_attempts must be at least 1 (1 sends once, without retries); it is %d", f, w.MaxAttempts)
		}
		for j, ev := range w.Events {
			switch {
			case !Events[ev]:
				add("%s.events[%d] %q is not an event valet sends", f, j, ev)
			case w.Format == "set" && !SETEvents[ev]:
				add("%s.events[%d] %q is not sent to set receivers; they get agent.leases_revoked", f, j, ev)
			}
		}
	}
	return errors.Join(errs...)
}
