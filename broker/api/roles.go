package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

func (s *Server) registerRoleRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/roles", s.handleRoleList)
}

type roleView struct {
	Name              string            `json:"name"`
	Description       string            `json:"description,omitempty"`
	Backend           string            `json:"backend"`
	TTL               string            `json:"ttl"`
	MaxTTL            string            `json:"max_ttl"`
	Audience          []string          `json:"audience,omitempty"`
	Scopes            []string          `json:"scopes,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	ApprovalsRequired int               `json:"approvals_required"`
	Renewable         bool              `json:"renewable"`
}

func (s *Server) handleRoleList(w http.ResponseWriter, r *http.Request) {
	out := []roleView{}
	for _, ro := range s.b.Roles() {
		out = append(out, roleView{
			Name: ro.Name, Description: ro.Description, Backend: ro.Backend, TTL: ro.TTL.String(), MaxTTL: ro.MaxTTL.String(),
			Audience: ro.Audience, Scopes: ro.Scopes, Labels: ro.Labels, ApprovalsRequired: ro.Approval.Required, Renewable: ro.IsRenewable(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"roles": out})
}
