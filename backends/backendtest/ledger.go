// Package backendtest holds backends for tests of valet itself. They are
// compiled into the valet binary only with the build tag valet_testbackends
// (see backends/builtin), so end-to-end tests can exercise paths that need a
// backend with external effects, such as crash recovery.
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/config"
)

// LedgerType is the type name of the ledger backend.
const LedgerType = "test-ledger"

// Ledger is a backend with an external effect that tests can observe: each
// credential is a file named after its correlation id in Dir, written and
// fsynced before Mint returns, removed by Revoke. A file left in Dir is a
// credential that is still alive.
type Ledger struct {
	Dir string
	// Delay, if set, makes Mint wait after writing the file, widening the
	// window in which a crash leaves a pending lease.
	Delay time.Duration
}

// LedgerOptions are the ledger's config keys.
type LedgerOptions struct {
	Dir   string          `yaml:"dir"`
	Delay config.Duration `yaml:"delay"`
}

// NewLedger is the backends.Factory of the ledger.
func NewLedger(name string, options map[string]any, deps backends.Deps) (backends.Backend, error) {
	var o LedgerOptions
	if err := config.DecodeOptions(options, &o); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	if o.Dir == "" {
		return nil, fmt.Errorf("backend %s: dir is required", name)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	return &Ledger{Dir: o.Dir, Delay: o.Delay.D()}, nil
}

// Mint writes the credential's file.
func (l *Ledger) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	path := filepath.Join(l.Dir, req.CorrelationID)
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	_, err = fmt.Fprintf(f, "%s %s %d\n", req.AgentID, req.Role.Name, req.ExpiresAt.Unix())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if l.Delay > 0 {
		select {
		case <-time.After(l.Delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &backends.Credential{
		Handle:    req.CorrelationID,
		ExpiresAt: req.ExpiresAt,
		Data:      map[string]any{"access_token": "ledger-" + req.CorrelationID},
	}, nil
}

// Revoke removes the credential's file, by handle or, for a lease
// recovered before the handle was recorded, by correlation id.
func (l *Ledger) Revoke(ctx context.Context, ref backends.Ref) error {
	id := ref.Handle
	if id == "" {
		id = ref.CorrelationID
	}
	err := os.Remove(filepath.Join(l.Dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
