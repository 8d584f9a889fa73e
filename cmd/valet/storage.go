package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/etcd"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// Storage engines of storage.engine.
const (
	engineBbolt = "bbolt"
	engineEtcd  = "etcd"
)

// StorageConfig is the storage section: which engine keeps valet's data.
// bbolt (the default) is one file under data_dir for one process; etcd
// is a cluster shared by several replicas (broker/etcd).
type StorageConfig struct {
	Engine string      `yaml:"engine"`
	Etcd   etcd.Config `yaml:"etcd"`
}

// SetDefaults sets the defaults of absent keys: bbolt.
func (c *StorageConfig) SetDefaults() {
	c.Engine = engineBbolt
	c.Etcd.SetDefaults()
}

// UnmarshalYAML decodes on top of the defaults.
func (c *StorageConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type plain StorageConfig
	return config.DecodeOnDefaults(c.SetDefaults, (*plain)(c), unmarshal)
}

// Validate checks the section, naming the full key in each error.
func (c *StorageConfig) Validate() error {
	var errs []error
	if c.Engine != engineBbolt && c.Engine != engineEtcd {
		errs = append(errs, fmt.Errorf("storage.engine must be bbolt or etcd; it is %q", c.Engine))
	}
	errs = append(errs, c.Etcd.Validate("storage.etcd", c.Engine == engineEtcd))
	return errors.Join(errs...)
}

// storageEngine is what the server needs of an engine's store.
type storageEngine interface {
	broker.LeaseStore
	broker.Auditor
	broker.AgentStore
	broker.SignalStore
	leases.RevocationStore
	leases.ExpiryStore
	audit.Reader
	jobs.Store
	RecoverPending(ctx context.Context, now time.Time) ([]*leases.Lease, error)
	PruneEnded(ctx context.Context, cutoff time.Time, limit int) (int, error)
	ExpiryBacklog(now time.Time) (int, error)
	Counts() (map[leases.State]int64, error)
	StorageStats() (sizeBytes int64, freePages int, err error)
	SetRevokeAtExpiry(f func(l *leases.Lease) bool)
	AuditHead(ctx context.Context) (audit.Head, error)
	VerifyAuditCheckpoints(ctx context.Context, cps []audit.Checkpoint) (audit.VerifyResult, error)
	Close() error
}

// replayCache is the attestation replay cache with its housekeeping.
type replayCache interface {
	Consume(ctx context.Context, key string, exp time.Time) error
	Purge(now time.Time) (int, error)
}

// storage is the opened engine: its store and views, and for etcd the
// election that decides which replica runs the background duties.
type storage struct {
	store  storageEngine
	grants broker.GrantStore
	replay replayCache
	// leader is nil for bbolt: one process always leads.
	leader *etcd.Leader
	etcd   *etcd.Store
	close  func() error
}

// openStorage opens the configured engine.
func openStorage(ctx context.Context, cfg *Config, sink audit.Sink, clk clock.Clock, log *slog.Logger) (*storage, error) {
	if cfg.Storage.Engine != engineEtcd {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data_dir: %w", err)
		}
		s, err := bolt.Open(filepath.Join(cfg.DataDir, "valet.db"), bolt.Options{Sink: sink, Logger: log})
		if err != nil {
			return nil, err
		}
		return &storage{store: s, grants: s.Grants(), replay: s.ReplayCache(clk), close: s.Close}, nil
	}
	ec := cfg.Storage.Etcd
	client, err := ec.Client()
	if err != nil {
		return nil, err
	}
	replica := ec.Replica
	if replica == "" {
		replica, _ = os.Hostname()
	}
	s, err := etcd.Open(ctx, etcd.Options{
		Client: client, Prefix: ec.Prefix, RequestTimeout: ec.RequestTimeout.D(), Replica: replica,
		// A pending lease younger than this may be a mint under way on
		// another replica.
		PendingGrace: cfg.Limits.MintGrace(),
		Sink:         sink, Logger: log.With("component", "etcd"),
	})
	if err != nil {
		client.Close()
		return nil, err
	}
	name := replica
	if cfg.PublicURL != "" {
		name = replica + " " + cfg.PublicURL
	}
	return &storage{
		store: s, grants: s.Grants(), replay: s.ReplayCache(clk), etcd: s,
		leader: s.NewLeader(int(ec.LeaderTTL.D()/time.Second), name),
		close: func() error {
			err := s.Close()
			return errors.Join(err, client.Close())
		},
	}, nil
}

// leadership is the scheduler's leadership check.
func (st *storage) leadership() jobs.Leadership {
	if st.leader == nil {
		return jobs.Always{}
	}
	return st.leader
}

// ready is the engine's part of readiness: for etcd, that a quorum
// answered the last health check.
func (st *storage) ready() error {
	if st.etcd == nil {
		return nil
	}
	return st.etcd.Ready()
}

// runDuties runs duties until ctx ends: at once for bbolt, for etcd each
// time this replica is elected leader, with a context that ends when its
// leadership does.
func (st *storage) runDuties(ctx context.Context, duties func(ctx context.Context)) {
	if st.leader == nil {
		duties(ctx)
		return
	}
	st.leader.Run(ctx, duties)
}

// duties are the background duties that must run once in a cluster: the
// revocation queue and the expirer; with etcd, the watch that tells them
// of other replicas' writes and the recovery of intents that a dead
// replica left. The scheduled jobs ask the same leadership before every
// run (jobs.Leadership).
func (s *Server) duties(ctx context.Context) {
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	run(func() { s.queue.Run(ctx) })
	run(func() { s.expirer.Run(ctx) })
	if e := s.storage.etcd; e != nil {
		// Other replicas' leases expire and are revoked on time.
		run(func() { e.WatchDuties(ctx, s.expirer.Notify, s.queue.Kick) })
		run(func() { e.RunRecovery(ctx, s.Clock.Now, time.Minute, s.queue.Kick) })
		// What was queued before this replica led is due now.
		s.queue.Kick()
	}
	wg.Wait()
}
