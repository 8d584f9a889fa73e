package builtin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

// WitnessConfig is one witness of the audit checkpoints: somewhere outside
// valet's database that keeps every checkpoint.
type WitnessConfig struct {
	// Type is file (append one JSON line per checkpoint to Path, fsynced),
	// webhook (POST the checkpoint as JSON to URL; a 2xx answer within
	// Timeout is success) or stdout (one JSON line, for a log shipper).
	Type string `yaml:"type"`
	Path string `yaml:"path"`
	URL  string `yaml:"url"`
	// Timeout bounds a webhook's answer (default 5s, positive).
	Timeout config.Duration `yaml:"timeout"`
}

// SetDefaults sets timeout 5s.
func (w *WitnessConfig) SetDefaults() { w.Timeout = config.Duration(5 * time.Second) }

// UnmarshalYAML decodes on top of the defaults.
func (w *WitnessConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type witness WitnessConfig
	return config.DecodeOnDefaults(w.SetDefaults, (*witness)(w), unmarshal)
}

// validate checks a witness; field is its key path.
func (w WitnessConfig) validate(field string) error {
	switch w.Type {
	case "file":
		if w.Path == "" || !filepath.IsAbs(w.Path) {
			return fmt.Errorf("%s.path must be an absolute file path for a file witness; it is %q", field, w.Path)
		}
	case "webhook":
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("%s.url must be an absolute http(s) URL for a webhook witness; it is %q", field, w.URL)
		}
		if w.Timeout <= 0 {
			return fmt.Errorf("%s.timeout must be positive; it is %s", field, w.Timeout)
		}
	case "stdout":
	default:
		return fmt.Errorf("%s.type %q must be file, webhook or stdout", field, w.Type)
	}
	return nil
}

// witness keeps checkpoints outside valet's database.
type witness interface {
	name() string
	witness(ctx context.Context, cp audit.Checkpoint) error
}

func newWitness(w WitnessConfig, stdout io.Writer) witness {
	switch w.Type {
	case "file":
		return &fileWitness{path: w.Path}
	case "webhook":
		return &webhookWitness{url: w.URL, client: &http.Client{Timeout: w.Timeout.D()}}
	default:
		return &streamWitness{w: stdout}
	}
}

// fileWitness appends one JSON line per checkpoint and syncs the file.
type fileWitness struct {
	mu   sync.Mutex
	path string
}

func (f *fileWitness) name() string { return "file " + f.path }

func (f *fileWitness) witness(ctx context.Context, cp audit.Checkpoint) error {
	line, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_, statErr := os.Stat(f.path)
	file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := file.Write(append(line, '\n')); err != nil {
		file.Close()
		return err
	}
	if err := file.Sync(); err != nil {
		file.Close()
		return err
	}
	if err := file.Close(); err != nil {
		return err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// A new file is durable once its directory's entry is.
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	}
	return nil
}

// webhookWitness POSTs each checkpoint.
type webhookWitness struct {
	url    string
	client *http.Client
}

func (w *webhookWitness) name() string { return "webhook " + w.url }

func (w *webhookWitness) witness(ctx context.Context, cp audit.Checkpoint) error {
	body, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "valet/audit-checkpoint")
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

// streamWitness writes one JSON line per checkpoint to a stream.
type streamWitness struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *streamWitness) name() string { return "stdout" }

func (s *streamWitness) witness(ctx context.Context, cp audit.Checkpoint) error {
	line, err := json.Marshal(map[string]any{"valet_audit_checkpoint": cp})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err = s.w.Write(append(line, '\n'))
	return err
}
