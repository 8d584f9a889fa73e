package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/valet-broker/valet/broker"
)

// statusOf is the one table from error codes to HTTP status. StatusOf
// reads it for the API and for the web console.
var statusOf = map[string]int{
	broker.EINVALID:      http.StatusBadRequest,
	broker.EUNAUTHORIZED: http.StatusUnauthorized,
	broker.EFORBIDDEN:    http.StatusForbidden,
	broker.EQUARANTINED:  http.StatusForbidden,
	broker.ENOTFOUND:     http.StatusNotFound,
	broker.ECONFLICT:     http.StatusConflict,
	broker.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	broker.ERATELIMIT:    http.StatusTooManyRequests,
	broker.EUNAVAILABLE:  http.StatusServiceUnavailable,
	broker.EBADGATEWAY:   http.StatusBadGateway,
	broker.EINTERNAL:     http.StatusInternalServerError,
}

// titleOf is the RFC 9457 title of each code's problems.
var titleOf = map[string]string{
	broker.EINVALID:      "Invalid request",
	broker.EUNAUTHORIZED: "Unauthenticated",
	broker.EFORBIDDEN:    "Forbidden",
	broker.EQUARANTINED:  "Agent quarantined",
	broker.ENOTFOUND:     "Not found",
	broker.ECONFLICT:     "Conflict",
	broker.ETOOLARGE:     "Too large",
	broker.ERATELIMIT:    "Rate limited",
	broker.EUNAVAILABLE:  "Unavailable",
	broker.EBADGATEWAY:   "Backend error",
	broker.EINTERNAL:     "Internal error",
}

// StatusOf is the HTTP status for err: the status of its code
// (broker.ErrorCode) in valet's one table from error codes to status, and
// 500 for an error that is not a *broker.Error or has a code the table
// does not hold. Every front end (the API, the web console) answers with
// it.
func StatusOf(err error) int {
	if status, ok := statusOf[broker.ErrorCode(err)]; ok {
		return status
	}
	return http.StatusInternalServerError
}

// Title is the short, human-readable summary of problems with code (the
// RFC 9457 title), "Internal error" for a code valet does not have.
func Title(code string) string {
	if t, ok := titleOf[code]; ok {
		return t
	}
	return titleOf[broker.EINTERNAL]
}

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Instance  string `json:"instance,omitempty"`
	Code      string `json:"code"`
	RequestID string `json:"request_id,omitempty"`
}

// ProblemType is the type URI of problems with the given code.
func ProblemType(code string) string { return "urn:valet:problem:" + code }

// Error writes err as application/problem+json. Internal errors are logged
// with their cause and shown to the client only as a generic message.
func (s *Server) Error(w http.ResponseWriter, r *http.Request, err error) {
	code := broker.ErrorCode(err)
	status := StatusOf(err)
	rid := requestID(r.Context())
	if status >= 500 {
		s.log.Error("request failed", "request_id", rid, "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	} else {
		var be *broker.Error
		if errors.As(err, &be) && be.Err != nil {
			s.log.Debug("request refused", "request_id", rid, "code", code, "err", be.Err)
		}
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="valet"`)
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", RetryAfter(err))
	}
	writeProblem(w, Problem{
		Type: ProblemType(code), Title: Title(code), Status: status, Detail: broker.ErrorMessage(err),
		Instance: r.URL.Path, Code: code, RequestID: rid,
	})
}

// RetryAfter is the Retry-After header value (RFC 9110 section 10.2.3,
// whole seconds) for a request refused with err, a rate-limited request:
// the error's RetryAfter rounded up, and 1 when it does not say.
func RetryAfter(err error) string {
	var be *broker.Error
	if errors.As(err, &be) {
		return strconv.FormatInt(be.RetryAfterSeconds(), 10)
	}
	return "1"
}

func writeProblem(w http.ResponseWriter, p Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// writeJSON writes v with the given status. Unless the handler set them,
// the content type is application/json and responses are not cached (they
// may carry credentials).
func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONHeader(w, status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeJSONHeader writes status with writeJSON's headers, for a handler
// that writes the JSON body itself.
func writeJSONHeader(w http.ResponseWriter, status int) {
	h := w.Header()
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json")
	}
	if h.Get("Cache-Control") == "" {
		h.Set("Cache-Control", "no-store")
	}
	w.WriteHeader(status)
}
