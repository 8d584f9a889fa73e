package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/builtin"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/broker/detectors"
	"github.com/valet-broker/valet/broker/jobs"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/broker/ssf"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/web"
)

// Server is a running valet: everything `valet serve` starts, assembled
// from a config so that tests can start the real thing in-process.
type Server struct {
	Config *Config
	// KEK is the key-encryption key for signing keys at rest.
	KEK []byte
	// PreviousKEK, set only while valet switches to a new KEK, still
	// opens what it sealed (see the kek-rotation job).
	PreviousKEK []byte
	Logger      *slog.Logger
	Clock       clock.Clock
	// Registry lists the backend types (default: builtin.Registry()).
	Registry backends.Registry
	// Notifier receives grant and break-glass events (optional; serve sets
	// the webhook dispatcher).
	Notifier broker.Notifier
	// Stdout is where the stdout witness of audit checkpoints writes
	// (default os.Stdout).
	Stdout io.Writer

	store      storageEngine
	storage    *storage
	sink       *audit.LineSink
	broker     *broker.Broker
	queue      *leases.RevocationQueue
	expirer    *leases.Expirer
	policy     *policy.Engine
	backends   map[string]backends.Backend
	dispatcher *notify.Dispatcher
	api        *api.Server
	metrics    *api.Metrics
	jobs       *jobs.Scheduler
	http       *http.Server
	listener   net.Listener

	cancel    context.CancelFunc
	// stopJobs ends the scheduler; jobsDone is closed once it has run
	// its shutdown jobs (close waits for it before the leadership ends).
	stopJobs context.CancelFunc
	jobsDone chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	ready     bool
	mu        sync.Mutex
}

// Open builds every component, recovers interrupted mints, starts the
// background workers and begins listening. It returns once the server
// accepts connections.
func (s *Server) Open(ctx context.Context) (err error) {
	cfg := s.Config
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.Clock == nil {
		s.Clock = clock.Real{}
	}
	if s.Registry == nil {
		s.Registry = builtin.Registry()
	}
	log := s.Logger
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if s.PreviousKEK != nil {
		if err := (kek.Ring{Current: s.KEK, Previous: s.PreviousKEK}).Check(); err != nil {
			return err
		}
		log.Warn("switching to a new key-encryption key: the previous one still opens what it sealed; the kek-rotation job seals everything again under the new one, and `valet kek finish` says when the previous one can go",
			"kek_id", kek.ID(s.KEK), "previous_kek_id", kek.ID(s.PreviousKEK))
	}

	if cfg.Audit.Sink != "" {
		if s.sink, err = audit.OpenSink(cfg.Audit.Sink, log); err != nil {
			return fmt.Errorf("audit.sink: %w", err)
		}
	}
	var sink audit.Sink
	if s.sink != nil {
		sink = s.sink
	}
	if s.storage, err = openStorage(ctx, cfg, sink, s.Clock, log); err != nil {
		return err
	}
	s.store = s.storage.store
	replay := s.storage.replay
	verifier, err := attest.New(ctx, attest.Options{
		Issuers: cfg.Issuers, MaxTokenBytes: cfg.Limits.MaxAttestationBytes, Clock: s.Clock, Replay: replay, Logger: log,
		CacheSize: cfg.Limits.AttestationCache,
	})
	if err != nil {
		return fmt.Errorf("issuers: %w", err)
	}
	var opVerifier broker.Verifier
	if len(cfg.Operators.Issuers) > 0 {
		opVerifier, err = attest.New(ctx, attest.Options{
			Issuers: cfg.Operators.IssuerConfigs(), MaxTokenBytes: cfg.Limits.MaxAttestationBytes, Clock: s.Clock, Replay: replay, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("operators.issuers: %w", err)
		}
	}

	known := api.KnownLabels{}
	for _, r := range cfg.Roles {
		known.Roles = append(known.Roles, r.Name)
	}
	for _, w := range cfg.Notifications.Webhooks {
		known.Webhooks = append(known.Webhooks, w.Name)
	}
	resolvedJobs, err := cfg.resolveJobs()
	if err != nil {
		return err
	}
	for _, j := range resolvedJobs {
		known.Jobs = append(known.Jobs, j.Name)
	}
	s.metrics = api.NewMetrics(prometheus.NewRegistry(), known)
	s.metrics.RegisterLeaseGauges(s.store.Counts)
	s.metrics.RegisterStorageGauges(s.store.StorageStats)
	now := s.Clock.Now
	s.metrics.RegisterExpiryBacklog(s.store.ExpiryBacklog, now)
	s.policy, err = policy.NewEngine(policy.Options{
		Dir: cfg.Policy.Dir, Logger: log, OnError: cfg.Policy.OnError,
		OnEvalError: s.metrics.PolicyErrored,
		OnReload: func(version string, rerr error) {
			s.metrics.PolicyReloaded(rerr != nil)
			if err := s.store.Audit(context.Background(), now(), broker.PolicyReloadRecord(version, rerr)); err != nil {
				log.Error("audit policy reload", "err", err)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}

	deps := backends.Deps{DataDir: cfg.DataDir, ConfigDir: cfg.ConfigDir, KEK: s.KEK, PreviousKEK: s.PreviousKEK, PublicURL: cfg.PublicURL, Clock: s.Clock, Logger: log}
	bes := map[string]backends.Backend{}
	s.backends = bes
	for i, bc := range cfg.Backends {
		be, err := s.Registry.New(bc.Type, bc.Name, bc.Options, deps)
		if err != nil {
			return fmt.Errorf("backends[%d]: %w", i, err)
		}
		bes[bc.Name] = be
	}

	s.queue, err = leases.NewRevocationQueue(leases.RevocationQueueConfig{
		Store: s.store, Clock: s.Clock, Logger: log,
		Attempts: cfg.Leases.RevokeAttempts, Backoff: cfg.Leases.RevokeBackoff.D(), MaxBackoff: cfg.Leases.RevokeMaxBackoff.D(),
		Concurrency: cfg.Leases.RevokeConcurrency, Timeout: leases.DefaultRevokeTimeout,
		OnAttempt: s.metrics.RevocationAttempt,
		Revoke:    broker.RevokeAtBackend(bes, s.store.ValidUntil),
	})
	if err != nil {
		return err
	}
	s.store.SetRevokeAtExpiry(broker.RevokesAtExpiry(bes))
	s.expirer = leases.NewExpirer(s.store, s.Clock, log)
	s.expirer.OnExpire = func(expired []*leases.Lease, now time.Time) {
		s.metrics.Expired(expired, now)
		s.broker.LeasesExpired(expired)
	}

	grantStore := s.storage.grants
	// valet transmits SETs (signed with a key of its own, published in its
	// JWKS) when a receiver of format set is configured.
	var transmitter *ssf.Transmitter
	var publishers []backends.KeyPublisher
	for _, w := range cfg.Notifications.Webhooks {
		if w.Format == "set" && transmitter == nil {
			if transmitter, err = ssf.Open(cfg.DataDir, kek.Ring{Current: s.KEK, Previous: s.PreviousKEK}, cfg.PublicURL, s.Clock); err != nil {
				return err
			}
			publishers = append(publishers, transmitter)
		}
	}
	var notifyStats func() any
	if s.Notifier == nil && len(cfg.Notifications.Webhooks) > 0 {
		opts := notify.Options{
			Webhooks: cfg.Notifications.Webhooks, Clock: s.Clock, Logger: log,
			OnResult: s.metrics.Notified,
		}
		if transmitter != nil {
			opts.SETs = transmitter
		}
		d, err := notify.New(opts)
		if err != nil {
			return err
		}
		s.dispatcher, s.Notifier = d, d
		notifyStats = func() any { return d.Stats() }
	}
	var sets broker.SETVerifier
	if len(cfg.Signals.Transmitters) > 0 {
		if sets, err = attest.NewSETVerifier(ctx, attest.SETOptions{
			Transmitters: cfg.Signals.Transmitters, PublicURL: cfg.PublicURL, MaxTokenBytes: cfg.Limits.MaxAttestationBytes, Replay: replay,
			Options: attest.Options{Clock: s.Clock, Logger: log},
		}); err != nil {
			return fmt.Errorf("signals.transmitters: %w", err)
		}
	}
	issuerNames := map[string]string{}
	for _, ic := range cfg.Issuers {
		if ic.Issuer != "" {
			issuerNames[ic.Issuer] = ic.Name
		}
	}
	dets, err := detectors.New(ctx, cfg.Signals.Detectors, detectors.Deps{Clock: s.Clock, Agents: s.store, Signals: s.store})
	if err != nil {
		return fmt.Errorf("signals.detectors: %w", err)
	}
	s.broker, err = broker.New(broker.Options{
		Config: cfg.Broker(), Store: s.store, Auditor: s.store, Verifier: verifier, Authorizer: s.policy, Backends: bes,
		Revoker: s.queue, Expiry: s.expirer, Clock: s.Clock, Logger: log, Observer: s.metrics,
		Grants: grantStore, Notifier: s.Notifier, Replay: replay,
		Agents: s.store, Signals: s.store, Detectors: dets, SETs: sets, IssuerNames: issuerNames, KeyPublishers: publishers,
	})
	if err != nil {
		return err
	}

	// The audit archive is bbolt's (cfg.resolveJobs leaves the job out
	// on etcd).
	archive, _ := s.store.(jobdefs.AuditArchiver)
	entries, err := jobdefs.Build(resolvedJobs, jobdefs.Deps{
		Broker: s.broker, Backends: bes, Audit: s.store, Storage: s.store, Archive: archive,
		DataDir: cfg.DataDir, KEK: s.KEK, PreviousKEK: s.PreviousKEK, PublicURL: cfg.PublicURL, Stdout: s.Stdout, Clock: s.Clock, Logger: log,
		Sealed: []jobdefs.SealedFile{{Name: "ssf_transmitter_key", Rewrap: func(ring kek.Ring) (kek.Report, error) {
			return ssf.RewrapKey(cfg.DataDir, ring)
		}}},
	})
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	s.jobs, err = jobs.New(jobs.Options{Jobs: entries, Store: s.store, Clock: s.Clock, Logger: log.With("component", "jobs"), Leader: s.storage.leadership(),
		Observer: s.metrics, Alerter: jobAlerter{s.Notifier}})
	if err != nil {
		return err
	}
	var auditKeys []map[string]any
	if pub, err := jobdefs.ReadCheckpointPublicKey(cfg.DataDir); err == nil {
		auditKeys = append(auditKeys, jobdefs.CheckpointJWK(pub))
	}

	// Invariant 3: intents left by a crash are revoked before anything new
	// is minted.
	recovered, err := s.store.RecoverPending(ctx, s.Clock.Now())
	if err != nil {
		return fmt.Errorf("recover pending leases: %w", err)
	}
	if len(recovered) > 0 {
		log.Warn("recovered pending leases from an interrupted run; revoking them", "count", len(recovered))
	}
	if err := s.store.Audit(ctx, s.Clock.Now(), broker.ServerStartRecord(s.policy.Version(), configHash(cfg), len(recovered), version)); err != nil {
		return err
	}

	proxies, err := clientip.ParseTrusted(cfg.TrustedProxies)
	if err != nil {
		return fmt.Errorf("trusted_proxies%w", err)
	}
	clientIP := clientip.New(proxies)
	operators := broker.NewOperators(cfg.Operators.Tokens, cfg.Operators.OperatorIssuers(), opVerifier)
	var assertions broker.Verifier
	if issuers := attest.ClientAssertionIssuers(cfg.Introspection, cfg.PublicURL); len(issuers) > 0 {
		assertions, err = attest.New(ctx, attest.Options{
			Issuers: issuers, MaxTokenBytes: cfg.Limits.MaxAttestationBytes, Clock: s.Clock, Replay: replay, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("introspection.clients: %w", err)
		}
	}
	resourceServers := broker.NewResourceServers(cfg.Introspection, assertions, s.Clock.Now)
	var sourceTokens broker.Verifier
	if len(cfg.Signals.Issuers) > 0 {
		sourceTokens, err = attest.New(ctx, attest.Options{
			Issuers: cfg.Signals.Issuers, MaxTokenBytes: cfg.Limits.MaxAttestationBytes, Clock: s.Clock, Replay: replay, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("signals.issuers: %w", err)
		}
	}
	signalSources := broker.NewSignalSources(cfg.Signals.Sources, cfg.Signals.SignalIssuers(), sourceTokens)
	var console http.Handler
	if !cfg.Console.Disabled {
		wc := web.Config{
			Broker: s.broker, Operators: operators, Audit: s.store, Console: cfg.Console,
			PublicURL: cfg.PublicURL, Clock: s.Clock, Logger: log.With("component", "console"), ClientIP: clientIP,
			Jobs: s.jobs,
		}
		c, err := web.New(ctx, wc)
		if err != nil && cfg.Console.OIDC != nil && cfg.Console.TokenLoginAllowed() {
			// The identity provider being down must not keep the broker
			// from starting: agents need their credentials. The console
			// starts with token sign-in only.
			log.Error("console single sign-on is unavailable; the console offers token sign-in only until valet restarts", "err", err)
			wc.Console.OIDC = nil
			c, err = web.New(ctx, wc)
		}
		if err != nil {
			return err
		}
		console = c
	}
	s.api = api.New(api.Config{
		Broker: s.broker, Operators: operators, ResourceServers: resourceServers, SignalSources: signalSources, Audit: s.store,
		Limits: cfg.Limits, PublicURL: cfg.PublicURL, Metrics: s.metrics, Logger: log, Ready: s.readiness,
		NotificationStats: notifyStats, UI: console, ClientIP: clientIP,
		Jobs: s.jobs, AuditKeys: auditKeys,
	})

	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	// The background duties: in this process for bbolt, on the elected
	// leader for etcd (storage.go).
	s.goRun(func() { s.storage.runDuties(wctx, s.duties) })
	if cfg.Policy.Watching() {
		s.goRun(func() {
			if err := s.policy.Watch(wctx); err != nil && wctx.Err() == nil {
				log.Error("policy watch stopped; SIGHUP still reloads", "err", err)
			}
		})
	}
	// Every replica flushes its own sightings, refusal summaries and
	// detections; resuming a containment is compare-and-swap on each
	// lease and on the signal's count, so replicas cannot double it.
	s.goRun(func() { s.broker.Run(wctx) })
	// The scheduler stops first, while this replica still leads, so the
	// jobs that run at shutdown (the audit checkpoint) still may.
	jctx, stopJobs := context.WithCancel(context.Background())
	s.stopJobs, s.jobsDone = stopJobs, make(chan struct{})
	s.goRun(func() {
		defer close(s.jobsDone)
		s.jobs.Run(jctx)
	})
	if s.dispatcher != nil {
		s.goRun(func() { s.dispatcher.Run(wctx) })
	}

	s.http = &http.Server{
		Handler:           s.api,
		MaxHeaderBytes:    cfg.Limits.MaxHeaderBytes,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.TLS != nil {
		tc, err := tlsConfig(cfg.TLS)
		if err != nil {
			return err
		}
		s.http.TLSConfig = tc
	}
	s.listener, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	ln := s.listener
	if s.http.TLSConfig != nil {
		ln = tls.NewListener(ln, s.http.TLSConfig)
	}
	s.goRun(func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	})
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	log.Info("valet is serving", "addr", s.listener.Addr().String(), "public_url", cfg.PublicURL, "policy_version", s.policy.Version())
	return nil
}

func (s *Server) goRun(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

func (s *Server) readiness() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		return errors.New("starting")
	}
	return s.storage.ready()
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// ReloadPolicy re-reads the policy directory (SIGHUP).
func (s *Server) ReloadPolicy() error { return s.policy.Reload() }

// Close stops accepting requests, lets in-flight ones finish (up to 10s),
// stops the workers and closes the store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	if s.broker != nil {
		s.broker.StopWaiting() // long polls answer now instead of holding up the shutdown
	}
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	} else if s.listener != nil {
		s.listener.Close()
	}
	if s.stopJobs != nil {
		s.stopJobs()
		<-s.jobsDone
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	for _, be := range s.backends {
		if c, ok := be.(io.Closer); ok {
			c.Close()
		}
	}
	var err error
	if s.storage != nil {
		err = s.storage.close()
	}
	if s.sink != nil {
		s.sink.Close()
	}
	return err
}

func tlsConfig(c *TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca_file: no PEM certificates found")
		}
		tc.ClientCAs = pool
	}
	switch c.ClientAuth {
	case "require":
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	case "verify_if_given":
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// jobAlerter announces a job that keeps failing as a job.failing event.
type jobAlerter struct{ n broker.Notifier }

// JobFailing implements jobs.Alerter.
func (a jobAlerter) JobFailing(al jobs.Alert) {
	if a.n == nil {
		return
	}
	a.n.Notify(broker.Event{Type: broker.EventJobFailing, Severity: broker.SeverityHigh, Time: al.Time,
		Job: &broker.JobFailure{Name: al.Job, Failures: al.Failures, Outcome: al.Outcome, Error: al.Error}})
}

// configHash identifies the loaded configuration in the audit log.
func configHash(cfg *Config) string {
	b, _ := yaml.Marshal(cfg)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
