package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds what valet knows of each agent: the sightings that
// keep its record (first and last seen, roles minted), the gate every
// flow passes (quarantine and risk), and the reads operators make of
// agents and signals.

// sightings gathers what the flows saw of agents between two writes of
// their records, so that a mint pays a map update rather than a write.
// Broker.Run writes them every SightingInterval.
type sightings struct {
	mu sync.Mutex
	m  map[string]*agents.Sighting
}

// add records that agent was seen at t, minting role when role is set.
func (s *sightings) add(agent, role string, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*agents.Sighting{}
	}
	st := s.m[agent]
	if st == nil {
		st = &agents.Sighting{AgentID: agent, First: t, Last: t}
		s.m[agent] = st
	}
	if t.After(st.Last) {
		st.Last = t
	}
	if role != "" && !slices.Contains(st.Roles, role) {
		st.Roles = append(st.Roles, role)
	}
}

// take returns the sightings gathered so far and starts afresh.
func (s *sightings) take() []agents.Sighting {
	s.mu.Lock()
	m := s.m
	s.m = nil
	s.mu.Unlock()
	out := make([]agents.Sighting, 0, len(m))
	for _, st := range m {
		out = append(out, *st)
	}
	return out
}

// flushSightings writes the sightings gathered so far. Those that cannot
// be written are gathered again, for the next flush.
func (b *Broker) flushSightings(ctx context.Context) error {
	if b.agents == nil {
		return nil
	}
	batch := b.sightings.take()
	if len(batch) == 0 {
		return nil
	}
	if err := b.agents.See(ctx, batch); err != nil {
		for _, st := range batch {
			for _, t := range []time.Time{st.First, st.Last} {
				b.sightings.add(st.AgentID, "", t)
			}
			for _, r := range st.Roles {
				b.sightings.add(st.AgentID, r, st.Last)
			}
		}
		return err
	}
	return nil
}

// gate returns the agent's gate (the zero Gate without an agent store).
func (b *Broker) gate(agent string) agents.Gate {
	if b.agents == nil {
		return agents.Gate{}
	}
	return b.agents.Gate(agent)
}

// halfLife is the risk score's half-life.
func (b *Broker) halfLife() time.Duration { return b.cfg.Signals.HalfLife.D() }

// HalfLife is the risk score's half-life (signals.half_life).
func (b *Broker) HalfLife() time.Duration { return b.halfLife() }

// Risk is r read now: the score policies see as context.risk (0 to 100).
func (b *Broker) Risk(r agents.Risk) int { return r.Value(b.clock.Now(), b.halfLife()) }

// admitAgent is the gate every flow acting for an agent passes, once the
// caller authenticated: it refuses a quarantined agent (EQUARANTINED,
// the refusal audited as kind, by c) and returns the agent's risk score at
// now for the policy (context.risk).
func (b *Broker) admitAgent(ctx context.Context, c Caller, agentID, kind, role, requestID string, now time.Time) (risk int, err error) {
	g := b.gate(agentID)
	if g.Quarantine.ActiveAt(now) {
		q := g.Quarantine
		err := Errorf(EQUARANTINED, "agent %s is quarantined since %s (%s); an operator must release it before it gets credentials again",
			agentID, q.Since.UTC().Format(time.RFC3339), q.Reason)
		if c.Agent != nil {
			b.deny(ctx, c.Agent, kind, role, requestID, "agent is quarantined: "+q.Reason, Decision{})
		} else {
			b.audit(ctx, audit.Entry{Kind: kind, Actor: c.actor(), Decision: audit.Deny, Reason: "agent is quarantined: " + q.Reason,
				AgentID: agentID, Role: role, RequestID: requestID, PolicyVersion: b.authz.Version()})
		}
		return 0, err
	}
	return g.Risk.Value(now, b.halfLife()), nil
}

// GetAgent returns an agent's record to an operator. Errors: EINVALID
// for an id that is no agent's; ENOTFOUND when valet has no record of it.
func (b *Broker) GetAgent(ctx context.Context, id string) (*agents.Agent, error) {
	if !ValidAgentID(id) {
		return nil, Errorf(EINVALID, "agent id must be %s, at most %d bytes", AgentIDRule, MaxAgentIDBytes)
	}
	if b.agents == nil {
		return nil, Errorf(ENOTFOUND, "agent %s not found: this server keeps no agent records", id)
	}
	if err := b.flushSightings(ctx); err != nil {
		b.log.Warn("write agent sightings", "err", err)
	}
	a, err := b.agents.GetAgent(ctx, id)
	if err != nil {
		return nil, agentError(err, id)
	}
	return a, nil
}

// ListAgents lists agent records for operators, most recently seen first
// (f.Limit: default 100, at most 1000; page with the last one's Cursor).
func (b *Broker) ListAgents(ctx context.Context, f agents.Filter) ([]*agents.Agent, error) {
	if b.agents == nil {
		return nil, nil
	}
	if f.Before != "" {
		if _, _, ok := agents.ParseCursor(f.Before); !ok {
			return nil, Errorf(EINVALID, "before must be the cursor of an agent listing (the next of the previous page)")
		}
	}
	if err := b.flushSightings(ctx); err != nil {
		b.log.Warn("write agent sightings", "err", err)
	}
	f.Limit = listLimit(f.Limit)
	as, err := b.agents.ListAgents(ctx, f)
	if err != nil {
		return nil, Wrap(EINTERNAL, err, "agent store failure")
	}
	return as, nil
}

// GetSignal returns a signal to an operator. Errors: ENOTFOUND.
func (b *Broker) GetSignal(ctx context.Context, id string) (*agents.Signal, error) {
	if b.signals == nil || !leases.ValidID(id) {
		return nil, Errorf(ENOTFOUND, "signal %q not found", id)
	}
	s, err := b.signals.GetSignal(ctx, id)
	if errors.Is(err, agents.ErrNotFound) {
		return nil, Errorf(ENOTFOUND, "signal %q not found", id)
	}
	if err != nil {
		return nil, Wrap(EINTERNAL, err, "signal store failure")
	}
	return s, nil
}

// ListSignals lists signals for operators, newest first (f.Limit:
// default 100, at most 1000; page with the last one's id as f.Before).
func (b *Broker) ListSignals(ctx context.Context, f agents.SignalFilter) ([]*agents.Signal, error) {
	if b.signals == nil {
		return nil, nil
	}
	f.Limit = listLimit(f.Limit)
	ss, err := b.signals.ListSignals(ctx, f)
	if err != nil {
		return nil, Wrap(EINTERNAL, err, "signal store failure")
	}
	return ss, nil
}

// agentError turns an agent store failure into a client error.
func agentError(err error, id string) error {
	switch {
	case errors.Is(err, agents.ErrNotFound):
		return Wrap(ENOTFOUND, err, "agent %s not found: valet has not seen it", id)
	case errors.Is(err, agents.ErrState):
		var rf *agents.Refusal
		if errors.As(err, &rf) {
			return Wrap(ECONFLICT, err, "%s", rf.Reason)
		}
		return Wrap(ECONFLICT, err, "agent %s changed while this request was handled; read it again", id)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Wrap(EUNAVAILABLE, err, "the request was cancelled before the agent store answered")
	default:
		return Wrap(EINTERNAL, err, "agent store failure")
	}
}

// actorOf is who a signal's source is in audit records: the operator, or
// a detector named "<kind>:<name>" (a REST source, an SSF transmitter or
// one of valet's detectors).
func actorOf(src agents.Source) audit.Actor {
	if src.Kind == agents.SourceOperator {
		return audit.Actor{Type: audit.ActorOperator, ID: src.Name}
	}
	return audit.Actor{Type: audit.ActorDetector, ID: src.String()}
}
