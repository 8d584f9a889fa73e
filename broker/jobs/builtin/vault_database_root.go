package builtin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/config"
)

// DatabaseRootSettings are the settings of vault-database-root-rotation.
type DatabaseRootSettings struct {
	// Backend is the vault backend whose Vault holds the connections
	// (default: the only vault backend).
	Backend string `yaml:"backend"`
	// Mount is the path of the database secrets engine (default
	// database).
	Mount string `yaml:"mount"`
	// Connections are the names of the connections whose root credential
	// rotates (<mount>/config/<name>); at least one.
	Connections []string `yaml:"connections"`
}

// SetDefaults sets mount database.
func (s *DatabaseRootSettings) SetDefaults() { s.Mount = "database" }

var (
	vaultMountPattern = regexp.MustCompile(`^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$`)
	vaultNamePattern  = regexp.MustCompile(`^[A-Za-z0-9_.\-]+$`)
)

// Validate checks the mount and the connections; field is the job's key
// path.
func (s *DatabaseRootSettings) Validate(field string) error {
	var errs []error
	if !vaultMountPattern.MatchString(s.Mount) {
		errs = append(errs, fmt.Errorf("%s.mount %q must be the path of Vault's database secrets engine, such as database", field, s.Mount))
	}
	if len(s.Connections) == 0 {
		errs = append(errs, fmt.Errorf("%s.connections must name at least one connection of the database secrets engine (<mount>/config/<name>)", field))
	}
	seen := map[string]bool{}
	for i, c := range s.Connections {
		switch {
		case !vaultNamePattern.MatchString(c):
			errs = append(errs, fmt.Errorf("%s.connections[%d] %q must be the name of a connection (letters, digits, '.', '_', '-')", field, i, c))
		case seen[c]:
			errs = append(errs, fmt.Errorf("%s.connections[%d] %q is named twice", field, i, c))
		}
		seen[c] = true
	}
	return errors.Join(errs...)
}

func vaultDatabaseRootRotation() Definition {
	return Definition{
		Description: "Has Vault replace the root password of each configured database connection with one only Vault knows (<mount>/rotate-root/<connection>)",
		Schedule:    "@weekly", Timeout: time.Minute,
		Settings: func() any { s := config.Defaulted[DatabaseRootSettings](nil); return &s },
		Build: func(settings any, deps Deps) (jobs.Job, error) {
			s := settings.(*DatabaseRootSettings)
			rotators, _ := selectBackends[backends.DatabaseRootRotator](deps.Backends, nil, "")
			name := s.Backend
			switch {
			case name != "":
				if _, ok := rotators[name]; !ok {
					return nil, fmt.Errorf("backend %q is not a configured backend of type vault", name)
				}
			case len(rotators) == 1:
				name = slices.Collect(maps.Keys(rotators))[0]
			default:
				return nil, fmt.Errorf("backend must name the vault backend whose Vault holds the connections (%d vault backends are configured)", len(rotators))
			}
			return &databaseRootJob{backend: name, rotator: rotators[name], mount: s.Mount, connections: s.Connections}, nil
		},
	}
}

// databaseRootJob rotates the root credentials of its connections.
type databaseRootJob struct {
	backend     string
	rotator     backends.DatabaseRootRotator
	mount       string
	connections []string
}

// Run rotates each connection's root credential in turn; one that fails
// does not stop the others. Changes name each connection and whether its
// root credential rotated; the new password stays in Vault.
func (j *databaseRootJob) Run(ctx context.Context, now time.Time) (jobs.Result, error) {
	ch := map[string]string{"backend": j.backend, "mount": j.mount}
	var errs []error
	for _, c := range j.connections {
		if err := ctx.Err(); err != nil {
			return jobs.Result{Changes: ch}, err
		}
		if err := j.rotator.RotateDatabaseRoot(ctx, j.mount, c); err != nil {
			ch[c] = "failed"
			errs = append(errs, fmt.Errorf("connection %s: %w", c, err))
			continue
		}
		ch[c] = "rotated"
	}
	return jobs.Result{Changes: ch}, errors.Join(errs...)
}
