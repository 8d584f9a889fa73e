package broker

import (
	"context"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// The storage the flows need, as small interfaces. A storage engine (the
// bbolt file of broker/bolt for one process; a replicated store for
// several) implements all of them, and keeps the promises written here;
// docs/ARCHITECTURE.md lists them together. Every promise holds on every
// replica: what one replica committed, all see.
//
// Promises common to every method that changes state and takes an
// audit.Entry:
//
//   - The change and its audit record commit together, in one
//     transaction: neither is ever durable without the other (invariant 7).
//     An entry whose Kind is empty writes no record. The engine fills the
//     record's subject (lease, agent, role; grant_id) from the object
//     (leases.Lease.Recorded, grants.Grant.Recorded) and chains it
//     (audit.Chain) in the order the transactions commit.
//   - The method returns only once the transaction is durable (on disk,
//     or acknowledged by a quorum), or has failed; a failure leaves
//     nothing behind. ctx may end the wait for a place to write, never a
//     write already under way: the method then still reports its outcome.
//   - A change is compare-and-swap on the stored object: the engine reads
//     it, applies the domain's state change (the methods of leases.Lease
//     and grants.Grant) and writes it only if nobody changed it meanwhile
//     (bbolt: one writer at a time; etcd: a transaction comparing the
//     revision), retrying the change on a conflict. A state change that
//     returns leases.ErrUnchanged or grants.ErrUnchanged writes nothing and
//     returns the object as it is.
//   - Expiry is read from the stored values (a lease's expires_at, a
//     grant's deadlines), compared with the time the caller passes: never
//     the engine's own TTLs or clocks.

// LeaseStore is durable lease storage as the flows use it.
type LeaseStore interface {
	// CreatePending durably records the intent to mint l (its State must be
	// StatePending) before the backend is called (invariant 3). It returns
	// only after the record is durable. It writes no audit record.
	CreatePending(ctx context.Context, l *leases.Lease) error
	// CreateActive records a lease minted without side effects outside
	// valet directly as active, with its audit record, in one transaction.
	CreateActive(ctx context.Context, l *leases.Lease, now time.Time, e audit.Entry) error
	// Activate turns a pending lease active with its backend handle
	// (leases.Lease.Activate). It returns leases.ErrNotFound, or
	// leases.ErrState if the lease is no longer pending (for example
	// recovery revoked it meanwhile).
	Activate(ctx context.Context, id string, a leases.Activation, now time.Time, e audit.Entry) (*leases.Lease, error)
	// Get returns a lease or leases.ErrNotFound.
	Get(ctx context.Context, id string) (*leases.Lease, error)
	// List returns leases matching f, newest first (ids are time-ordered),
	// below f.Before, at most f.Limit (100 when not positive, at most
	// 1000). A filter on agent, lineage or state is an index scan, not a
	// scan of every lease. A record that cannot be read is skipped (and
	// reported), never allowed to fail the listing.
	List(ctx context.Context, f leases.Filter) ([]*leases.Lease, error)
	// Renew moves an active lease's expiry (leases.Lease.Renew). It
	// returns leases.ErrState if the lease is not active or already past
	// its expiry at now.
	Renew(ctx context.Context, id string, now, expiresAt time.Time, e audit.Entry) (*leases.Lease, error)
	// Abandon ends a pending lease whose mint failed (leases.Lease.Abandon):
	// it becomes revoking (reason revoked), keeps the backend's handle if
	// there was one, and is queued for revocation. A lease that is no
	// longer pending is returned unchanged.
	Abandon(ctx context.Context, id, handle string, now time.Time, e audit.Entry) (*leases.Lease, error)
	// End ends a pending or active lease for reason (StateReleased,
	// StateRevoked or StateExpired; leases.Lease.End): the lease becomes
	// revoking and is queued for revocation at its backend at once. Ending
	// a lease that is already ending or ended returns it unchanged
	// (revoking twice is harmless).
	End(ctx context.Context, id string, reason leases.State, now time.Time, e audit.Entry) (*leases.Lease, error)
}

// Auditor appends audit records that are not part of a state change (a
// denied mint, a policy reload), in one transaction, durable when it
// returns.
type Auditor interface {
	Audit(ctx context.Context, now time.Time, e ...audit.Entry) error
}

// GrantStore is durable storage of approval requests as the flows use it.
type GrantStore interface {
	// Create records a new grant with its audit record.
	Create(ctx context.Context, g *grants.Grant, now time.Time, e audit.Entry) error
	// Get returns a grant or grants.ErrNotFound.
	Get(ctx context.Context, id string) (*grants.Grant, error)
	// List returns grants matching f, newest first, at most f.Limit (100
	// when not positive, at most 1000); a filter on state, agent or
	// pending review is an index scan. A record that cannot be read is
	// skipped (and reported).
	List(ctx context.Context, f grants.Filter) ([]*grants.Grant, error)
	// Approve adds an operator's approval (grants.Grant.Approve); the
	// errors are its errors.
	Approve(ctx context.Context, id string, d grants.Decision, redeemWithin time.Duration, e audit.Entry) (*grants.Grant, error)
	// Deny ends a pending or approved grant (grants.Grant.Deny).
	Deny(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error)
	// Redeem consumes an approved grant (grants.Grant.Redeem). It is the
	// single use of an approval (invariant 9): compare-and-swap from
	// approved to redeemed, so of concurrent redeems, on any replicas,
	// exactly one wins and the others see grants.ErrState.
	Redeem(ctx context.Context, id, agentID, binding string, now time.Time, e audit.Entry) (*grants.Grant, error)
	// Redeemed records the lease a redeemed grant minted (no audit
	// record: the mint has its own).
	Redeemed(ctx context.Context, id, leaseID string, now time.Time) (*grants.Grant, error)
	// Unredeem gives a redeemed grant back after its mint failed
	// (grants.Grant.Unredeem).
	Unredeem(ctx context.Context, id string, now time.Time, e audit.Entry) (*grants.Grant, error)
	// Review records an operator's review of a break-glass grant
	// (grants.Grant.AddReview).
	Review(ctx context.Context, id string, d grants.Decision, e audit.Entry) (*grants.Grant, error)
	// ExpireDue expires every pending or approved grant past its deadline
	// at now (grants.Grant.Expire), each with its audit record, and returns
	// them. With several replicas only the leader calls it.
	ExpireDue(ctx context.Context, now time.Time) ([]*grants.Grant, error)
}

// AgentStore is durable storage of agent records (broker/agents) as the
// flows use them. Records are derived, never registered: the first
// sighting or signal of an agent creates its record.
type AgentStore interface {
	// GetAgent returns an agent's record or agents.ErrNotFound.
	GetAgent(ctx context.Context, id string) (*agents.Agent, error)
	// ListAgents returns records matching f, most recently seen first,
	// below the cursor f.Before (agents.Agent.Cursor), at most f.Limit
	// (100 when not positive, at most 1000). The order is an index, not
	// a scan; f.Quarantined reads the index of quarantined agents. A
	// record that cannot be read is skipped (and reported).
	ListAgents(ctx context.Context, f agents.Filter) ([]*agents.Agent, error)
	// Gate returns the agent's risk and quarantine as last committed (the
	// zero Gate for an agent without a record). It is on the path of
	// every mint, so it answers from memory that the engine keeps in step
	// with its commits, on every replica, and never opens a transaction.
	Gate(id string) agents.Gate
	// See merges sightings into the records (agents.Agent.See), creating
	// those of agents seen for the first time, in one transaction, with
	// no audit record: the flows that saw the agents wrote their own.
	See(ctx context.Context, s []agents.Sighting) error
	// Isolate quarantines an agent (agents.Agent.Isolate), creating its
	// record if valet never saw it, with e. Errors: agents.ErrState
	// (wrapped) when it is quarantined already.
	Isolate(ctx context.Context, id string, q agents.Quarantine, e audit.Entry) (*agents.Agent, error)
	// Release ends an agent's quarantine (agents.Agent.Release) with e.
	// Errors: agents.ErrNotFound; agents.ErrState (wrapped) when it is
	// not quarantined at r.At.
	Release(ctx context.Context, id string, r agents.Release, e audit.Entry) (*agents.Agent, error)
	// ReleaseDue records the end of every quarantine whose release time
	// is at or before now (agents.Agent.ReleaseDue), each with an audit
	// record of kind audit.KindAgentRelease, and returns the agents
	// released. It walks an index of release times. With several
	// replicas only the leader calls it.
	ReleaseDue(ctx context.Context, now time.Time) ([]*agents.Agent, error)
}

// SignalChange is what accepting a signal does to the records of the
// agents it concerns.
type SignalChange struct {
	// Points raise each agent's risk score, which decays with HalfLife.
	Points   int
	HalfLife time.Duration
	// Quarantine, when set, quarantines each agent not quarantined yet
	// (a copy each).
	Quarantine *agents.Quarantine
}

// SignalStore is durable storage of signals (broker/agents) and the
// writes their containment makes, as the signal flow uses them.
type SignalStore interface {
	// RecordSignal stores the new signal s and applies it to the record
	// of each agent in s.Agents (agents.Agent.Apply with c), creating a
	// record that does not exist yet, in one transaction: with e, the
	// signal's audit record, once per agent (its AgentID filled in) or
	// once when s concerns no agent, and qe, the audit record of a
	// quarantine, for each agent the signal quarantined. It returns the
	// ids of the agents it quarantined. A signal whose containment is
	// pending is listed by PendingSignals until Contained.
	RecordSignal(ctx context.Context, s *agents.Signal, c SignalChange, e, qe audit.Entry) (quarantined []string, err error)
	// Contained records that a signal's containment is done
	// (agents.Signal.Contained, adding ended to the count EndLive kept)
	// with e, its details completed by agents.Signal.Recorded.
	Contained(ctx context.Context, id string, ended int, now time.Time, e audit.Entry) (*agents.Signal, error)
	// GetSignal returns a signal or agents.ErrNotFound.
	GetSignal(ctx context.Context, id string) (*agents.Signal, error)
	// ListSignals returns signals matching f, newest first, at most
	// f.Limit (100 when not positive, at most 1000); a filter on an agent
	// is an index scan.
	ListSignals(ctx context.Context, f agents.SignalFilter) ([]*agents.Signal, error)
	// PendingSignals returns the signals whose containment is pending,
	// oldest first, from an index: what a restart must resume.
	PendingSignals(ctx context.Context) ([]*agents.Signal, error)
	// EndLive is mass revocation's write: it ends (leases.Lease.End, for
	// reason) up to limit leases matching f whose stored state is pending
	// or active and that were created at or before createdBy, each with
	// its audit record (e, the lease's subject filled in), in one
	// transaction, and queues them for revocation; when signalID is set,
	// the same transaction adds them to that signal's containment count.
	// It walks f's index (agent, lineage, or state active or pending)
	// newest first from the lease id cursor before, examining at most a
	// bounded number of leases, and returns the leases it ended and the
	// cursor to continue from; next is "" when the walk reached the end.
	EndLive(ctx context.Context, signalID string, f leases.Filter, before string, createdBy time.Time, limit int, reason leases.State,
		now time.Time, e audit.Entry) (ended []*leases.Lease, next string, err error)
	// PruneSignals deletes up to limit signals received before cutoff
	// whose containment is not pending, and returns how many. Their
	// audit records stay.
	PruneSignals(ctx context.Context, cutoff time.Time, limit int) (int, error)
}
