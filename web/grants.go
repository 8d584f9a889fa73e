package web

import (
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// historyLeases is how many of an agent's latest leases show beside its
// request.
const historyLeases = 5

// maxCommentBytes bounds a decision's comment.
const maxCommentBytes = 1024

// grantView is a grant with what an approver wants to see beside it.
type grantView struct {
	*grants.Grant
	// Deadline is when the grant expires in its current state: the
	// request's expiry while pending, the redeem deadline once approved.
	Deadline      time.Time
	ReviewPending bool
	History       *agentHistory
}

// agentHistory is an agent's recent record: its latest leases and its
// recent denials from the audit log.
type agentHistory struct {
	AgentID string
	Leases  []*leases.Lease
	Denials []audit.Record
	// DenialCount counts denials in the activity window, beyond those
	// listed.
	DenialCount int
	Window      string
}

func viewGrant(g *grants.Grant) *grantView {
	v := &grantView{Grant: g, Deadline: g.ExpiresAt, ReviewPending: g.Kind == grants.KindBreakGlass && g.Review == nil}
	if g.State == grants.StateApproved {
		v.Deadline = g.RedeemBy
	}
	return v
}

// grantsData is the grants page.
type grantsData struct {
	Review   []*grantView // break-glass access awaiting review
	Pending  []*grantView
	Approved []*grantView // approved, not yet redeemed
	History  []*grantView
	Filter   grantFilter
	States   []grants.State
	Roles    []string
	Older    string // query of the next history page, "" at the end
	Activity *activity
	Chart    *chart
	Error    string
}

type grantFilter struct {
	Agent, Role, State string
}

// historyStates are the states the history can be filtered by.
var historyStates = []grants.State{grants.StateApproved, grants.StateDenied, grants.StateExpired, grants.StateRedeemed}

func (c *Console) handleGrants(w http.ResponseWriter, r *http.Request, se *session) {
	ctx := r.Context()
	q := readFilters(r)
	d := grantsData{States: historyStates, Roles: c.roleNames()}
	d.Filter = grantFilter{Agent: q.agent("agent"), Role: q.name("role", "role", &d.Roles), State: q.oneOf("state", "state", stateNames(historyStates))}
	act, err := c.recentActivity(r.Context())
	if err != nil {
		c.log.Error("console: read audit activity", "err", err)
		d.Error = "The audit log could not be read; recent history is missing."
		act = &activity{}
	}
	d.Activity, d.Chart = act, newChart(act)

	review, err := c.b.ListGrants(ctx, grants.Filter{ReviewPending: true, Limit: 100})
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	for _, g := range review {
		d.Review = append(d.Review, viewGrant(g))
	}
	live, err := c.b.ListGrants(ctx, grants.Filter{State: grants.StatePending, Limit: 200})
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	approved, err := c.b.ListGrants(ctx, grants.Filter{State: grants.StateApproved, Limit: 200})
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	for _, g := range append(live, approved...) {
		v := viewGrant(g)
		switch g.State { // as of now: some may have expired unrecorded
		case grants.StatePending:
			v.History = c.history(r, g.AgentID, act)
			d.Pending = append(d.Pending, v)
		case grants.StateApproved:
			d.Approved = append(d.Approved, v)
		}
	}
	// Oldest requests first: they expire first.
	for i, j := 0, len(d.Pending)-1; i < j; i, j = i+1, j-1 {
		d.Pending[i], d.Pending[j] = d.Pending[j], d.Pending[i]
	}

	f := grants.Filter{AgentID: d.Filter.Agent, Role: d.Filter.Role, State: grants.State(d.Filter.State), Before: q.cursor("before"), Limit: 50}
	hist, err := c.b.ListGrants(ctx, f)
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	for _, g := range hist {
		if g.State == grants.StatePending && f.State == "" {
			continue // listed above
		}
		d.History = append(d.History, viewGrant(g))
	}
	if len(hist) == f.Limit {
		oq := url.Values{"agent": {d.Filter.Agent}, "role": {d.Filter.Role}, "state": {d.Filter.State}, "before": {hist[len(hist)-1].ID}}
		d.Older = "/ui/grants?" + oq.Encode()
	}
	p := &page{Title: "Grants", Data: d}
	c.fillLayout(r, p, se, "grants")
	p.Flashes = append(p.Flashes, q.flashes()...)
	c.render(w, r, http.StatusOK, "grants.html", p)
}

// grantData is the page of one grant.
type grantData struct {
	G *grantView
}

func (c *Console) handleGrant(w http.ResponseWriter, r *http.Request, se *session) {
	op := se.op
	g, err := c.b.GetGrant(r.Context(), broker.Caller{Operator: &op}, r.PathValue("id"))
	if err != nil {
		c.brokerError(w, r, se, err)
		return
	}
	act, err := c.recentActivity(r.Context())
	if err != nil {
		c.log.Error("console: read audit activity", "err", err)
		act = &activity{}
	}
	v := viewGrant(g)
	v.History = c.history(r, g.AgentID, act)
	p := &page{Title: "Grant " + g.ID, Data: grantData{G: v}}
	c.fillLayout(r, p, se, "grants")
	c.render(w, r, http.StatusOK, "grant.html", p)
}

// history gathers an agent's latest leases and recent denials.
func (c *Console) history(r *http.Request, agent string, act *activity) *agentHistory {
	h := &agentHistory{AgentID: agent, Window: act.window()}
	ls, err := c.b.ListLeases(r.Context(), leases.Filter{AgentID: agent, Limit: historyLeases})
	if err != nil {
		c.log.Error("console: list an agent's leases", "agent", agent, "err", err)
	}
	h.Leases = ls
	if a := act.Agents[agent]; a != nil {
		h.Denials, h.DenialCount = a.LastDenials, a.Denials
	}
	return h
}

type decisionAction string

const (
	actApprove decisionAction = "approve"
	actDeny    decisionAction = "deny"
	actReview  decisionAction = "review"
)

// decision approves, denies or reviews a grant as the session's operator.
// It needs a fresh sign-in; without one the operator is sent to sign in
// again, and told why.
func (c *Console) decision(act decisionAction) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, se *session) {
		id := r.PathValue("id")
		back := localPath(r.PostForm.Get("return"))
		if back == "" {
			back = "/ui/grants/" + url.PathEscape(id)
		}
		if !se.fresh(c.clock.Now(), c.cc.FreshLogin.D()) {
			q := url.Values{"reason": {"fresh"}, "next": {back}}
			http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
			return
		}
		comment := strings.TrimSpace(r.PostForm.Get("comment"))
		if len(comment) > maxCommentBytes || !utf8.ValidString(comment) {
			c.sessions.addFlash(se.key, flash{"error", "The comment is longer than 1024 bytes; shorten it."})
			http.Redirect(w, r, back, http.StatusSeeOther)
			return
		}
		op := se.op
		var g *grants.Grant
		var err error
		switch act {
		case actApprove:
			g, err = c.b.ApproveGrant(r.Context(), &op, id, comment, requestID(w))
		case actDeny:
			g, err = c.b.DenyGrant(r.Context(), &op, id, comment, requestID(w))
		case actReview:
			g, err = c.b.ReviewGrant(r.Context(), &op, id, comment, requestID(w))
		}
		if err != nil {
			if api.StatusOf(err) >= 500 {
				c.log.Error("console: grant decision", "action", act, "grant", id, "err", err)
			}
			c.sessions.addFlash(se.key, flash{"error", "Could not " + string(act) + " grant " + id + ": " + broker.ErrorMessage(err)})
			http.Redirect(w, r, back, http.StatusSeeOther)
			return
		}
		c.log.Info("console grant decision", "action", act, "grant", id, "operator", op.Name, "state", g.State)
		c.sessions.addFlash(se.key, flash{"ok", decisionMessage(act, g)})
		http.Redirect(w, r, back, http.StatusSeeOther)
	}
}

func decisionMessage(act decisionAction, g *grants.Grant) string {
	who := g.AgentID + " → " + g.Role
	switch act {
	case actApprove:
		if g.State == grants.StateApproved {
			return "Approved " + who + ". The agent can redeem it until " + g.RedeemBy.UTC().Format("15:04:05 UTC") + "."
		}
		return "Your approval of " + who + " is recorded (" + itoa(len(g.Approvals)) + " of " + itoa(g.Required) + "); it waits for more approvers."
	case actDeny:
		return "Denied " + who + "."
	default:
		return "Recorded your review of the break-glass access " + who + "."
	}
}
