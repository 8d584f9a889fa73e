package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
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
	for _, b := range [][]byte{bucketAuditRecords, bucketAuditMeta, bucketAuditArchive} {
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
	// Records only append and never change: full pages (bbolt splits
	// at half a page by default, which suits random inserts).
	b.FillPercent = 1
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
// first), at most f.Limit (default 100, at most 1000), from the archive
// (dir) and the database as one log.
func listAudit(db *bbolt.DB, dir string, f audit.Filter) ([]audit.Record, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []audit.Record
	err := db.View(func(tx *bbolt.Tx) error {
		through, err := archivedThrough(tx)
		if err != nil {
			return err
		}
		// take decodes a record and keeps it if it matches; it says
		// whether to go on.
		var terr error
		take := func(seq uint64, v []byte) bool {
			var r audit.Record
			if err := json.Unmarshal(v, &r); err != nil {
				terr = fmt.Errorf("audit record %d: %w", seq, err)
				return false
			}
			if f.Match(&r) {
				out = append(out, r)
			}
			return len(out) < f.Limit
		}
		if f.Newest {
			if err := listHotNewest(tx, through, f.BeforeSeq, take); err != nil || terr != nil || len(out) >= f.Limit {
				return errors.Join(err, terr)
			}
			below := through + 1
			if f.BeforeSeq > 0 {
				below = min(below, f.BeforeSeq)
			}
			return errors.Join(listArchiveNewest(tx, dir, below, take), terr)
		}
		from := f.AfterSeq + 1
		if from <= through {
			more := true
			err := eachSegment(tx, from, func(seg audit.Segment) (bool, error) {
				err := audit.ScanSegment(dir, seg, from, func(seq uint64, v []byte) bool {
					more = take(seq, v)
					return more
				})
				return more && err == nil, err
			})
			if err != nil || terr != nil || !more {
				return errors.Join(err, terr)
			}
		}
		c := tx.Bucket(bucketAuditRecords).Cursor()
		for k, v := c.Seek(audit.SeqKey(max(from, through+1))); k != nil; k, v = c.Next() {
			if !take(binary.BigEndian.Uint64(k), v) {
				break
			}
		}
		return terr
	})
	return out, err
}

// listHotNewest calls take with the database's records after the archive
// (through) and below before (when set), newest first, until it returns
// false.
func listHotNewest(tx *bbolt.Tx, through, before uint64, take func(seq uint64, v []byte) bool) error {
	c := tx.Bucket(bucketAuditRecords).Cursor()
	var k, v []byte
	if before > 0 {
		if k, _ = c.Seek(audit.SeqKey(before)); k != nil {
			k, v = c.Prev()
		} else {
			k, v = c.Last()
		}
	} else {
		k, v = c.Last()
	}
	for ; k != nil && binary.BigEndian.Uint64(k) > through; k, v = c.Prev() {
		if !take(binary.BigEndian.Uint64(k), v) {
			return nil
		}
	}
	return nil
}

// listArchiveNewest calls take with the archived records below below,
// newest first, until it returns false: each segment a block of
// audit.SegmentStride records at a time, read forwards and handed back
// in reverse.
func listArchiveNewest(tx *bbolt.Tx, dir string, below uint64, take func(seq uint64, v []byte) bool) error {
	type rec struct {
		seq uint64
		v   []byte
	}
	more := true
	return eachSegmentBackwards(tx, below, func(seg audit.Segment) (bool, error) {
		end := min(seg.Last, below-1)
		for end >= seg.First && more {
			start := seg.First + (end-seg.First)/audit.SegmentStride*audit.SegmentStride
			var block []rec
			err := audit.ScanSegment(dir, seg, start, func(seq uint64, v []byte) bool {
				block = append(block, rec{seq, bytes.Clone(v)})
				return seq < end
			})
			if err != nil {
				return false, err
			}
			for i := len(block) - 1; i >= 0 && more; i-- {
				more = take(block[i].seq, block[i].v)
			}
			if start == seg.First {
				break
			}
			end = start - 1
		}
		return more, nil
	})
}

// verifyAudit walks the whole log, the archive (dir) and then the
// database, in one read transaction (see audit.VerifyChainCheckpoints).
// An archive segment that cannot be read, or whose file is not as it was
// written, breaks the chain there.
func verifyAudit(db *bbolt.DB, dir string, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	var res audit.VerifyResult
	err := db.View(func(tx *bbolt.Tx) error {
		through, err := archivedThrough(tx)
		if err != nil {
			return err
		}
		// The archive's records, pulled one at a time (each valid until
		// the next), then the database's.
		var archiveErr error
		var archiveBad uint64
		archived, stop := iter.Pull2(func(yield func([]byte, []byte) bool) {
			archiveErr = eachSegment(tx, 1, func(seg audit.Segment) (bool, error) {
				stopped := false
				err := audit.ScanSegment(dir, seg, seg.First, func(seq uint64, v []byte) bool {
					stopped = !yield(audit.SeqKey(seq), v)
					return !stopped
				})
				if err != nil && !stopped {
					archiveBad = seg.First
					return false, err
				}
				return !stopped, nil
			})
		})
		defer stop()
		c := tx.Bucket(bucketAuditRecords).Cursor()
		var k, v []byte
		inArchive := true
		res = audit.VerifyChainCheckpoints(tx.Bucket(bucketAuditMeta).Get(keyAuditHead), func() ([]byte, []byte, bool) {
			if inArchive {
				if ak, av, ok := archived(); ok {
					return ak, av, true
				}
				inArchive = false
				k, v = c.Seek(audit.SeqKey(through + 1))
			}
			if k == nil {
				return nil, nil, false
			}
			rk, rv := k, v
			k, v = c.Next()
			return rk, rv, true
		}, cps)
		if archiveErr != nil && (res.OK || res.FirstBad >= archiveBad) {
			res.OK, res.HeadSeq, res.HeadHash = false, 0, ""
			res.Problem = fmt.Sprintf("record %d: %v", archiveBad, archiveErr)
			res.FirstBad = archiveBad
		}
		return nil
	})
	return res, err
}

// ListAudit implements audit.Reader.
func (s *Store) ListAudit(ctx context.Context, f audit.Filter) ([]audit.Record, error) {
	return listAudit(s.db, s.archiveDir, f)
}

// VerifyAudit implements audit.Reader.
func (s *Store) VerifyAudit(ctx context.Context) (audit.VerifyResult, error) {
	return verifyAudit(s.db, s.archiveDir, nil)
}

// VerifyAuditCheckpoints walks the whole log in one read transaction and
// compares it with checkpoints whose signatures the caller verified (see
// audit.VerifyChainCheckpoints).
func (s *Store) VerifyAuditCheckpoints(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	return verifyAudit(s.db, s.archiveDir, cps)
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
