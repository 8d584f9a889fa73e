package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases/audit"
)

func (s *Server) registerSignalRoutes(r chi.Router) {
	r.Post("/signals", s.handleSignalCreate)
	r.Post("/signals/set", s.handleSETPush)
	r.With(s.requireOperator).Get("/signals", s.handleSignalList)
	r.With(s.requireOperator).Get("/signals/{id}", s.handleSignalGet)
}

// signalRequest is the body of POST /v1/signals: exactly one subject, a
// severity, a reason, and optionally the action asked for and when the
// event happened.
type signalRequest struct {
	AgentID   string     `json:"agent_id,omitempty"`
	LeaseID   string     `json:"lease_id,omitempty"`
	Role      string     `json:"role,omitempty"`
	Lineage   string     `json:"lineage,omitempty"`
	Severity  string     `json:"severity"`
	Reason    string     `json:"reason"`
	Action    string     `json:"action,omitempty"`
	EventTime *time.Time `json:"event_time,omitempty"`
}

// Validate checks that one subject is named; the broker checks the rest.
func (r *signalRequest) Validate() error {
	n := 0
	for _, v := range []string{r.AgentID, r.LeaseID, r.Role, r.Lineage} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return broker.Errorf(broker.EINVALID, "give exactly one subject: agent_id, lease_id, role or lineage")
	}
	return nil
}

// subject is the signal's subject.
func (r *signalRequest) subject() agents.Subject {
	switch {
	case r.AgentID != "":
		return agents.Subject{Kind: agents.SubjectAgent, ID: r.AgentID}
	case r.LeaseID != "":
		return agents.Subject{Kind: agents.SubjectLease, ID: r.LeaseID}
	case r.Role != "":
		return agents.Subject{Kind: agents.SubjectRole, ID: r.Role}
	default:
		return agents.Subject{Kind: agents.SubjectLineage, ID: r.Lineage}
	}
}

// signalResponse is the body of a 201 from POST /v1/signals.
type signalResponse struct {
	Signal *agents.Signal `json:"signal"`
	// Quarantined are the agents the signal quarantined.
	Quarantined []string `json:"quarantined"`
	// LeasesEnded counts the live leases it ended; the revocation queue
	// revokes them at their backends.
	LeasesEnded int `json:"leases_ended"`
}

// handleSignalCreate accepts a signal from a signal source
// (signals.sources: its token or ID token) or an operator.
func (s *Server) handleSignalCreate(w http.ResponseWriter, r *http.Request) {
	src, err := s.signalSource(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	var req signalRequest
	if err := decodeJSON(r, &req); err != nil {
		s.b.RefuseSignal(r.Context(), src, requestID(r.Context()), err)
		s.Error(w, r, err)
		return
	}
	sr := broker.SignalRequest{Subject: req.subject(), Severity: agents.Severity(req.Severity), Reason: req.Reason,
		Action: agents.Action(req.Action), RequestID: requestID(r.Context())}
	if req.EventTime != nil {
		sr.EventTime = *req.EventTime
	}
	res, err := s.b.RaiseSignal(r.Context(), src, sr)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	q := res.Quarantined
	if q == nil {
		q = []string{}
	}
	writeJSON(w, http.StatusCreated, signalResponse{Signal: res.Signal, Quarantined: q, LeasesEnded: res.Ended})
}

// signalSource authenticates the sender of a signal: a signal source's
// token or ID token, else an operator's credential. A request without a
// credential, or with one that does not verify, is refused through
// broker.RefuseCredential (audited within its address's budget).
func (s *Server) signalSource(r *http.Request) (*broker.SignalSource, error) {
	tok, err := s.bearer(r)
	if err != nil {
		return nil, err
	}
	var src *broker.SignalSource
	isSource := false
	if tok == "" {
		err = broker.Errorf(broker.EUNAUTHORIZED, "send a signal source's token or ID token, or an operator token, as Authorization: Bearer <token>")
	} else {
		src, isSource, err = s.sources.Authenticate(r.Context(), tok)
	}
	if err == nil && isSource {
		return src, nil
	}
	if err == nil {
		var op *broker.Operator
		var isOp bool
		op, isOp, err = s.ops.Authenticate(r.Context(), tok)
		if err == nil && isOp {
			return broker.OperatorSource(op), nil
		}
		if err == nil {
			err = broker.Errorf(broker.EUNAUTHORIZED, "the bearer token is no signal source's credential and no operator's")
		}
	}
	if broker.ErrorCode(err) != broker.EUNAUTHORIZED {
		return nil, err // not a verdict on the credential (keys that cannot be fetched)
	}
	if rerr := s.b.RefuseCredential(r.Context(), broker.Refusal{
		Credential: broker.CredentialSignalSource, SourceIP: s.clientIP(r), Kind: audit.KindSignal,
		RequestID: requestID(r.Context()), Reason: broker.ErrorMessage(err),
	}); rerr != nil {
		return nil, rerr
	}
	return nil, err
}

// setContentType is the media type of a pushed SET (RFC 8935 section 2).
const setContentType = "application/secevent+jwt"

// handleSETPush is the RFC 8935 push endpoint: the body is one SET from a
// transmitter of signals.transmitters, which authenticates itself by its
// signature. A SET valet accepts is answered 202 Accepted with an empty
// body, whatever became of its events (each is audited); one it refuses,
// 400 with an RFC 8935 error ({"err", "description"}); a store that is
// down, a problem+json 503.
func (s *Server) handleSETPush(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, setContentType); err != nil {
		writeSETError(w, http.StatusBadRequest, broker.SETInvalidRequest, "Content-Type must be "+setContentType+" (RFC 8935 section 2)")
		return
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		err = bodyError(err)
		writeSETError(w, StatusOf(err), broker.SETInvalidRequest, broker.ErrorMessage(err))
		return
	}
	_, err = s.b.ReceiveSET(r.Context(), strings.TrimSpace(string(b)), s.clientIP(r), requestID(r.Context()))
	var se *broker.SETError
	switch code := broker.ErrorCode(err); {
	case err == nil:
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusAccepted)
	case errors.As(err, &se):
		writeSETError(w, http.StatusBadRequest, se.Code, broker.ErrorMessage(err))
	case code == broker.EUNAUTHORIZED || code == broker.ETOOLARGE:
		writeSETError(w, StatusOf(err), broker.SETInvalidRequest, broker.ErrorMessage(err))
	case code == broker.ERATELIMIT:
		w.Header().Set("Retry-After", RetryAfter(err))
		writeSETError(w, http.StatusTooManyRequests, "access_denied", broker.ErrorMessage(err))
	default:
		s.Error(w, r, err)
	}
}

// writeSETError writes an RFC 8935 section 2.3 error.
func writeSETError(w http.ResponseWriter, status int, code broker.SETErrorCode, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"err": string(code), "description": description})
}

type signalListResponse struct {
	Signals []*agents.Signal `json:"signals"`
	// Next is the cursor of the following page (pass it as before=).
	Next string `json:"next,omitempty"`
}

func (s *Server) handleSignalList(w http.ResponseWriter, r *http.Request) {
	q, err := readQuery(r, "agent_id", "source", "before", "limit")
	if err != nil {
		s.Error(w, r, err)
		return
	}
	f := agents.SignalFilter{AgentID: q["agent_id"], Source: q["source"], Before: q["before"]}
	if f.AgentID != "" {
		if err := validateAgentID("agent_id", f.AgentID); err != nil {
			s.Error(w, r, err)
			return
		}
	}
	if f.Source != "" {
		kind, name, ok := strings.Cut(f.Source, ":")
		if !ok || !validSourceKind(kind) || name == "" || len(f.Source) > 512 || strings.ContainsFunc(f.Source, unicode.IsControl) {
			s.Error(w, r, broker.Errorf(broker.EINVALID, "source must be <kind>:<name>, kind one of source, ssf, detector, operator"))
			return
		}
	}
	if err := validateID("before", "signal", f.Before); err != nil {
		s.Error(w, r, err)
		return
	}
	if f.Limit, err = q.limit(100); err != nil {
		s.Error(w, r, err)
		return
	}
	ss, err := s.b.ListSignals(r.Context(), f)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	out := signalListResponse{Signals: ss}
	if out.Signals == nil {
		out.Signals = []*agents.Signal{}
	}
	if len(ss) == f.Limit {
		out.Next = ss[len(ss)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleSignalGet(w http.ResponseWriter, r *http.Request) {
	sig, err := s.b.GetSignal(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sig)
}

func validSourceKind(k string) bool {
	switch k {
	case agents.SourceREST, agents.SourceSET, agents.SourceDetector, agents.SourceOperator:
		return true
	}
	return false
}
