// Package etcd is valet's storage engine for several replicas: every
// replica keeps the leases with their indexes, the grants, the agent
// records and signals, the job state, the audit log and the attestation
// replay cache under one key prefix of an etcd cluster (etcd v3.5 or
// later, through go.etcd.io/etcd/client/v3). Store implements the storage
// interfaces of the domain (broker.LeaseStore, broker.Auditor,
// broker.GrantStore, broker.AgentStore, broker.SignalStore,
// leases.RevocationStore, leases.ExpiryStore, audit.Reader, jobs.Store
// and, through ReplayCache, attest.ReplayCache) and keeps their promises
// (docs/ARCHITECTURE.md, Storage promises):
//
//   - A state change, its index entries and its audit record commit in
//     one etcd transaction that compares the mod revision of every key the
//     change read (the object, the audit log's head): compare-and-swap,
//     run again on a conflict. The log's head is one key, so appends from
//     every replica serialize on it and the chain stays one chain.
//   - Every write goes through one committer per replica that gathers
//     concurrent writes into one transaction (at most 120 operations and
//     1 MiB, below etcd's defaults of 128 and 1.5 MiB); a batch too large
//     for one transaction is split, and a duty over many records (expiry,
//     mass revocation, pruning) works in transactions that fit.
//   - Expiry is read from the values and their indexes, compared with the
//     time the caller passes; etcd's lease TTLs are never used for it (an
//     etcd lease's TTL is a minimum: a leader change of etcd resets it).
//   - A write whose outcome the client did not hear (a timeout) is found
//     out before the replica writes again: each transaction also writes
//     this process's marker key (under the replica's name and a random
//     incarnation, so replicas that share a name never write each
//     other's), compared by the next one.
//   - The writes of a leader's duty (Leader) are fenced: the transaction
//     also compares the create revision of this replica's election key, so
//     a deposed leader's write fails (ErrFenced) instead of landing.
//
// No other package touches the keys: they see the interfaces.
package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Options configures Open.
type Options struct {
	// Client is a connected etcd client; the Store does not close it.
	Client *clientv3.Client
	// Prefix is the key prefix of this valet's data, e.g. "/valet/"
	// (required; several valets may share a cluster under distinct
	// prefixes).
	Prefix string
	// RequestTimeout bounds one etcd request (default 5s). A request that
	// times out is reported unavailable (a 503 to clients).
	RequestTimeout time.Duration
	// Replica names this replica in its marker key and the election
	// (default: a random name per Open).
	Replica string
	// PendingGrace is how old a pending lease must be before
	// RecoverPending ends it: longer than any mint of any replica can
	// take (valet passes limits.mint_timeout plus a margin). Default 2m.
	PendingGrace time.Duration
	// Sink receives audit records after they commit (optional).
	Sink audit.Sink
	// Logger reports skipped records and etcd trouble (default
	// slog.Default()).
	Logger *slog.Logger
}

// Store is valet's data in etcd, as one replica sees and changes it.
type Store struct {
	client         *clientv3.Client
	kv             clientv3.KV
	p              string
	requestTimeout time.Duration
	pendingGrace   time.Duration
	replica        string
	sink           audit.Sink
	log            *slog.Logger

	// The committer's own: this process's marker key and the revision
	// of its last write, and the sequence of transaction ids. The key
	// carries incarnation, random per Open, besides the replica's name:
	// another process of the same name (this replica before a restart,
	// or a replica on the same host that defaults to its name) must
	// never write it, or this one could not find out its own lost
	// answers.
	markerKey   string
	markerRev   int64
	incarnation string
	txnSeq      uint64

	reqs    chan *commitReq
	closing chan struct{}
	wg      sync.WaitGroup
	closeMu sync.RWMutex
	closed  bool

	down    atomic.Bool // etcd did not answer the last health check
	skipped sync.Map

	// gates is this replica's copy of every flagged agent's gate, kept in
	// step with etcd by a watch on the gate keys: Gate (on the path of
	// every mint) reads no etcd. A gate key is written only when the gate
	// changes, never by a sighting. The copy may lag another replica's
	// commit by the watch's delay; a mint never relies on that lag:
	// creating a lease reads the agent's gate key in its transaction
	// (checkGate), so a quarantine committed anywhere refuses the lease.
	gates agents.Gates

	leaderMu  sync.RWMutex
	leaderKey string
	leaderRev int64
	onLost    func()

	revokeAtExpiry func(l *leases.Lease) bool
}

// Open returns the store under opts.Prefix: it reads the agents' gates,
// starts watching them and starts the committer and the health check.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("etcd store: no client")
	}
	if opts.Prefix == "" {
		return nil, errors.New("etcd store: the key prefix must not be empty")
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.PendingGrace <= 0 {
		opts.PendingGrace = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Replica == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		opts.Replica = hex.EncodeToString(b)
	}
	s := &Store{
		client: opts.Client, kv: opts.Client.KV, p: opts.Prefix, requestTimeout: opts.RequestTimeout,
		pendingGrace: opts.PendingGrace, replica: opts.Replica, sink: opts.Sink, log: opts.Logger,
		reqs: make(chan *commitReq, 256), closing: make(chan struct{}),
	}
	inc := make([]byte, 8)
	_, _ = rand.Read(inc)
	s.incarnation = hex.EncodeToString(inc)
	// A new key: absent (revision 0) until the first write.
	s.markerKey = s.markerPrefix() + s.replica + "/" + s.incarnation
	if err := s.checkNesting(ctx); err != nil {
		return nil, err
	}
	if err := s.loadGates(ctx); err != nil {
		return nil, err
	}
	s.wg.Add(2)
	go s.runCommitter()
	go s.runHealth()
	return s, nil
}

// families are the first path elements of every key the store writes
// under its prefix (keys.go).
var families = []string{"a/", "ag/", "agi/", "g/", "gate/", "gi/", "j/", "l/", "leader/", "li/", "r/", "s/", "si/", "w/"}

// ErrNestedPrefix: the prefix lies inside another valet's prefix, or
// holds keys of another valet: each would read the other's records.
var ErrNestedPrefix = errors.New("valets sharing an etcd cluster need prefixes that do not nest")

// checkNesting refuses a prefix inside the prefix of another valet (one
// holding an audit head or replica markers) and a prefix holding keys
// outside the store's families (another valet's under a longer prefix).
func (s *Store) checkNesting(ctx context.Context) error {
	octx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.requestTimeout)
	defer cancel()
	for i := len(s.p) - 2; i >= 0; i-- {
		if s.p[i] != '/' {
			continue
		}
		outer := s.p[:i+1]
		for _, k := range []string{outer + "a/h", outer + "w/"} {
			opts := []clientv3.OpOption{clientv3.WithCountOnly()}
			if strings.HasSuffix(k, "/w/") {
				opts = append(opts, clientv3.WithPrefix())
			}
			r, err := s.kv.Get(octx, k, opts...)
			if err != nil {
				return fmt.Errorf("etcd store: check the prefix: %w", s.unavailable(err))
			}
			if r.Count > 0 {
				return fmt.Errorf("etcd store: the prefix %q lies inside the prefix %q of another valet (it holds %s): %w", s.p, outer, k, ErrNestedPrefix)
			}
		}
	}
	all, err := s.kv.Get(octx, s.p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("etcd store: check the prefix: %w", s.unavailable(err))
	}
	n := all.Count
	for _, f := range families {
		if n == 0 {
			break
		}
		r, err := s.kv.Get(octx, s.p+f, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("etcd store: check the prefix: %w", s.unavailable(err))
		}
		n -= r.Count
	}
	if n > 0 {
		r, err := s.kv.Get(octx, s.p, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1000))
		foreign := ""
		if err == nil {
			for _, kv := range r.Kvs {
				k := string(kv.Key[len(s.p):])
				if !slices.ContainsFunc(families, func(f string) bool { return strings.HasPrefix(k, f) }) {
					foreign = " (for example " + strconv.Quote(string(kv.Key)) + ")"
					break
				}
			}
		}
		return fmt.Errorf("etcd store: the prefix %q holds %d keys that are not valet's%s, another valet's under a longer prefix: %w", s.p, n, foreign, ErrNestedPrefix)
	}
	return nil
}

// Close stops the committer, the watch and the health check. It does not
// close the client.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.closeMu.Unlock()
	s.wg.Wait()
	// The marker is this process's alone: nothing reads it once it
	// stopped. One left by a crash is pruned by the leader
	// (PruneMarkers).
	if s.markerRev != 0 {
		ctx, cancel := s.reqCtx(2 * time.Second)
		_, _ = s.kv.Delete(ctx, s.markerKey)
		cancel()
	}
	return nil
}

func (s *Store) markerPrefix() string { return s.p + "w/" }

// PruneMarkers deletes the marker keys last written before cutoff: those
// of processes that stopped without closing the store (a crash), and of
// replicas idle since. Deleting a live replica's marker is harmless: its
// next write finds the marker changed, reads it again and retries, and a
// write of it still on its way can no longer commit.
func (s *Store) PruneMarkers(ctx context.Context, cutoff time.Time) (int, error) {
	resp, err := s.kv.Get(s.opCtx(ctx), s.markerPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, s.unavailable(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		if string(kv.Key) == s.markerKey {
			continue
		}
		if at, ok := markerTime(string(kv.Value)); ok && !at.Before(cutoff) {
			continue
		}
		// Only if unchanged since read: a write of that process now
		// keeps it.
		r, err := s.kv.Txn(s.opCtx(ctx)).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit()
		if err != nil {
			return n, s.unavailable(err)
		}
		if r.Succeeded {
			n++
		}
	}
	return n, nil
}

// opCtx bounds one etcd request by the request timeout, and has a
// member without a leader refuse it at once (clientv3.WithRequireLeader)
// instead of holding it: a member cut off from the others, which the
// client's balancer still sends a share of requests to, answers "no
// leader" and the request goes to another member (a read is retried
// there by the client; a write's outcome is found out, and the write run
// again) while a quorum answers.
func (s *Store) opCtx(ctx context.Context) context.Context {
	if ctx == nil {
		ctx = context.Background()
	}
	c, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.requestTimeout)
	context.AfterFunc(c, cancel)
	return c
}

// reqCtx is opCtx for a request that must not end with its caller's
// context, with its cancel.
func (s *Store) reqCtx(limit time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(context.Background()), min(s.requestTimeout, limit))
}

// getOne reads the record at key and decodes it, or returns notFound when
// the key is absent; a read etcd did not answer is ErrUnavailable.
func getOne[T any](ctx context.Context, s *Store, key string, notFound error, decode func(v []byte) (*T, error)) (*T, error) {
	resp, err := s.kv.Get(s.opCtx(ctx), key)
	if err != nil {
		return nil, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, notFound
	}
	return decode(resp.Kvs[0].Value)
}

// ErrUnavailable: etcd did not answer (no quorum, unreachable, timed
// out). errors.Is(err, context.DeadlineExceeded) holds too, so the flows
// answer such failures as unavailable (503), not as an internal error.
var ErrUnavailable = errors.New("etcd is unavailable")

type unavailableError struct{ err error }

func (e unavailableError) Error() string { return "etcd is unavailable: " + e.err.Error() }
func (e unavailableError) Unwrap() []error {
	return []error{e.err, ErrUnavailable, context.DeadlineExceeded}
}

func (s *Store) unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return unavailableError{err}
}

// Ready reports whether etcd answered the last health check (a quorum
// read, every second): the replica's readiness.
func (s *Store) Ready() error {
	if s.down.Load() {
		return fmt.Errorf("%w: the last health check got no answer from a quorum", ErrUnavailable)
	}
	return nil
}

func (s *Store) runHealth() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ctx, cancel := s.reqCtx(2 * time.Second)
		_, err := s.kv.Get(ctx, s.p+"health", clientv3.WithCountOnly())
		cancel()
		if err != nil && !s.down.Load() {
			s.log.Error("etcd does not answer; requests that need the store fail at once (503) until it does", "err", err)
		} else if err == nil && s.down.Load() {
			s.log.Info("etcd answers again")
		}
		s.down.Store(err != nil)
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
	}
}

// ReportSkipped reports (an ERROR log line), once per place and id, a
// record that a batch skipped because it cannot be read.
func (s *Store) ReportSkipped(where, id string, err error) {
	if _, seen := s.skipped.LoadOrStore(where+"\x00"+id, true); seen {
		return
	}
	s.log.Error("skipped a record that cannot be read; the others are processed", "where", where, "id", id, "err", err)
}

// Audit implements broker.Auditor.
func (s *Store) Audit(ctx context.Context, now time.Time, e ...audit.Entry) error {
	return s.update(ctx, func(t *tx) error {
		_, err := t.appendAudit(now, e...)
		return err
	})
}

// StorageStats returns the size in bytes of the etcd member's database
// that this client reaches (the whole cluster's data, not only valet's)
// and 0 free pages (etcd compacts and defragments on its own schedule).
func (s *Store) StorageStats() (sizeBytes int64, freePages int, err error) {
	eps := s.client.Endpoints()
	if len(eps) == 0 {
		return 0, 0, errors.New("etcd store: no endpoints")
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.requestTimeout)
	defer cancel()
	for _, ep := range eps {
		st, err := s.client.Status(ctx, ep)
		if err == nil {
			return st.DbSize, 0, nil
		}
	}
	return 0, 0, s.unavailable(errors.New("no endpoint answered a status request"))
}

// The interfaces Store and its views implement.
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
