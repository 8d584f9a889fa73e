package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/jobs"
)

// manualRunWait is how long POST /v1/jobs/{name}/run waits for the run to
// end before answering 202 with the run in progress.
const manualRunWait = 25 * time.Second

func (s *Server) registerJobRoutes(r chi.Router) {
	r.With(s.requireOperator).Get("/jobs", s.handleJobList)
	r.With(s.requireOperator).Get("/jobs/{name}", s.handleJobGet)
	r.With(s.requireOperator).Post("/jobs/{name}/run", s.handleJobRun)
}

// jobView is a scheduled job as the API shows it.
type jobView struct {
	Name                string     `json:"name"`
	Type                string     `json:"type"`
	Description         string     `json:"description,omitempty"`
	Schedule            string     `json:"schedule"`
	Jitter              string     `json:"jitter"`
	Timeout             string     `json:"timeout"`
	RunOnStart          bool       `json:"run_on_start"`
	Running             bool       `json:"running"`
	Skips               uint64     `json:"skips"`
	Runs                uint64     `json:"runs"`
	NextRun             *time.Time `json:"next_run,omitempty"`
	LastStart           *time.Time `json:"last_start,omitempty"`
	LastEnd             *time.Time `json:"last_end,omitempty"`
	LastOutcome         string     `json:"last_outcome,omitempty"`
	LastError           string     `json:"last_error,omitempty"`
	LastSuccess         *time.Time `json:"last_success,omitempty"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	Current             *jobs.Run  `json:"current,omitempty"`
	Recent              []jobs.Run `json:"recent,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func viewJob(st jobs.Status, recent bool) jobView {
	v := jobView{Name: st.Name, Type: st.Type, Description: st.Description, Schedule: st.Schedule, Jitter: st.Jitter.String(),
		Timeout: st.Timeout.String(), RunOnStart: st.RunOnStart, Running: st.Running, Skips: st.Skips}
	if s := st.State; s != nil {
		v.Runs, v.NextRun, v.LastStart, v.LastEnd = s.Runs, timePtr(s.NextRun), timePtr(s.LastStart), timePtr(s.LastEnd)
		v.LastOutcome, v.LastError, v.LastSuccess, v.ConsecutiveFailures = s.LastOutcome, s.LastError, timePtr(s.LastSuccess), s.ConsecutiveFailures
		v.Current = s.Current
		if recent {
			v.Recent = s.Recent
			if v.Recent == nil {
				v.Recent = []jobs.Run{}
			}
		}
	}
	return v
}

func (s *Server) handleJobList(w http.ResponseWriter, r *http.Request) {
	out := []jobView{}
	if s.jobs != nil {
		list, err := s.jobs.List(r.Context())
		if err != nil {
			s.Error(w, r, JobError(err, ""))
			return
		}
		for _, st := range list {
			out = append(out, viewJob(st, false))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

func (s *Server) handleJobGet(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if s.jobs == nil {
		s.Error(w, r, JobError(jobs.ErrNotFound, name))
		return
	}
	st, err := s.jobs.Get(r.Context(), name)
	if err != nil {
		s.Error(w, r, JobError(err, name))
		return
	}
	writeJSON(w, http.StatusOK, viewJob(st, true))
}

// handleJobRun runs a job now for the operator. It answers 200 with the
// finished run (its outcome says whether it succeeded), or 202 with the
// run in progress when it lasts longer than manualRunWait (GET
// /v1/jobs/{name} shows its outcome later).
func (s *Server) handleJobRun(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if s.jobs == nil {
		s.Error(w, r, JobError(jobs.ErrNotFound, name))
		return
	}
	if err := noBody(r); err != nil {
		s.Error(w, r, err)
		return
	}
	run, err := s.jobs.RunNow(r.Context(), name, operatorFrom(r.Context()).Name, manualRunWait)
	if run != nil && run.Ended.IsZero() && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		writeJSON(w, http.StatusAccepted, map[string]any{"job": name, "run": run, "status": "running"})
		return
	}
	if err != nil {
		s.Error(w, r, JobError(err, name))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"job": name, "run": run, "status": "finished"})
}

// JobError turns a scheduler error into a client error with its code
// (the console answers with it too).
func JobError(err error, name string) error {
	shown := name
	if !broker.ValidName(name) {
		shown = "(not a job name)"
	}
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		return broker.Wrap(broker.ENOTFOUND, err, "job %s is not configured or is disabled; GET /v1/jobs lists the jobs", shown)
	case errors.Is(err, jobs.ErrBusy):
		return broker.Wrap(broker.ECONFLICT, err, "a run of job %s is in progress; wait for it to end (GET /v1/jobs/%s)", shown, shown)
	case errors.Is(err, jobs.ErrNotLeader):
		return broker.Wrap(broker.EUNAVAILABLE, err, "this valet does not lead its replicas and runs no job; ask the leader")
	default:
		return broker.Wrap(broker.EINTERNAL, err, "job store failure")
	}
}

// handleAuditKeys serves the audit checkpoint public keys as a JWK set
// (RFC 7517; Ed25519 keys as RFC 8037 describes), so anyone can verify
// checkpoints a witness kept.
func (s *Server) handleAuditKeys(w http.ResponseWriter, r *http.Request) {
	keys := s.auditKeys
	if keys == nil {
		keys = []map[string]any{}
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys})
}

// jobRunRequest is the optional body of POST /v1/jobs/{name}/run: an
// empty object (the run takes no parameters).
type jobRunRequest struct{}

// Validate implements Validator.
func (jobRunRequest) Validate() error { return nil }

// noBody accepts no body or an empty JSON object.
func noBody(r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	var req jobRunRequest
	return decodeJSON(r, &req)
}
