// Package builtin holds valet's scheduled jobs and the one registry of
// them: a name to definition map, built explicitly here (nothing
// registers itself). Each job is one file: its settings (a struct with
// SetDefaults and Validate), its definition (name, default schedule,
// timeout) and its Job.
//
// Adding a job: write <job>.go with a settings type, a Definition
// (Settings returns the defaulted settings, Build makes the jobs.Job from
// them and Deps) and the Job; add it to Registry and to order; add its
// numeric and duration settings to configKeys in cmd/valet/config_test.go;
// document it in the README's "Scheduled jobs" section. If it needs a
// dependency Deps does not carry, add the field and set it in
// cmd/valet/server.go.
package builtin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Definition is one of valet's jobs.
type Definition struct {
	Description string
	// Schedule, Timeout, Jitter and RunOnStart are the defaults of the
	// job's common keys.
	Schedule   string
	Timeout    time.Duration
	Jitter     time.Duration
	RunOnStart bool
	// RunAtShutdown runs the job once more when valet stops cleanly.
	RunAtShutdown bool
	// Default makes the job run without an entry in the jobs section.
	Default bool
	// Settings returns the job's settings with their defaults set: a
	// pointer to a struct the job's keys decode into strictly. If it has
	// a Validate(field string) error method, it is called after decoding.
	Settings func() any
	// Build makes the job from its decoded settings.
	Build func(settings any, deps Deps) (jobs.Job, error)
}

// Deps are what valet's jobs may use; cmd/valet sets them.
type Deps struct {
	Broker   *broker.Broker
	Backends map[string]backends.Backend
	// Audit reads the log's head and writes nothing (the scheduler writes
	// a run's records).
	Audit AuditHead
	// Storage reports the database file's size and free pages
	// (housekeeping).
	Storage StorageStats
	// Archive moves old audit records out of the database (audit-archive).
	Archive AuditArchiver
	// DataDir, KEK and PublicURL are the server's (keys under the KEK
	// live under DataDir). PreviousKEK is set only while valet switches
	// to a new KEK: it still opens what it sealed (see kek-rotation).
	DataDir     string
	KEK         []byte
	PreviousKEK []byte
	PublicURL   string
	// Sealed are the keepers of values sealed under the KEK that are
	// neither a backend nor the checkpoint key (valet's SSF transmitter
	// key: broker/ssf.RewrapKey); kek-rotation re-wraps them after those.
	Sealed []SealedFile
	// Stdout is where the stdout witness writes (os.Stdout).
	Stdout io.Writer
	Clock  clock.Clock
	Logger *slog.Logger
}

// SealedFile is a keeper of values sealed under the KEK: Name names it in
// the kek-rotation job's changes; Rewrap seals again under ring.Current
// what only ring.Previous opens (kek.RewrapFile).
type SealedFile struct {
	Name   string
	Rewrap func(ring kek.Ring) (kek.Report, error)
}

// ring is the KEKs of deps.
func (d Deps) ring() kek.Ring { return kek.Ring{Current: d.KEK, Previous: d.PreviousKEK} }

// AuditHead reads where the audit log ends (broker/bolt's Store).
type AuditHead interface {
	AuditHead(ctx context.Context) (audit.Head, error)
}

// AuditArchiver moves the audit records whose time is before before out
// of the database into the archive, without a gap, and says what it moved
// (broker/bolt's Store.ArchiveAudit). The log's readers see the archive
// and the database as one log.
type AuditArchiver interface {
	ArchiveAudit(ctx context.Context, before time.Time) (audit.Archived, error)
}

// StorageStats reports the database file (broker/bolt's Store.Stats).
type StorageStats interface {
	// StorageStats returns the file's size in bytes and its free pages.
	StorageStats() (sizeBytes int64, freePages int, err error)
}

// Job names.
const (
	SigningKeyRotation = "signing-key-rotation"
	AuditCheckpoint    = "audit-checkpoint"
	GrantExpiry        = "grant-expiry"
	Housekeeping       = "housekeeping"
	AuditArchive       = "audit-archive"
	QuarantineRelease  = "quarantine-release"
	KEKRotation        = "kek-rotation"
	VaultSecretID      = "vault-secret-id-rotation"
	VaultTokenHealth   = "vault-token-health"
	VaultDatabaseRoot  = "vault-database-root-rotation"
)

// order is the order of the default jobs.
var order = []string{SigningKeyRotation, AuditCheckpoint, GrantExpiry, Housekeeping, AuditArchive, QuarantineRelease, KEKRotation,
	VaultSecretID, VaultTokenHealth, VaultDatabaseRoot}

// Registry returns valet's jobs by name.
func Registry() map[string]Definition {
	return map[string]Definition{
		SigningKeyRotation: signingKeyRotation(),
		AuditCheckpoint:    auditCheckpoint(),
		GrantExpiry:        grantExpiry(),
		Housekeeping:       housekeeping(),
		AuditArchive:       auditArchive(),
		QuarantineRelease:  quarantineRelease(),
		KEKRotation:        kekRotation(),
		VaultSecretID:      vaultSecretIDRotation(),
		VaultTokenHealth:   vaultTokenHealth(),
		VaultDatabaseRoot:  vaultDatabaseRootRotation(),
	}
}

// Resolve checks the jobs section and returns the jobs it turns on, each
// error naming its key path ("jobs[1].prepublish must be ...").
func Resolve(specs []jobs.Spec) ([]jobs.Resolved, error) {
	reg := Registry()
	kinds := map[string]jobs.Kind{}
	for name, d := range reg {
		kinds[name] = jobs.Kind{Description: d.Description, Schedule: d.Schedule, Timeout: d.Timeout, Jitter: d.Jitter,
			RunOnStart: d.RunOnStart, Default: d.Default, CheckSettings: checker(d)}
	}
	return jobs.Resolve(specs, kinds, order)
}

// Settings returns the decoded settings of a resolved job (for tests and
// for the configuration's cross-section checks).
func Settings(r jobs.Resolved) (any, error) {
	d, ok := Registry()[r.Type]
	if !ok {
		return nil, fmt.Errorf("no job %q", r.Type)
	}
	return decode(d, r.Field, r.Settings)
}

func checker(d Definition) func(field string, settings map[string]any) error {
	if d.Settings == nil {
		return nil
	}
	return func(field string, settings map[string]any) error {
		_, err := decode(d, field, settings)
		return err
	}
}

// decode decodes settings on top of the job's defaults, strictly, and
// validates them; errors name the key path under field.
func decode(d Definition, field string, settings map[string]any) (any, error) {
	if d.Settings == nil {
		return nil, nil
	}
	v := d.Settings()
	if field == "" {
		field = "jobs[]"
	}
	if err := config.DecodeOptions(settings, v); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if val, ok := v.(interface{ Validate(field string) error }); ok {
		if err := val.Validate(field); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Build makes the scheduler's entries of the resolved jobs.
func Build(resolved []jobs.Resolved, deps Deps) ([]jobs.Entry, error) {
	if deps.Clock == nil {
		deps.Clock = clock.Real{}
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	reg := Registry()
	var out []jobs.Entry
	var errs []error
	for _, r := range resolved {
		d := reg[r.Type]
		settings, err := decode(d, r.Field, r.Settings)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		job, err := d.Build(settings, deps)
		if err != nil {
			errs = append(errs, fmt.Errorf("job %s: %w", r.Name, err))
			continue
		}
		out = append(out, jobs.Entry{Name: r.Name, Type: r.Type, Description: d.Description, Schedule: r.Schedule, Parsed: r.Parsed,
			Jitter: r.Jitter, Timeout: r.Timeout, RunOnStart: r.RunOnStart, RunAtShutdown: d.RunAtShutdown, Job: job})
	}
	return out, errors.Join(errs...)
}

// selectBackends returns the configured backends that implement T: those
// named in names, or every one when names is empty. A name that is not
// such a backend is an error naming its index in the job's backends key;
// what says what such a backend has ("with signing keys of its own").
func selectBackends[T any](all map[string]backends.Backend, names []string, what string) (map[string]T, error) {
	out := map[string]T{}
	for name, be := range all {
		if c, ok := be.(T); ok && (len(names) == 0 || slices.Contains(names, name)) {
			out[name] = c
		}
	}
	for i, name := range names {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("backends[%d] %q is not a configured backend %s", i, name, what)
		}
	}
	return out, nil
}
