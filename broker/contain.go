package broker

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/failpoint"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds containment: a signal's mass revocation of its
// subject's live leases, an operator's quarantine and release of an
// agent, quarantines that end on their own, and the resumption after a
// restart of a mass revocation that was under way.
//
// Mass revocation ends the leases in batches, each one transaction of up
// to containBatch leases with their audit records, which queues them in
// the durable revocation queue (leases.RevocationQueue); the queue is
// woken after each batch and revokes them at their backends in parallel,
// at most leases.revoke_concurrency at a time, retrying failures like any
// other revocation (invariant 5). The signal stays pending until every
// batch is written, and a restart resumes it (ResumeContainment).

// containBatch bounds the leases one mass-revocation transaction ends.
const containBatch = 500

// ContainmentRetryInterval is how often Run resumes mass revocations that
// did not finish (a store failure, or a restart in the middle).
const ContainmentRetryInterval = time.Minute

// containFilters are the lease filters of a subject's live leases: each
// walks one index (a role's walk the state index, active then pending).
func containFilters(s agents.Subject) []leases.Filter {
	switch s.Kind {
	case agents.SubjectAgent:
		return []leases.Filter{{AgentID: s.ID}}
	case agents.SubjectLineage:
		return []leases.Filter{{Lineage: s.ID}}
	case agents.SubjectRole:
		return []leases.Filter{{Role: s.ID, State: leases.StateActive}, {Role: s.ID, State: leases.StatePending}}
	}
	return nil
}

// contain ends the live leases of sig's subject that existed when it was
// accepted, records its containment done, and announces each agent's
// mass revocation. It returns the signal as recorded afterwards and how
// many leases this run ended. A failure is logged and leaves the signal
// pending for Run to resume.
func (b *Broker) contain(ctx context.Context, sig *agents.Signal, requestID string) (*agents.Signal, int) {
	// Once started, a mass revocation runs to its end even if the request
	// that started it goes away.
	ctx = context.WithoutCancel(ctx)
	actor := actorOf(sig.Source)
	entry := audit.Entry{Kind: audit.KindRevoke, Actor: actor, Decision: audit.Allow, RequestID: requestID,
		Reason: fmt.Sprintf("revoked by signal %s from %s: %s", sig.ID, sig.Source, sig.Reason), Details: map[string]string{"signal_id": sig.ID}}
	// extra counts the leases EndLive did not count on the signal (a
	// lease subject's, ended by End); byAgent counts them all.
	byAgent, extra, err := b.endLive(ctx, sig.ID, sig.Subject, sig.ReceivedAt, entry)
	ended := 0
	for _, n := range byAgent {
		ended += n
	}
	if err != nil {
		b.log.Error("mass revocation stopped; valet resumes it within a minute", "signal", sig.ID, "ended", ended, "err", err)
		return sig, ended
	}
	done, err := b.signals.Contained(ctx, sig.ID, extra, b.clock.Now(), audit.Entry{Kind: audit.KindSignalContained, Actor: actor,
		Decision: audit.Allow, RequestID: requestID,
		Reason: fmt.Sprintf("every lease of %s live when signal %s came is ended; the revocation queue revokes them at their backends", sig.Subject, sig.ID)})
	if err != nil {
		b.log.Error("record the end of a mass revocation; valet resumes it within a minute", "signal", sig.ID, "err", err)
		return sig, ended
	}
	reason := fmt.Sprintf("signal %s from %s: %s", sig.ID, sig.Source, sig.Reason)
	for _, id := range sig.Agents {
		b.notifyAgent(EventLeasesRevoked, SeverityHigh, AgentEvent{ID: id, Reason: reason, By: actor, SignalID: sig.ID, Revoked: byAgent[id]})
	}
	for id, n := range byAgent {
		if !slices.Contains(sig.Agents, id) { // a role's holders
			b.notifyAgent(EventLeasesRevoked, SeverityHigh, AgentEvent{ID: id, Reason: reason, By: actor, SignalID: sig.ID, Revoked: n})
		}
	}
	return done, ended
}

// endLive ends the live leases of subject created at or before
// createdBy, in batches (EndLive, counted on signal signalID when set; a
// lease subject by End), waking the revocation queue after each. It
// returns how many it ended per agent, and for a lease subject (counted
// outside EndLive) how many that was.
func (b *Broker) endLive(ctx context.Context, signalID string, subject agents.Subject, createdBy time.Time, e audit.Entry) (byAgent map[string]int, single int, err error) {
	byAgent = map[string]int{}
	if subject.Kind == agents.SubjectLease {
		l, err := b.store.Get(ctx, subject.ID)
		if err != nil {
			return byAgent, 0, err
		}
		if (l.State != leases.StateActive && l.State != leases.StatePending) || l.CreatedAt.After(createdBy) {
			return byAgent, 0, nil
		}
		ended, err := b.store.End(ctx, l.ID, leases.StateRevoked, b.clock.Now(), e)
		if err != nil {
			return byAgent, 0, err
		}
		if ended.State == leases.StateRevoking {
			b.revoker.Kick()
			byAgent[ended.AgentID]++
			return byAgent, 1, nil
		}
		return byAgent, 0, nil
	}
	for _, f := range containFilters(subject) {
		next := ""
		for {
			ls, n, err := b.signals.EndLive(ctx, signalID, f, next, createdBy, containBatch, leases.StateRevoked, b.clock.Now(), e)
			if err != nil {
				return byAgent, 0, err
			}
			for _, l := range ls {
				byAgent[l.AgentID]++
			}
			if len(ls) > 0 {
				b.revoker.Kick()
			}
			if n == "" {
				break
			}
			failpoint.Hit(failpoint.ContainBetweenBatches)
			next = n
		}
	}
	return byAgent, 0, nil
}

// markContaining notes that a signal's containment is (or no longer is)
// under way in this process, so that ResumeContainment leaves it alone.
func (b *Broker) markContaining(id string, on bool) {
	b.containMu.Lock()
	defer b.containMu.Unlock()
	if b.containing == nil {
		b.containing = map[string]bool{}
	}
	if on {
		b.containing[id] = true
	} else {
		delete(b.containing, id)
	}
}

func (b *Broker) isContaining(id string) bool {
	b.containMu.Lock()
	defer b.containMu.Unlock()
	return b.containing[id]
}

// ResumeContainment finishes the mass revocations that did not: signals
// whose containment is pending after a restart or a store failure. Each
// ends only the leases that were live when its signal came. Run calls it
// at start and every ContainmentRetryInterval; it returns how many
// signals it finished.
func (b *Broker) ResumeContainment(ctx context.Context) (int, error) {
	if b.signals == nil {
		return 0, nil
	}
	pending, err := b.signals.PendingSignals(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sig := range pending {
		if b.isContaining(sig.ID) {
			continue
		}
		b.markContaining(sig.ID, true)
		done, ended := b.contain(ctx, sig, "")
		b.markContaining(sig.ID, false)
		if !done.Pending() {
			n++
			b.log.Info("resumed a mass revocation", "signal", sig.ID, "ended", ended)
		}
	}
	return n, nil
}

// QuarantineAgent quarantines an agent for an operator, with a reason,
// and revokes its live leases as a quarantining signal does: every new
// mint, renewal and redeem of the agent is refused (EQUARANTINED) until
// an operator releases it, whatever its risk. An agent valet never saw
// may be quarantined ahead of time. It returns the agent and how many
// leases it ended. Errors: EINVALID (the id or the reason); ECONFLICT
// when the agent is quarantined already; EUNAVAILABLE without an agent
// store.
func (b *Broker) QuarantineAgent(ctx context.Context, op *Operator, id, reason, requestID string) (*agents.Agent, int, error) {
	if !ValidAgentID(id) {
		return nil, 0, Errorf(EINVALID, "agent id must be %s, at most %d bytes", AgentIDRule, MaxAgentIDBytes)
	}
	if err := checkDecisionReason(reason); err != nil {
		return nil, 0, err
	}
	if b.agents == nil {
		return nil, 0, Errorf(EUNAVAILABLE, "this server keeps no agent records, so it cannot quarantine")
	}
	now := b.clock.Now()
	actor := audit.Actor{Type: audit.ActorOperator, ID: op.Name}
	a, err := b.agents.Isolate(ctx, id, agents.Quarantine{Since: now, Reason: reason, By: actor}, audit.Entry{
		Kind: audit.KindAgentQuarantine, Actor: actor, Decision: audit.Allow, Reason: reason, RequestID: requestID,
	})
	if err != nil {
		return nil, 0, agentError(err, id)
	}
	b.notifyAgent(EventAgentQuarantined, SeverityHigh, AgentEvent{ID: id, Reason: reason, By: actor})
	byAgent, _, err := b.endLive(context.WithoutCancel(ctx), "", agents.Subject{Kind: agents.SubjectAgent, ID: id}, now, audit.Entry{
		Kind: audit.KindRevoke, Actor: actor, Decision: audit.Allow, RequestID: requestID, Reason: "agent quarantined by " + op.Name + ": " + reason,
	})
	n := byAgent[id]
	if err != nil {
		return a, n, Wrap(EINTERNAL, err, "agent %s is quarantined, and %d of its leases were ended before the rest could not be; revoke them again (valet leases revoke --agent)", id, n)
	}
	b.notifyAgent(EventLeasesRevoked, SeverityHigh, AgentEvent{ID: id, Reason: "quarantined by " + op.Name + ": " + reason, By: actor, Revoked: n})
	return a, n, nil
}

// ReleaseAgent ends an agent's quarantine for an operator, with a reason:
// the agent may get credentials again, as its policy and risk allow (the
// risk score stays, decaying). Errors: EINVALID (the id or the reason);
// ENOTFOUND; ECONFLICT when the agent is not quarantined.
func (b *Broker) ReleaseAgent(ctx context.Context, op *Operator, id, reason, requestID string) (*agents.Agent, error) {
	if !ValidAgentID(id) {
		return nil, Errorf(EINVALID, "agent id must be %s, at most %d bytes", AgentIDRule, MaxAgentIDBytes)
	}
	if err := checkDecisionReason(reason); err != nil {
		return nil, err
	}
	if b.agents == nil {
		return nil, Errorf(ENOTFOUND, "agent %s not found: this server keeps no agent records", id)
	}
	actor := audit.Actor{Type: audit.ActorOperator, ID: op.Name}
	a, err := b.agents.Release(ctx, id, agents.Release{At: b.clock.Now(), By: actor, Reason: reason}, audit.Entry{
		Kind: audit.KindAgentRelease, Actor: actor, Decision: audit.Allow, Reason: reason, RequestID: requestID,
	})
	if err != nil {
		return nil, agentError(err, id)
	}
	b.notifyAgent(EventAgentReleased, SeverityInfo, AgentEvent{ID: id, Reason: reason, By: actor})
	return a, nil
}

// ReleaseDue records the quarantines whose release time
// (signals.auto_release) has passed, each with its audit record, announces
// each release and returns how many it recorded. The quarantine-release
// job calls it; an agent is free from its release time on, whether or not
// this has run (the gate reads the time from the record).
func (b *Broker) ReleaseDue(ctx context.Context) (int, error) {
	if b.agents == nil {
		return 0, nil
	}
	as, err := b.agents.ReleaseDue(ctx, b.clock.Now())
	for _, a := range as {
		b.notifyAgent(EventAgentReleased, SeverityInfo, AgentEvent{ID: a.ID, Reason: a.LastRelease.Reason, By: a.LastRelease.By})
	}
	return len(as), err
}

// checkDecisionReason checks an operator's reason for a quarantine or a
// release: required, one line of at most MaxSignalReason bytes.
func checkDecisionReason(reason string) error {
	if strings.TrimSpace(reason) == "" {
		return Errorf(EINVALID, "reason is required: it is recorded in the audit log")
	}
	return checkSignalReason(reason)
}

// pathEscape escapes an id for a URL path segment ('/' too).
func pathEscape(id string) string { return url.PathEscape(id) }
