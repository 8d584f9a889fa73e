package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
)

// DefaultDebounce is how long Watch waits after the last change in the policy
// directory before reloading, so that an editor's or a ConfigMap's burst of
// events (truncate, write, rename) causes one reload of the finished files.
const DefaultDebounce = 250 * time.Millisecond

// Options configure an Engine.
type Options struct {
	// Dir is the directory of *.cedar files, loaded in name order
	// (non-recursive). Required.
	Dir string
	// Logger receives load and reload messages; nil means slog.Default().
	Logger *slog.Logger
	// OnReload, if set, is called after every reload attempt (not after the
	// first load in NewEngine): on success with the new version and a nil
	// error; on failure with the version still in force and the reason,
	// which names the file and line. Calls are serialized, in reload order.
	// It must not call Reload.
	OnReload func(version string, err error)
	// Clock times Watch's debounce; nil means the wall clock.
	Clock clock.Clock
	// Debounce overrides DefaultDebounce when positive.
	Debounce time.Duration
	// OnError is what a policy that fails to evaluate does to a decision
	// (policy.on_error); "" means broker.PolicyOnErrorDeny.
	OnError broker.PolicyOnError
	// OnEvalError, if set, is called with the policy id of every
	// evaluation error (to count them), after it is logged.
	OnEvalError func(policyID string)
}

// Engine authorizes requests against the current policy set and replaces the
// set on Reload. Authorize reads the set through an atomic pointer and never
// waits for a reload. An Engine is safe for concurrent use.
type Engine struct {
	dir      string
	log      *slog.Logger
	onReload func(string, error)
	clock    clock.Clock
	debounce time.Duration
	onError  broker.PolicyOnError
	onEval   func(string)

	current  atomic.Pointer[Set]
	reloadMu sync.Mutex // serializes reloads, so an older read never replaces a newer one
}

var _ broker.Authorizer = (*Engine)(nil)

// NewEngine loads the policies of opts.Dir. It returns an error when Dir is
// not set, cannot be read, holds no policies, or holds a file that does not
// parse (see Load), or when OnError is not deny, skip or "": valet refuses
// to start rather than deny everything or run on policies other than the
// ones written.
func NewEngine(opts Options) (*Engine, error) {
	if opts.Dir == "" {
		return nil, errors.New("policy: Options.Dir must be set to a directory of *.cedar files")
	}
	switch opts.OnError {
	case "":
		opts.OnError = broker.PolicyOnErrorDeny
	case broker.PolicyOnErrorDeny, broker.PolicyOnErrorSkip:
	default:
		return nil, fmt.Errorf("policy: on_error must be deny or skip, not %q", opts.OnError)
	}
	e := &Engine{
		dir:      opts.Dir,
		log:      opts.Logger,
		onReload: opts.OnReload,
		clock:    opts.Clock,
		debounce: opts.Debounce,
		onError:  opts.OnError,
		onEval:   opts.OnEvalError,
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	if e.clock == nil {
		e.clock = clock.Real{}
	}
	if e.debounce <= 0 {
		e.debounce = DefaultDebounce
	}
	set, err := Load(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	e.current.Store(set)
	e.log.Info("policy set loaded", "dir", e.dir, "version", set.Version(), "policies", set.Len())
	e.warnIfNoPermits(set)
	return e, nil
}

// Authorize decides req with the current policy set, as Set.Authorize does
// but with the engine's OnError. Every policy that fails to evaluate is
// logged at WARN (policy id and effect, request id, agent, role, action,
// the decision and the evaluator's error) and reported to OnEvalError.
func (e *Engine) Authorize(_ context.Context, req broker.AuthzRequest) (broker.Decision, error) {
	dec, err := e.current.Load().decide(req, e.onError)
	for _, pe := range dec.Errors {
		effect := "permit"
		if pe.Forbid {
			effect = "forbid"
		}
		e.log.Warn("policy evaluation error", "policy", pe.PolicyID, "effect", effect, "request_id", req.RequestID,
			"agent", req.Principal.ID, "role", req.Role.Name, "action", string(req.Action), "allowed", dec.Allowed,
			"on_error", string(e.onError), "version", dec.Version, "err", pe.Message)
		if e.onEval != nil {
			e.onEval(pe.PolicyID)
		}
	}
	return dec, err
}

// Version returns the version of the current policy set.
func (e *Engine) Version() string { return e.current.Load().Version() }

// Set returns the current policy set.
func (e *Engine) Set() *Set { return e.current.Load() }

// Reload reads the policy directory again and, if it loads, makes it the
// current set. On any error (a file that does not parse, a duplicate id, no
// policies left, an unreadable directory) the current set stays in force;
// the error is logged, passed to OnReload with the version still in force,
// and returned.
func (e *Engine) Reload() error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()

	old := e.current.Load()
	set, err := Load(e.dir)
	if err != nil {
		e.log.Error("policy reload failed; keeping the current policies", "dir", e.dir, "version", old.Version(), "err", err)
		if e.onReload != nil {
			e.onReload(old.Version(), err)
		}
		return err
	}
	e.current.Store(set)
	if set.Version() != old.Version() {
		e.log.Info("policy set reloaded", "dir", e.dir, "old_version", old.Version(), "version", set.Version(), "policies", set.Len())
		e.warnIfNoPermits(set)
	} else {
		e.log.Debug("policy set reloaded, unchanged", "dir", e.dir, "version", set.Version())
	}
	if e.onReload != nil {
		e.onReload(set.Version(), nil)
	}
	return nil
}

// Watch reloads the policies whenever a file in the directory changes,
// waiting until changes have paused for the debounce interval. It returns
// nil when ctx is done, or an error if the directory cannot be watched.
// Reload errors do not stop it (they are logged and reported to OnReload).
// Only the directory's own entries are watched: a change to the target of a
// symbolic link is seen when the link itself is replaced, which is how
// Kubernetes updates ConfigMap volumes.
func (e *Engine) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	defer w.Close()
	if err := w.Add(e.dir); err != nil {
		return fmt.Errorf("watch policy directory %s: %w", e.dir, err)
	}
	return e.reloadOnChange(ctx, w.Events, w.Errors)
}

// reloadOnChange is Watch's loop: it reloads once the changes announced on
// events (and the watcher's errors, after which changes may have been
// missed) have paused for the debounce interval, until ctx is done or a
// channel closes.
func (e *Engine) reloadOnChange(ctx context.Context, events <-chan fsnotify.Event, errs <-chan error) error {
	var (
		timer clock.Timer
		fire  <-chan time.Time // nil while no reload is pending
	)
	schedule := func() {
		if timer != nil {
			timer.Stop()
		}
		timer = e.clock.NewTimer(e.debounce)
		fire = timer.C()
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return errors.New("policy watcher stopped")
			}
			if ev.Op == fsnotify.Chmod { // touch, indexers: contents unchanged
				continue
			}
			schedule()
		case err, ok := <-errs:
			if !ok {
				return errors.New("policy watcher stopped")
			}
			// Usually an event queue overflow: changes may have been
			// missed, so reload to be sure.
			e.log.Warn("policy watcher error; reloading", "dir", e.dir, "err", err)
			schedule()
		case <-fire:
			timer, fire = nil, nil
			_ = e.Reload() // logged and reported to OnReload
		}
	}
}

func (e *Engine) warnIfNoPermits(s *Set) {
	if s.permits == 0 {
		e.log.Warn("policy set has no permit policies; every request will be denied", "dir", e.dir, "version", s.Version())
	}
}
