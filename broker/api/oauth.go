package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
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

// oauthError is an RFC 6749 section 5.2 error response. The OAuth
// endpoints (token exchange, introspection) answer with it instead of
// problem+json, as their RFCs require.
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
}

func invalidRequest(description string) *oauthError {
	return &oauthError{Error: "invalid_request", Description: description, status: http.StatusBadRequest}
}

func invalidTarget(description string) *oauthError {
	return &oauthError{Error: "invalid_target", Description: description, status: http.StatusBadRequest}
}

func invalidScope(description string) *oauthError {
	return &oauthError{Error: "invalid_scope", Description: description, status: http.StatusBadRequest}
}

// invalidClient is RFC 6749 section 5.2's invalid_client: 401, with a
// WWW-Authenticate challenge (writeOAuthError adds it).
func invalidClient(description string) *oauthError {
	return &oauthError{Error: "invalid_client", Description: description, status: http.StatusUnauthorized}
}

// oauthErrorOf maps a broker error to an OAuth error code:
//
//   - EUNAUTHORIZED (the subject_token did not verify: bad signature,
//     expired, untrusted issuer, wrong audience, replayed) is
//     invalid_request. RFC 8693 section 2.2.2 says so ("If ... the
//     subject_token ... [is] invalid for any reason ... the invalid_request
//     error code MUST be used"); RFC 6749's invalid_grant is for
//     authorization grants, which a subject token is not.
//   - EQUARANTINED (the subject_token's agent is quarantined) is
//     invalid_request too: the subject is refused whatever it asks for.
//   - ENOTFOUND and EFORBIDDEN (an unknown role; a role the policy will not
//     issue for this agent, or one that needs approval) are invalid_target
//     (RFC 8693 section 2.2.2, RFC 8707 section 2).
//   - EINVALID with broker.ErrScopeRefused (a scope the role does not
//     grant) is invalid_scope (RFC 6749 section 5.2); any other EINVALID is
//     invalid_request.
//   - ETOOLARGE is invalid_request with 413; ERATELIMIT and EUNAVAILABLE
//     are temporarily_unavailable with 429 and 503; EINTERNAL and
//     EBADGATEWAY are server_error.
func oauthErrorOf(err error) *oauthError {
	code := broker.ErrorCode(err)
	e := &oauthError{Description: broker.ErrorMessage(err)}
	switch code {
	case broker.EUNAUTHORIZED, broker.EQUARANTINED:
		e.Error, e.status = "invalid_request", http.StatusBadRequest
	case broker.ENOTFOUND, broker.EFORBIDDEN:
		e.Error, e.status = "invalid_target", http.StatusBadRequest
	case broker.EINVALID:
		e.Error, e.status = "invalid_request", http.StatusBadRequest
		if errors.Is(err, broker.ErrScopeRefused) {
			e.Error = "invalid_scope"
		}
	case broker.ETOOLARGE:
		e.Error, e.status = "invalid_request", http.StatusRequestEntityTooLarge
	case broker.ERATELIMIT:
		e.Error, e.status = "temporarily_unavailable", http.StatusTooManyRequests
	case broker.EUNAVAILABLE:
		e.Error, e.status = "temporarily_unavailable", http.StatusServiceUnavailable
	default:
		e.Error, e.status = "server_error", http.StatusInternalServerError
		if st, ok := statusOf[code]; ok && st >= 500 {
			e.status = st
		}
	}
	return e
}

// writeOAuthError writes e as RFC 6749 section 5.2 JSON. A 401 carries a
// Basic challenge (the scheme of client_secret_basic), as section 5.2
// requires of invalid_client. Server errors are logged with their cause,
// refusals at debug level.
func (s *Server) writeOAuthError(w http.ResponseWriter, r *http.Request, e *oauthError, cause error) {
	rid := requestID(r.Context())
	switch {
	case cause != nil && e.status >= 500:
		s.log.Error("oauth request failed", "request_id", rid, "path", r.URL.Path, "err", cause)
	case cause != nil:
		s.log.Debug("oauth request refused", "request_id", rid, "path", r.URL.Path, "error", e.Error, "err", cause)
	}
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="valet", charset="UTF-8"`)
	}
	if e.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if e.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", RetryAfter(cause))
	}
	w.WriteHeader(e.status)
	out := *e
	out.Description = errorDescription(e.Description)
	_ = json.NewEncoder(w).Encode(out)
}

// errorDescription makes s a valid error_description: RFC 6749 section
// 5.2 allows only %x20-21 / %x23-5B / %x5D-7E, so double quotes become
// single ones, backslashes slashes, and anything else outside the set '?'.
func errorDescription(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '"':
			return '\''
		case r == '\\':
			return '/'
		case r < 0x20 || r > 0x7e:
			return '?'
		}
		return r
	}, s)
}

// clientAuthParams are the parameters with which a client authenticates
// in the body (RFC 6749 section 2.3.1, RFC 7521 section 4.2).
var clientAuthParams = []string{"client_secret", "client_assertion", "client_assertion_type"}

// tokenExchangeRequest is the form body of POST /v1/oauth/token.
type tokenExchangeRequest struct {
	SubjectToken       string
	Role               string
	Scopes             []string
	RequestedTokenType string
}

// parseTokenExchange reads and checks an RFC 8693 section 2.1 request.
// The token endpoint does not authenticate clients (the subject_token is
// the credential; discovery says token_endpoint_auth_methods_supported
// ["none"]), so client credentials are refused with invalid_client rather
// than silently ignored. A missing or repeated parameter is
// invalid_request, a grant type other than token exchange
// unsupported_grant_type, a missing, repeated or bad role (resource or
// audience) invalid_target (RFC 8707 section 2), a malformed scope
// invalid_scope.
func parseTokenExchange(r *http.Request, maxBody int64, maxToken int) (*tokenExchangeRequest, *oauthError) {
	f, oe := parseForm(r, maxBody, "resource", "audience")
	if oe != nil {
		return nil, oe
	}
	if r.Header.Get("Authorization") != "" || slices.ContainsFunc(clientAuthParams, f.Has) {
		return nil, invalidClient("the token endpoint does not authenticate clients (token_endpoint_auth_methods_supported: none): the subject_token is the credential; send no Authorization header, client_secret or client_assertion")
	}
	var req tokenExchangeRequest
	switch gt := f.Get("grant_type"); gt {
	case grantTokenExchange:
	case "":
		return nil, invalidRequest("grant_type is required: " + grantTokenExchange)
	default:
		return nil, &oauthError{Error: "unsupported_grant_type", Description: "grant_type must be " + grantTokenExchange, status: http.StatusBadRequest}
	}
	req.SubjectToken = f.Get("subject_token")
	if req.SubjectToken == "" {
		return nil, invalidRequest("subject_token is required: the workload attestation")
	}
	if len(req.SubjectToken) > maxToken {
		return nil, &oauthError{Error: "invalid_request", Description: "subject_token is over the size limit", status: http.StatusRequestEntityTooLarge}
	}
	switch stt := f.Get("subject_token_type"); stt {
	case tokenTypeJWT, tokenTypeIDToken:
	case "":
		return nil, invalidRequest("subject_token_type is required: " + tokenTypeJWT + " (or " + tokenTypeIDToken + ")")
	default:
		return nil, invalidRequest("subject_token_type must be " + tokenTypeJWT + " or " + tokenTypeIDToken)
	}
	if f.Has("actor_token") || f.Has("actor_token_type") {
		return nil, invalidRequest("actor_token (delegation) is not supported")
	}
	targets := slices.Concat(f["resource"], f["audience"])
	switch len(targets) {
	case 0:
		return nil, invalidTarget("name the role as resource or audience")
	case 1:
		req.Role = targets[0]
	default:
		return nil, invalidTarget("name exactly one role, as resource or audience")
	}
	if err := validateRoleName(req.Role); err != nil {
		return nil, invalidTarget(broker.ErrorMessage(err))
	}
	req.Scopes = strings.Fields(f.Get("scope"))
	for _, sc := range req.Scopes {
		if !validScopeToken(sc) {
			return nil, invalidScope("scope values must be printable ASCII without spaces, '\\' or '\"' (RFC 6749 section 3.3)")
		}
	}
	req.RequestedTokenType = f.Get("requested_token_type")
	switch req.RequestedTokenType {
	case "", tokenTypeAccessToken, tokenTypeJWT:
	default:
		return nil, invalidRequest("requested_token_type must be " + tokenTypeAccessToken + " or " + tokenTypeJWT)
	}
	return &req, nil
}

// validScopeToken reports whether s is an RFC 6749 section 3.3 scope-token:
// %x21 / %x23-5B / %x5D-7E.
func validScopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return s != ""
}

func (s *Server) handleTokenExchange(w http.ResponseWriter, r *http.Request) {
	req, oe := parseTokenExchange(r, s.limits.MaxBodyBytes, s.limits.MaxAttestationBytes)
	if oe != nil {
		s.writeOAuthError(w, r, oe, nil)
		return
	}
	// A token endpoint answers at once; approval takes a person.
	mr := broker.MintRequest{Attestation: req.SubjectToken, Role: req.Role, SourceIP: s.clientIP(r), RequestID: requestID(r.Context()), Immediate: true}
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
		s.writeOAuthError(w, r, invalidTarget("role "+req.Role+" does not issue bearer tokens; use POST /v1/credentials"), nil)
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
