// Package bolt is valet's storage engine for one process: a single bbolt
// file holds the leases with their indexes, the grants, the agent records
// and signals, the audit log and the attestation replay cache. Store
// implements the storage interfaces of the domain (broker.LeaseStore,
// broker.Auditor, broker.GrantStore, broker.AgentStore,
// broker.SignalStore, leases.RevocationStore, leases.ExpiryStore,
// audit.Reader and, through ReplayCache, attest.ReplayCache) and keeps their promises: a state change
// and its audit record commit in one transaction; single-use things
// (redeeming a grant, consuming a jti) are compare-and-swap in one
// transaction; expiry is read from the values stored, never from timers or
// TTLs of the engine. Every write goes through one group committer, so
// concurrent writers share an fsync.
//
// No other package touches the file: they see the interfaces.
package bolt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Store owns the database file. Its lease methods are in leases.go and
// queue.go, its audit log in audit.go; Grants and ReplayCache keep their
// records in the same file and write through the same committer, so their
// writes share commits.
type Store struct {
	db   *bbolt.DB
	c    *committer
	sink audit.Sink
	log  *slog.Logger

	skipped sync.Map // ids of unreadable records already reported
	// gates is the in-memory copy of every flagged agent's gate, kept in
	// step with the commits that write agent records (tx.OnCommit), so
	// that Gate reads no transaction. The store is the only writer of its
	// file, so nothing else can change a record behind it.
	gates agents.Gates

	// archiveDir holds the audit archive's segments (audit.ArchiveDir of
	// the file's directory); segmentRecords bounds one segment's records
	// (audit.MaxSegmentRecords; tests make it smaller).
	archiveDir     string
	segmentRecords int

	revokeAtExpiry func(l *leases.Lease) bool

	// unindexed counts the leases whose owner keys wait for a run of
	// indexOwners (owners.go), which starts at indexRun of them;
	// indexing is set while a run is under way, in bg.
	unindexed atomic.Int64
	indexRun  int
	indexing  atomic.Bool
	bg        sync.WaitGroup
}

// Options configures Open.
type Options struct {
	// Sink receives audit records after they commit (optional).
	Sink audit.Sink
	// MaxBatch bounds how many writes share one commit (default 512).
	MaxBatch int
	// ReadOnly opens the file without taking the writer lock (for offline
	// tools such as `valet audit verify --data-dir`).
	ReadOnly bool
	// Logger reports records that a batch had to skip because they cannot
	// be read (default slog.Default()).
	Logger *slog.Logger
}

// initialMmap is the size bbolt maps at first: 1 GiB where addresses are
// 64 bits wide, else bbolt's own choice.
const initialMmap = (strconv.IntSize / 64) << 30

// ErrInUse: another process holds the database file (bbolt allows one
// writer, and no reader beside it).
var ErrInUse = errors.New("the database is in use by another valet process")

// Open opens (creating if needed) the database at path, creates every
// bucket and brings the indexes to the current key layout. It fails after
// two seconds, with ErrInUse, if another process holds the file.
func Open(path string, opts Options) (*Store, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      2 * time.Second,
		FreelistType: bbolt.FreelistMapType,
		// The list of free pages is not written at each commit but
		// rebuilt when the file is opened (a walk of its pages, as etcd
		// does): written, it takes one contiguous run of pages per
		// commit, eight bytes per free page, and once deletions leave
		// tens of thousands of free pages no run of free pages is long
		// enough, so every commit grew the file and rewrote hundreds of
		// pages.
		NoFreelistSync: true,
		// Map a gigabyte from the start (of address space, on 64-bit
		// systems), so the file's growth does not remap it (each remap
		// waits for every reader) until then.
		InitialMmapSize: initialMmap,
		ReadOnly:        opts.ReadOnly,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bbolt.Tx) error {
			for _, init := range []func(*bbolt.Tx) error{initLeases, initAudit, initGrants, initReplay, initAgents, initJobs} {
				if err := init(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("initialise %s: %w", path, err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{db: db, sink: opts.Sink, log: opts.Logger, archiveDir: audit.ArchiveDir(filepath.Dir(path)),
		segmentRecords: audit.MaxSegmentRecords, indexRun: indexRun}
	n, err := countUnindexed(db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	s.unindexed.Store(n)
	if err := s.loadGates(); err != nil {
		db.Close()
		return nil, fmt.Errorf("read the agents of %s: %w", path, err)
	}
	if !opts.ReadOnly {
		s.c = newCommitter(db, opts.MaxBatch)
		// Leases left unindexed by the last process get their run now,
		// not at the next mint.
		s.noteUnindexed(0)
	}
	return s, nil
}

// update runs fn in a write transaction that may be shared with other
// concurrent writes (group commit): it returns after the transaction is on
// disk, or failed. ctx bounds only the wait for a place in the commit
// queue; once queued, the write runs and update waits for it. fn may run
// more than once and must only touch the database and variables it resets
// on each run.
func (s *Store) update(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if s.c == nil {
		return errors.New("lease store is read-only")
	}
	return s.c.do(ctx, fn)
}

// Close stops the committer and closes the database.
func (s *Store) Close() error {
	if s.c != nil {
		s.c.close()
	}
	s.bg.Wait()
	return s.db.Close()
}

// Audit appends entries that are not tied to a state change.
func (s *Store) Audit(ctx context.Context, now time.Time, e ...audit.Entry) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		_, err := appendAudit(tx, now, s.sink, e...)
		return err
	})
}

// ReportSkipped reports (an ERROR log line), once per place and id, a
// record that a batch over many records (expiry, the revocation queue,
// recovery, listing, pruning; the grant store's batches too) skipped
// because it cannot be read. The batch goes on without it.
func (s *Store) ReportSkipped(where, id string, err error) {
	if _, seen := s.skipped.LoadOrStore(where+"\x00"+id, true); seen {
		return
	}
	s.log.Error("skipped a record that cannot be read; the others are processed", "where", where, "id", id, "err", err)
}

// The interfaces Store and its views implement, with the promises written
// on them.
var (
	_ broker.LeaseStore      = (*Store)(nil)
	_ broker.Auditor         = (*Store)(nil)
	_ leases.RevocationStore = (*Store)(nil)
	_ leases.ExpiryStore     = (*Store)(nil)
	_ audit.Reader           = (*Store)(nil)
	_ broker.GrantStore      = (*Grants)(nil)
	_ broker.AgentStore      = (*Store)(nil)
	_ broker.SignalStore     = (*Store)(nil)
	_ attest.ReplayCache     = (*ReplayCache)(nil)
	_ jobs.Store             = (*Store)(nil)
)

// StorageStats returns the database file's size in bytes and its free
// pages (pages bbolt can reuse; the file does not shrink by itself).
func (s *Store) StorageStats() (sizeBytes int64, freePages int, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		sizeBytes = tx.Size()
		return nil
	})
	st := s.db.Stats()
	return sizeBytes, st.FreePageN, err
}
