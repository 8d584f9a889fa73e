package api

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases/config"
)

func (s *Server) registerGrantRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/grants", s.handleGrantList)
	r.Get("/grants/{id}", s.handleGrantGet)
	r.Post("/grants/{id}/redeem", s.handleGrantRedeem)
	r.With(s.requireOperator).Post("/grants/{id}/approve", s.handleGrantDecision("approve"))
	r.With(s.requireOperator).Post("/grants/{id}/deny", s.handleGrantDecision("deny"))
	r.With(s.requireOperator).Post("/grants/{id}/review", s.handleGrantDecision("review"))
}

// grantView is a grant as the API shows it.
type grantView struct {
	ID                string            `json:"id"`
	Kind              string            `json:"kind"`
	AgentID           string            `json:"agent_id"`
	Role              string            `json:"role"`
	TTL               string            `json:"ttl"`
	Scope             map[string]any    `json:"scope,omitempty"`
	Reason            string            `json:"reason"`
	State             grants.State      `json:"state"`
	ApprovalsRequired int               `json:"approvals_required"`
	Approvals         []grants.Decision `json:"approvals"`
	Denial            *grants.Decision  `json:"denial,omitempty"`
	Review            *grants.Decision  `json:"review,omitempty"`
	ReviewPending     bool              `json:"review_pending,omitempty"`
	CreatedAt         time.Time         `json:"created_at"`
	ExpiresAt         time.Time         `json:"expires_at"`
	ApprovedAt        time.Time         `json:"approved_at,omitzero"`
	RedeemBy          time.Time         `json:"redeem_by,omitzero"`
	EndedAt           time.Time         `json:"ended_at,omitzero"`
	LeaseID           string            `json:"lease_id,omitempty"`
	Lineage           any               `json:"lineage,omitempty"`
}

func viewGrant(g *grants.Grant) grantView {
	v := grantView{
		ID: g.ID, Kind: g.Kind, AgentID: g.AgentID, Role: g.Role, TTL: g.TTL.String(), Scope: g.Scope, Reason: g.Reason,
		State: g.State, ApprovalsRequired: g.Required, Approvals: g.Approvals, Denial: g.Denial, Review: g.Review,
		ReviewPending: g.Kind == grants.KindBreakGlass && g.Review == nil,
		CreatedAt:     g.CreatedAt.UTC(), ExpiresAt: g.ExpiresAt.UTC(), LeaseID: g.LeaseID, Lineage: g.Lineage,
	}
	if v.Approvals == nil {
		v.Approvals = []grants.Decision{}
	}
	if !g.ApprovedAt.IsZero() {
		v.ApprovedAt = g.ApprovedAt.UTC()
	}
	if !g.RedeemBy.IsZero() {
		v.RedeemBy = g.RedeemBy.UTC()
	}
	if !g.EndedAt.IsZero() {
		v.EndedAt = g.EndedAt.UTC()
	}
	return v
}

// maxWait bounds a long poll.
const maxWait = 60 * time.Second

// handleGrantGet answers the agent's poll (or an operator's look). With
// ?wait=30s it waits, while the grant is pending, until it changes.
func (s *Server) handleGrantGet(w http.ResponseWriter, r *http.Request) {
	c, err := s.caller(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	q, err := readQuery(r, "wait")
	if err != nil {
		s.Error(w, r, err)
		return
	}
	var wait time.Duration
	if v := q["wait"]; v != "" {
		d, err := config.ParseDuration(v)
		if err != nil || d > maxWait {
			s.Error(w, r, broker.Errorf(broker.EINVALID, "wait must be a duration of at most %s, such as 30s", maxWait))
			return
		}
		wait = d
	}
	g, err := s.b.WaitGrant(r.Context(), c, chi.URLParam(r, "id"), wait)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, viewGrant(g))
}

func (s *Server) handleGrantRedeem(w http.ResponseWriter, r *http.Request) {
	tok, err := s.bearer(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	res, err := s.b.RedeemGrant(r.Context(), broker.RedeemRequest{
		Attestation: tok, GrantID: chi.URLParam(r, "id"), SourceIP: s.clientIP(r), RequestID: requestID(r.Context()),
	})
	if err != nil {
		s.Error(w, r, err)
		return
	}
	s.writeCredential(w, r, res)
}

// decisionRequest is the optional body of approve, deny and review.
type decisionRequest struct {
	Comment string `json:"comment,omitempty"`
}

func (d *decisionRequest) Validate() error { return validateReason(d.Comment) }

func (s *Server) handleGrantDecision(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req decisionRequest
		if r.ContentLength != 0 {
			if err := decodeJSON(r, &req); err != nil {
				s.Error(w, r, err)
				return
			}
		}
		op, id, rid := operatorFrom(r.Context()), chi.URLParam(r, "id"), requestID(r.Context())
		var g *grants.Grant
		var err error
		switch kind {
		case "approve":
			g, err = s.b.ApproveGrant(r.Context(), op, id, req.Comment, rid)
		case "deny":
			g, err = s.b.DenyGrant(r.Context(), op, id, req.Comment, rid)
		default:
			g, err = s.b.ReviewGrant(r.Context(), op, id, req.Comment, rid)
		}
		if err != nil {
			s.Error(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, viewGrant(g))
	}
}

// grantFilter reads the query of GET /v1/grants.
func grantFilter(r *http.Request) (grants.Filter, error) {
	q, err := readQuery(r, "state", "agent_id", "role", "kind", "review", "before", "limit")
	if err != nil {
		return grants.Filter{}, err
	}
	f := grants.Filter{State: grants.State(q["state"]), AgentID: q["agent_id"], Role: q["role"], Kind: q["kind"],
		ReviewPending: q["review"] == "pending", Before: q["before"]}
	checks := []error{
		oneOf("state", string(f.State), string(grants.StatePending), string(grants.StateApproved), string(grants.StateDenied),
			string(grants.StateExpired), string(grants.StateRedeemed)),
		oneOf("kind", f.Kind, grants.KindApproval, grants.KindBreakGlass),
		oneOf("review", q["review"], "pending"),
		validateOwner(f.AgentID, ""),
		validateID("before", "grant", f.Before),
	}
	if f.Role != "" {
		checks = append(checks, validateName("role", f.Role))
	}
	for _, err := range checks {
		if err != nil {
			return f, err
		}
	}
	f.Limit, err = q.limit(100)
	return f, err
}

type grantListResponse struct {
	Grants []grantView `json:"grants"`
	Next   string      `json:"next,omitempty"`
}

func (s *Server) handleGrantList(w http.ResponseWriter, r *http.Request) {
	f, err := grantFilter(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	gs, err := s.b.ListGrants(r.Context(), f)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	out := grantListResponse{Grants: make([]grantView, 0, len(gs))}
	for _, g := range gs {
		out.Grants = append(out.Grants, viewGrant(g))
	}
	if len(gs) == f.Limit {
		out.Next = gs[len(gs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}
