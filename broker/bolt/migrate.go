package bolt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/migrate"
	"github.com/valet-broker/valet/leases/audit"
)

var _ migrate.Source = (*Store)(nil)

// Export implements migrate.Source: every record of the file, read in one
// read transaction, so a store opened read-only (Options.ReadOnly) is
// exported as it is and never written. The indexes, counters and layout
// marks are not exported: they follow from the records, and the target
// builds its own. A bucket that an older valet did not have is skipped.
// The audit log is exported whole: the archive's segments, then the
// records after them in the database.
func (s *Store) Export(ctx context.Context, fn func(b *migrate.Batch) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		b := &migrate.Batch{}
		flush := func(last bool) error {
			if b.Len() < migrate.BatchSize && !last {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			out := b
			b = &migrate.Batch{}
			return fn(out)
		}
		each := func(bucket []byte, what string, add func(k, v []byte) error) error {
			bk := tx.Bucket(bucket)
			if bk == nil {
				return nil
			}
			return bk.ForEach(func(k, v []byte) error {
				if err := add(k, v); err != nil {
					return fmt.Errorf("%s %q cannot be read: %w", what, k, err)
				}
				return flush(false)
			})
		}
		steps := []func() error{
			func() error {
				return each(bucketLeases, "lease", func(_, v []byte) error {
					l, err := decodeLease(v)
					b.Leases = append(b.Leases, l)
					return err
				})
			},
			func() error {
				return each(bucketGrants, "grant", func(k, _ []byte) error {
					g, err := getGrant(tx, string(k))
					b.Grants = append(b.Grants, g)
					return err
				})
			},
			func() error {
				return each(bucketAgents, "agent", func(_, v []byte) error {
					a, err := decodeAgent(v)
					b.Agents = append(b.Agents, a)
					return err
				})
			},
			func() error {
				return each(bucketSignals, "signal", func(_, v []byte) error {
					sig, err := decodeSignal(v)
					b.Signals = append(b.Signals, sig)
					return err
				})
			},
			func() error {
				return each(bucketJobs, "job state", func(k, _ []byte) error {
					st, err := getJob(tx, string(k))
					b.Jobs = append(b.Jobs, st)
					return err
				})
			},
			func() error {
				root := tx.Bucket(replayBucket)
				if root == nil || root.Bucket(replayKeys) == nil {
					return nil
				}
				return root.Bucket(replayKeys).ForEach(func(k, v []byte) error {
					if len(v) != 8 {
						return fmt.Errorf("replay entry %q cannot be read: %d bytes", k, len(v))
					}
					b.Replay = append(b.Replay, migrate.ReplayEntry{Key: string(k), Expires: time.Unix(int64(binary.BigEndian.Uint64(v)), 0)})
					return flush(false)
				})
			},
			func() error {
				// The archive's segments hold the log's start; the
				// database holds what follows (and may still hold
				// records a pass archived but did not delete yet).
				through, err := archivedThrough(tx)
				if err != nil {
					return err
				}
				err = eachSegment(tx, 1, func(seg audit.Segment) (bool, error) {
					var ferr error
					serr := audit.ScanSegment(s.archiveDir, seg, seg.First, func(seq uint64, v []byte) bool {
						b.Audit = append(b.Audit, migrate.AuditRecord{Seq: seq, Stored: bytes.Clone(v)})
						ferr = flush(false)
						return ferr == nil
					})
					return true, cmp.Or(ferr, serr)
				})
				if err != nil {
					return err
				}
				return each(bucketAuditRecords, "audit record", func(k, v []byte) error {
					if len(k) != 8 {
						return fmt.Errorf("malformed key")
					}
					if seq := binary.BigEndian.Uint64(k); seq > through {
						b.Audit = append(b.Audit, migrate.AuditRecord{Seq: seq, Stored: bytes.Clone(v)})
					}
					return nil
				})
			},
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		var head []byte
		if meta := tx.Bucket(bucketAuditMeta); meta != nil {
			head = meta.Get(keyAuditHead)
		}
		if head != nil {
			h, err := audit.ParseHead(head)
			if err != nil {
				return err
			}
			b.Head = &h
		}
		return flush(true)
	})
}
