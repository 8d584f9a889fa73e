package api

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/valet-broker/valet/broker"
)

func (s *Server) registerWellKnownRoutes(r chi.Router) {
	r.Get("/.well-known/jwks.json", s.handleJWKS)
	r.Get("/.well-known/openid-configuration", s.handleDiscovery)
	r.Get("/.well-known/oauth-authorization-server", s.handleAuthorizationServerMetadata)
	r.Post("/v1/introspect", s.handleIntrospect)
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	// Short caching: a rotated-in key is published broker.JWKSMaxAge (or
	// longer) before it signs, so caches must not keep the set longer.
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(int(broker.JWKSMaxAge.Seconds())))
	writeJSON(w, http.StatusOK, map[string]any{"keys": s.b.PublicJWKs()})
}

// handleDiscovery serves authorization server metadata (RFC 8414, and the
// OpenID Provider metadata of OpenID Connect Discovery 1.0 section 3) so
// resource servers can find the keys and endpoints from valet's issuer URL.
// It advertises exactly what valet accepts: the token endpoint
// authenticates no client (none); the introspection endpoint is listed
// only when introspection clients are configured, with their methods.
func (s *Server) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	writeMetadata(w, s.metadata(true))
}

// handleAuthorizationServerMetadata serves RFC 8414 section 3 metadata.
func (s *Server) handleAuthorizationServerMetadata(w http.ResponseWriter, r *http.Request) {
	writeMetadata(w, s.metadata(false))
}

func writeMetadata(w http.ResponseWriter, m map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, m)
}

// metadata is the document both discovery endpoints serve; openid adds
// the members OpenID Connect Discovery requires.
func (s *Server) metadata(openid bool) map[string]any {
	m := map[string]any{
		"issuer":                                s.public,
		"jwks_uri":                              s.public + "/.well-known/jwks.json",
		"token_endpoint":                        s.public + "/v1/oauth/token",
		"grant_types_supported":                 []string{grantTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"response_types_supported":              []string{},
	}
	if methods := s.rs.Methods(); len(methods) > 0 {
		m["introspection_endpoint"] = s.public + "/v1/introspect"
		m["introspection_endpoint_auth_methods_supported"] = methods
		if algs := s.rs.SigningAlgorithms(); len(algs) > 0 {
			m["introspection_endpoint_auth_signing_alg_values_supported"] = algs
		}
	}
	if openid {
		m["subject_types_supported"] = []string{"public"}
		m["id_token_signing_alg_values_supported"] = s.signingAlgorithms()
	}
	return m
}

// signingAlgorithms lists, sorted, the JWS algorithms of the keys in the
// JWKS: the algorithms valet's tokens are actually signed with.
func (s *Server) signingAlgorithms() []string {
	algs := []string{}
	for _, k := range s.b.PublicJWKs() {
		if a, ok := k["alg"].(string); ok && a != "" && !slices.Contains(algs, a) {
			algs = append(algs, a)
		}
	}
	slices.Sort(algs)
	return algs
}
