package web

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// This file holds the agents pages: every agent valet has a record of,
// with its risk score, its quarantine and the signals that moved them;
// one agent's page with its live leases, its signals and its timeline;
// and the operator's decisions on an agent: release (and quarantine), each
// after a fresh sign-in, and revoke-all (leases.go).

// Bounds of the agents pages.
const (
	agentsPage      = 100 // agents per page
	agentLiveCap    = 100 // live leases counted per agent on the list
	rowSignals      = 3   // latest signals shown per agent on the list
	timelineRecords = 100 // audit records of an agent's timeline
	agentSignals    = 50  // signals on an agent's page
)

// agentRow is one agent on the agents page.
type agentRow struct {
	ID   string
	Path string // the agent's page
	Risk int
	// Quarantine is set while the agent is quarantined.
	Quarantine   *agents.Quarantine
	LastSeen     time.Time
	Roles        []string
	Active       int
	Live         int // active or pending: what "Revoke all" would end
	LiveMore     bool
	Irrevocables int
	Mints        int // in the activity window
	Denials      int
	LastDenial   string
	Signals      []agents.SignalRef
}

// agentsData is the agents page.
type agentsData struct {
	Quarantined []*agentRow
	Agents      []*agentRow
	Older       string // query of the next page, "" at the end
	Window      string
	HalfLife    time.Duration
	Error       string
}

func (c *Console) handleAgents(w http.ResponseWriter, r *http.Request, se *session) {
	q := readFilters(r)
	ctx := r.Context()
	d := agentsData{HalfLife: c.b.HalfLife()}
	before := q.value("before", "page")
	if before != "" {
		if _, _, ok := agents.ParseCursor(before); !ok {
			before = q.drop("page", "cursor %q is not a position in the agent list", before)
		}
	}
	act, err := c.recentActivity(ctx)
	if err != nil {
		c.log.Error("console: read audit activity", "err", err)
		d.Error = "The audit log could not be read; mint and denial counts are missing."
		act = &activity{}
	}
	d.Window = act.window()
	irrevocable := map[string]int{}
	if ls, err := c.b.ListLeases(ctx, leases.Filter{State: leases.StateIrrevocable, Limit: 1000}); err == nil {
		for _, l := range ls {
			irrevocable[l.AgentID]++
		}
	}
	if before == "" {
		qd, err := c.b.ListAgents(ctx, agents.Filter{Quarantined: true, Limit: 1000})
		if err != nil {
			c.serverError(w, r, err)
			return
		}
		for _, a := range qd {
			if row := c.agentRow(ctx, a, act, irrevocable); row.Quarantine != nil {
				d.Quarantined = append(d.Quarantined, row)
			}
		}
	}
	as, err := c.b.ListAgents(ctx, agents.Filter{Before: before, Limit: agentsPage})
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	for _, a := range as {
		d.Agents = append(d.Agents, c.agentRow(ctx, a, act, irrevocable))
	}
	if len(as) == agentsPage {
		d.Older = "/ui/agents?" + url.Values{"before": {as[len(as)-1].Cursor()}}.Encode()
	}
	p := &page{Title: "Agents", Data: d}
	c.fillLayout(r, p, se, "agents")
	p.Flashes = append(p.Flashes, q.flashes()...)
	c.render(w, r, http.StatusOK, "agents.html", p)
}

// agentRow gathers what the list shows of agent a.
func (c *Console) agentRow(ctx context.Context, a *agents.Agent, act *activity, irrevocable map[string]int) *agentRow {
	now := c.clock.Now()
	row := &agentRow{ID: a.ID, Path: agentPath(a.ID), Risk: c.b.Risk(a.Risk), LastSeen: a.LastSeen, Roles: a.Roles,
		Irrevocables: irrevocable[a.ID], Signals: a.Signals[:min(len(a.Signals), rowSignals)]}
	if a.QuarantinedAt(now) {
		row.Quarantine = a.Quarantine
	}
	for _, st := range []leases.State{leases.StateActive, leases.StatePending} {
		ls, err := c.b.ListLeases(ctx, leases.Filter{AgentID: a.ID, State: st, Limit: agentLiveCap})
		if err != nil {
			c.log.Error("console: count an agent's leases", "agent", a.ID, "err", err)
			continue
		}
		row.Live += len(ls)
		row.LiveMore = row.LiveMore || len(ls) == agentLiveCap
		if st == leases.StateActive {
			row.Active = len(ls)
		}
	}
	if aa := act.Agents[a.ID]; aa != nil {
		row.Mints, row.Denials = aa.Mints, aa.Denials
		if len(aa.LastDenials) > 0 {
			row.LastDenial = aa.LastDenials[0].Reason
		}
	}
	return row
}

// agentPath is the console page of an agent: its id escaped as a path
// segment ('/' as %2F).
func agentPath(id string) string { return "/ui/agents/" + url.PathEscape(id) }

// agentData is the page of one agent.
type agentData struct {
	A          *agents.Agent
	Path       string
	Risk       int
	HalfLife   time.Duration
	Quarantine *agents.Quarantine // set while quarantined
	Leases     []leaseView
	LiveCount  int
	Signals    []*agents.Signal
	Timeline   []audit.Record
	Error      string
}

func (c *Console) handleAgent(w http.ResponseWriter, r *http.Request, se *session) {
	ctx := r.Context()
	id := r.PathValue("id")
	a, err := c.b.GetAgent(ctx, id)
	if err != nil {
		c.brokerError(w, r, se, err)
		return
	}
	now := c.clock.Now()
	d := agentData{A: a, Path: agentPath(a.ID), Risk: c.b.Risk(a.Risk), HalfLife: c.b.HalfLife()}
	if a.QuarantinedAt(now) {
		d.Quarantine = a.Quarantine
	}
	for _, st := range []leases.State{leases.StateActive, leases.StatePending, leases.StateRevoking, leases.StateIrrevocable} {
		ls, err := c.b.ListLeases(ctx, leases.Filter{AgentID: a.ID, State: st, Limit: agentLiveCap})
		if err != nil {
			c.serverError(w, r, err)
			return
		}
		for _, l := range ls {
			d.Leases = append(d.Leases, c.viewLease(l))
			if st == leases.StateActive || st == leases.StatePending {
				d.LiveCount++
			}
		}
	}
	if d.Signals, err = c.b.ListSignals(ctx, agents.SignalFilter{AgentID: a.ID, Limit: agentSignals}); err != nil {
		c.serverError(w, r, err)
		return
	}
	if d.Timeline, err = c.audit.ListAudit(ctx, audit.Filter{AgentID: a.ID, Newest: true, Limit: timelineRecords}); err != nil {
		c.log.Error("console: read an agent's timeline", "agent", a.ID, "err", err)
		d.Error = "The audit log could not be read; the timeline is missing."
	}
	p := &page{Title: "Agent " + a.ID, Data: d}
	c.fillLayout(r, p, se, "agents")
	c.render(w, r, http.StatusOK, "agent.html", p)
}

// agentDecision is an operator's decision on an agent.
type agentDecision string

const (
	actRelease    agentDecision = "release"
	actQuarantine agentDecision = "quarantine"
)

// agentDecide releases or quarantines an agent as the session's operator,
// with the reason of the form. Like a grant decision it needs a fresh
// sign-in; without one the operator is sent to sign in again, and told
// why.
func (c *Console) agentDecide(act agentDecision) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, se *session) {
		id := r.PathValue("id")
		back := localPath(r.PostForm.Get("return"))
		if back == "" {
			back = agentPath(id)
		}
		if !se.fresh(c.clock.Now(), c.cc.FreshLogin.D()) {
			q := url.Values{"reason": {"fresh"}, "next": {back}}
			http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
			return
		}
		reason := strings.TrimSpace(r.PostForm.Get("reason"))
		if reason == "" || len(reason) > maxCommentBytes || !utf8.ValidString(reason) || len(r.PostForm["reason"]) > 1 {
			c.sessions.addFlash(se.key, flash{"error", "Give one reason of at most 1024 bytes: it is recorded in the audit log. Nothing was changed."})
			http.Redirect(w, r, back, http.StatusSeeOther)
			return
		}
		op := se.op
		var msg string
		switch act {
		case actRelease:
			_, err := c.b.ReleaseAgent(r.Context(), &op, id, reason, requestID(w))
			if err != nil {
				c.flashError(se, "Could not release "+id, err)
				http.Redirect(w, r, back, http.StatusSeeOther)
				return
			}
			msg = "Released " + id + ". It may get credentials again, as its policy and risk allow."
		case actQuarantine:
			_, n, err := c.b.QuarantineAgent(r.Context(), &op, id, reason, requestID(w))
			if err != nil {
				c.flashError(se, "Could not quarantine "+id, err)
				http.Redirect(w, r, back, http.StatusSeeOther)
				return
			}
			msg = "Quarantined " + id + " and ended " + plural(n, "live lease") + "; valet revokes them at their backends."
		}
		c.log.Info("console agent decision", "action", act, "agent", id, "operator", op.Name)
		c.sessions.addFlash(se.key, flash{"ok", msg})
		http.Redirect(w, r, back, http.StatusSeeOther)
	}
}
