package web

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/leases"
)

// agentsScan bounds how many recent leases the agents page reads.
const agentsScan = 1000

// agentsData is the agents page.
type agentsData struct {
	Agents []*agentRow
	// Scanned is how many of the newest leases were read; Bounded says
	// older ones exist and agents seen only before them are not listed.
	Scanned int
	Bounded bool
	Window  string
	Error   string
}

// agentRow is one agent seen in recent leases.
type agentRow struct {
	ID           string
	Active       int
	Live         int // active or pending: what "Revoke all" would end
	Leases       int // among the scanned leases
	Roles        []string
	LastSeen     time.Time
	Mints        int // in the activity window
	Denials      int
	LastDenial   string
	Irrevocables int
}

func (c *Console) handleAgents(w http.ResponseWriter, r *http.Request, se *session) {
	ls, err := c.b.ListLeases(r.Context(), leases.Filter{Limit: agentsScan})
	if err != nil {
		c.serverError(w, r, err)
		return
	}
	d := agentsData{Scanned: len(ls), Bounded: len(ls) == agentsScan}
	act, err := c.recentActivity(r.Context())
	if err != nil {
		c.log.Error("console: read audit activity", "err", err)
		d.Error = "The audit log could not be read; mint and denial counts are missing."
		act = &activity{}
	}
	d.Window = act.window()
	now := c.clock.Now()
	byID := map[string]*agentRow{}
	for _, l := range ls { // newest first
		a := byID[l.AgentID]
		if a == nil {
			a = &agentRow{ID: l.AgentID, LastSeen: l.CreatedAt}
			byID[l.AgentID] = a
			d.Agents = append(d.Agents, a)
		}
		a.Leases++
		if l.ActiveAt(now) {
			a.Active++
		}
		if l.State == leases.StateActive || l.State == leases.StatePending {
			a.Live++
		}
		if l.State == leases.StateIrrevocable {
			a.Irrevocables++
		}
		if !slices.Contains(a.Roles, l.Role) {
			a.Roles = append(a.Roles, l.Role)
		}
	}
	for _, a := range d.Agents {
		if aa := act.Agents[a.ID]; aa != nil {
			a.Mints, a.Denials = aa.Mints, aa.Denials
			if len(aa.LastDenials) > 0 {
				a.LastDenial = aa.LastDenials[0].Reason
			}
		}
		slices.Sort(a.Roles)
	}
	// Agents with something live first, then by most recent lease.
	slices.SortStableFunc(d.Agents, func(x, y *agentRow) int {
		if (x.Live > 0) != (y.Live > 0) {
			if x.Live > 0 {
				return -1
			}
			return 1
		}
		if c := y.LastSeen.Compare(x.LastSeen); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	p := &page{Title: "Agents", Data: d}
	c.fillLayout(r, p, se, "agents")
	c.render(w, r, http.StatusOK, "agents.html", p)
}
