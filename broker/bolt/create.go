package bolt

import (
	"context"
	"fmt"
	"time"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// CreateActive records a new active lease and its audit record in one
// transaction. It is for credentials minted without any effect outside
// valet (a locally signed token): a crash before this commit loses only a
// credential nobody received, so no pending intent is needed.
func (s *Store) CreateActive(ctx context.Context, l *leases.Lease, now time.Time, e audit.Entry) error {
	if l.State != leases.StateActive {
		return fmt.Errorf("create active lease: state must be active")
	}
	return s.create(ctx, l, now, &e)
}
