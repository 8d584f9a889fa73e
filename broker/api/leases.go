package api

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/config"
)

func (s *Server) registerLeaseRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/leases", s.handleLeaseList)
	r.With(s.requireOperator).Post("/leases/revoke", s.handleLeaseRevokeMatching)
	r.Get("/leases/{id}", s.handleLeaseGet)
	r.Post("/leases/{id}/renew", s.handleLeaseRenew)
	r.Delete("/leases/{id}", s.handleLeaseDelete)
}

// leaseView is a lease as the API shows it. The backend handle, details
// and last revocation error are shown to operators only.
type leaseView struct {
	ID             string            `json:"id"`
	AgentID        string            `json:"agent_id"`
	Role           string            `json:"role"`
	Backend        string            `json:"backend"`
	State          leases.State      `json:"state"`
	EndReason      leases.State      `json:"end_reason,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	ExpiresAt      time.Time         `json:"expires_at"`
	MaxExpiresAt   time.Time         `json:"max_expires_at,omitzero"`
	EndedAt        time.Time         `json:"ended_at,omitzero"`
	Renewable      bool              `json:"renewable"`
	RenewCount     int               `json:"renew_count"`
	GrantID        string            `json:"grant_id,omitempty"`
	Approvers      []string          `json:"approvers,omitempty"`
	Lineage        leases.Lineage    `json:"lineage"`
	Handle         string            `json:"handle,omitempty"`
	Details        map[string]string `json:"details,omitempty"`
	RevokeAttempts int               `json:"revoke_attempts,omitempty"`
	LastError      string            `json:"last_error,omitempty"`
	NextAttempt    time.Time         `json:"next_attempt,omitzero"`

	// CredentialExpiresAt is set when the credential lives at its backend
	// past the lease (a GitHub installation token's hour): valet revokes it
	// when the lease ends, and until then it is valid at most this long.
	CredentialExpiresAt time.Time `json:"credential_expires_at,omitzero"`
	// Unrevocable says that the backend cannot revoke the credential (a
	// Google token): though the lease has ended, the credential stays valid
	// until its expiry (credential_expires_at, else expires_at), and the
	// lease reads revoking, to end expired, until then.
	Unrevocable bool `json:"unrevocable,omitempty"`
}

// viewLease shows l as the broker returned it, with its state as of the
// moment the broker read it (so a list filtered by state shows that state).
// The handle, the backend's details and the last revocation error (the
// backend's own text) are shown to operators only.
func viewLease(l *leases.Lease, operator bool) leaseView {
	v := leaseView{
		ID: l.ID, AgentID: l.AgentID, Role: l.Role, Backend: l.Backend, State: l.State, EndReason: l.EndReason,
		CreatedAt: l.CreatedAt.UTC(), ExpiresAt: l.ExpiresAt.UTC(), MaxExpiresAt: l.MaxExpires.UTC(), EndedAt: l.EndedAt.UTC(),
		Renewable: l.Renewable, RenewCount: l.RenewCount, GrantID: l.GrantID, Approvers: l.Approvers, Lineage: l.Lineage,
		RevokeAttempts: l.RevokeAttempts, NextAttempt: l.NextAttempt.UTC(), Unrevocable: l.Unrevocable,
	}
	if l.EndedAt.IsZero() {
		v.EndedAt = time.Time{}
	}
	if l.NextAttempt.IsZero() {
		v.NextAttempt = time.Time{}
	}
	if l.MaxExpires.IsZero() {
		v.MaxExpiresAt = time.Time{}
	}
	if !l.CredentialExpires.IsZero() {
		v.CredentialExpiresAt = l.CredentialExpires.UTC()
	}
	if operator {
		v.Handle = l.Handle
		v.Details = l.Details
		v.LastError = l.LastError
	}
	return v
}

func (s *Server) handleLeaseGet(w http.ResponseWriter, r *http.Request) {
	c, err := s.caller(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	l, err := s.b.GetLease(r.Context(), c, chi.URLParam(r, "id"))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, viewLease(l, c.Operator != nil))
}

// renewRequest is the optional body of POST /v1/leases/{id}/renew.
type renewRequest struct {
	TTL *config.Duration `json:"ttl,omitempty"`
}

func (r *renewRequest) Validate() error {
	if r.TTL != nil && r.TTL.D() < time.Second {
		return broker.Errorf(broker.EINVALID, "ttl must be at least 1s")
	}
	return nil
}

type renewResponse struct {
	Lease      leaseView      `json:"lease"`
	Credential map[string]any `json:"credential,omitempty"`
}

func (s *Server) handleLeaseRenew(w http.ResponseWriter, r *http.Request) {
	c, err := s.caller(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	var req renewRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			s.Error(w, r, err)
			return
		}
	}
	rr := broker.RenewRequest{ID: chi.URLParam(r, "id"), SourceIP: s.clientIP(r), RequestID: requestID(r.Context())}
	if req.TTL != nil {
		rr.TTL = req.TTL.D()
	}
	res, err := s.b.RenewLease(r.Context(), c, rr)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, renewResponse{Lease: viewLease(res.Lease, c.Operator != nil), Credential: res.Credential})
}

func (s *Server) handleLeaseDelete(w http.ResponseWriter, r *http.Request) {
	c, err := s.caller(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	q, err := readQuery(r, "reason")
	if err != nil {
		s.Error(w, r, err)
		return
	}
	reason := q["reason"]
	if err := validateReason(reason); err != nil {
		s.Error(w, r, err)
		return
	}
	l, err := s.b.EndLease(r.Context(), c, chi.URLParam(r, "id"), reason, requestID(r.Context()))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, viewLease(l, c.Operator != nil))
}

type leaseListResponse struct {
	Leases []leaseView `json:"leases"`
	// Next is the cursor for the following page (pass it as before=).
	Next string `json:"next,omitempty"`
}

func (s *Server) handleLeaseList(w http.ResponseWriter, r *http.Request) {
	f, err := leaseFilter(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	ls, err := s.b.ListLeases(r.Context(), f)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	out := leaseListResponse{Leases: make([]leaseView, 0, len(ls))}
	for _, l := range ls {
		out.Leases = append(out.Leases, viewLease(l, true))
	}
	if len(ls) == f.Limit {
		out.Next = ls[len(ls)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// leaseStates are the values of the state filter.
var leaseStates = []string{
	string(leases.StatePending), string(leases.StateActive), string(leases.StateRevoking), string(leases.StateIrrevocable),
	string(leases.StateReleased), string(leases.StateRevoked), string(leases.StateExpired),
}

// leaseFilter reads the query of GET /v1/leases.
func leaseFilter(r *http.Request) (leases.Filter, error) {
	q, err := readQuery(r, "agent_id", "role", "backend", "state", "lineage", "before", "limit")
	if err != nil {
		return leases.Filter{}, err
	}
	f := leases.Filter{
		AgentID: q["agent_id"], Role: q["role"], Backend: q["backend"],
		State: leases.State(q["state"]), Lineage: q["lineage"], Before: q["before"],
	}
	if err := oneOf("state", string(f.State), leaseStates...); err != nil {
		return f, err
	}
	if err := validateOwner(f.AgentID, f.Lineage); err != nil {
		return f, err
	}
	for _, n := range []struct{ field, value string }{{"role", f.Role}, {"backend", f.Backend}} {
		if n.value != "" {
			if err := validateName(n.field, n.value); err != nil {
				return f, err
			}
		}
	}
	if err := validateID("before", "lease", f.Before); err != nil {
		return f, err
	}
	f.Limit, err = q.limit(100)
	return f, err
}

// validateOwner checks the agent_id and lineage selectors of lease
// listing and revocation; either may be empty.
func validateOwner(agentID, lineage string) error {
	if agentID != "" {
		if err := validateAgentID("agent_id", agentID); err != nil {
			return err
		}
	}
	if lineage != "" {
		return validateLineage("lineage", lineage)
	}
	return nil
}

// revokeMatchingRequest is the body of POST /v1/leases/revoke.
type revokeMatchingRequest struct {
	AgentID string `json:"agent_id,omitempty"`
	Lineage string `json:"lineage,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func (r *revokeMatchingRequest) Validate() error {
	if (r.AgentID == "") == (r.Lineage == "") {
		return broker.Errorf(broker.EINVALID, "give exactly one of agent_id or lineage")
	}
	if err := validateOwner(r.AgentID, r.Lineage); err != nil {
		return err
	}
	return validateReason(r.Reason)
}

func (s *Server) handleLeaseRevokeMatching(w http.ResponseWriter, r *http.Request) {
	var req revokeMatchingRequest
	if err := decodeJSON(r, &req); err != nil {
		s.Error(w, r, err)
		return
	}
	n, err := s.b.RevokeMatching(r.Context(), operatorFrom(r.Context()), leases.Filter{AgentID: req.AgentID, Lineage: req.Lineage}, req.Reason, requestID(r.Context()))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"revoked": n})
}
