package leases

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/audit"
)

// CreateActive records a new active lease and its audit record in one
// transaction. It is for credentials minted without any effect outside
// valet (a locally signed token): a crash before this commit loses only a
// credential nobody received, so no pending intent is needed.
func (s *BoltStore) CreateActive(ctx context.Context, l *Lease, now time.Time, e audit.Entry) error {
	if l.State != StateActive || l.ID == "" {
		return fmt.Errorf("create active lease: need an id and state active")
	}
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return s.Update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketLeases).Get([]byte(l.ID)) != nil {
			return fmt.Errorf("lease %s already exists", l.ID)
		}
		if err := putLeaseEncoded(tx, nil, l, v); err != nil {
			return err
		}
		_, err := audit.AppendTx(tx, now, s.sink, e)
		return err
	})
}
