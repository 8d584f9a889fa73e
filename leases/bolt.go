package leases

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/valet-broker/valet/leases/audit"
)

// Buckets. Every index is maintained by putLease alone, so they cannot drift
// from the lease records.
var (
	bucketLeases  = []byte("leases")         // id -> JSON Lease
	bucketExpiry  = []byte("leases.expiry")  // expires(8) id -> nil, active leases only
	bucketAgent   = []byte("leases.agent")   // IndexKey(agent, id) -> nil
	bucketLineage = []byte("leases.lineage") // IndexKey(lineage-id, id) -> nil
	bucketState   = []byte("leases.state")   // IndexKey(state, id) -> nil
	bucketRevoke  = []byte("leases.revoke")  // next-attempt(8) id -> nil, revoking and irrevocable leases
	bucketEnded   = []byte("leases.ended")   // ended(8) id -> nil, terminal leases (for retention)
	bucketMeta    = []byte("leases.meta")    // "count/<state>" -> uint64, "layout" -> IndexLayout
)

// BoltStore is the bbolt implementation of Store. It owns the database file;
// other parts of valet (audit, the attestation replay cache) keep their
// buckets in the same file and write through Update so that their writes
// share commits.
type BoltStore struct {
	db   *bbolt.DB
	c    *committer
	sink audit.Sink
	log  *slog.Logger

	skipped sync.Map // ids of unreadable leases already reported

	revokeAtExpiry func(l *Lease) bool
}

var (
	_ Store   = (*BoltStore)(nil)
	_ Auditor = (*BoltStore)(nil)
)

// BoltOptions configures OpenBolt.
type BoltOptions struct {
	// Sink receives audit records after they commit (optional).
	Sink audit.Sink
	// MaxBatch bounds how many writes share one commit (default 512).
	MaxBatch int
	// ReadOnly opens the file without taking the writer lock (for offline
	// tools such as `valet audit verify --data-dir`).
	ReadOnly bool
	// Logger reports lease records that a batch had to skip because they
	// cannot be read (default slog.Default()).
	Logger *slog.Logger
}

// OpenBolt opens (creating if needed) the database at path. It fails after
// two seconds if another process holds the file.
func OpenBolt(path string, opts BoltOptions) (*BoltStore, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      2 * time.Second,
		FreelistType: bbolt.FreelistMapType,
		ReadOnly:     opts.ReadOnly,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: the database is in use by another valet process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bbolt.Tx) error {
			for _, b := range [][]byte{bucketLeases, bucketExpiry, bucketAgent, bucketLineage, bucketState, bucketRevoke, bucketEnded, bucketMeta} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			if err := migrateIndexes(tx); err != nil {
				return err
			}
			return audit.Init(tx)
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("initialise %s: %w", path, err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &BoltStore{db: db, sink: opts.Sink, log: opts.Logger}
	if !opts.ReadOnly {
		s.c = newCommitter(db, opts.MaxBatch)
	}
	return s, nil
}

// DB is the underlying database, for packages that keep their own buckets
// in it. Writes should go through Update.
func (s *BoltStore) DB() *bbolt.DB { return s.db }

// Update runs fn in a write transaction that may be shared with other
// concurrent writes (group commit): it returns after the transaction is on
// disk, or failed. ctx bounds only the wait for a place in the commit
// queue; once queued, the write runs and Update waits for it. fn may run
// more than once and must only touch the database and variables it resets
// on each run.
func (s *BoltStore) Update(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if s.c == nil {
		return errors.New("lease store is read-only")
	}
	return s.c.do(ctx, fn)
}

// Close stops the committer and closes the database.
func (s *BoltStore) Close() error {
	if s.c != nil {
		s.c.close()
	}
	return s.db.Close()
}

// Audit appends entries that are not tied to a lease change.
func (s *BoltStore) Audit(ctx context.Context, now time.Time, e ...audit.Entry) error {
	return s.Update(ctx, func(tx *bbolt.Tx) error {
		_, err := audit.AppendTx(tx, now, s.sink, e...)
		return err
	})
}

// AppendAuditTx appends audit entries inside a transaction obtained from
// Update, with the store's sink.
func (s *BoltStore) AppendAuditTx(tx *bbolt.Tx, now time.Time, e ...audit.Entry) error {
	_, err := audit.AppendTx(tx, now, s.sink, e...)
	return err
}

// CreatePending implements Store.
func (s *BoltStore) CreatePending(ctx context.Context, l *Lease) error {
	if l.State != StatePending {
		return fmt.Errorf("create pending lease: state must be pending")
	}
	return s.create(ctx, l, time.Time{}, nil)
}

// create stores a new lease and, when e is set, its audit record, in one
// transaction. The lease is encoded before the transaction, off the
// committer's goroutine.
func (s *BoltStore) create(ctx context.Context, l *Lease, now time.Time, e *audit.Entry) error {
	if l.ID == "" {
		return fmt.Errorf("create lease: need an id")
	}
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return s.Update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketLeases).Get([]byte(l.ID)) != nil {
			return fmt.Errorf("lease %s already exists", l.ID)
		}
		if err := putLeaseEncoded(tx, nil, l, v); err != nil {
			return err
		}
		if e == nil {
			return nil
		}
		_, err := audit.AppendTx(tx, now, s.sink, *e)
		return err
	})
}

// Activate implements Store.
func (s *BoltStore) Activate(ctx context.Context, id string, a Activation, now time.Time, e audit.Entry) (*Lease, error) {
	return s.change(ctx, id, now, e, func(l *Lease) error {
		if l.State != StatePending {
			return fmt.Errorf("%w: lease %s is %s, not pending", ErrState, id, l.State)
		}
		l.State = StateActive
		l.Handle = a.Handle
		l.Details = a.Details
		return nil
	})
}

// Renew implements Store.
func (s *BoltStore) Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*Lease, error) {
	return s.change(ctx, id, now, e, func(l *Lease) error {
		if !l.ActiveAt(now) {
			return fmt.Errorf("%w: lease %s is %s", ErrState, id, l.StateAt(now))
		}
		l.ExpiresAt = expiresAt
		l.RenewCount++
		return nil
	})
}

// End implements Store.
func (s *BoltStore) End(ctx context.Context, id string, reason State, now time.Time, e audit.Entry) (*Lease, error) {
	if !reason.Terminal() {
		return nil, fmt.Errorf("end lease: %q is not a terminal state", reason)
	}
	return s.change(ctx, id, now, e, func(l *Lease) error {
		if l.State != StatePending && l.State != StateActive {
			return errUnchanged
		}
		l.State = StateRevoking
		l.EndReason = reason
		l.EndedAt = now
		l.NextAttempt = now
		return nil
	})
}

// Abandon implements Store.
func (s *BoltStore) Abandon(ctx context.Context, id, handle string, now time.Time, e audit.Entry) (*Lease, error) {
	return s.change(ctx, id, now, e, func(l *Lease) error {
		if l.State != StatePending {
			return errUnchanged
		}
		l.State = StateRevoking
		l.EndReason = StateRevoked
		l.Handle = handle
		l.EndedAt = now
		l.NextAttempt = now
		return nil
	})
}

// ReportSkipped reports (an ERROR log line), once per place and id, a
// record that a batch over many records (expiry, the revocation queue,
// recovery, listing, pruning; the grant store's batches too) skipped
// because it cannot be read. The batch goes on without it.
func (s *BoltStore) ReportSkipped(where, id string, err error) {
	if _, seen := s.skipped.LoadOrStore(where+"\x00"+id, true); seen {
		return
	}
	s.log.Error("skipped a record that cannot be read; the others are processed", "where", where, "id", id, "err", err)
}

// errUnchanged, returned by a change function, leaves the lease as it is,
// writes no audit record, and is not an error for the caller.
var errUnchanged = errors.New("unchanged")

// change loads a lease, applies fn, stores the result and appends e, all in
// one transaction. now is the time of the audit record.
func (s *BoltStore) change(ctx context.Context, id string, now time.Time, e audit.Entry, fn func(l *Lease) error) (*Lease, error) {
	var out *Lease
	err := s.Update(ctx, func(tx *bbolt.Tx) error {
		old, err := getLease(tx, id)
		if err != nil {
			return err
		}
		l := *old
		if err := fn(&l); err != nil {
			if errors.Is(err, errUnchanged) {
				out = old
				return nil
			}
			return err
		}
		if err := putLease(tx, old, &l); err != nil {
			return err
		}
		if e.Kind != "" {
			if e.LeaseID == "" {
				e.LeaseID = l.ID
			}
			if e.AgentID == "" {
				e.AgentID = l.AgentID
			}
			if e.Role == "" {
				e.Role = l.Role
			}
			if _, err := audit.AppendTx(tx, now, s.sink, e); err != nil {
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

// Get implements Store.
func (s *BoltStore) Get(ctx context.Context, id string) (*Lease, error) {
	var l *Lease
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		l, err = getLease(tx, id)
		return err
	})
	return l, err
}

// List implements Store. With an agent, state or lineage filter it scans
// that index; otherwise it walks all leases newest first.
func (s *BoltStore) List(ctx context.Context, f Filter) ([]*Lease, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	var out []*Lease
	err := s.db.View(func(tx *bbolt.Tx) error {
		match := func(l *Lease) bool {
			return (f.AgentID == "" || l.AgentID == f.AgentID) &&
				(f.Role == "" || l.Role == f.Role) &&
				(f.Backend == "" || l.Backend == f.Backend) &&
				(f.State == "" || l.State == f.State)
		}
		bucket, prefix := bucketLeases, []byte(nil)
		switch {
		case f.Lineage != "":
			bucket, prefix = bucketLineage, IndexPrefix(f.Lineage)
		case f.AgentID != "":
			bucket, prefix = bucketAgent, IndexPrefix(f.AgentID)
		case f.State != "":
			bucket, prefix = bucketState, IndexPrefix(string(f.State))
		}
		leases := tx.Bucket(bucketLeases)
		return WalkNewestFirst(tx.Bucket(bucket), prefix, f.Before, func(id []byte) (bool, error) {
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
			if match(l) {
				out = append(out, l)
			}
			return len(out) < f.Limit, nil
		})
	})
	return out, err
}

// WalkNewestFirst calls fn with the ids of a bucket whose keys are prefix
// followed by a time-ordered id (an index, or with a nil prefix a primary
// bucket keyed by id), newest first, starting below the id before (from the
// newest when before is empty), until fn returns false or an error.
func WalkNewestFirst(b *bbolt.Bucket, prefix []byte, before string, fn func(id []byte) (bool, error)) error {
	c := b.Cursor()
	start := append(append([]byte{}, prefix...), 0xff)
	if before != "" {
		start = append(append([]byte{}, prefix...), before...)
	}
	k, _ := c.Seek(start)
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
		more, err := fn(k[len(prefix):])
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// Counts returns how many leases are in each state, from counters kept in
// the same transactions as the changes (no scan).
func (s *BoltStore) Counts() (map[State]int64, error) {
	out := map[State]int64{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketMeta).Cursor()
		p := []byte("count/")
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			out[State(k[len(p):])] = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return out, err
}

func getLease(tx *bbolt.Tx, id string) (*Lease, error) {
	v := tx.Bucket(bucketLeases).Get([]byte(id))
	if v == nil {
		return nil, ErrNotFound
	}
	return decodeLease(v)
}

func decodeLease(v []byte) (*Lease, error) {
	var l Lease
	if err := json.Unmarshal(v, &l); err != nil {
		return nil, fmt.Errorf("decode lease: %w", err)
	}
	return &l, nil
}

func putLease(tx *bbolt.Tx, old, l *Lease) error {
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return putLeaseEncoded(tx, old, l, v)
}

// putLeaseEncoded stores l (encoded as v) and brings every index in line with
// the change from old (nil for a new lease) to l.
func putLeaseEncoded(tx *bbolt.Tx, old, l *Lease, v []byte) error {
	id := []byte(l.ID)
	if err := tx.Bucket(bucketLeases).Put(id, v); err != nil {
		return err
	}
	type idx struct {
		bucket []byte
		key    []byte
	}
	keys := func(x *Lease) []idx {
		if x == nil {
			return nil
		}
		out := []idx{{bucketState, IndexKey(string(x.State), id)}}
		if x.State == StateActive {
			out = append(out, idx{bucketExpiry, timeKey(x.ExpiresAt, id)})
		}
		if x.State == StateRevoking || x.State == StateIrrevocable {
			out = append(out, idx{bucketRevoke, timeKey(x.NextAttempt, id)})
		}
		if x.State.Terminal() {
			out = append(out, idx{bucketEnded, timeKey(x.EndedAt, id)})
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
		if err := tx.Bucket(n.bucket).Put(n.key, nil); err != nil {
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
func deleteLease(tx *bbolt.Tx, l *Lease) error {
	id := []byte(l.ID)
	for _, d := range []struct{ b, k []byte }{
		{bucketLeases, id},
		{bucketState, IndexKey(string(l.State), id)},
		{bucketEnded, timeKey(l.EndedAt, id)},
		{bucketAgent, IndexKey(l.AgentID, id)},
	} {
		if err := tx.Bucket(d.b).Delete(d.k); err != nil {
			return err
		}
	}
	for _, lid := range l.Lineage.IDs() {
		if err := tx.Bucket(bucketLineage).Delete(IndexKey(lid, id)); err != nil {
			return err
		}
	}
	return addCount(tx, l.State, -1)
}

func addCount(tx *bbolt.Tx, st State, d int64) error {
	b := tx.Bucket(bucketMeta)
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

// putOwnerKeys indexes a new lease by its agent and by each lineage id;
// neither changes during the lease's life.
func putOwnerKeys(tx *bbolt.Tx, l *Lease) error {
	id := []byte(l.ID)
	if err := tx.Bucket(bucketAgent).Put(IndexKey(l.AgentID, id), nil); err != nil {
		return err
	}
	for _, lid := range l.Lineage.IDs() {
		if err := tx.Bucket(bucketLineage).Put(IndexKey(lid, id), nil); err != nil {
			return err
		}
	}
	return nil
}

// IndexKey is the key of id under value in an index bucket: the length of
// value as a uvarint, value, then id. Values come from outside valet (an
// agent id holds the attestation's subject, a lineage id its jti), so no
// byte can be reserved as a separator; with the length in front, the keys
// of one value never start with IndexPrefix of another (uvarints are a
// prefix code), whatever bytes either holds.
func IndexKey(value string, id []byte) []byte {
	k := IndexPrefix(value)
	return append(k, id...)
}

// IndexPrefix is the part of IndexKey before the id: an index scan for
// value walks the keys that start with it.
func IndexPrefix(value string) []byte {
	k := make([]byte, 0, binary.MaxVarintLen64+len(value)+26)
	k = binary.AppendUvarint(k, uint64(len(value)))
	return append(k, value...)
}

// migrateIndexes brings the agent, lineage and state indexes to the
// current key layout.
func migrateIndexes(tx *bbolt.Tx) error {
	return MigrateIndexes(tx, bucketMeta, bucketLeases, [][]byte{bucketAgent, bucketLineage, bucketState}, func(v []byte) error {
		l, err := decodeLease(v)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketState).Put(IndexKey(string(l.State), []byte(l.ID)), nil); err != nil {
			return err
		}
		return putOwnerKeys(tx, l)
	})
}

// IndexLayout is the version of the index key layout (IndexKey) that
// MigrateIndexes records.
const IndexLayout = 2

// layoutKey is the key of the layout version in a store's meta bucket. It
// is absent in databases written before IndexKey, when index keys were
// value 0x00 id.
var layoutKey = []byte("layout")

// MigrateIndexes rebuilds the index buckets indexes of a store when its
// meta bucket does not record IndexLayout: it empties them and calls
// reindex with each value of the records bucket, which puts that record's
// index keys back; then it records the layout. It runs inside the
// transaction that opens the store, so a database is migrated whole or not
// at all. A layout newer than IndexLayout is an error: an older valet
// must not rewrite a newer one's indexes.
func MigrateIndexes(tx *bbolt.Tx, meta, records []byte, indexes [][]byte, reindex func(v []byte) error) error {
	m := tx.Bucket(meta)
	if v := m.Get(layoutKey); len(v) == 1 && v[0] == IndexLayout {
		return nil
	} else if len(v) > 0 {
		return fmt.Errorf("%s: index layout %v is newer than this valet knows (%d)", meta, v, IndexLayout)
	}
	for _, b := range indexes {
		if err := tx.DeleteBucket(b); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	err := tx.Bucket(records).ForEach(func(k, v []byte) error {
		if err := reindex(v); err != nil {
			return fmt.Errorf("%q: %w", k, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild the indexes of %s: %w", records, err)
	}
	return m.Put(layoutKey, []byte{IndexLayout})
}

// timeKey orders by time: 8 bytes of big-endian Unix nanoseconds, then the id.
func timeKey(t time.Time, id []byte) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(max(t.UnixNano(), 0)))
	return append(k, id...)
}

func keyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}
