package bolt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Index keys shared by the lease and grant buckets.

// indexKey is the key of id under value in an index bucket: the length of
// value as a uvarint, value, then id. Values come from outside valet (an
// agent id holds the attestation's subject, a lineage id its jti), so no
// byte can be reserved as a separator; with the length in front, the keys
// of one value never start with indexPrefix of another (uvarints are a
// prefix code), whatever bytes either holds.
func indexKey(value string, id []byte) []byte {
	k := indexPrefix(value)
	return append(k, id...)
}

// indexPrefix is the part of indexKey before the id: an index scan for
// value walks the keys that start with it.
func indexPrefix(value string) []byte {
	k := make([]byte, 0, binary.MaxVarintLen64+len(value)+26)
	k = binary.AppendUvarint(k, uint64(len(value)))
	return append(k, value...)
}

// walkNewestFirst calls fn with the ids of a bucket whose keys are prefix
// followed by a time-ordered id (an index, or with a nil prefix a primary
// bucket keyed by id), newest first, starting below the id before (from the
// newest when before is empty), until fn returns false or an error.
func walkNewestFirst(b *bbolt.Bucket, prefix []byte, before string, fn func(id []byte) (bool, error)) error {
	c := b.Cursor()
	start := append(append([]byte{}, prefix...), 0xff)
	if before != "" {
		start = append(append([]byte{}, prefix...), before...)
	}
	k, _ := c.Seek(start)
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
		more, err := fn(k[len(prefix):])
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// indexLayout is the version of the index key layout (indexKey) that
// migrateIndexes records for the grants. The leases record leaseLayout.
const indexLayout = 2

// leaseLayout is indexLayout with the unindexed leases (owners.go): a
// lease's agent and lineage keys may wait there for a run of indexOwners.
// A valet that knows only indexLayout would miss those leases, so it must
// refuse such a file (migrateIndexes' "newer" error).
const leaseLayout = 3

// layoutKey is the key of the layout version in a store's meta bucket. It
// is absent in databases written before indexKey, when index keys were
// value 0x00 id.
var layoutKey = []byte("layout")

// migrateIndexes rebuilds the index buckets indexes of a store when its
// meta bucket does not record layout: it empties them and calls
// reindex with each value of the records bucket, which puts that record's
// index keys back; then it records the layout. It runs inside the
// transaction that opens the store, so a database is migrated whole or not
// at all. A layout newer than layout is an error: an older valet must not
// rewrite a newer one's indexes.
func migrateIndexes(tx *bbolt.Tx, meta, records []byte, layout byte, indexes [][]byte, reindex func(v []byte) error) error {
	m := tx.Bucket(meta)
	if v := m.Get(layoutKey); len(v) == 1 && v[0] == layout {
		return nil
	} else if len(v) == 1 && v[0] > layout || len(v) > 1 {
		return fmt.Errorf("%s: index layout %v is newer than this valet knows (%d)", meta, v, layout)
	}
	for _, b := range indexes {
		if err := tx.DeleteBucket(b); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	err := tx.Bucket(records).ForEach(func(k, v []byte) error {
		if err := reindex(v); err != nil {
			return fmt.Errorf("%q: %w", k, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild the indexes of %s: %w", records, err)
	}
	return m.Put(layoutKey, []byte{layout})
}

// timeKey orders by time: 8 bytes of big-endian Unix nanoseconds, then the id.
func timeKey(t time.Time, id []byte) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(max(t.UnixNano(), 0)))
	return append(k, id...)
}

func keyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}
