package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
)

// The audit archive (leases/audit's segments) under the data directory:
// bucketAuditArchive describes each sealed segment, keyed by its first
// record's sequence. Records up to the last segment's end live in the
// archive; the audit bucket holds the ones after it (and, until a pass
// has deleted them, some it archived already, which readers skip).
var bucketAuditArchive = []byte("audit.archive") // SeqKey(first) -> JSON audit.Segment

// archiveDeleteChunk bounds the archived records one transaction deletes
// from the database.
const archiveDeleteChunk = 2000

// lastSegment returns the archive's last segment, if there is one.
func lastSegment(tx *bbolt.Tx) (audit.Segment, bool, error) {
	b := tx.Bucket(bucketAuditArchive)
	if b == nil {
		return audit.Segment{}, false, nil // a read-only file of a version without an archive
	}
	_, v := b.Cursor().Last()
	if v == nil {
		return audit.Segment{}, false, nil
	}
	var seg audit.Segment
	if err := json.Unmarshal(v, &seg); err != nil {
		return seg, false, fmt.Errorf("audit archive: %w", err)
	}
	return seg, true, nil
}

// archivedThrough is the last archived record's sequence (0: none).
func archivedThrough(tx *bbolt.Tx) (uint64, error) {
	seg, ok, err := lastSegment(tx)
	if !ok {
		return 0, err
	}
	return seg.Last, nil
}

// eachSegment calls fn with the archive's segments in order, from the one
// holding record from, until fn returns false or an error.
func eachSegment(tx *bbolt.Tx, from uint64, fn func(seg audit.Segment) (bool, error)) error {
	b := tx.Bucket(bucketAuditArchive)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Seek(audit.SeqKey(from))
	if k == nil || binary.BigEndian.Uint64(k) > from {
		// The segment holding from starts before it.
		if pk, pv := c.Prev(); pk != nil {
			k, v = pk, pv
		} else if k == nil {
			return nil
		}
	}
	for ; k != nil; k, v = c.Next() {
		var seg audit.Segment
		if err := json.Unmarshal(v, &seg); err != nil {
			return fmt.Errorf("audit archive: segment at %d: %w", binary.BigEndian.Uint64(k), err)
		}
		if seg.Last < from {
			continue
		}
		if more, err := fn(seg); err != nil || !more {
			return err
		}
	}
	return nil
}

// eachSegmentBackwards calls fn with the archive's segments in reverse
// order, from the one holding record below (or the last), until fn
// returns false or an error.
func eachSegmentBackwards(tx *bbolt.Tx, below uint64, fn func(seg audit.Segment) (bool, error)) error {
	b := tx.Bucket(bucketAuditArchive)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Seek(audit.SeqKey(below))
	if k == nil {
		k, v = c.Last()
	} else if binary.BigEndian.Uint64(k) >= below {
		k, v = c.Prev()
	}
	for ; k != nil; k, v = c.Prev() {
		var seg audit.Segment
		if err := json.Unmarshal(v, &seg); err != nil {
			return fmt.Errorf("audit archive: segment at %d: %w", binary.BigEndian.Uint64(k), err)
		}
		if more, err := fn(seg); err != nil || !more {
			return err
		}
	}
	return nil
}

// ArchiveAudit moves the audit records whose time is before before out of
// the database into sealed segments of the archive (leases/audit), oldest
// first and without gaps, in segments of at most audit.MaxSegmentRecords,
// until a record at or after before, the log's end or ctx's end. Each
// segment is durable before the database records it; its records are then
// deleted from the database in transactions of archiveDeleteChunk (a pass
// interrupted in between deletes them at its next run; readers skip them
// meanwhile). It returns what it archived. Readers see one log throughout:
// ListAudit and VerifyAudit read the archive, then the database.
func (s *Store) ArchiveAudit(ctx context.Context, before time.Time) (audit.Archived, error) {
	var res audit.Archived
	if err := s.deleteArchived(ctx); err != nil {
		return res, err
	}
	// A pass that stopped between sealing a segment and recording it left
	// the file: the records are archived again below, perhaps cut
	// elsewhere, so the file goes.
	var through uint64
	if err := s.db.View(func(tx *bbolt.Tx) (err error) { through, err = archivedThrough(tx); return err }); err != nil {
		return res, err
	}
	if _, err := audit.RemoveUnrecorded(s.archiveDir, through); err != nil {
		return res, err
	}
	for ctx.Err() == nil {
		seg, through, err := s.writeSegment(before)
		res.Through = through
		if err != nil || seg == nil {
			return res, err
		}
		from := seg.First
		v, err := json.Marshal(seg)
		if err != nil {
			return res, err
		}
		err = s.update(ctx, func(tx *bbolt.Tx) error {
			// Compare-and-swap: the archive still ends where this
			// segment begins.
			if through, err := archivedThrough(tx); err != nil || through != from-1 {
				return errors.Join(err, fmt.Errorf("audit archive: it moved to record %d while the segment from %d was written", through, from))
			}
			return tx.Bucket(bucketAuditArchive).Put(audit.SeqKey(seg.First), v)
		})
		if err != nil {
			return res, err
		}
		res.Records += int(seg.Last - seg.First + 1)
		res.Segments++
		res.Through = seg.Last
		if err := s.deleteArchived(ctx); err != nil {
			return res, err
		}
	}
	return res, ctx.Err()
}

// writeSegment writes the archive's next segment: the records after the
// archive's end (through, which it returns) whose time is before before,
// at most s.segmentRecords of them. It reads them audit.SegmentStride at a
// time, each chunk in a read transaction of its own, into an
// audit.SegmentWriter, so that memory holds the writer's buffer, not the
// segment (records only append, and only this job moves the archive's
// end, so the chunks read one log). The segment is nil when no record is
// to be archived.
func (s *Store) writeSegment(before time.Time) (seg *audit.Segment, through uint64, err error) {
	var sw *audit.SegmentWriter
	var lastHash string
	var next uint64 // the next record to read; 0 until the first chunk
	for done := false; !done; {
		err = s.db.View(func(tx *bbolt.Tx) error {
			if next == 0 {
				t, err := archivedThrough(tx)
				if err != nil {
					return err
				}
				through, next = t, t+1
			}
			c := tx.Bucket(bucketAuditRecords).Cursor()
			k, v := c.Seek(audit.SeqKey(next))
			for n := 0; n < audit.SegmentStride; k, v = c.Next() {
				if k == nil || sw != nil && sw.Len() >= s.segmentRecords {
					done = true
					return nil
				}
				if seq := binary.BigEndian.Uint64(k); seq != next {
					return fmt.Errorf("audit record %d is missing (the next is %d); the log is not archived past it", next, seq)
				}
				var r struct {
					Time time.Time `json:"time"`
					Hash string    `json:"hash"`
				}
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("audit record %d: %w", next, err)
				}
				if !r.Time.Before(before) {
					done = true
					return nil
				}
				if sw == nil {
					var err error
					if sw, err = audit.NewSegmentWriter(s.archiveDir, next); err != nil {
						return err
					}
				}
				if err := sw.Add(v); err != nil {
					return err
				}
				lastHash = r.Hash
				next++
				n++
			}
			return nil
		})
		if err != nil {
			if sw != nil {
				sw.Abort()
			}
			return nil, through, err
		}
	}
	if sw == nil {
		return nil, through, nil
	}
	sealed, err := sw.Seal(lastHash)
	if err != nil {
		return nil, through, err
	}
	return &sealed, through, nil
}

// deleteArchived deletes from the database the records the archive
// holds, archiveDeleteChunk per transaction.
func (s *Store) deleteArchived(ctx context.Context) error {
	for {
		n := 0
		err := s.update(ctx, func(tx *bbolt.Tx) error {
			n = 0
			through, err := archivedThrough(tx)
			if err != nil || through == 0 {
				return err
			}
			b := tx.Bucket(bucketAuditRecords)
			c := b.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= through && n < archiveDeleteChunk; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || n < archiveDeleteChunk {
			return err
		}
	}
}
