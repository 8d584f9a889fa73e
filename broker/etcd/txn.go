package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Limits of one etcd transaction that every write stays within: etcd
// refuses a transaction of more than --max-txn-ops operations (128 by
// default) in either branch or a request over --max-request-bytes (1.5 MiB
// by default). The engine keeps below both with room to spare.
const (
	maxTxnOps   = 120
	maxTxnBytes = 1 << 20
)

// errTooLarge: a change does not fit in one etcd transaction.
var errTooLarge = errors.New("the change does not fit in one etcd transaction")

// ErrFenced: a write of a leader's duty was refused because this replica
// no longer leads (its leader key is gone or was replaced). Nothing was
// written.
var ErrFenced = errors.New("this valet replica no longer leads its replicas; the write of a leader's duty was refused")

// kv is a value read from etcd with its mod revision (0: absent).
type kv struct {
	val []byte
	mod int64
}

// tx is one optimistic transaction: reads are remembered with their mod
// revisions, writes are buffered, and commit sends one etcd transaction
// that applies the writes only if every key read is unchanged (and, when
// fenced, the leader key is still this replica's). A tx with a parent is
// a savepoint: it reads through its parent and its writes are merged into
// it, or dropped, as a whole.
type tx struct {
	s      *Store
	ctx    context.Context
	parent *tx
	reads  map[string]kv // root only
	writes map[string]*write
	order  []string
	fenced bool
	after  []func()
	bytes  int
}

type write struct {
	val []byte
	del bool
}

func (s *Store) newTx(ctx context.Context) *tx {
	return &tx{s: s, ctx: ctx, reads: map[string]kv{}, writes: map[string]*write{}}
}

func (t *tx) child() *tx {
	return &tx{s: t.s, ctx: t.ctx, parent: t, writes: map[string]*write{}}
}

func (t *tx) root() *tx {
	for t.parent != nil {
		t = t.parent
	}
	return t
}

// merge adds a savepoint's writes to its parent.
func (t *tx) merge() {
	p := t.parent
	for _, k := range t.order {
		p.set(k, t.writes[k])
	}
	p.fenced = p.fenced || t.fenced
	p.after = append(p.after, t.after...)
}

func (t *tx) set(k string, w *write) {
	if old, ok := t.writes[k]; ok {
		t.bytes -= len(old.val) + len(k)
	} else {
		t.order = append(t.order, k)
	}
	t.writes[k] = w
	t.bytes += len(w.val) + len(k)
}

func (t *tx) put(k string, v []byte) { t.set(k, &write{val: v}) }
func (t *tx) del(k string)           { t.set(k, &write{del: true}) }

// onCommit runs f after the transaction committed.
func (t *tx) onCommit(f func()) { t.after = append(t.after, f) }

// get returns the value of k as this transaction sees it (nil when
// absent), reading etcd the first time and remembering the revision.
func (t *tx) get(k string) ([]byte, error) {
	for x := t; x != nil; x = x.parent {
		if w, ok := x.writes[k]; ok {
			if w.del {
				return nil, nil
			}
			return w.val, nil
		}
	}
	r := t.root()
	if v, ok := r.reads[k]; ok {
		return v.val, nil
	}
	if err := r.fetch(k); err != nil {
		return nil, err
	}
	return r.reads[k].val, nil
}

// fetch reads keys not read yet, all in one etcd request.
func (t *tx) fetch(keys ...string) error {
	r := t.root()
	var ops []clientv3.Op
	var want []string
	for _, k := range keys {
		if _, ok := r.reads[k]; !ok && !t.hasWrite(k) && !slices.Contains(want, k) {
			ops = append(ops, clientv3.OpGet(k))
			want = append(want, k)
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		resp, err := t.s.kv.Txn(t.s.opCtx(t.ctx)).Then(ops[:n]...).Commit()
		if err != nil {
			return t.s.unavailable(err)
		}
		for i, rr := range resp.Responses {
			var v kv
			if kvs := rr.GetResponseRange().Kvs; len(kvs) == 1 {
				v = kv{val: kvs[0].Value, mod: kvs[0].ModRevision}
			}
			r.reads[want[i]] = v
		}
		ops, want = ops[n:], want[n:]
	}
	return nil
}

func (t *tx) hasWrite(k string) bool {
	for x := t; x != nil; x = x.parent {
		if _, ok := x.writes[k]; ok {
			return true
		}
	}
	return false
}

// ops is how many operations the commit would send.
func (t *tx) ops() int { return len(t.order) }

// commitOutcome tells apart a conflict (someone changed what was read:
// run again) from a fence (this replica no longer leads).
type commitOutcome int

const (
	committed commitOutcome = iota
	conflicted
	fenced
)

// commit sends the transaction: its writes, if every read is unchanged.
// The marker key of this replica is compared and written with it, so
// that an outcome the client did not hear (a timeout) can be found out
// (resolve) instead of guessed.
func (t *tx) commit() (commitOutcome, int64, error) {
	s := t.s
	cmps := make([]clientv3.Cmp, 0, len(t.reads)+2)
	keys := make([]string, 0, len(t.reads))
	for k := range t.reads {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if m := t.reads[k].mod; m == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", m))
		}
	}
	if len(cmps) > maxTxnOps-2 {
		return 0, 0, fmt.Errorf("%w: it reads %d keys", errTooLarge, len(cmps))
	}
	fenceKey, fenceRev := "", int64(0)
	if t.fenced {
		fenceKey, fenceRev = s.fence()
		if fenceKey == "" {
			return fenced, 0, nil
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(fenceKey), "=", fenceRev))
	}
	id := s.nextTxnID()
	cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.markerKey), "=", s.markerRev))
	ops := make([]clientv3.Op, 0, len(t.order)+1)
	for _, k := range t.order {
		if w := t.writes[k]; w.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.val)))
		}
	}
	ops = append(ops, clientv3.OpPut(s.markerKey, id))
	if len(ops) > maxTxnOps || t.bytes > maxTxnBytes {
		return 0, 0, fmt.Errorf("%w: %d operations, %d bytes", errTooLarge, len(ops), t.bytes)
	}
	var elseOps []clientv3.Op
	elseOps = append(elseOps, clientv3.OpGet(s.markerKey))
	if fenceKey != "" {
		elseOps = append(elseOps, clientv3.OpGet(fenceKey))
	}
	ctx, cancel := s.reqCtx(s.requestTimeout)
	resp, err := s.kv.Txn(ctx).If(cmps...).Then(ops...).Else(elseOps...).Commit()
	cancel()
	if err != nil {
		// The outcome is unknown: find it out before anything else is
		// written by this replica.
		ok, rev, rerr := s.resolve(id)
		if rerr != nil {
			return 0, 0, rerr
		}
		if ok {
			s.markerRev = rev
			return committed, rev, nil
		}
		return conflicted, 0, nil
	}
	if resp.Succeeded {
		s.markerRev = resp.Header.Revision
		return committed, resp.Header.Revision, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		s.markerRev = kvs[0].ModRevision
	} else {
		s.markerRev = 0
	}
	if fenceKey != "" {
		kvs := resp.Responses[1].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != fenceRev {
			s.lostLead()
			return fenced, 0, nil
		}
	}
	return conflicted, 0, nil
}

// resolve finds out whether the transaction that wrote id to this
// replica's marker committed: it writes an abort mark unless the marker
// holds id, so that a transaction still on its way can no longer apply
// (it compares the marker's revision). It retries until etcd answers or
// the store closes.
func (s *Store) resolve(id string) (committed bool, rev int64, err error) {
	for attempt := 0; ; attempt++ {
		ctx, cancel := s.reqCtx(s.requestTimeout)
		resp, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(s.markerKey), "=", id)).
			Then(clientv3.OpGet(s.markerKey)).
			Else(clientv3.OpPut(s.markerKey, "abort-"+id), clientv3.OpGet(s.markerKey)).Commit()
		cancel()
		if err == nil {
			kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
			if len(kvs) == 1 {
				if resp.Succeeded {
					return true, kvs[0].ModRevision, nil
				}
				s.markerRev = kvs[0].ModRevision
			}
			return false, 0, nil
		}
		if s.client.Ctx().Err() != nil {
			// The client was closed (the process is stopping): nobody
			// can find the outcome out through it any more.
			return false, 0, s.unavailable(fmt.Errorf("the outcome of a write is unknown: the etcd client closed: %w", err))
		}
		s.log.Warn("etcd: the outcome of a write is unknown; asking again", "attempt", attempt+1, "err", err)
		select {
		case <-s.closing:
			return false, 0, s.unavailable(fmt.Errorf("the store closed before the outcome of a write was known: %w", err))
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		}
	}
}

// nextTxnID is the id a transaction writes to the marker: unique in
// this process, and ending with the time it was written (@ and Unix
// seconds) for PruneMarkers.
func (s *Store) nextTxnID() string {
	s.txnSeq++
	return strconv.FormatUint(s.txnSeq, 10) + "@" + strconv.FormatInt(time.Now().Unix(), 10)
}

// markerTime reads the time at the end of a marker's value.
func markerTime(v string) (time.Time, bool) {
	i := strings.LastIndexByte(v, '@')
	if i < 0 {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(v[i+1:], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}
