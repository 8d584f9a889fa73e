package bolt

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
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

// RewriteAudit replaces the whole audit log behind the store's back, as
// someone with write access to the file could: edit gets every record's
// stored bytes in order and returns the log to store instead, under keys
// 1..n, with the head moved to the last record (its seq and hash fields).
// It exists for the tests that show what checkpoints detect (a cut tail,
// a re-chained log); nothing else calls it.
func (s *Store) RewriteAudit(edit func(stored [][]byte) [][]byte) error {
	return s.update(context.Background(), func(tx *bbolt.Tx) error {
		var stored [][]byte
		if err := tx.Bucket(bucketAuditRecords).ForEach(func(k, v []byte) error {
			stored = append(stored, append([]byte(nil), v...))
			return nil
		}); err != nil {
			return err
		}
		if err := tx.DeleteBucket(bucketAuditRecords); err != nil {
			return err
		}
		b, err := tx.CreateBucket(bucketAuditRecords)
		if err != nil {
			return err
		}
		var head audit.Head
		for _, v := range edit(stored) {
			var r audit.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			sum, err := hex.DecodeString(r.Hash)
			if err != nil || len(sum) != len(head.Hash) {
				return fmt.Errorf("record %d: hash %q", r.Seq, r.Hash)
			}
			head.Seq = r.Seq
			copy(head.Hash[:], sum)
			if err := b.Put(audit.SeqKey(r.Seq), v); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketAuditMeta).Put(keyAuditHead, head.Bytes())
	})
}

// Rechain is an edit for RewriteAudit that changes record seq's reason and
// recomputes the hash of it and of every later record, as someone who
// knows the chain's format would: the chain alone still verifies. It
// exists for the tests of audit checkpoints.
func Rechain(seq uint64) func(stored [][]byte) [][]byte {
	return func(stored [][]byte) [][]byte {
		var head audit.Head
		out := make([][]byte, 0, len(stored))
		for _, v := range stored {
			var r audit.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return stored // not a log this edit understands: leave it
			}
			if r.Seq < seq {
				out = append(out, v)
				sum, _ := r.Sum()
				head = audit.Head{Seq: r.Seq, Hash: sum}
				continue
			}
			if r.Seq == seq {
				r.Reason = "rewritten"
			}
			_, b, h, err := audit.Chain(head, r.Time, r.Entry)
			if err != nil {
				return stored
			}
			out, head = append(out, b[0]), h
		}
		return out
	}
}
