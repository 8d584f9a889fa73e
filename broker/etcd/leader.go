package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// dutyKey marks a context as a leader's duty.
type dutyKey struct{}

// LeaderDuty returns ctx marked as the context of a leader's duty (the
// revocation queue's Run, the broker's background loop): the writes made
// with it are fenced like the duties that only the leader ever calls
// (expiry, grant expiry, releases, pruning, job state).
func LeaderDuty(ctx context.Context) context.Context { return context.WithValue(ctx, dutyKey{}, true) }

func isDuty(ctx context.Context) bool { v, _ := ctx.Value(dutyKey{}).(bool); return v }

// fencing reports whether writes of duties are fenced: once a Leader
// runs on the store. A store without one (a single replica's tests) does
// not fence.
func (s *Store) fencing() bool {
	s.leaderMu.RLock()
	defer s.leaderMu.RUnlock()
	return s.onLost != nil
}

// fence returns the leader key and its create revision while this
// replica leads; "" when it does not.
func (s *Store) fence() (string, int64) {
	s.leaderMu.RLock()
	defer s.leaderMu.RUnlock()
	return s.leaderKey, s.leaderRev
}

func (s *Store) setLead(key string, rev int64) {
	s.leaderMu.Lock()
	s.leaderKey, s.leaderRev = key, rev
	s.leaderMu.Unlock()
}

// lostLead is called when a fenced write found the leader key gone or
// replaced: this replica stops leading at once.
func (s *Store) lostLead() {
	s.leaderMu.Lock()
	s.leaderKey, s.leaderRev = "", 0
	f := s.onLost
	s.leaderMu.Unlock()
	if f != nil {
		f()
	}
}

// Leader campaigns for this replica in an etcd election
// (concurrency.Election under the store's prefix "leader/") and, while it
// leads, runs the duties that must run once in the cluster: they get a
// context that ends when the leadership does. Its Leading answers the
// jobs scheduler's one leadership check (jobs.Leadership).
type Leader struct {
	s       *Store
	ttl     int
	name    string
	leading atomic.Bool

	mu     sync.Mutex
	cancel context.CancelFunc
	// Changes receives true when this replica becomes leader and false
	// when it stops (for logs, metrics and tests); never blocks.
	changes chan bool
}

// NewLeader returns the election of s's replicas. ttl is the session's
// lifetime in seconds without a keep-alive (how long a dead leader holds
// the lead; at least 1). name is what the election key holds (the
// replica's address, for operators).
func (s *Store) NewLeader(ttl int, name string) *Leader {
	l := &Leader{s: s, ttl: max(ttl, 1), name: name, changes: make(chan bool, 16)}
	s.leaderMu.Lock()
	s.onLost = l.lost
	s.leaderMu.Unlock()
	return l
}

// Leading reports whether this replica leads now.
func (l *Leader) Leading() bool { return l.leading.Load() }

// Changes receives true when this replica becomes leader and false when
// it stops; a full channel drops changes.
func (l *Leader) Changes() <-chan bool { return l.changes }

func (l *Leader) note(v bool) {
	select {
	case l.changes <- v:
	default:
	}
}

func (l *Leader) lost() {
	l.leading.Store(false)
	l.mu.Lock()
	if l.cancel != nil {
		l.cancel()
	}
	l.mu.Unlock()
}

// Run campaigns until ctx ends. Each time this replica wins, it calls
// duties with a context (marked LeaderDuty) that ends when the
// leadership ends (the session expired, a fenced write found the key
// gone, or ctx ended) and waits for duties to return before campaigning
// again. On return it resigns, so another replica takes over at once.
func (l *Leader) Run(ctx context.Context, duties func(ctx context.Context)) {
	for ctx.Err() == nil {
		if err := l.term(ctx, duties); err != nil && ctx.Err() == nil {
			l.s.log.Warn("leader election: retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (l *Leader) term(ctx context.Context, duties func(ctx context.Context)) error {
	sess, err := concurrency.NewSession(l.s.client, concurrency.WithTTL(l.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("open a session: %w", err)
	}
	defer sess.Close()
	e := concurrency.NewElection(sess, l.s.p+"leader/")
	// A cancelled campaign resigns with the client's own context (etcd's
	// concurrency package), which retries for as long as etcd is away:
	// the campaign runs on its own, and a stopping replica does not wait
	// for it (closing the client ends it).
	campaign := make(chan error, 1)
	go func() { campaign <- e.Campaign(ctx, l.name) }()
	select {
	case err = <-campaign:
	case <-ctx.Done():
		return nil
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	dctx, cancel := context.WithCancel(LeaderDuty(ctx))
	l.mu.Lock()
	l.cancel = cancel
	l.mu.Unlock()
	l.s.setLead(e.Key(), e.Rev())
	l.leading.Store(true)
	l.s.log.Info("this replica leads: it runs expiry, the revocation queue, recovery and the scheduled jobs", "replica", l.name)
	l.note(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		duties(dctx)
	}()
	select {
	case <-sess.Done():
		l.s.log.Warn("the leader's etcd session ended; stopping the leader's duties", "replica", l.name)
	case <-dctx.Done():
	}
	l.leading.Store(false)
	l.s.setLead("", 0)
	cancel()
	<-done
	l.note(false)
	rctx, rcancel := context.WithTimeout(context.Background(), l.s.requestTimeout)
	_ = e.Resign(rctx)
	rcancel()
	return nil
}

// WatchDuties tells the leader's duties about writes of every replica
// until ctx ends: notifyExpiry with the expiry of each lease that became
// active or was renewed (the Expirer re-arms for an earlier one), kick
// when a lease joins the revocation queue (the queue wakes). A lease
// minted or ended on another replica is then expired and revoked on
// time, not at the leader's next timer.
func (s *Store) WatchDuties(ctx context.Context, notifyExpiry func(time.Time), kick func()) {
	exp, q := s.p+"li/e/", s.p+"li/q/"
	for ctx.Err() == nil {
		wch := s.client.Watch(clientv3.WithRequireLeader(ctx), s.p+"li/", clientv3.WithPrefix(), clientv3.WithFilterDelete())
		for wr := range wch {
			kicked := false
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				switch {
				case strings.HasPrefix(k, exp) && len(k) >= len(exp)+16:
					if t, ok := parseTkey(k[len(exp) : len(exp)+16]); ok {
						notifyExpiry(t)
					}
				case strings.HasPrefix(k, q) && !kicked:
					kick()
					kicked = true
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// markerIdle is how long a process's write marker stays after its last
// write before the leader prunes it (a crashed process's never goes).
const markerIdle = time.Hour

// RunRecovery ends, every interval until ctx ends, the pending leases
// older than the store's PendingGrace (RecoverPending): with several
// replicas a replica that died mid-mint may never start again to recover
// its own intents, so the leader does. kick wakes the revocation queue
// after leases were recovered. It also prunes the write markers idle
// for an hour (PruneMarkers).
func (s *Store) RunRecovery(ctx context.Context, now func() time.Time, interval time.Duration, kick func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		out, err := s.RecoverPending(ctx, now())
		if err != nil && ctx.Err() == nil {
			s.log.Error("recover pending leases", "err", err)
		}
		if _, err := s.PruneMarkers(ctx, now().Add(-markerIdle)); err != nil && ctx.Err() == nil {
			s.log.Warn("prune the write markers of stopped replicas", "err", err)
		}
		if len(out) > 0 {
			s.log.Warn("recovered pending leases left by a replica that stopped mid-mint; revoking them", "count", len(out))
			kick()
		}
	}
}
