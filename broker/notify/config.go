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
	// Format is json (valet's event JSON, default) or slack (a Slack
	// incoming-webhook message).
	Format string `yaml:"format"`
	// SecretFile holds the HMAC key that signs each body
	// (X-Valet-Signature: sha256=<hex>).
	SecretFile string `yaml:"secret_file"`
	// Events selects event types (default all): grant.requested,
	// grant.approved, grant.denied, grant.expired, grant.redeemed,
	// break_glass, break_glass.reviewed, job.failing.
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
}

// SetDefaults sets format json, timeout 5s and max_attempts 8.
func (w *WebhookConfig) SetDefaults() {
	w.Format = "json"
	w.Timeout = config.Duration(5 * time.Second)
	w.MaxAttempts = 8
}

// UnmarshalYAML decodes on top of the defaults.
func (w *WebhookConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type webhook WebhookConfig
	return config.DecodeOnDefaults(w.SetDefaults, (*webhook)(w), unmarshal)
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
		default:
			add("%s.format %q must be json or slack", f, w.Format)
		}
		if w.Timeout <= 0 {
			add("%s.timeout must be positive; it is %s", f, w.Timeout)
		}
		if w.MaxAttempts < 1 {
			add("%s.max_attempts must be at least 1 (1 sends once, without retries); it is %d", f, w.MaxAttempts)
		}
		for j, ev := range w.Events {
			if !Events[ev] {
				add("%s.events[%d] %q is not an event valet sends", f, j, ev)
			}
		}
	}
	return errors.Join(errs...)
}
