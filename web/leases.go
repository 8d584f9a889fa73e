package web

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
)

// leaseStates are the states the lease list can be filtered by.
var leaseStates = []leases.State{
	leases.StateActive, leases.StatePending, leases.StateRevoking, leases.StateIrrevocable,
	leases.StateReleased, leases.StateRevoked, leases.StateExpired,
}

// leasesData is the leases page.
type leasesData struct {
	Leases   []leaseView
	Filter   leaseFilter
	States   []leases.State
	Roles    []string
	Backends []string
	Older    string
	// LiveForAgent counts the filtered agent's live leases, for "Revoke
	// all of this agent".
	LiveForAgent int
	// Return is this page, where a revocation comes back to.
	Return string
}

type leaseFilter struct {
	Agent, Role, Backend, State string
}

// leaseView is a lease as shown: its state as of now (an active lease
// past its expiry is expired before the expirer records it).
type leaseView struct {
	*leases.Lease
	Shown     leases.State
	Revocable bool
}

func (c *Console) viewLease(l *leases.Lease) leaseView {
	// The broker returns each lease with its state as of its reading (an
	// active lease past its expiry is expired), the state lists filter on.
	v := leaseView{Lease: l, Shown: l.State}
	v.Revocable = l.State == leases.StateActive || l.State == leases.StatePending
	return v
}

func (c *Console) handleLeases(w http.ResponseWriter, r *http.Request, se *session) {
	q := readFilters(r)
	d := leasesData{States: leaseStates, Roles: c.roleNames(), Backends: c.backendNames(), Return: localPath(r.URL.RequestURI())}
	d.Filter = leaseFilter{Agent: q.agent("agent"), Role: q.name("role", "role", &d.Roles), Backend: q.name("backend", "backend", &d.Backends),
		State: q.oneOf("state", "state", stateNames(leaseStates))}
	if !q.has("state") {
		d.Filter.State = string(leases.StateActive)
	}
	f := leases.Filter{AgentID: d.Filter.Agent, Role: d.Filter.Role, Backend: d.Filter.Backend, State: leases.State(d.Filter.State),
		Before: q.cursor("before"), Limit: 100}
	ls, err := c.b.ListLeases(r.Context(), f)
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	for _, l := range ls {
		d.Leases = append(d.Leases, c.viewLease(l))
	}
	if len(ls) == f.Limit {
		oq := url.Values{"agent": {d.Filter.Agent}, "role": {d.Filter.Role}, "backend": {d.Filter.Backend}, "state": {d.Filter.State}, "before": {ls[len(ls)-1].ID}}
		d.Older = "/ui/leases?" + oq.Encode()
	}
	if d.Filter.Agent != "" {
		n, err := c.liveLeases(r, d.Filter.Agent)
		if err != nil {
			c.serverError(w, r, err)
			return
		}
		d.LiveForAgent = n
	}
	p := &page{Title: "Leases", Data: d}
	c.fillLayout(r, p, se, "leases")
	p.Flashes = append(p.Flashes, q.flashes()...)
	c.render(w, r, http.StatusOK, "leases.html", p)
}

// liveLeases counts an agent's leases that RevokeMatching would end.
func (c *Console) liveLeases(r *http.Request, agent string) (int, error) {
	n := 0
	for _, st := range []leases.State{leases.StateActive, leases.StatePending} {
		ls, err := c.b.ListLeases(r.Context(), leases.Filter{AgentID: agent, State: st, Limit: 1000})
		if err != nil {
			return 0, err
		}
		n += len(ls)
	}
	return n, nil
}

// irrevocableData is the page of leases whose revocation keeps failing.
type irrevocableData struct {
	Leases []leaseView
	Older  string
}

func (c *Console) handleIrrevocable(w http.ResponseWriter, r *http.Request, se *session) {
	q := readFilters(r)
	f := leases.Filter{State: leases.StateIrrevocable, Before: q.cursor("before"), Limit: 100}
	ls, err := c.b.ListLeases(r.Context(), f)
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	var d irrevocableData
	for _, l := range ls {
		d.Leases = append(d.Leases, c.viewLease(l))
	}
	if len(ls) == f.Limit {
		d.Older = "/ui/leases/irrevocable?" + url.Values{"before": {ls[len(ls)-1].ID}}.Encode()
	}
	p := &page{Title: "Irrevocable leases", Data: d}
	c.fillLayout(r, p, se, "irrevocable")
	p.Flashes = append(p.Flashes, q.flashes()...)
	c.render(w, r, http.StatusOK, "irrevocable.html", p)
}

// handleRevoke revokes one lease as the session's operator.
func (c *Console) handleRevoke(w http.ResponseWriter, r *http.Request, se *session) {
	id := r.PathValue("id")
	back := localPath(r.PostForm.Get("return"))
	if back == "" {
		back = "/ui/leases"
	}
	op := se.op
	caller := broker.Caller{Operator: &op}
	if l, err := c.b.GetLease(r.Context(), caller, id); err == nil && l.State.Terminal() {
		// Ending an ended lease changes nothing; say so rather than
		// claim a revocation.
		c.sessions.addFlash(se.key, flash{"ok", "Lease " + id + " of " + l.AgentID + " (" + l.Role + ") had already ended (" + string(l.State) + "); nothing was revoked."})
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	l, err := c.b.EndLease(r.Context(), caller, id, "revoked by "+op.Name+" in the console", requestID(w))
	if err != nil {
		c.flashError(se, "Could not revoke lease "+id, err)
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	c.log.Info("console revoked a lease", "lease", id, "operator", op.Name, "state", l.State)
	c.sessions.addFlash(se.key, flash{"ok", revokeMessage(l)})
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// revokeMessage says what became of a lease the console just ended.
func revokeMessage(l *leases.Lease) string {
	which := "lease " + l.ID + " of " + l.AgentID + " (" + l.Role + ")"
	switch l.State {
	case leases.StateRevoked:
		return "Revoked " + which + "."
	case leases.StateRevoking, leases.StateIrrevocable:
		if l.Unrevocable {
			// Such a backend's holders cannot extend its credentials.
			return "Ended " + which + ", but its backend cannot revoke the credential: it stays valid until " +
				l.ValidUntil(false).UTC().Format("2006-01-02 15:04:05 UTC") + ", and the lease reads revoking until then."
		}
		return "Ended " + which + " (" + string(l.State) + "); its backend has not confirmed the revocation yet and valet keeps retrying."
	case leases.StateExpired:
		return "The credential of " + which + " expired on its own before a revocation was confirmed; the lease is expired."
	default:
		return "The " + which + " is " + string(l.State) + "; it ended otherwise, and nothing was revoked."
	}
}

// handleRevokeAgent revokes every live lease of one agent.
func (c *Console) handleRevokeAgent(w http.ResponseWriter, r *http.Request, se *session) {
	agent := strings.TrimSpace(r.PostForm.Get("agent"))
	back := localPath(r.PostForm.Get("return"))
	if back == "" {
		back = "/ui/leases?" + url.Values{"agent": {agent}}.Encode()
	}
	if agent == "" {
		c.sessions.addFlash(se.key, flash{"error", "Name the agent whose leases to revoke."})
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	if len(r.PostForm["agent"]) > 1 || !broker.ValidAgentID(agent) {
		c.sessions.addFlash(se.key, flash{"error", fmt.Sprintf("%q is not one agent id (%s); nothing was revoked.", agent, broker.AgentIDRule)})
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	op := se.op
	n, err := c.b.RevokeMatching(r.Context(), &op, leases.Filter{AgentID: agent}, "all leases of the agent revoked by "+op.Name+" in the console", requestID(w))
	if err != nil {
		c.flashError(se, "Revoked "+strconv.Itoa(n)+" leases of "+agent+", then failed", err)
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	c.log.Info("console revoked an agent's leases", "agent", agent, "operator", op.Name, "count", n)
	c.sessions.addFlash(se.key, flash{"ok", "Revoked " + plural(n, "lease") + " of " + agent + "."})
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// stateNames are states as the strings a filter holds.
func stateNames[S ~string](states []S) []string {
	out := make([]string, len(states))
	for i, s := range states {
		out[i] = string(s)
	}
	return out
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func itoa(n int) string { return strconv.Itoa(n) }
