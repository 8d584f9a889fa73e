package etcd

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker/migrate"
	"github.com/valet-broker/valet/leases/audit"
)

var _ migrate.Target = (*Store)(nil)

// KeyCount implements migrate.Target: how many keys the prefix holds.
func (s *Store) KeyCount(ctx context.Context) (int64, error) {
	resp, err := s.kv.Get(s.opCtx(ctx), s.p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, s.unavailable(err)
	}
	return resp.Count, nil
}

// exportPage is how many keys one read of Export returns.
const exportPage = 500

// Export implements migrate.Source: every record under the prefix, read
// at one revision (the revision of the first read), in pages. The
// indexes, gate keys, replica markers and the election are not exported:
// they follow from the records or belong to running replicas.
func (s *Store) Export(ctx context.Context, fn func(b *migrate.Batch) error) error {
	head, err := s.kv.Get(s.opCtx(ctx), s.auditHeadKey())
	if err != nil {
		return s.unavailable(err)
	}
	rev := head.Header.Revision
	b := &migrate.Batch{}
	flush := func(last bool) error {
		if b.Len() < migrate.BatchSize && !last {
			return nil
		}
		out := b
		b = &migrate.Batch{}
		return fn(out)
	}
	each := func(prefix, what string, add func(key string, v []byte) error) error {
		key, end := s.p+prefix, prefixEnd(s.p+prefix)
		for {
			resp, err := s.kv.Get(s.opCtx(ctx), key, clientv3.WithRange(end), clientv3.WithLimit(exportPage), clientv3.WithRev(rev))
			if err != nil {
				return s.unavailable(err)
			}
			for _, kv := range resp.Kvs {
				k := string(kv.Key[len(s.p)+len(prefix):])
				if err := add(k, kv.Value); err != nil {
					return fmt.Errorf("%s %q cannot be read: %w", what, k, err)
				}
				if err := flush(false); err != nil {
					return err
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return nil
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	steps := []func() error{
		func() error {
			return each("l/", "lease", func(_ string, v []byte) error {
				l, err := decodeLease(v)
				b.Leases = append(b.Leases, l)
				return err
			})
		},
		func() error {
			return each("g/", "grant", func(id string, v []byte) error {
				g, err := decodeGrant(id, v)
				b.Grants = append(b.Grants, g)
				return err
			})
		},
		func() error {
			return each("ag/", "agent", func(_ string, v []byte) error {
				a, err := decodeAgent(v)
				b.Agents = append(b.Agents, a)
				return err
			})
		},
		func() error {
			return each("s/", "signal", func(_ string, v []byte) error {
				sig, err := decodeSignal(v)
				b.Signals = append(b.Signals, sig)
				return err
			})
		},
		func() error {
			return each("j/", "job state", func(name string, v []byte) error {
				st, err := decodeJob(name, v)
				b.Jobs = append(b.Jobs, st)
				return err
			})
		},
		func() error {
			return each("r/k/", "replay entry", func(key string, v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("%d bytes", len(v))
				}
				b.Replay = append(b.Replay, migrate.ReplayEntry{Key: key, Expires: time.Unix(int64(binary.BigEndian.Uint64(v)), 0)})
				return nil
			})
		},
		func() error {
			return each("a/r/", "audit record", func(k string, v []byte) error {
				seq, err := hex.DecodeString(k)
				if err != nil || len(seq) != 8 {
					return fmt.Errorf("malformed key")
				}
				b.Audit = append(b.Audit, migrate.AuditRecord{Seq: binary.BigEndian.Uint64(seq), Stored: v})
				return nil
			})
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	if len(head.Kvs) == 1 {
		h, err := audit.ParseHead(head.Kvs[0].Value)
		if err != nil {
			return err
		}
		b.Head = &h
	}
	return flush(true)
}

// importItem is one record to import: the key it is stored under (which
// must not exist yet) and what writes it with its indexes.
type importItem struct {
	what string
	key  string
	put  func(t *tx) error
}

// importPrefetch is how many records' keys one import transaction reads
// ahead (each is compared at commit); a transaction takes as many of
// them as fit.
const importPrefetch = 60

// Import implements migrate.Target: each record with the indexes this
// engine keeps for it (putLease, putGrant, putAgent — its gate key too —
// and putSignal, as a new record's write does), in transactions that fit
// etcd's limits. A transaction compares that every key it imports is
// still absent, so an import never overwrites, even a write that lands
// meanwhile. The head comes last.
func (s *Store) Import(ctx context.Context, b *migrate.Batch) error {
	var items []importItem
	for _, l := range b.Leases {
		items = append(items, importItem{"lease " + l.ID, s.leaseKey(l.ID), func(t *tx) error { return t.putLease(nil, l) }})
	}
	for _, g := range b.Grants {
		items = append(items, importItem{"grant " + g.ID, s.grantKey(g.ID), func(t *tx) error { return t.putGrant(nil, g) }})
	}
	for _, a := range b.Agents {
		items = append(items, importItem{"agent " + a.ID, s.agentKey(a.ID), func(t *tx) error { return t.putAgent(nil, a) }})
	}
	for _, sig := range b.Signals {
		items = append(items, importItem{"signal " + sig.ID, s.signalKey(sig.ID), func(t *tx) error { return t.putSignal(nil, sig) }})
	}
	for _, st := range b.Jobs {
		items = append(items, importItem{"job state " + st.Name, s.jobKey(st.Name), func(t *tx) error {
			v, err := json.Marshal(st)
			t.put(s.jobKey(st.Name), v)
			return err
		}})
	}
	rc := &ReplayCache{s: s}
	for _, r := range b.Replay {
		items = append(items, importItem{"replay entry " + r.Key, rc.keyOf(r.Key), func(t *tx) error {
			exp := max(r.Expires.Unix(), 0)
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], uint64(exp))
			t.put(rc.keyOf(r.Key), v[:])
			t.put(rc.expiryKey(exp, r.Key), nil)
			return nil
		}})
	}
	for _, r := range b.Audit {
		items = append(items, importItem{fmt.Sprintf("audit record %d", r.Seq), s.auditRecordKey(r.Seq), func(t *tx) error {
			t.put(s.auditRecordKey(r.Seq), r.Stored)
			return nil
		}})
	}
	if h := b.Head; h != nil {
		items = append(items, importItem{"the audit head", s.auditHeadKey(), func(t *tx) error {
			t.put(s.auditHeadKey(), h.Bytes())
			return nil
		}})
	}
	for len(items) > 0 {
		n := 0
		err := s.updateAlone(ctx, func(t *tx) error {
			n = 0
			ahead := items[:min(len(items), importPrefetch)]
			keys := make([]string, len(ahead))
			for i, it := range ahead {
				keys[i] = it.key
			}
			if err := t.fetch(keys...); err != nil {
				return err
			}
			for _, it := range ahead {
				c := t.child()
				if v, err := c.get(it.key); err != nil {
					return err
				} else if v != nil {
					return fmt.Errorf("import: %s exists already in the target", it.what)
				}
				if err := it.put(c); err != nil {
					return fmt.Errorf("import %s: %w", it.what, err)
				}
				if n > 0 && (t.ops()+c.ops()+1 > maxTxnOps || t.bytes+c.bytes > maxTxnBytes) {
					break
				}
				c.merge()
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		items = items[n:]
	}
	return nil
}
