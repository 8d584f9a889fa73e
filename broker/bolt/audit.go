package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
)

// The audit log's buckets: records under audit.SeqKey(seq), and the head.
var (
	bucketAuditRecords = []byte("audit")
	bucketAuditMeta    = []byte("audit.meta")
	keyAuditHead       = []byte("head")
)

// initAudit creates the audit buckets, in the transaction that creates the
// database's other buckets.
func initAudit(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketAuditRecords, bucketAuditMeta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// appendAudit appends entries to the log inside tx, chained to the current
// head, and returns the records. The records are durable exactly when tx
// commits. sink, if non-nil, receives them after a successful commit.
func appendAudit(tx *bbolt.Tx, now time.Time, sink audit.Sink, entries ...audit.Entry) ([]audit.Record, error) {
	meta := tx.Bucket(bucketAuditMeta)
	h, err := audit.ParseHead(meta.Get(keyAuditHead))
	if err != nil {
		return nil, err
	}
	recs, stored, h, err := audit.Chain(h, now, entries...)
	if err != nil {
		return nil, err
	}
	b := tx.Bucket(bucketAuditRecords)
	for i, r := range recs {
		if err := b.Put(audit.SeqKey(r.Seq), stored[i]); err != nil {
			return nil, err
		}
	}
	if err := meta.Put(keyAuditHead, h.Bytes()); err != nil {
		return nil, err
	}
	if sink != nil {
		tx.OnCommit(func() { sink.Write(recs) })
	}
	return recs, nil
}

// listAudit returns records matching f, in sequence order (or newest
// first), at most f.Limit (default 100, at most 1000).
func listAudit(db *bbolt.DB, f audit.Filter) ([]audit.Record, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []audit.Record
	err := db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAuditRecords).Cursor()
		var k, v []byte
		next := c.Next
		if f.Newest {
			next = c.Prev
			if f.BeforeSeq > 0 {
				if k, _ = c.Seek(audit.SeqKey(f.BeforeSeq)); k != nil {
					k, v = c.Prev()
				} else {
					k, v = c.Last()
				}
			} else {
				k, v = c.Last()
			}
		} else {
			k, v = c.Seek(audit.SeqKey(f.AfterSeq + 1))
		}
		for ; k != nil && len(out) < f.Limit; k, v = next() {
			var r audit.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("audit record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if f.Match(&r) {
				out = append(out, r)
			}
		}
		return nil
	})
	return out, err
}

// verifyAudit walks the whole log in one read transaction (see
// audit.VerifyChain).
func verifyAudit(db *bbolt.DB, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	var res audit.VerifyResult
	err := db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAuditRecords).Cursor()
		k, v := c.First()
		res = audit.VerifyChainCheckpoints(tx.Bucket(bucketAuditMeta).Get(keyAuditHead), func() ([]byte, []byte, bool) {
			if k == nil {
				return nil, nil, false
			}
			rk, rv := k, v
			k, v = c.Next()
			return rk, rv, true
		}, cps)
		return nil
	})
	return res, err
}

// ListAudit implements audit.Reader.
func (s *Store) ListAudit(ctx context.Context, f audit.Filter) ([]audit.Record, error) {
	return listAudit(s.db, f)
}

// VerifyAudit implements audit.Reader.
func (s *Store) VerifyAudit(ctx context.Context) (audit.VerifyResult, error) {
	return verifyAudit(s.db, nil)
}

// VerifyAuditCheckpoints walks the whole log in one read transaction and
// compares it with checkpoints whose signatures the caller verified (see
// audit.VerifyChainCheckpoints).
func (s *Store) VerifyAuditCheckpoints(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	return verifyAudit(s.db, cps)
}

// AuditHead returns the log's head as committed (the sequence and hash of
// its last record).
func (s *Store) AuditHead(ctx context.Context) (audit.Head, error) {
	var h audit.Head
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		h, err = audit.ParseHead(tx.Bucket(bucketAuditMeta).Get(keyAuditHead))
		return err
	})
	return h, err
}
