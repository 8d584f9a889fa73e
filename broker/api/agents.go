package api

import (
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
)

// Agent ids hold a '/' ("<issuer-name>/<subject>"): in a path they are
// escaped, '/' as %2F (url.PathEscape), so /v1/agents/k8s%2Fprod%2Fdeployer
// names agent k8s/prod/deployer.

func (s *Server) registerAgentRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/agents", s.handleAgentList)
	r.With(s.requireOperator).Get("/agents/{id}", s.handleAgentGet)
	r.With(s.requireOperator).Post("/agents/{id}/quarantine", s.handleAgentQuarantine)
	r.With(s.requireOperator).Delete("/agents/{id}/quarantine", s.handleAgentRelease)
}

// agentView is an agent as the API shows it: its risk and quarantine as
// of now.
type agentView struct {
	ID          string             `json:"id"`
	FirstSeen   time.Time          `json:"first_seen,omitzero"` // absent for an agent valet never saw
	LastSeen    time.Time          `json:"last_seen,omitzero"`
	Roles       []string           `json:"roles"`
	Risk        int                `json:"risk"`
	Quarantined bool               `json:"quarantined"`
	Quarantine  *agents.Quarantine `json:"quarantine,omitempty"`
	LastRelease *agents.Release    `json:"last_release,omitempty"`
	// RecentSignals are the latest signals that moved the agent's risk.
	RecentSignals []agents.SignalRef `json:"recent_signals"`
}

func (s *Server) viewAgent(a *agents.Agent) agentView {
	now := s.b.Now()
	v := agentView{ID: a.ID, FirstSeen: a.FirstSeen.UTC(), LastSeen: a.LastSeen.UTC(), Roles: a.Roles, Risk: s.b.Risk(a.Risk),
		Quarantined: a.QuarantinedAt(now), LastRelease: a.LastRelease, RecentSignals: a.Signals}
	if v.Quarantined {
		v.Quarantine = a.Quarantine
	}
	if v.Roles == nil {
		v.Roles = []string{}
	}
	if v.RecentSignals == nil {
		v.RecentSignals = []agents.SignalRef{}
	}
	return v
}

type agentListResponse struct {
	Agents []agentView `json:"agents"`
	// Next is the cursor of the following page (pass it as before=).
	Next string `json:"next,omitempty"`
}

func (s *Server) handleAgentList(w http.ResponseWriter, r *http.Request) {
	q, err := readQuery(r, "quarantined", "before", "limit")
	if err != nil {
		s.Error(w, r, err)
		return
	}
	if err := oneOf("quarantined", q["quarantined"], "true", "false"); err != nil {
		s.Error(w, r, err)
		return
	}
	f := agents.Filter{Quarantined: q["quarantined"] == "true", Before: q["before"]}
	if f.Limit, err = q.limit(100); err != nil {
		s.Error(w, r, err)
		return
	}
	as, err := s.b.ListAgents(r.Context(), f)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	out := agentListResponse{Agents: make([]agentView, 0, len(as))}
	for _, a := range as {
		out.Agents = append(out.Agents, s.viewAgent(a))
	}
	if len(as) == f.Limit {
		out.Next = as[len(as)-1].Cursor()
	}
	writeJSON(w, http.StatusOK, out)
}

// agentDetail is GET /v1/agents/{id}: the agent, its latest signals and
// its live leases.
type agentDetail struct {
	agentView
	Signals []*agents.Signal `json:"signals"`
	Leases  []leaseView      `json:"leases"`
}

// Bounds of what an agent's page lists.
const (
	agentSignals = 50
	agentLeases  = 100
)

func (s *Server) handleAgentGet(w http.ResponseWriter, r *http.Request) {
	if _, err := readQuery(r); err != nil {
		s.Error(w, r, err)
		return
	}
	id, err := agentParam(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	a, err := s.b.GetAgent(r.Context(), id)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	d := agentDetail{agentView: s.viewAgent(a), Signals: []*agents.Signal{}, Leases: []leaseView{}}
	ss, err := s.b.ListSignals(r.Context(), agents.SignalFilter{AgentID: id, Limit: agentSignals})
	if err != nil {
		s.Error(w, r, err)
		return
	}
	if ss != nil {
		d.Signals = ss
	}
	for _, st := range []leases.State{leases.StateActive, leases.StatePending, leases.StateRevoking, leases.StateIrrevocable} {
		ls, err := s.b.ListLeases(r.Context(), leases.Filter{AgentID: id, State: st, Limit: agentLeases})
		if err != nil {
			s.Error(w, r, err)
			return
		}
		for _, l := range ls {
			if len(d.Leases) < agentLeases {
				d.Leases = append(d.Leases, viewLease(l, true))
			}
		}
	}
	writeJSON(w, http.StatusOK, d)
}

// quarantineRequest is the body of POST /v1/agents/{id}/quarantine.
type quarantineRequest struct {
	Reason string `json:"reason"`
}

func (r *quarantineRequest) Validate() error { return validateReason(r.Reason) }

type quarantineResponse struct {
	Agent agentView `json:"agent"`
	// LeasesEnded counts the live leases the quarantine ended.
	LeasesEnded int `json:"leases_ended"`
}

func (s *Server) handleAgentQuarantine(w http.ResponseWriter, r *http.Request) {
	id, err := agentParam(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	var req quarantineRequest
	if err := decodeJSON(r, &req); err != nil {
		s.Error(w, r, err)
		return
	}
	a, n, err := s.b.QuarantineAgent(r.Context(), operatorFrom(r.Context()), id, req.Reason, requestID(r.Context()))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, quarantineResponse{Agent: s.viewAgent(a), LeasesEnded: n})
}

// handleAgentRelease ends a quarantine; the reason is the query's
// (?reason=), as for DELETE /v1/leases/{id}.
func (s *Server) handleAgentRelease(w http.ResponseWriter, r *http.Request) {
	id, err := agentParam(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	q, err := readQuery(r, "reason")
	if err != nil {
		s.Error(w, r, err)
		return
	}
	if err := validateReason(q["reason"]); err != nil {
		s.Error(w, r, err)
		return
	}
	a, err := s.b.ReleaseAgent(r.Context(), operatorFrom(r.Context()), id, q["reason"], requestID(r.Context()))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.viewAgent(a))
}

// agentParam reads the agent id of the path, escaped as url.PathEscape
// does ('/' as %2F), and checks its shape.
func agentParam(r *http.Request) (string, error) {
	id := chi.URLParam(r, "id")
	if r.URL.RawPath != "" {
		// chi matched the escaped path: the segment is still escaped.
		u, err := url.PathUnescape(id)
		if err != nil {
			return "", broker.Errorf(broker.EINVALID, "the agent id in the path is not validly escaped; escape it with '/' as %%2F")
		}
		id = u
	}
	if err := validateAgentID("the agent id in the path", id); err != nil {
		return "", err
	}
	return id, nil
}
