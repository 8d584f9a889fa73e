package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
	"github.com/valet-broker/valet/leases/jsonenc"
)

func (s *Server) registerCredentialRoutes(r chi.Router) {
	r.Post("/credentials", s.handleCredentialCreate)
}

// credentialRequest is the body of POST /v1/credentials.
type credentialRequest struct {
	Role       string           `json:"role"`
	TTL        *config.Duration `json:"ttl,omitempty"`
	Reason     string           `json:"reason,omitempty"`
	Scope      map[string]any   `json:"scope,omitempty"`
	BreakGlass bool             `json:"break_glass,omitempty"`
}

// Validate checks the request's shape; the broker checks it against the
// role and the policy.
func (c *credentialRequest) Validate() error {
	if err := validateRoleName(c.Role); err != nil {
		return err
	}
	if c.TTL != nil && c.TTL.D() < time.Second {
		return broker.Errorf(broker.EINVALID, "ttl must be at least 1s")
	}
	if err := validateReason(c.Reason); err != nil {
		return err
	}
	if len(c.Scope) > 16 {
		return broker.Errorf(broker.EINVALID, "scope has %d keys; at most 16 are allowed", len(c.Scope))
	}
	return nil
}

// validateRoleName checks a requested role's name against the syntax of
// configured names, so a name that cannot be a role (one forging log
// lines, say) is refused before the request is authenticated, and never
// reaches an audit record.
func validateRoleName(role string) error { return validateName("role", role) }

// validateReason checks free text an agent or operator gives (reasons,
// comments): at most 1024 bytes of UTF-8 without control characters, so it
// cannot forge lines in logs or clear a terminal.
func validateReason(reason string) error {
	if len(reason) > 1024 {
		return broker.Errorf(broker.EINVALID, "reason is longer than 1024 bytes")
	}
	if !utf8.ValidString(reason) {
		return broker.Errorf(broker.EINVALID, "reason must be UTF-8")
	}
	if strings.IndexFunc(reason, unicode.IsControl) >= 0 {
		return broker.Errorf(broker.EINVALID, "reason must not contain control characters")
	}
	return nil
}

// credentialResponse is the body of a 201 from POST /v1/credentials.
type credentialResponse struct {
	LeaseID    string         `json:"lease_id"`
	Role       string         `json:"role"`
	AgentID    string         `json:"agent_id"`
	ExpiresAt  time.Time      `json:"expires_at"`
	Renewable  bool           `json:"renewable"`
	Credential map[string]any `json:"credential"`
	// GrantID is set for credentials that came from a grant (approved or
	// break-glass).
	GrantID string `json:"grant_id,omitempty"`
}

func (s *Server) handleCredentialCreate(w http.ResponseWriter, r *http.Request) {
	tok, err := s.bearer(r)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	var req credentialRequest
	if err := decodeJSON(r, &req); err != nil {
		s.Error(w, r, err)
		return
	}
	mr := broker.MintRequest{
		Attestation: tok, Role: req.Role, Reason: req.Reason, Scope: req.Scope, BreakGlass: req.BreakGlass,
		SourceIP: s.clientIP(r), RequestID: requestID(r.Context()),
	}
	if req.TTL != nil {
		mr.TTL = req.TTL.D()
	}
	res, err := s.b.Mint(r.Context(), mr)
	if err != nil {
		s.Error(w, r, err)
		return
	}
	if res.Lease == nil {
		// The role needs approval: the request is now a grant to poll.
		w.Header().Set("Location", "/v1/grants/"+res.Grant.ID)
		writeJSON(w, http.StatusAccepted, pendingResponse{
			GrantID: res.Grant.ID, Status: string(res.Grant.State), Role: res.Grant.Role,
			ApprovalsRequired: res.Grant.Required, ExpiresAt: res.Grant.ExpiresAt.UTC(),
		})
		return
	}
	s.writeCredential(w, r, res)
}

// pendingResponse is the body of a 202 from POST /v1/credentials.
type pendingResponse struct {
	GrantID           string    `json:"grant_id"`
	Status            string    `json:"status"`
	Role              string    `json:"role"`
	ApprovalsRequired int       `json:"approvals_required"`
	ExpiresAt         time.Time `json:"expires_at"`
}

// writeCredential answers 201 with a minted credential. The body is
// encoded before the status is written, so a credential that cannot be
// encoded (a backend's bug) is a 500 problem, not a 201 without a body.
func (s *Server) writeCredential(w http.ResponseWriter, r *http.Request, res *broker.MintResult) {
	out := credentialResponse{
		LeaseID: res.Lease.ID, Role: res.Lease.Role, AgentID: res.Lease.AgentID,
		ExpiresAt: res.Lease.ExpiresAt.UTC(), Renewable: res.Lease.Renewable, Credential: res.Credential,
	}
	if res.Grant != nil {
		out.GrantID = res.Grant.ID
	}
	buf := responseBufs.Get().(*[]byte)
	defer putResponseBuf(buf)
	body, err := out.appendJSON((*buf)[:0])
	if err != nil {
		// encoding/json's error can quote the value (a credential's
		// part): the keys and types say what failed, never the values.
		s.Error(w, r, broker.Errorf(broker.EINTERNAL, "the credential of lease %s cannot be encoded as JSON: %s",
			res.Lease.ID, strings.Join(unencodable(res.Credential), ", ")))
		return
	}
	*buf = body
	w.Header().Set("Location", "/v1/leases/"+res.Lease.ID)
	writeJSONHeader(w, http.StatusCreated)
	_, _ = w.Write(append(body, '\n'))
}

// unencodable names the credential's values that encoding/json refuses,
// as "key (Go type)", keys sorted; a value's content is never named.
func unencodable(cred map[string]any) []string {
	var out []string
	for k, v := range cred {
		if _, err := json.Marshal(v); err != nil {
			out = append(out, fmt.Sprintf("%q (%T)", k, v))
		}
	}
	slices.Sort(out)
	return out
}

// appendJSON appends the response as encoding/json's Marshal writes it
// (TestCredentialResponseJSON compares them), without its reflection over
// the credential's map: this is the body of every mint.
func (c *credentialResponse) appendJSON(b []byte) ([]byte, error) {
	b = jsonenc.String(append(b, `{"lease_id":`...), c.LeaseID)
	b = jsonenc.String(append(b, `,"role":`...), c.Role)
	b = jsonenc.String(append(b, `,"agent_id":`...), c.AgentID)
	b, err := jsonenc.Time(append(b, `,"expires_at":`...), c.ExpiresAt)
	if err != nil {
		return nil, err
	}
	b = jsonenc.Bool(append(b, `,"renewable":`...), c.Renewable)
	if b, err = jsonenc.Map(append(b, `,"credential":`...), c.Credential); err != nil {
		return nil, err
	}
	if c.GrantID != "" {
		b = jsonenc.String(append(b, `,"grant_id":`...), c.GrantID)
	}
	return append(b, '}'), nil
}

// responseBufs holds buffers for response bodies encoded before they are
// written.
var responseBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func putResponseBuf(b *[]byte) {
	if cap(*b) <= 64<<10 { // do not keep a rare large body
		responseBufs.Put(b)
	}
}
