package bolt

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/audit"
)

// TestGrantBatchesSurviveOneBadGrant: a grant record that cannot be read
// (garbage, or gone while its index entries stay) is skipped by the expiry
// sweep and by listing; every other grant is still expired and listed.
func TestGrantBatchesSurviveOneBadGrant(t *testing.T) {
	for _, missing := range []bool{false, true} {
		name := "garbage"
		if missing {
			name = "missing"
		}
		t.Run(name, func(t *testing.T) {
			s := newGrantStore(t)
			ctx := context.Background()
			now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
			bad, good := newGrant("test/a", now), newGrant("test/b", now.Add(time.Second))
			for _, g := range []*grants.Grant{bad, good} {
				if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
					t.Fatal(err)
				}
			}
			err := s.s.update(ctx, func(tx *bbolt.Tx) error {
				if missing {
					return tx.Bucket(bucketGrants).Delete([]byte(bad.ID))
				}
				return tx.Bucket(bucketGrants).Put([]byte(bad.ID), []byte(`{"id":`))
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []grants.Filter{{}, {State: grants.StatePending}} {
				gs, err := s.List(ctx, f)
				if err != nil || len(gs) != 1 || gs[0].ID != good.ID {
					t.Errorf("List(%+v) = %v, %v; want the good grant", f, gs, err)
				}
			}
			expired, err := s.ExpireDue(ctx, now.Add(2*time.Hour))
			if err != nil || len(expired) != 1 || expired[0].ID != good.ID {
				t.Fatalf("ExpireDue = %v, %v; want the good grant expired", expired, err)
			}
		})
	}
}
