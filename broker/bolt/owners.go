package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
)

// The owner indexes (bucketLeaseAgent, bucketLineage) find a lease by its
// agent or by an id of its lineage. Their keys start with the agent or
// lineage id, so a new lease lands on a leaf page of its own in each: put
// at mint, they dirtied two random pages per lease, and under load half of
// each commit's pages (and of its CPU) were theirs.
//
// A new lease's owner keys go instead to bucketUnindexed, keyed by the
// lease id (time-ordered, so it appends), and indexOwners moves them into
// the indexes in runs of indexRun leases, sorted by key: the leases of
// one agent since the last run share one page write. Readers of the
// owner indexes (walkOwnersNewestFirst) merge the unindexed leases in, so
// what is found does not depend on whether a run has happened; deleteLease
// removes a lease from both.
var bucketUnindexed = []byte("leases.unindexed") // id -> encodeOwners(agent, lineage ids)

// indexRun is how many unindexed leases start a run of indexOwners (one
// run reads at most maxIndexRun). Readers scan the unindexed leases, so
// this bounds their extra work as well.
const (
	indexRun    = 8192
	maxIndexRun = 4 * indexRun
)

// indexChunk is how many index keys one transaction of a run puts: the
// run's transactions share commits with the mints around them, so each
// must stay short.
const indexChunk = 512

// encodeOwners is the value of an unindexed lease: each of the agent id
// and the lineage ids as a uvarint length and the bytes.
func encodeOwners(agent string, lineage []string) []byte {
	n := binary.MaxVarintLen64 + len(agent)
	for _, id := range lineage {
		n += binary.MaxVarintLen64 + len(id)
	}
	v := make([]byte, 0, n)
	v = binary.AppendUvarint(v, uint64(len(agent)))
	v = append(v, agent...)
	for _, id := range lineage {
		v = binary.AppendUvarint(v, uint64(len(id)))
		v = append(v, id...)
	}
	return v
}

// decodeOwners calls fn with the index bucket and value of each owner key
// encoded in v: the agent first, then the lineage ids. The values alias v.
// A malformed v is an error before fn sees any key: keys read before the
// fault are not to be trusted.
func decodeOwners(v []byte, fn func(bucket, value []byte)) error {
	for rest := v; len(rest) > 0; {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) {
			return errors.New("malformed unindexed owner keys")
		}
		rest = rest[w+int(n):]
	}
	for i := 0; len(v) > 0; i++ {
		n, w := binary.Uvarint(v)
		b := bucketLineage
		if i == 0 {
			b = bucketLeaseAgent
		}
		fn(b, v[w:w+int(n)])
		v = v[w+int(n):]
	}
	return nil
}

// ownerValues calls fn with the index bucket and value of each owner key
// of l: its agent, then each lineage id; it stops at fn's first error.
func ownerValues(l *leases.Lease, fn func(bucket []byte, value string) error) error {
	if err := fn(bucketLeaseAgent, l.AgentID); err != nil {
		return err
	}
	for _, lid := range l.Lineage.IDs() {
		if err := fn(bucketLineage, lid); err != nil {
			return err
		}
	}
	return nil
}

// putOwnerKeys records the owner keys of a new lease (its agent and
// lineage ids never change) for the next run of indexOwners.
func putOwnerKeys(tx *bbolt.Tx, l *leases.Lease) error {
	u := tx.Bucket(bucketUnindexed)
	u.FillPercent = 1 // ids append
	return u.Put([]byte(l.ID), encodeOwners(l.AgentID, l.Lineage.IDs()))
}

// putOwnerIndex puts the owner keys of l into the indexes directly (the
// rebuild of the indexes when the store opens).
func putOwnerIndex(tx *bbolt.Tx, l *leases.Lease) error {
	id := []byte(l.ID)
	return ownerValues(l, func(b []byte, v string) error { return tx.Bucket(b).Put(indexKey(v, id), nil) })
}

// deleteOwnerKeys removes a lease from the owner indexes and from the
// unindexed leases, wherever it is.
func deleteOwnerKeys(tx *bbolt.Tx, l *leases.Lease) error {
	id := []byte(l.ID)
	if err := tx.Bucket(bucketUnindexed).Delete(id); err != nil {
		return err
	}
	return ownerValues(l, func(b []byte, v string) error { return tx.Bucket(b).Delete(indexKey(v, id)) })
}

// leaseIndex is the bucket a lease listing with filter f walks and the
// value whose keys it walks there: the lineage index for f.Lineage, else
// the agent index for f.AgentID, else the state index for f.State, else
// the leases themselves (no value).
func leaseIndex(f leases.Filter) (bucket []byte, value string) {
	switch {
	case f.Lineage != "":
		return bucketLineage, f.Lineage
	case f.AgentID != "":
		return bucketLeaseAgent, f.AgentID
	case f.State != "":
		return bucketLeaseState, string(f.State)
	}
	return bucketLeases, ""
}

// walkLeaseIndex calls fn with the ids in leaseIndex(f) for f's value,
// newest first, below f.Before, until fn returns false or an error.
func (s *Store) walkLeaseIndex(tx *bbolt.Tx, f leases.Filter, fn func(id []byte) (bool, error)) error {
	b, v := leaseIndex(f)
	switch {
	case bytes.Equal(b, bucketLineage) || bytes.Equal(b, bucketLeaseAgent):
		return s.walkOwnersNewestFirst(tx, b, v, f.Before, fn)
	case v != "":
		return walkNewestFirst(tx.Bucket(b), indexPrefix(v), f.Before, fn)
	default:
		return walkNewestFirst(tx.Bucket(b), nil, f.Before, fn)
	}
}

// walkOwnersNewestFirst is walkNewestFirst over the owner index bucket
// (bucketLeaseAgent or bucketLineage) for value, with the unindexed
// leases of value merged in: fn sees every lease of value once, newest
// first, below before.
func (s *Store) walkOwnersNewestFirst(tx *bbolt.Tx, bucket []byte, value, before string, fn func(id []byte) (bool, error)) error {
	pending, err := s.unindexedOf(tx, bucket, value, before)
	if err != nil {
		return err
	}
	i := len(pending) - 1
	var stop bool
	err = walkNewestFirst(tx.Bucket(bucket), indexPrefix(value), before, func(id []byte) (bool, error) {
		// The unindexed leases newer than id come first; one that is
		// in both (a run between its two transactions) comes once.
		for ; i >= 0 && bytes.Compare(pending[i], id) >= 0; i-- {
			if bytes.Equal(pending[i], id) {
				continue
			}
			more, err := fn(pending[i])
			if err != nil || !more {
				stop = true
				return false, err
			}
		}
		more, err := fn(id)
		stop = !more
		return more, err
	})
	if err != nil || stop {
		return err
	}
	for ; i >= 0; i-- {
		if more, err := fn(pending[i]); err != nil || !more {
			return err
		}
	}
	return nil
}

// unindexedOf returns the ids below before (all when before is empty) of
// the unindexed leases with value in bucket, oldest first (owner keys as
// unindexedOwners reads them).
func (s *Store) unindexedOf(tx *bbolt.Tx, bucket []byte, value, before string) ([][]byte, error) {
	u := tx.Bucket(bucketUnindexed)
	if u == nil {
		return nil, nil // a file of an older layout, opened read-only
	}
	var out [][]byte
	c := u.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if before != "" && string(k) >= before {
			break
		}
		match := false
		s.unindexedOwners(tx, k, v, "owner listing", func(b, val []byte) {
			match = match || bytes.Equal(b, bucket) && string(val) == value
		})
		if match {
			out = append(out, slices.Clone(k))
		}
	}
	return out, nil
}

// unindexedOwners calls fn with the index bucket and value of each owner
// key of the unindexed lease id, whose value in bucketUnindexed is v: as v
// encodes them, or, when v cannot be decoded, as the lease itself says. A
// lease that cannot be read either is reported (in where) and fn is not
// called.
func (s *Store) unindexedOwners(tx *bbolt.Tx, id, v []byte, where string, fn func(bucket, value []byte)) {
	decodeErr := decodeOwners(v, fn)
	if decodeErr == nil {
		return
	}
	l, err := getLease(tx, string(id))
	if err != nil {
		s.ReportSkipped(where, string(id), errors.Join(decodeErr, err))
		return
	}
	_ = ownerValues(l, func(b []byte, val string) error { fn(b, []byte(val)); return nil })
}

// ownerPut is one key a run of indexOwners puts: key in bucket, for the
// lease id.
type ownerPut struct {
	bucket, key, id []byte
}

// noteUnindexed counts n new unindexed leases and starts a run of
// indexOwners in the background when there are indexRun of them and no
// run is under way.
func (s *Store) noteUnindexed(n int) {
	if s.unindexed.Add(int64(n)) < int64(s.indexRun) || !s.indexing.CompareAndSwap(false, true) {
		return
	}
	// A lease committed just before Close may be counted after it: once
	// the committer is closed, Close may be waiting for bg or done with
	// the file, so no run starts.
	if !s.c.ifOpen(func() { s.bg.Add(1) }) {
		s.indexing.Store(false)
		return
	}
	go func() {
		defer s.bg.Done()
		defer s.indexing.Store(false)
		for s.unindexed.Load() >= int64(s.indexRun) {
			n, err := s.indexOwners(context.Background())
			if err != nil {
				if !errors.Is(err, errClosed) {
					s.log.Error("index leases by agent and lineage", "error", err)
				}
				return
			}
			if n == 0 {
				// The count was high: leases pruned before a run
				// leave the unindexed ones uncounted.
				s.unindexed.Store(0)
				return
			}
		}
	}()
}

// indexOwners moves up to maxIndexRun unindexed leases into the owner
// indexes and returns how many it moved: it reads them, sorts their keys,
// puts them in transactions of indexChunk keys (each skipping the leases deleted since the read), then
// removes the leases from the unindexed ones. A crash in between leaves
// keys in both places, which readers and the next run take as one.
func (s *Store) indexOwners(ctx context.Context) (int, error) {
	var puts []ownerPut
	var ids [][]byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketUnindexed).Cursor()
		for k, v := c.First(); k != nil && len(ids) < maxIndexRun; k, v = c.Next() {
			id := slices.Clone(k)
			ids = append(ids, id)
			s.unindexedOwners(tx, id, v, "indexing", func(b, val []byte) {
				puts = append(puts, ownerPut{bucket: b, key: indexKey(string(val), id), id: id})
			})
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	slices.SortFunc(puts, func(a, b ownerPut) int {
		if c := bytes.Compare(a.bucket, b.bucket); c != 0 {
			return c
		}
		return bytes.Compare(a.key, b.key)
	})
	for chunk := range slices.Chunk(puts, indexChunk) {
		err := s.update(ctx, func(tx *bbolt.Tx) error {
			u := tx.Bucket(bucketUnindexed)
			for _, p := range chunk {
				if u.Get(p.id) == nil {
					continue // deleted (pruned) since the read
				}
				if err := tx.Bucket(p.bucket).Put(p.key, nil); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	for chunk := range slices.Chunk(ids, indexChunk) {
		err := s.update(ctx, func(tx *bbolt.Tx) error {
			u := tx.Bucket(bucketUnindexed)
			for _, id := range chunk {
				if err := u.Delete(id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	s.unindexed.Add(-int64(len(ids)))
	return len(ids), nil
}

// countUnindexed reads how many leases are unindexed (when the store opens).
func countUnindexed(db *bbolt.DB) (int64, error) {
	var n int64
	err := db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketUnindexed); b != nil {
			n = int64(b.Stats().KeyN)
		}
		return nil
	})
	return n, err
}
