package bolt

import (
	"context"
	"fmt"

	"go.etcd.io/bbolt"
)

// Tamper rewrites the stored bytes of one record behind the store's back,
// as someone with write access to the file could: edit gets the record's
// stored value in bucket ("audit", "grants", "leases", ...) under key and
// returns its replacement. It exists for the tests that show valet
// detecting such changes (audit verification, grant bindings); nothing
// else calls it.
func (s *Store) Tamper(bucket string, key []byte, edit func(v []byte) []byte) error {
	return s.update(context.Background(), func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return fmt.Errorf("no bucket %q", bucket)
		}
		v := b.Get(key)
		if v == nil {
			return fmt.Errorf("no record %q in %s", key, bucket)
		}
		return b.Put(key, edit(append([]byte(nil), v...)))
	})
}
