package api

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
)

// handleIntrospect answers RFC 7662 token introspection for an
// authenticated resource server (section 2.1): a client of
// introspection.clients, by the one method it is configured for. A caller
// that does not authenticate gets 401 invalid_client and learns nothing
// about the token. A token that is not an active valet token, or whose
// audience or role the client may not see (section 4), is
// {"active": false}.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	f, oe := parseForm(r, s.limits.MaxBodyBytes)
	if oe != nil {
		s.writeOAuthError(w, r, oe, nil)
		return
	}
	cc, oe := clientCredentials(r, f)
	if oe != nil {
		s.writeOAuthError(w, r, oe, nil)
		return
	}
	client, err := s.rs.Authenticate(r.Context(), cc)
	if err != nil {
		if cc.Method != "" && broker.ErrorCode(err) == broker.EUNAUTHORIZED {
			// Client credentials that do not verify are throttled like
			// any other credential.
			if rerr := s.b.RefuseCredential(r.Context(), broker.Refusal{
				Credential: broker.CredentialIntrospectionClient, SourceIP: s.clientIP(r), Kind: audit.KindIntrospection,
				RequestID: requestID(r.Context()), Reason: broker.ErrorMessage(err),
			}); rerr != nil {
				s.writeOAuthError(w, r, oauthErrorOf(rerr), rerr)
				return
			}
		}
		s.writeOAuthError(w, r, clientAuthError(err), err)
		return
	}
	token := f.Get("token")
	if token == "" {
		s.writeOAuthError(w, r, invalidRequest("token is required: the token to introspect (RFC 7662 section 2.1)"), nil)
		return
	}
	// token_type_hint needs no check: valet searches all its token types
	// whatever the hint says (RFC 7662 section 2.1).
	in, err := s.b.Introspect(r.Context(), token)
	if err != nil {
		s.writeOAuthError(w, r, oauthErrorOf(err), err)
		return
	}
	if !in.Active || !client.MayLearn(in) {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	out := map[string]any{"active": true, "token_type": "Bearer"}
	for _, k := range []string{"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id", "role"} {
		if v, ok := in.Claims[k]; ok {
			out[k] = v
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// clientAuthError maps a failed client authentication: EUNAUTHORIZED is
// invalid_client (RFC 6749 section 5.2), a key or replay store that is
// down is temporarily_unavailable.
func clientAuthError(err error) *oauthError {
	if broker.ErrorCode(err) == broker.EUNAUTHORIZED {
		return invalidClient(broker.ErrorMessage(err))
	}
	return oauthErrorOf(err)
}

// clientCredentials reads how the request authenticates its client (RFC
// 6749 section 2.3): HTTP Basic (client_secret_basic), client_id and
// client_secret in the form (client_secret_post), a client_assertion
// (private_key_jwt), or else a verified TLS client certificate with the
// form's client_id (tls_client_auth). A request may use one method only;
// the TLS certificate counts only when no other method is used, since a
// listener with tls.client_auth require sees one on every request.
func clientCredentials(r *http.Request, f url.Values) (broker.ClientCredentials, *oauthError) {
	var cc broker.ClientCredentials
	used := 0
	if n := len(r.Header.Values("Authorization")); n > 1 {
		return cc, invalidRequest("the Authorization header is given " + strconv.Itoa(n) + " times; send one client authentication")
	}
	if h := r.Header.Get("Authorization"); h != "" {
		used++
		scheme, creds, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Basic") {
			return cc, invalidClient("the Authorization header must be HTTP Basic with the client_id and client secret (client_secret_basic)")
		}
		id, secret, ok := basicCredentials(strings.TrimSpace(creds))
		if !ok {
			return cc, invalidClient("malformed HTTP Basic credentials: base64 of the form-urlencoded client_id, ':', and the form-urlencoded client secret (RFC 6749 section 2.3.1)")
		}
		if fid := f.Get("client_id"); fid != "" && fid != id {
			return cc, invalidRequest("client_id in the body differs from the client_id of the HTTP Basic credentials")
		}
		cc = broker.ClientCredentials{Method: broker.AuthClientSecretBasic, ClientID: id, Secret: secret}
	}
	if f.Has("client_secret") {
		used++
		if !f.Has("client_id") {
			return cc, invalidRequest("client_secret needs client_id (client_secret_post)")
		}
		cc = broker.ClientCredentials{Method: broker.AuthClientSecretPost, ClientID: f.Get("client_id"), Secret: f.Get("client_secret")}
	}
	if f.Has("client_assertion") || f.Has("client_assertion_type") {
		used++
		switch typ := f.Get("client_assertion_type"); {
		case !f.Has("client_assertion") || typ == "":
			return cc, invalidRequest("private_key_jwt needs both client_assertion and client_assertion_type (RFC 7521 section 4.2)")
		case typ != broker.ClientAssertionType:
			return cc, invalidClient("client_assertion_type must be " + broker.ClientAssertionType)
		}
		cc = broker.ClientCredentials{Method: broker.AuthPrivateKeyJWT, ClientID: f.Get("client_id"), Assertion: f.Get("client_assertion")}
	}
	if used > 1 {
		return broker.ClientCredentials{}, invalidRequest("the request uses more than one client authentication method; use exactly one (RFC 6749 section 2.3)")
	}
	if used == 0 && f.Has("client_id") && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cc = broker.ClientCredentials{Method: broker.AuthTLSClientAuth, ClientID: f.Get("client_id"), Certificate: r.TLS.VerifiedChains[0][0]}
	}
	return cc, nil
}

// basicCredentials decodes HTTP Basic credentials as RFC 6749 section
// 2.3.1 has clients encode them: each of client_id and secret
// form-urlencoded, then joined by ':' and base64-encoded.
func basicCredentials(b64 string) (id, secret string, ok bool) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", "", false
	}
	encID, encSecret, found := strings.Cut(string(raw), ":")
	if !found {
		return "", "", false
	}
	if id, err = url.QueryUnescape(encID); err != nil || id == "" {
		return "", "", false
	}
	if secret, err = url.QueryUnescape(encSecret); err != nil {
		return "", "", false
	}
	return id, secret, true
}
