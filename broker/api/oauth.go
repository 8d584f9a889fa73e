package api

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
)

// RFC 8693 identifiers.
const (
	grantTokenExchange   = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
	tokenTypeIDToken     = "urn:ietf:params:oauth:token-type:id_token"
	tokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
)

func (s *Server) registerOAuthRoutes(r chi.Router) {
	r.Post("/oauth/token", s.handleTokenExchange)
}

// oauthError is an RFC 6749 section 5.2 error response.
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
}

func invalidRequest(format string) *oauthError {
	return &oauthError{Error: "invalid_request", Description: format, status: http.StatusBadRequest}
}

// oauthErrorOf maps a broker error to RFC 8693 section 2.2.2: an invalid or
// unacceptable subject token is invalid_request; a role valet will not issue
// for is invalid_target.
func oauthErrorOf(err error) *oauthError {
	code := broker.ErrorCode(err)
	e := &oauthError{Description: broker.ErrorMessage(err)}
	switch code {
	case broker.ENOTFOUND, broker.EFORBIDDEN:
		e.Error, e.status = "invalid_target", http.StatusBadRequest
	case broker.ETOOLARGE:
		e.Error, e.status = "invalid_request", http.StatusRequestEntityTooLarge
	case broker.ERATELIMIT:
		e.Error, e.status = "temporarily_unavailable", http.StatusTooManyRequests
	case broker.EUNAVAILABLE:
		e.Error, e.status = "temporarily_unavailable", http.StatusServiceUnavailable
	case broker.EINTERNAL, broker.EBADGATEWAY:
		e.Error, e.status = "server_error", statusOf[code]
	default:
		e.Error, e.status = "invalid_request", http.StatusBadRequest
	}
	return e
}

func (s *Server) writeOAuthError(w http.ResponseWriter, r *http.Request, e *oauthError, cause error) {
	if cause != nil && e.status >= 500 {
		s.log.Error("token exchange failed", "request_id", requestID(r.Context()), "err", cause)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if e.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", retryAfter(cause))
	}
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(e)
}

// tokenExchangeRequest is the form body of POST /v1/oauth/token.
type tokenExchangeRequest struct {
	SubjectToken       string
	Role               string
	Scopes             []string
	RequestedTokenType string
}

func parseTokenExchange(r *http.Request, maxToken int) (*tokenExchangeRequest, *oauthError) {
	if err := requireContentType(r, "application/x-www-form-urlencoded"); err != nil {
		return nil, invalidRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	if err := r.ParseForm(); err != nil {
		return nil, oauthErrorOf(jsonError(err))
	}
	f := r.PostForm
	single := func(name string) (string, *oauthError) {
		if len(f[name]) > 1 {
			return "", invalidRequest(name + " must be given once")
		}
		return f.Get(name), nil
	}
	var req tokenExchangeRequest
	gt, e := single("grant_type")
	if e != nil {
		return nil, e
	}
	if gt != grantTokenExchange {
		return nil, &oauthError{Error: "unsupported_grant_type", Description: "grant_type must be " + grantTokenExchange, status: http.StatusBadRequest}
	}
	if req.SubjectToken, e = single("subject_token"); e != nil {
		return nil, e
	}
	if req.SubjectToken == "" {
		return nil, invalidRequest("subject_token is required: the workload attestation")
	}
	if len(req.SubjectToken) > maxToken {
		return nil, &oauthError{Error: "invalid_request", Description: "subject_token is over the size limit", status: http.StatusRequestEntityTooLarge}
	}
	stt, e := single("subject_token_type")
	if e != nil {
		return nil, e
	}
	if stt != tokenTypeJWT && stt != tokenTypeIDToken {
		return nil, invalidRequest("subject_token_type must be " + tokenTypeJWT)
	}
	if f.Get("actor_token") != "" {
		return nil, invalidRequest("actor_token (delegation) is not supported")
	}
	if len(f["resource"])+len(f["audience"]) > 1 {
		return nil, &oauthError{Error: "invalid_target", Description: "name exactly one role, as resource or audience", status: http.StatusBadRequest}
	}
	req.Role = f.Get("resource") + f.Get("audience")
	if req.Role == "" {
		return nil, &oauthError{Error: "invalid_target", Description: "name the role as resource or audience", status: http.StatusBadRequest}
	}
	if err := validateRoleName(req.Role); err != nil {
		return nil, &oauthError{Error: "invalid_target", Description: broker.ErrorMessage(err), status: http.StatusBadRequest}
	}
	scope, e := single("scope")
	if e != nil {
		return nil, e
	}
	req.Scopes = strings.Fields(scope)
	if req.RequestedTokenType, e = single("requested_token_type"); e != nil {
		return nil, e
	}
	switch req.RequestedTokenType {
	case "", tokenTypeAccessToken, tokenTypeJWT:
	default:
		return nil, invalidRequest("requested_token_type must be " + tokenTypeAccessToken + " or " + tokenTypeJWT)
	}
	return &req, nil
}

func (s *Server) handleTokenExchange(w http.ResponseWriter, r *http.Request) {
	req, oe := parseTokenExchange(r, s.limits.MaxAttestationBytes)
	if oe != nil {
		s.writeOAuthError(w, r, oe, nil)
		return
	}
	if role, err := s.b.Role(req.Role); err == nil && role.Approval.Required > 0 {
		// A token endpoint answers at once; approval takes a person.
		s.writeOAuthError(w, r, &oauthError{Error: "invalid_target", status: http.StatusBadRequest,
			Description: "role " + req.Role + " requires operator approval: request it with POST /v1/credentials, then redeem the grant"}, nil)
		return
	}
	mr := broker.MintRequest{Attestation: req.SubjectToken, Role: req.Role, SourceIP: s.clientIP(r), RequestID: requestID(r.Context())}
	if len(req.Scopes) > 0 {
		list := make([]any, len(req.Scopes))
		for i, sc := range req.Scopes {
			list[i] = sc
		}
		mr.Scope = map[string]any{"scopes": list}
	}
	res, err := s.b.Mint(r.Context(), mr)
	if err != nil {
		s.writeOAuthError(w, r, oauthErrorOf(err), err)
		return
	}
	tok, _ := res.Credential["access_token"].(string)
	if tok == "" {
		// The lease exists but its credential is not a bearer token: end it
		// rather than leave an unusable credential alive.
		if _, err := s.b.EndLease(r.Context(), broker.Caller{Agent: &broker.Principal{ID: res.Lease.AgentID}}, res.Lease.ID, "token exchange: credential is not a bearer token", requestID(r.Context())); err != nil {
			s.log.Error("release after token exchange", "lease", res.Lease.ID, "err", err)
		}
		s.writeOAuthError(w, r, &oauthError{Error: "invalid_target", Description: "role " + req.Role + " does not issue bearer tokens; use POST /v1/credentials", status: http.StatusBadRequest}, nil)
		return
	}
	issued := tokenTypeAccessToken
	if req.RequestedTokenType == tokenTypeJWT {
		issued = tokenTypeJWT
	}
	out := map[string]any{
		"access_token":      tok,
		"issued_token_type": issued,
		"token_type":        "Bearer",
		"expires_in":        int64(res.Lease.ExpiresAt.Sub(s.b.Now()).Seconds()),
	}
	if sc, ok := res.Credential["scope"].(string); ok && sc != "" {
		out["scope"] = sc
	} else if len(req.Scopes) > 0 {
		out["scope"] = strings.Join(req.Scopes, " ")
	}
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, out)
}
