package api

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
)

func (s *Server) registerAuditRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/audit", s.handleAuditList)
	r.With(s.requireOperator).Get("/audit/verify", s.handleAuditVerify)
}

type auditListResponse struct {
	Records []audit.Record `json:"records"`
}

// handleAuditList pages through the log: after=<seq> walks forward,
// newest=true lists backwards from the end (before=<seq> to continue).
func (s *Server) handleAuditList(w http.ResponseWriter, r *http.Request) {
	f, err := auditFilter(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	recs, err := s.audit.ListAudit(r.Context(), f)
	if err != nil {
		s.Error(w, r, broker.Wrap(broker.EINTERNAL, err, "read audit log"))
		return
	}
	if recs == nil {
		recs = []audit.Record{}
	}
	writeJSON(w, http.StatusOK, auditListResponse{Records: recs})
}

// auditFilter reads the query of GET /v1/audit.
func auditFilter(r *http.Request) (audit.Filter, error) {
	q, err := readQuery(r, "kind", "agent_id", "lease_id", "newest", "after", "before", "limit")
	if err != nil {
		return audit.Filter{}, err
	}
	f := audit.Filter{Kind: q["kind"], AgentID: q["agent_id"], LeaseID: q["lease_id"], Newest: q["newest"] == "true"}
	if err := oneOf("kind", f.Kind, audit.Kinds...); err != nil {
		return f, err
	}
	if err := oneOf("newest", q["newest"], "true", "false"); err != nil {
		return f, err
	}
	if f.AgentID != "" {
		if err := validateAgentID("agent_id", f.AgentID); err != nil {
			return f, err
		}
	}
	if err := validateID("lease_id", "lease", f.LeaseID); err != nil {
		return f, err
	}
	for _, p := range []struct {
		name string
		dst  *uint64
	}{{"after", &f.AfterSeq}, {"before", &f.BeforeSeq}} {
		if v := q[p.name]; v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return f, broker.Errorf(broker.EINVALID, "%s must be a sequence number", p.name)
			}
			*p.dst = n
		}
	}
	f.Limit, err = q.limit(0)
	return f, err
}

// handleAuditVerify walks the whole chain. A broken chain is reported in
// the body (ok: false) with status 200: the request itself succeeded.
func (s *Server) handleAuditVerify(w http.ResponseWriter, r *http.Request) {
	res, err := s.audit.VerifyAudit(r.Context())
	if err != nil {
		s.Error(w, r, broker.Wrap(broker.EINTERNAL, err, "verify audit log"))
		return
	}
	writeJSON(w, http.StatusOK, res)
}
