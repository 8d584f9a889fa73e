package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Buckets. Every index is maintained by putLease alone, so they cannot drift
// from the lease records.
var (
	bucketLeases     = []byte("leases")         // id -> JSON Lease
	bucketExpiry     = []byte("leases.expiry")  // expires(8) id -> nil, active leases only
	bucketLeaseAgent = []byte("leases.agent")   // indexKey(agent, id) -> nil
	bucketLineage    = []byte("leases.lineage") // indexKey(lineage-id, id) -> nil
	bucketLeaseState = []byte("leases.state")   // indexKey(state, id) -> nil
	bucketRevoke     = []byte("leases.revoke")  // next-attempt(8) id -> lane (revokeByHandle or revokeByCorrelation), revoking and irrevocable leases
	bucketEnded      = []byte("leases.ended")   // ended(8) id -> nil, terminal leases (for retention)
	bucketLeaseMeta  = []byte("leases.meta")    // "count/<state>" -> uint64, "layout" -> leaseLayout
)

// Values of the revocation queue's index: how the lease is revoked.
const (
	revokeByCorrelation byte = 0 // no handle: by correlation id (recovery)
	revokeByHandle      byte = 1
)

// CreatePending implements broker.LeaseStore.
func (s *Store) CreatePending(ctx context.Context, l *leases.Lease) error {
	if l.State != leases.StatePending {
		return fmt.Errorf("create pending lease: state must be pending")
	}
	return s.create(ctx, l, time.Time{}, nil)
}

// create stores a new lease and, when e is set, its audit record, in one
// transaction. The lease is encoded before the transaction, off the
// committer's goroutine.
func (s *Store) create(ctx context.Context, l *leases.Lease, now time.Time, e *audit.Entry) error {
	if l.ID == "" {
		return fmt.Errorf("create lease: need an id")
	}
	v, err := l.Encode()
	if err != nil {
		return err
	}
	err = s.update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketLeases).Get([]byte(l.ID)) != nil {
			return fmt.Errorf("lease %s already exists", l.ID)
		}
		if err := putLeaseEncoded(tx, nil, l, v); err != nil {
			return err
		}
		if e == nil {
			return nil
		}
		_, err := appendAudit(tx, now, s.sink, l.Recorded(*e))
		return err
	})
	if err == nil {
		s.noteUnindexed(1)
	}
	return err
}

// Activate implements broker.LeaseStore.
func (s *Store) Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.Activate(a) })
}

// Renew implements broker.LeaseStore.
func (s *Store) Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.Renew(now, expiresAt) })
}

// End implements broker.LeaseStore.
func (s *Store) End(ctx context.Context, id string, reason leases.State, now time.Time, e audit.Entry) (*leases.Lease, error) {
	if !reason.Terminal() {
		return nil, fmt.Errorf("end lease: %q is not a terminal state", reason)
	}
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.End(reason, now) })
}

// Abandon implements broker.LeaseStore.
func (s *Store) Abandon(ctx context.Context, id, handle string, now time.Time, e audit.Entry) (*leases.Lease, error) {
	return s.change(ctx, id, now, e, func(l *leases.Lease) error { return l.Abandon(handle, now) })
}

// change loads a lease, applies fn (one of its state changes), stores the
// result and appends e, all in one transaction: compare-and-swap on the
// stored lease. fn returning leases.ErrUnchanged leaves the lease as it is
// and writes no record. now is the time of the audit record.
func (s *Store) change(ctx context.Context, id string, now time.Time, e audit.Entry, fn func(l *leases.Lease) error) (*leases.Lease, error) {
	var out *leases.Lease
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		old, err := getLease(tx, id)
		if err != nil {
			return err
		}
		l := *old
		if err := fn(&l); err != nil {
			if errors.Is(err, leases.ErrUnchanged) {
				out = old
				return nil
			}
			return err
		}
		if err := putLease(tx, old, &l); err != nil {
			return err
		}
		if e.Kind != "" {
			if _, err := appendAudit(tx, now, s.sink, l.Recorded(e)); err != nil {
				return err
			}
		}
		out = &l
		return nil
	})
	if err != nil {
		// The transaction may still be running (ctx ended): out is
		// not ours to read.
		return nil, err
	}
	return out, nil
}

// Get implements broker.LeaseStore and leases.RevocationStore.
func (s *Store) Get(ctx context.Context, id string) (*leases.Lease, error) {
	var l *leases.Lease
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		l, err = getLease(tx, id)
		return err
	})
	return l, err
}

// List implements broker.LeaseStore. With an agent, state or lineage
// filter it scans that index; otherwise it walks all leases newest first.
func (s *Store) List(ctx context.Context, f leases.Filter) ([]*leases.Lease, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []*leases.Lease
	err := s.db.View(func(tx *bbolt.Tx) error {
		bucket, _ := leaseIndex(f)
		leases := tx.Bucket(bucketLeases)
		return s.walkLeaseIndex(tx, f, func(id []byte) (bool, error) {
			v := leases.Get(id)
			if v == nil {
				s.ReportSkipped("listing", string(id), fmt.Errorf("index %s points at a missing lease", bucket))
				return true, nil
			}
			l, err := decodeLease(v)
			if err != nil {
				s.ReportSkipped("listing", string(id), err)
				return true, nil
			}
			if f.Matches(l) {
				out = append(out, l)
			}
			return len(out) < f.Limit, nil
		})
	})
	return out, err
}

// Counts returns how many leases are in each state, from counters kept in
// the same transactions as the changes (no scan).
func (s *Store) Counts() (map[leases.State]int64, error) {
	out := map[leases.State]int64{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketLeaseMeta).Cursor()
		p := []byte("count/")
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			out[leases.State(k[len(p):])] = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return out, err
}

func getLease(tx *bbolt.Tx, id string) (*leases.Lease, error) {
	v := tx.Bucket(bucketLeases).Get([]byte(id))
	if v == nil {
		return nil, leases.ErrNotFound
	}
	return decodeLease(v)
}

func decodeLease(v []byte) (*leases.Lease, error) {
	var l leases.Lease
	if err := json.Unmarshal(v, &l); err != nil {
		return nil, fmt.Errorf("decode lease: %w", err)
	}
	return &l, nil
}

func putLease(tx *bbolt.Tx, old, l *leases.Lease) error {
	v, err := l.Encode()
	if err != nil {
		return err
	}
	return putLeaseEncoded(tx, old, l, v)
}

// putLeaseEncoded stores l (encoded as v) and brings every index in line with
// the change from old (nil for a new lease) to l.
func putLeaseEncoded(tx *bbolt.Tx, old, l *leases.Lease, v []byte) error {
	id := []byte(l.ID)
	lb := tx.Bucket(bucketLeases)
	if old == nil {
		// New ids append (they sort by time): fill pages, leaving a
		// tenth for the records' growth as they change state.
		lb.FillPercent = 0.9
	}
	if err := lb.Put(id, v); err != nil {
		return err
	}
	type idx struct {
		bucket []byte
		key    []byte
		value  []byte
	}
	keys := func(x *leases.Lease) []idx {
		if x == nil {
			return nil
		}
		out := []idx{{bucketLeaseState, indexKey(string(x.State), id), nil}}
		if x.State == leases.StateActive {
			out = append(out, idx{bucketExpiry, timeKey(x.ExpiresAt, id), nil})
		}
		if x.State == leases.StateRevoking || x.State == leases.StateIrrevocable {
			// The value tells the revocation queue the lease's lane
			// without reading it (EachDueRevocation's want).
			lane := []byte{revokeByCorrelation}
			if x.Handle != "" {
				lane[0] = revokeByHandle
			}
			out = append(out, idx{bucketRevoke, timeKey(x.NextAttempt, id), lane})
		}
		if x.State.Terminal() {
			out = append(out, idx{bucketEnded, timeKey(x.EndedAt, id), nil})
		}
		return out
	}
	oldKeys, newKeys := keys(old), keys(l)
	for _, o := range oldKeys {
		keep := false
		for _, n := range newKeys {
			if bytes.Equal(o.bucket, n.bucket) && bytes.Equal(o.key, n.key) {
				keep = true
				break
			}
		}
		if !keep {
			if err := tx.Bucket(o.bucket).Delete(o.key); err != nil {
				return err
			}
		}
	}
	for _, n := range newKeys {
		if err := tx.Bucket(n.bucket).Put(n.key, n.value); err != nil {
			return err
		}
	}
	if old == nil {
		if err := putOwnerKeys(tx, l); err != nil {
			return err
		}
	}
	if old == nil || old.State != l.State {
		if old != nil {
			if err := addCount(tx, old.State, -1); err != nil {
				return err
			}
		}
		return addCount(tx, l.State, 1)
	}
	return nil
}

// deleteLease removes a terminal lease and all its index entries.
func deleteLease(tx *bbolt.Tx, l *leases.Lease) error {
	id := []byte(l.ID)
	for _, d := range []struct{ b, k []byte }{
		{bucketLeases, id},
		{bucketLeaseState, indexKey(string(l.State), id)},
		{bucketEnded, timeKey(l.EndedAt, id)},
	} {
		if err := tx.Bucket(d.b).Delete(d.k); err != nil {
			return err
		}
	}
	if err := deleteOwnerKeys(tx, l); err != nil {
		return err
	}
	return addCount(tx, l.State, -1)
}

func addCount(tx *bbolt.Tx, st leases.State, d int64) error {
	b := tx.Bucket(bucketLeaseMeta)
	k := []byte("count/" + string(st))
	var n int64
	if v := b.Get(k); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += d
	if n < 0 {
		n = 0
	}
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, uint64(n))
	return b.Put(k, v)
}

// initLeases creates the lease buckets and brings their indexes to the
// current key layout.
func initLeases(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketLeases, bucketExpiry, bucketLeaseAgent, bucketLineage, bucketLeaseState, bucketRevoke, bucketEnded, bucketLeaseMeta, bucketUnindexed} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return migrateLeaseIndexes(tx)
}

// migrateLeaseIndexes brings the agent, lineage and state indexes to the
// current key layout.
func migrateLeaseIndexes(tx *bbolt.Tx) error {
	m := tx.Bucket(bucketLeaseMeta)
	if v := m.Get(layoutKey); len(v) == 1 && v[0] == indexLayout {
		// Layout 2's indexes are complete: leaseLayout only adds the
		// (empty) unindexed leases.
		if err := m.Put(layoutKey, []byte{leaseLayout}); err != nil {
			return err
		}
	}
	return migrateIndexes(tx, bucketLeaseMeta, bucketLeases, leaseLayout, [][]byte{bucketLeaseAgent, bucketLineage, bucketLeaseState, bucketUnindexed}, func(v []byte) error {
		l, err := decodeLease(v)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketLeaseState).Put(indexKey(string(l.State), []byte(l.ID)), nil); err != nil {
			return err
		}
		return putOwnerIndex(tx, l)
	})
}
