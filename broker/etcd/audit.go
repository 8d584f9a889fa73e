package etcd

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/leases/audit"
)

func (s *Store) auditHeadKey() string { return s.p + "a/h" }

func (s *Store) auditRecordKey(seq uint64) string {
	return s.p + "a/r/" + hex.EncodeToString(audit.SeqKey(seq))
}

// appendAudit appends entries to the log in t, chained to the head as t
// reads it: the head is compared at commit, so appends of every replica
// serialize on it and the log stays one chain in commit order. The sink
// receives the records once t commits.
func (t *tx) appendAudit(now time.Time, entries ...audit.Entry) ([]audit.Record, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	s := t.s
	v, err := t.get(s.auditHeadKey())
	if err != nil {
		return nil, err
	}
	h, err := audit.ParseHead(v)
	if err != nil {
		return nil, err
	}
	recs, stored, h, err := audit.Chain(h, now, entries...)
	if err != nil {
		return nil, err
	}
	for i, r := range recs {
		t.put(s.auditRecordKey(r.Seq), stored[i])
	}
	t.put(s.auditHeadKey(), h.Bytes())
	if s.sink != nil {
		t.onCommit(func() { s.sink.Write(recs) })
	}
	return recs, nil
}

// ListAudit implements audit.Reader.
func (s *Store) ListAudit(ctx context.Context, f audit.Filter) ([]audit.Record, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	first, end := s.p+"a/r/", prefixEnd(s.p+"a/r/")
	var out []audit.Record
	page := int64(max(f.Limit, 256))
	for len(out) < f.Limit {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		key := first
		if f.Newest {
			if f.BeforeSeq > 0 {
				end = s.auditRecordKey(f.BeforeSeq)
			}
			opts = []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
		} else if f.AfterSeq > 0 {
			key = s.auditRecordKey(f.AfterSeq + 1)
		}
		resp, err := s.kv.Get(s.opCtx(ctx), key, opts...)
		if err != nil {
			return nil, s.unavailable(err)
		}
		for _, kv := range resp.Kvs {
			var r audit.Record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				return nil, fmt.Errorf("audit record %s: %w", kv.Key, err)
			}
			if f.Match(&r) {
				out = append(out, r)
				if len(out) == f.Limit {
					break
				}
			}
			if f.Newest {
				f.BeforeSeq = r.Seq
			} else {
				f.AfterSeq = r.Seq
			}
		}
		if !resp.More {
			break
		}
	}
	return out, nil
}

// verifyAudit walks the whole log at one revision (a consistent read, in
// pages) with audit.VerifyChainCheckpoints.
func (s *Store) verifyAudit(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	head, err := s.kv.Get(s.opCtx(ctx), s.auditHeadKey())
	if err != nil {
		return audit.VerifyResult{}, s.unavailable(err)
	}
	rev := head.Header.Revision
	var storedHead []byte
	if len(head.Kvs) == 1 {
		storedHead = head.Kvs[0].Value
	}
	const page = 1000
	key, end := s.p+"a/r/", prefixEnd(s.p+"a/r/")
	var buf []*struct{ k, v []byte }
	more := true
	var readErr error
	next := func() ([]byte, []byte, bool) {
		if len(buf) == 0 && more {
			resp, err := s.kv.Get(s.opCtx(ctx), key, clientv3.WithRange(end), clientv3.WithLimit(page), clientv3.WithRev(rev))
			if err != nil {
				readErr = err
				return nil, nil, false
			}
			for _, kv := range resp.Kvs {
				buf = append(buf, &struct{ k, v []byte }{kv.Key, kv.Value})
			}
			more = resp.More
			if len(resp.Kvs) > 0 {
				key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
			}
		}
		if len(buf) == 0 {
			return nil, nil, false
		}
		r := buf[0]
		buf = buf[1:]
		k, err := hex.DecodeString(string(r.k[len(s.p)+len("a/r/"):]))
		if err != nil {
			k = nil // a malformed key: VerifyChain reports it
		}
		return k, r.v, true
	}
	res := audit.VerifyChainCheckpoints(storedHead, next, cps)
	if readErr != nil {
		return audit.VerifyResult{}, s.unavailable(readErr)
	}
	return res, nil
}

// VerifyAudit implements audit.Reader.
func (s *Store) VerifyAudit(ctx context.Context) (audit.VerifyResult, error) {
	return s.verifyAudit(ctx, nil)
}

// VerifyAuditCheckpoints walks the whole log at one revision and compares
// it with checkpoints whose signatures the caller verified.
func (s *Store) VerifyAuditCheckpoints(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error) {
	return s.verifyAudit(ctx, cps)
}

// AuditHead returns the log's head as committed.
func (s *Store) AuditHead(ctx context.Context) (audit.Head, error) {
	resp, err := s.kv.Get(s.opCtx(ctx), s.auditHeadKey())
	if err != nil {
		return audit.Head{}, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return audit.Head{}, nil
	}
	return audit.ParseHead(resp.Kvs[0].Value)
}
