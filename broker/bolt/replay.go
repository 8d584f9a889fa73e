package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
)

// Bucket layout of ReplayCache: under replayBucket, replayKeys maps a key
// to its expiry, and replayExpiry holds expiry||key with no value, ordered by
// expiry, so Purge reads only the entries it deletes.
var (
	replayBucket = []byte("attest.jti")
	replayKeys   = []byte("keys")
	replayExpiry = []byte("expiry")
)

// ReplayCache is an attest.ReplayCache in the store's file, so a consumed
// jti stays consumed across restarts. Keys are "<issuer-name>/<jti>". It
// uses its own bucket, "attest.jti", and writes through the store's group
// committer (bbolt's Batch would make every single-use attestation pay its
// 10ms gathering delay). Expired entries stay until Purge removes them;
// they no longer count as consumed in the meantime.
type ReplayCache struct {
	s     *Store
	clock clock.Clock
}

// ReplayCache returns the store's replay cache, reading the time from clk
// (nil: clock.Real{}).
func (s *Store) ReplayCache(clk clock.Clock) *ReplayCache {
	if clk == nil {
		clk = clock.Real{}
	}
	return &ReplayCache{s: s, clock: clk}
}

// initReplay creates the cache's buckets.
func initReplay(tx *bbolt.Tx) error {
	root, err := tx.CreateBucketIfNotExists(replayBucket)
	if err == nil {
		if _, err = root.CreateBucketIfNotExists(replayKeys); err == nil {
			_, err = root.CreateBucketIfNotExists(replayExpiry)
		}
	}
	if err != nil {
		return fmt.Errorf("attest: create replay cache buckets: %w", err)
	}
	return nil
}

// Consume records key until exp in one read-write transaction (check and
// set together). It returns ErrReplay if key is recorded with an expiry
// after now (attest.ErrReplay), ctx's error if ctx is done, and bbolt's
// error if the write fails. Concurrent calls share commits; the committer
// re-runs the others without a call that fails, so exactly one of several
// concurrent calls with the same key succeeds.
func (c *ReplayCache) Consume(ctx context.Context, key string, exp time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" {
		return errors.New("attest: empty replay key")
	}
	k := []byte(key)
	expSec := ceilUnix(exp)
	return c.s.update(ctx, func(tx *bbolt.Tx) error {
		// Read the time inside the transaction: a batched call may run
		// well after Consume was called.
		now := c.clock.Now().Unix()
		root := tx.Bucket(replayBucket)
		keys, idx := root.Bucket(replayKeys), root.Bucket(replayExpiry)
		if old := keys.Get(k); len(old) == 8 {
			oldExp := int64(binary.BigEndian.Uint64(old))
			if now < oldExp {
				return attest.ErrReplay
			}
			if err := idx.Delete(expiryKey(oldExp, k)); err != nil {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(expSec))
		if err := keys.Put(k, v[:]); err != nil {
			return err
		}
		return idx.Put(expiryKey(expSec, k), nil)
	})
}

// purgeChunk bounds one purge transaction, so a large backlog does not hold
// the write lock (and block every Consume) for long.
const purgeChunk = 1000

// Purge deletes the entries whose expiry is at or before now and returns how
// many it deleted. It walks the expiry index from the oldest entry and stops
// at the first one still valid, so its cost is proportional to what it
// deletes, not to the size of the cache. It returns bbolt's error if a
// transaction fails; entries deleted before that stay deleted.
func (c *ReplayCache) Purge(now time.Time) (int, error) {
	nowSec := now.Unix()
	total := 0
	for {
		n := 0
		err := c.s.db.Update(func(tx *bbolt.Tx) error {
			root := tx.Bucket(replayBucket)
			keys, idx := root.Bucket(replayKeys), root.Bucket(replayExpiry)
			var doomed [][]byte
			cur := idx.Cursor()
			for ik, _ := cur.First(); ik != nil && len(doomed) < purgeChunk; ik, _ = cur.Next() {
				if len(ik) < 8 {
					// Not an index entry valet writes: drop it rather
					// than stop every purge behind it.
					doomed = append(doomed, bytes.Clone(ik))
					continue
				}
				if int64(binary.BigEndian.Uint64(ik[:8])) > nowSec {
					break
				}
				// Copy: bbolt's slices are only valid in the transaction,
				// and deleting while iterating can skip entries.
				doomed = append(doomed, bytes.Clone(ik))
			}
			for _, ik := range doomed {
				if len(ik) < 8 {
					if err := idx.Delete(ik); err != nil {
						return err
					}
					continue
				}
				k := ik[8:]
				// Delete the key only if this index entry is its current
				// expiry (Consume replaces expired entries).
				if v := keys.Get(k); bytes.Equal(v, ik[:8]) {
					if err := keys.Delete(k); err != nil {
						return err
					}
				}
				if err := idx.Delete(ik); err != nil {
					return err
				}
			}
			n = len(doomed)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < purgeChunk {
			return total, nil
		}
	}
}

// ceilUnix rounds t up to whole seconds, so an entry never expires before
// the token does.
func ceilUnix(t time.Time) int64 {
	s := t.Unix()
	if t.Nanosecond() > 0 {
		s++
	}
	if s < 0 {
		s = 0
	}
	return s
}

func expiryKey(expSec int64, key []byte) []byte {
	b := make([]byte, 8+len(key))
	binary.BigEndian.PutUint64(b, uint64(expSec))
	copy(b[8:], key)
	return b
}
