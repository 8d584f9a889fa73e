package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the signal flow: a source (a REST sender, an SSF
// transmitter, a detector or an operator) says something is wrong with a
// subject. RaiseSignal checks the signal, finds the agents it concerns,
// chooses its action, records it with the agents' new risk (and
// quarantine) in one transaction, notifies, and for the actions that
// revoke, contains the subject (contain.go).

// MaxSignalReason bounds a signal's reason, in bytes.
const MaxSignalReason = 1024

// SignalRequest is a signal as a source sends it.
type SignalRequest struct {
	Subject  agents.Subject
	Severity agents.Severity
	Reason   string
	// Action is the action the source asks for; "" leaves it to the
	// source's policy and signals.actions, by severity.
	Action agents.Action
	// EventTime is when the source says the event happened (optional).
	EventTime time.Time
	RequestID string
	// Event is the Security Event Token the signal came from (SSF).
	Event *agents.SET
	// Evidence is what a detector saw (one of valet's detectors), kept
	// on the signal and in its audit record as "evidence.<key>".
	Evidence map[string]string

	// capAction makes an Action the source may not ask for the strongest
	// it may, instead of a refusal (SSF events, whose actions valet's
	// mapping chose).
	capAction bool
}

// SignalResult is what accepting a signal did.
type SignalResult struct {
	// Signal is the signal as recorded, its containment included.
	Signal *agents.Signal
	// Quarantined are the agents it quarantined (those quarantined
	// already are not among them).
	Quarantined []string
	// Ended counts the live leases it ended; the revocation queue revokes
	// them at their backends.
	Ended int
}

// RaiseSignal accepts a signal from src: the one way every signal, of any
// source, enters valet. The subject must be one valet knows (an agent it
// has seen, a lease, a configured role, a lineage some lease derives
// from). The action is the one asked for, which the source must be
// allowed; otherwise the source's action for the severity, or
// signals.actions'. The signal raises the risk of the agents it concerns
// by the severity's points; revoke ends the subject's live leases (for a
// lineage, everything derived from that attestation, on every backend);
// quarantine does that and quarantines the agents (a role's subject is
// never quarantined: it is revoked). Every accepted and every refused
// signal is audited. Errors: EINVALID (the signal's shape), EFORBIDDEN
// (an action the source may not ask for), ENOTFOUND (an unknown subject),
// ERATELIMIT (the source is over its rate), EUNAVAILABLE (no agent store,
// or the request ended before the signal was recorded), EINTERNAL (the
// store failed).
func (b *Broker) RaiseSignal(ctx context.Context, src *SignalSource, req SignalRequest) (*SignalResult, error) {
	if b.signals == nil {
		return nil, Errorf(EUNAVAILABLE, "this server keeps no agent records, so it cannot take signals")
	}
	now := b.clock.Now()
	if !src.allow(now) {
		b.refuseRateLimited(ctx, src, req.RequestID, now)
		return nil, &Error{Code: ERATELIMIT, Message: fmt.Sprintf("signal source %s is over its rate of %g signals per second; slow down", src.Source, src.rate),
			RetryAfter: time.Second}
	}
	if err := req.validate(now); err != nil {
		b.RefuseSignal(ctx, src, req.RequestID, err)
		return nil, err
	}
	action, err := b.signalAction(src, req)
	if err != nil {
		b.RefuseSignal(ctx, src, req.RequestID, err)
		return nil, err
	}
	agentIDs, err := b.signalAgents(ctx, req.Subject)
	if err != nil {
		if code := ErrorCode(err); code == ENOTFOUND || code == EINVALID {
			b.RefuseSignal(ctx, src, req.RequestID, err)
		}
		return nil, err
	}
	if req.Subject.Kind == agents.SubjectRole && action == agents.ActionQuarantine {
		action = agents.ActionRevoke // a role has no agent to quarantine
	}
	now = b.clock.Now()
	sig := &agents.Signal{
		ID: leases.NewID(now), Subject: req.Subject, Severity: req.Severity, Reason: req.Reason, Source: src.Source,
		Requested: req.Action, Action: action, EventTime: req.EventTime, ReceivedAt: now, Agents: agentIDs,
		Points: b.cfg.Signals.Points.Of(req.Severity), Event: req.Event, Evidence: maps.Clone(req.Evidence),
	}
	if action.Revokes() {
		sig.Containment = &agents.Containment{State: agents.ContainmentPending}
	}
	actor := actorOf(src.Source)
	change := SignalChange{Points: sig.Points, HalfLife: b.halfLife()}
	if action == agents.ActionQuarantine {
		change.Quarantine = &agents.Quarantine{Since: now, Reason: fmt.Sprintf("%s signal from %s: %s", sig.Severity, sig.Source, sig.Reason),
			By: actor, SignalID: sig.ID}
		if d := b.cfg.Signals.AutoRelease.D(); d > 0 {
			change.Quarantine.ReleaseAt = now.Add(d)
		}
	}
	entry := audit.Entry{Kind: audit.KindSignal, Actor: actor, Decision: audit.Allow, RequestID: req.RequestID,
		Reason:  fmt.Sprintf("%s signal from %s: %s; action %s", sig.Severity, sig.Source, sig.Reason, action),
		Details: signalDetails(sig)}
	switch req.Subject.Kind {
	case agents.SubjectRole:
		entry.Role = req.Subject.ID
	case agents.SubjectLease:
		entry.LeaseID = req.Subject.ID
	}
	qentry := audit.Entry{Kind: audit.KindAgentQuarantine, Actor: actor, Decision: audit.Allow, RequestID: req.RequestID,
		Reason: "quarantined by signal " + sig.ID + ": " + sig.Reason, Details: map[string]string{"signal_id": sig.ID}}
	b.markContaining(sig.ID, true)
	defer b.markContaining(sig.ID, false)
	quarantined, err := b.signals.RecordSignal(ctx, sig, change, entry, qentry)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, Wrap(EUNAVAILABLE, err, "the request ended before the signal was recorded; send it again")
		}
		return nil, Wrap(EINTERNAL, err, "signal store failure")
	}
	if b.obs != nil {
		b.obs.Signaled(src.Source.Kind, action)
	}
	b.log.Info("signal accepted", "signal", sig.ID, "source", sig.Source.String(), "subject", sig.Subject.String(),
		"severity", sig.Severity, "action", action, "agents", len(agentIDs), "request_id", req.RequestID)
	b.notifySignal(sig)
	for _, id := range quarantined {
		b.notifyAgent(EventAgentQuarantined, SeverityHigh, AgentEvent{ID: id, Reason: change.Quarantine.Reason, By: actor, SignalID: sig.ID})
	}
	res := &SignalResult{Signal: sig, Quarantined: quarantined}
	if action.Revokes() && sig.Subject.Kind == agents.SubjectLineage && len(b.detectors) > 0 {
		b.observe(Observation{Kind: ObserveLineageRevoked, Time: now, LineageID: sig.Subject.ID, Reason: "signal " + sig.ID + " from " + sig.Source.String()})
	}
	if action.Revokes() {
		res.Signal, res.Ended = b.contain(ctx, sig, req.RequestID)
	}
	return res, nil
}

// validate checks the signal's shape at now. Every refusal is EINVALID
// and says what to fix; none repeats a refused value.
func (r *SignalRequest) validate(now time.Time) error {
	s := r.Subject
	switch s.Kind {
	case agents.SubjectAgent:
		if !ValidAgentID(s.ID) {
			return Errorf(EINVALID, "agent_id must be %s, at most %d bytes", AgentIDRule, MaxAgentIDBytes)
		}
	case agents.SubjectLease:
		if !leases.ValidID(s.ID) {
			return Errorf(EINVALID, "lease_id must be a lease id (26 characters, as leases list them)")
		}
	case agents.SubjectRole:
		if !ValidName(s.ID) {
			return Errorf(EINVALID, "role must be %s", NameRule)
		}
	case agents.SubjectLineage:
		if !ValidLineage(s.ID) {
			return Errorf(EINVALID, "lineage must %s", LineageRule)
		}
	default:
		return Errorf(EINVALID, "a signal names one subject: agent_id, lease_id, role or lineage")
	}
	if !r.Severity.Valid() {
		return Errorf(EINVALID, "severity must be info, low, medium, high or critical")
	}
	if err := checkSignalReason(r.Reason); err != nil {
		return err
	}
	if r.Action != "" && !r.Action.Valid() {
		return Errorf(EINVALID, "action must be alert, revoke or quarantine (or left out: the source's policy decides by severity)")
	}
	if r.EventTime.After(now.Add(MaxEventTimeAhead)) {
		return Errorf(EINVALID, "event_time is more than %s in the future; send the time the event happened", MaxEventTimeAhead)
	}
	return nil
}

// MaxEventTimeAhead is how far in the future a signal's event time may
// lie (clock differences between valet and its sources).
const MaxEventTimeAhead = 5 * time.Minute

// checkSignalReason checks a signal's reason: required, at most
// MaxSignalReason bytes of UTF-8, one line without control characters.
func checkSignalReason(reason string) error {
	switch {
	case strings.TrimSpace(reason) == "":
		return Errorf(EINVALID, "reason is required: say what the source saw")
	case len(reason) > MaxSignalReason:
		return Errorf(EINVALID, "reason is longer than %d bytes", MaxSignalReason)
	case !utf8.ValidString(reason):
		return Errorf(EINVALID, "reason must be UTF-8")
	case strings.IndexFunc(reason, unicode.IsControl) >= 0:
		return Errorf(EINVALID, "reason must be one line without control characters")
	}
	return nil
}

// signalAction chooses the action of a signal of src (see RaiseSignal).
func (b *Broker) signalAction(src *SignalSource, req SignalRequest) (agents.Action, error) {
	a := req.Action
	switch {
	case a != "" && src.mayAsk(a):
		return a, nil
	case a != "" && !req.capAction:
		return "", Errorf(EFORBIDDEN, "signal source %s may not ask for action %s; it may ask for %s", src.Source, a, joinActions(src.Policy.AllowedActions))
	case a == "":
		if a = src.Policy.Actions.Of(req.Severity); a == "" {
			a = b.cfg.Signals.Actions.Of(req.Severity)
		}
	}
	return capAction(a, src.Policy.AllowedActions), nil
}

// capAction is the strongest of allowed no stronger than a, or alert:
// every signal is at least recorded.
func capAction(a agents.Action, allowed []agents.Action) agents.Action {
	for i := slices.Index(agents.Actions, a); i >= 0; i-- {
		if slices.Contains(allowed, agents.Actions[i]) {
			return agents.Actions[i]
		}
	}
	return agents.ActionAlert
}

// signalAgents returns the agents a subject concerns, or ENOTFOUND for a
// subject valet does not know.
func (b *Broker) signalAgents(ctx context.Context, s agents.Subject) ([]string, error) {
	switch s.Kind {
	case agents.SubjectAgent:
		if err := b.flushSightings(ctx); err != nil {
			b.log.Warn("write agent sightings", "err", err)
		}
		_, err := b.agents.GetAgent(ctx, s.ID)
		if errors.Is(err, agents.ErrNotFound) {
			// An agent whose leases predate its record is known too.
			ls, lerr := b.store.List(ctx, leases.Filter{AgentID: s.ID, Limit: 1})
			if lerr != nil {
				return nil, storeError(lerr)
			}
			if len(ls) == 0 {
				return nil, Errorf(ENOTFOUND, "agent %s is not known to valet: it never authenticated here", s.ID)
			}
		} else if err != nil {
			return nil, agentError(err, s.ID)
		}
		return []string{s.ID}, nil
	case agents.SubjectLease:
		l, err := b.store.Get(ctx, s.ID)
		if errors.Is(err, leases.ErrNotFound) {
			return nil, Errorf(ENOTFOUND, "lease %s not found", s.ID)
		}
		if err != nil {
			return nil, storeError(err)
		}
		return []string{l.AgentID}, nil
	case agents.SubjectLineage:
		var ids []string
		f := leases.Filter{Lineage: s.ID, Limit: 1000}
		for {
			ls, err := b.store.List(ctx, f)
			if err != nil {
				return nil, storeError(err)
			}
			for _, l := range ls {
				if !slices.Contains(ids, l.AgentID) {
					ids = append(ids, l.AgentID)
				}
			}
			if len(ls) < f.Limit {
				break
			}
			f.Before = ls[len(ls)-1].ID
		}
		if len(ids) == 0 {
			return nil, Errorf(ENOTFOUND, "no lease derives from lineage %s", s.ID)
		}
		slices.Sort(ids)
		return ids, nil
	default: // a role
		if _, ok := b.roles[s.ID]; !ok {
			return nil, Errorf(ENOTFOUND, "role %q does not exist", s.ID)
		}
		return nil, nil
	}
}

// RefuseSignal audits a signal of src refused with err (a deny record of
// kind signal whose reason is err's client message). Front ends call it
// for signals they refuse before RaiseSignal sees them (a body that is
// not a signal).
func (b *Broker) RefuseSignal(ctx context.Context, src *SignalSource, requestID string, err error) {
	b.audit(ctx, audit.Entry{Kind: audit.KindSignal, Actor: actorOf(src.Source), Decision: audit.Deny,
		Reason: "signal refused: " + ErrorMessage(err), RequestID: requestID, PolicyVersion: b.authz.Version(),
		Details: map[string]string{"source": src.Source.String()}})
}

// refuseRateLimited audits the signals a source sent over its rate: at
// most one record a second per source, counting those refused since the
// last one, so that a flood adds a bounded number of records.
func (b *Broker) refuseRateLimited(ctx context.Context, src *SignalSource, requestID string, now time.Time) {
	src.mu.Lock()
	src.refused++
	n := src.refused
	write := now.Sub(src.lastAudit) >= time.Second
	if write {
		src.refused, src.lastAudit = 0, now
	}
	src.mu.Unlock()
	if write {
		b.audit(ctx, audit.Entry{Kind: audit.KindSignal, Actor: actorOf(src.Source), Decision: audit.Deny, RequestID: requestID,
			Reason:  fmt.Sprintf("signal refused: source %s is over its rate of %g signals per second (%d refused)", src.Source, src.rate, n),
			Details: map[string]string{"source": src.Source.String(), "refused": fmt.Sprint(n)}})
	}
}

// signalDetails are the details of a signal's audit record.
func signalDetails(s *agents.Signal) map[string]string {
	d := map[string]string{"signal_id": s.ID, "subject": s.Subject.String(), "severity": string(s.Severity),
		"action": string(s.Action), "source": s.Source.String(), "risk_points": fmt.Sprint(s.Points)}
	if s.Requested != "" {
		d["requested_action"] = string(s.Requested)
	}
	if !s.EventTime.IsZero() {
		d["event_time"] = s.EventTime.UTC().Format(time.RFC3339)
	}
	if s.Event != nil {
		d["set_jti"], d["set_event"] = s.Event.JTI, s.Event.EventType
	}
	for k, v := range s.Evidence {
		d["evidence."+k] = v
	}
	return d
}

// notifySignal tells operators about an accepted signal.
func (b *Broker) notifySignal(s *agents.Signal) {
	if b.notifier == nil {
		return
	}
	cp := *s
	cp.Agents = slices.Clone(s.Agents)
	cp.Evidence = maps.Clone(s.Evidence)
	if s.Containment != nil {
		c := *s.Containment
		cp.Containment = &c
	}
	url := b.cfg.PublicURL + "/ui/agents"
	if len(s.Agents) == 1 {
		url = agentURL(b.cfg.PublicURL, s.Agents[0])
	}
	b.notifier.Notify(Event{Type: EventSignal, Severity: string(s.Severity), Time: b.clock.Now(), Signal: &cp, URL: url})
}

// notifyAgent tells operators (and, for mass revocations, SSF receivers)
// about an agent event, with the agent's risk at the moment.
func (b *Broker) notifyAgent(typ, severity string, e AgentEvent) {
	if b.notifier == nil {
		return
	}
	e.Risk = b.Risk(b.gate(e.ID).Risk)
	b.notifier.Notify(Event{Type: typ, Severity: severity, Time: b.clock.Now(), Agent: &e, URL: agentURL(b.cfg.PublicURL, e.ID)})
}

// agentURL is the console page of an agent.
func agentURL(publicURL, id string) string {
	return publicURL + "/ui/agents/" + pathEscape(id)
}
