package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
)

func (s *Server) registerWellKnownRoutes(r chi.Router) {
	r.Get("/.well-known/jwks.json", s.handleJWKS)
	r.Get("/.well-known/openid-configuration", s.handleDiscovery)
	r.Post("/v1/introspect", s.handleIntrospect)
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	// Short caching: rotated keys must reach resource servers quickly.
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, map[string]any{"keys": s.b.PublicJWKs()})
}

// handleDiscovery serves OpenID Provider-style metadata so resource servers
// can find the keys and endpoints from valet's issuer URL.
func (s *Server) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                s.public,
		"jwks_uri":                              s.public + "/.well-known/jwks.json",
		"token_endpoint":                        s.public + "/v1/oauth/token",
		"introspection_endpoint":                s.public + "/v1/introspect",
		"grant_types_supported":                 []string{grantTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"introspection_endpoint_auth_methods_supported": []string{"none"},
		"response_types_supported":                      []string{},
		"subject_types_supported":                       []string{"public"},
		"id_token_signing_alg_values_supported":         []string{"ES256", "EdDSA"},
	})
}

// handleIntrospect answers RFC 7662 token introspection. Any token that is
// not an active valet token, malformed input included, is {"active":false}.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/x-www-form-urlencoded"); err != nil {
		s.Error(w, r, err)
		return
	}
	if err := r.ParseForm(); err != nil {
		s.Error(w, r, bodyError(err))
		return
	}
	if n := len(r.PostForm["token"]); n > 1 {
		s.Error(w, r, broker.Errorf(broker.EINVALID, "form parameter \"token\" is given %d times; give it at most once", n))
		return
	}
	in, err := s.b.Introspect(r.Context(), r.PostForm.Get("token"))
	if err != nil {
		s.Error(w, r, err)
		return
	}
	if !in.Active {
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
