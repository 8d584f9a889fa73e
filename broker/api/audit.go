package api

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/audit"
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
	q := r.URL.Query()
	f := audit.Filter{Kind: q.Get("kind"), AgentID: q.Get("agent_id"), LeaseID: q.Get("lease_id"), Newest: q.Get("newest") == "true"}
	for _, p := range []struct {
		name string
		dst  *uint64
	}{{"after", &f.AfterSeq}, {"before", &f.BeforeSeq}} {
		if v := q.Get(p.name); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				s.Error(w, r, broker.Errorf(broker.EINVALID, "%s must be a sequence number", p.name))
				return
			}
			*p.dst = n
		}
	}
	limit, err := queryLimit(q, f.Limit)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	f.Limit = limit
	recs, err := audit.List(s.auditDB, f)
	if err != nil {
		s.Error(w, r, broker.Wrap(broker.EINTERNAL, err, "read audit log"))
		return
	}
	if recs == nil {
		recs = []audit.Record{}
	}
	writeJSON(w, http.StatusOK, auditListResponse{Records: recs})
}

// handleAuditVerify walks the whole chain. A broken chain is reported in
// the body (ok: false) with status 200: the request itself succeeded.
func (s *Server) handleAuditVerify(w http.ResponseWriter, r *http.Request) {
	res, err := audit.Verify(s.auditDB)
	if err != nil {
		s.Error(w, r, broker.Wrap(broker.EINTERNAL, err, "verify audit log"))
		return
	}
	writeJSON(w, http.StatusOK, res)
}
