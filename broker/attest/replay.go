package attest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/clock"
)

// ReplayCache remembers consumed jti values until the token expires.
type ReplayCache interface {
	// Consume records key until exp; it returns ErrReplay if key was
	// already consumed and has not expired. Must be atomic (check-and-set
	// in one transaction). Any other error means the cache could not
	// answer, and the verification fails as unavailable.
	Consume(ctx context.Context, key string, exp time.Time) error
}

// ErrReplay is returned by ReplayCache.Consume for a key that was already
// consumed and has not expired.
var ErrReplay = errors.New("attestation was already used (jti replay)")

// Bucket layout of BoltReplayCache: under replayBucket, replayKeys maps a key
// to its expiry, and replayExpiry holds expiry||key with no value, ordered by
// expiry, so Purge reads only the entries it deletes.
var (
	replayBucket = []byte("attest.jti")
	replayKeys   = []byte("keys")
	replayExpiry = []byte("expiry")
)

// BoltReplayCache is a ReplayCache in a bbolt database, so a consumed jti
// stays consumed across restarts. Keys are "<issuer-name>/<jti>". It uses
// its own bucket, "attest.jti", and may share the database with other
// stores. Expired entries stay until Purge removes them; they no longer
// count as consumed in the meantime.
type BoltReplayCache struct {
	db     *bbolt.DB
	clock  clock.Clock
	update func(context.Context, func(*bbolt.Tx) error) error
}

// UseCommitter makes Consume write through update (for example the lease
// store's group committer, leases.BoltStore.Update) instead of bbolt's
// Batch, whose 10ms gathering delay every single-use attestation would pay.
// update must run fn in a write transaction and may run it more than once.
func (c *BoltReplayCache) UseCommitter(update func(context.Context, func(*bbolt.Tx) error) error) {
	c.update = update
}

var _ ReplayCache = (*BoltReplayCache)(nil)

// NewBoltReplayCache creates the cache's buckets in db if needed. A nil clk
// means clock.Real{}. It returns the bbolt error if the buckets cannot be
// created (for example, db is read-only).
func NewBoltReplayCache(db *bbolt.DB, clk clock.Clock) (*BoltReplayCache, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(replayBucket)
		if err != nil {
			return err
		}
		if _, err := root.CreateBucketIfNotExists(replayKeys); err != nil {
			return err
		}
		_, err = root.CreateBucketIfNotExists(replayExpiry)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attest: create replay cache buckets: %w", err)
	}
	return &BoltReplayCache{db: db, clock: clk}, nil
}

// Consume records key until exp in one read-write transaction (check and
// set together). It returns ErrReplay if key is recorded with an expiry
// after now, ctx's error if ctx is done, and bbolt's error if the write
// fails. Concurrent calls are grouped into one commit with bbolt's Batch;
// bbolt re-runs a call that fails alone, so exactly one of several
// concurrent calls with the same key succeeds.
func (c *BoltReplayCache) Consume(ctx context.Context, key string, exp time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" {
		return errors.New("attest: empty replay key")
	}
	k := []byte(key)
	expSec := ceilUnix(exp)
	write := func(fn func(*bbolt.Tx) error) error { return c.db.Batch(fn) }
	if c.update != nil {
		write = func(fn func(*bbolt.Tx) error) error { return c.update(ctx, fn) }
	}
	return write(func(tx *bbolt.Tx) error {
		// Read the time inside the transaction: a batched call may run
		// well after Consume was called.
		now := c.clock.Now().Unix()
		root := tx.Bucket(replayBucket)
		keys, idx := root.Bucket(replayKeys), root.Bucket(replayExpiry)
		if old := keys.Get(k); len(old) == 8 {
			oldExp := int64(binary.BigEndian.Uint64(old))
			if now < oldExp {
				return ErrReplay
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
func (c *BoltReplayCache) Purge(now time.Time) (int, error) {
	nowSec := now.Unix()
	total := 0
	for {
		n := 0
		err := c.db.Update(func(tx *bbolt.Tx) error {
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
