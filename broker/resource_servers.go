package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/leases/config"
)

// Client authentication methods, named as in the OAuth Token Endpoint
// Authentication Methods registry (RFC 7591 section 2, OpenID Connect Core
// section 9, RFC 8705 section 2.1). valet accepts them at the introspection
// endpoint and advertises the configured ones as
// introspection_endpoint_auth_methods_supported (RFC 8414).
const (
	// AuthClientSecretBasic is HTTP Basic with the form-urlencoded client_id
	// and client secret (RFC 6749 section 2.3.1).
	AuthClientSecretBasic = "client_secret_basic"
	// AuthClientSecretPost is client_id and client_secret in the form body
	// (RFC 6749 section 2.3.1).
	AuthClientSecretPost = "client_secret_post"
	// AuthPrivateKeyJWT is a JWT signed with the client's own key, sent as
	// client_assertion (RFC 7523 section 2.2, OpenID Connect Core section 9).
	AuthPrivateKeyJWT = "private_key_jwt"
	// AuthTLSClientAuth is a TLS client certificate from tls.client_ca_file
	// whose subject DN or SAN matches the client's (RFC 8705 section 2.1).
	AuthTLSClientAuth = "tls_client_auth"
)

// ClientAssertionType is the client_assertion_type of private_key_jwt
// (RFC 7523 section 2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// MaxClientAssertionLifetime bounds how far in the future a client
// assertion's exp may lie: its jti is remembered until then.
const MaxClientAssertionLifetime = time.Hour

// IntrospectionConfig lists the resource servers that may call POST
// /v1/introspect. RFC 7662 section 2.1 requires the caller to authenticate;
// with no clients configured every call is refused.
type IntrospectionConfig struct {
	Clients []IntrospectionClientConfig `yaml:"clients"`
}

// IntrospectionClientConfig is one resource server, an OAuth client of the
// introspection endpoint. Its keys follow the client metadata of RFC 7591
// and RFC 8705.
type IntrospectionClientConfig struct {
	// ClientID identifies the client (RFC 6749 section 2.2).
	ClientID string `yaml:"client_id"`
	// AuthMethod is how it authenticates: client_secret_basic (default,
	// as for RFC 7591's token_endpoint_auth_method), client_secret_post,
	// private_key_jwt or tls_client_auth. A client uses only its own.
	AuthMethod string `yaml:"auth_method"`
	// ClientSecretSHA256 is the hex SHA-256 of the client secret
	// (client_secret_basic and client_secret_post); `valet token hash`
	// prints it. The secret itself is never stored.
	ClientSecretSHA256 string `yaml:"client_secret_sha256"`
	// JWKSFile or JWKSURL holds the public keys the client signs its
	// assertions with (private_key_jwt); CAFile verifies JWKSURL's TLS
	// certificate; Algorithms are the JWS algorithms allowed (default
	// [RS256, ES256]; asymmetric only).
	JWKSFile   string   `yaml:"jwks_file"`
	JWKSURL    string   `yaml:"jwks_url"`
	CAFile     string   `yaml:"ca_file"`
	Algorithms []string `yaml:"algorithms"`
	// For tls_client_auth exactly one of these names the certificate (RFC
	// 8705 section 2.1.2): the subject DN in RFC 4514 form (as `openssl x509
	// -noout -subject -nameopt RFC2253` prints it), or a DNS name, URI
	// (e.g. a SPIFFE ID), IP address or e-mail address among its SANs.
	TLSClientAuthSubjectDN string `yaml:"tls_client_auth_subject_dn"`
	TLSClientAuthSANDNS    string `yaml:"tls_client_auth_san_dns"`
	TLSClientAuthSANURI    string `yaml:"tls_client_auth_san_uri"`
	TLSClientAuthSANIP     string `yaml:"tls_client_auth_san_ip"`
	TLSClientAuthSANEmail  string `yaml:"tls_client_auth_san_email"`
	// Audiences and Roles, when set, restrict what the client learns (RFC
	// 7662 section 4): a token whose aud names none of Audiences, or whose
	// lease is of a role not in Roles, is {"active": false} to it.
	Audiences []string `yaml:"audiences"`
	Roles     []string `yaml:"roles"`
}

// SetDefaults sets auth_method client_secret_basic.
func (cl *IntrospectionClientConfig) SetDefaults() {
	cl.AuthMethod = AuthClientSecretBasic
}

// UnmarshalYAML decodes on top of the defaults (see leases/config). A
// private_key_jwt client without algorithms gets [RS256, ES256]; other
// clients keep algorithms nil when the key is absent, so validate can
// refuse the key where it does not apply.
func (cl *IntrospectionClientConfig) UnmarshalYAML(unmarshal func(any) error) error {
	type client IntrospectionClientConfig
	if err := config.DecodeOnDefaults(cl.SetDefaults, (*client)(cl), unmarshal); err != nil {
		return err
	}
	keys, err := config.ReadPresentKeys(unmarshal)
	if err != nil {
		return err
	}
	if cl.AuthMethod == AuthPrivateKeyJWT && !keys.Has("algorithms") {
		cl.Algorithms = []string{"RS256", "ES256"}
	}
	return nil
}

// ResolvePaths makes the clients' relative file paths absolute with abs
// (relative to the configuration file's directory).
func (c *IntrospectionConfig) ResolvePaths(abs func(*string)) {
	for i := range c.Clients {
		abs(&c.Clients[i].JWKSFile)
		abs(&c.Clients[i].CAFile)
	}
}

// Validate checks the section and names the full key path in every error.
// roles are the configured role names; clientCerts says whether the server
// verifies TLS client certificates (tls.client_ca_file is set and
// tls.client_auth is verify_if_given or require).
func (c *IntrospectionConfig) Validate(roles map[string]bool, clientCerts bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ids := map[string]bool{}
	for i, cl := range c.Clients {
		f := fmt.Sprintf("introspection.clients[%d]", i)
		if !validClientID(cl.ClientID) {
			add("%s.client_id %q must be 1 to 255 printable ASCII characters", f, cl.ClientID)
		}
		if ids[cl.ClientID] {
			add("%s.client_id %q is used twice", f, cl.ClientID)
		}
		ids[cl.ClientID] = true
		uses := map[string]bool{
			"client_secret_sha256": cl.ClientSecretSHA256 != "",
			"jwks_file":            cl.JWKSFile != "",
			"jwks_url":             cl.JWKSURL != "",
			"ca_file":              cl.CAFile != "",
			"algorithms":           cl.Algorithms != nil,
		}
		tlsKeys := map[string]string{
			"tls_client_auth_subject_dn": cl.TLSClientAuthSubjectDN,
			"tls_client_auth_san_dns":    cl.TLSClientAuthSANDNS,
			"tls_client_auth_san_uri":    cl.TLSClientAuthSANURI,
			"tls_client_auth_san_ip":     cl.TLSClientAuthSANIP,
			"tls_client_auth_san_email":  cl.TLSClientAuthSANEmail,
		}
		tlsSet := 0
		for k, v := range tlsKeys {
			uses[k] = v != ""
			if v != "" {
				tlsSet++
			}
		}
		var own []string // the keys the method uses
		switch cl.AuthMethod {
		case AuthClientSecretBasic, AuthClientSecretPost:
			own = []string{"client_secret_sha256"}
			if b, err := hex.DecodeString(cl.ClientSecretSHA256); err != nil || len(b) != sha256.Size {
				add("%s.client_secret_sha256 must be the hex SHA-256 of the client secret (64 hex digits; `valet token hash` prints it) for auth_method %s", f, cl.AuthMethod)
			}
		case AuthPrivateKeyJWT:
			own = []string{"jwks_file", "jwks_url", "ca_file", "algorithms"}
			if (cl.JWKSFile == "") == (cl.JWKSURL == "") {
				add("%s needs exactly one of jwks_file or jwks_url for auth_method private_key_jwt", f)
			}
			if cl.JWKSURL != "" && !httpURL(cl.JWKSURL) {
				add("%s.jwks_url %q must be an absolute http(s) URL", f, cl.JWKSURL)
			}
			if len(cl.Algorithms) == 0 {
				add("%s.algorithms must not be empty (leave it out for the default [RS256, ES256])", f)
			}
			for j, a := range cl.Algorithms {
				if !allowedAlgorithms[a] {
					add("%s.algorithms[%d] %q is not allowed; use RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA", f, j, a)
				}
			}
		case AuthTLSClientAuth:
			for k := range tlsKeys {
				own = append(own, k)
			}
			if tlsSet != 1 {
				add("%s needs exactly one of tls_client_auth_subject_dn, tls_client_auth_san_dns, tls_client_auth_san_uri, tls_client_auth_san_ip or tls_client_auth_san_email for auth_method tls_client_auth", f)
			}
			if cl.TLSClientAuthSANIP != "" && net.ParseIP(cl.TLSClientAuthSANIP) == nil {
				add("%s.tls_client_auth_san_ip %q is not an IP address", f, cl.TLSClientAuthSANIP)
			}
			if !clientCerts {
				add("%s: auth_method tls_client_auth needs tls.client_ca_file and tls.client_auth verify_if_given or require", f)
			}
		default:
			add("%s.auth_method %q must be client_secret_basic, client_secret_post, private_key_jwt or tls_client_auth", f, cl.AuthMethod)
			continue
		}
		for _, k := range sortedKeys(uses) {
			if uses[k] && !slices.Contains(own, k) {
				add("%s.%s does not apply to auth_method %s", f, k, cl.AuthMethod)
			}
		}
		if cl.Audiences != nil && len(cl.Audiences) == 0 {
			add("%s.audiences must not be empty; leave it out to allow every audience", f)
		}
		for j, a := range cl.Audiences {
			if a == "" {
				add("%s.audiences[%d] must not be empty", f, j)
			}
		}
		if cl.Roles != nil && len(cl.Roles) == 0 {
			add("%s.roles must not be empty; leave it out to allow every role", f)
		}
		for j, r := range cl.Roles {
			if !roles[r] {
				add("%s.roles[%d] %q is not a configured role", f, j, r)
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// validClientID reports whether id is a client_id valet accepts: 1 to 255
// visible ASCII characters or spaces (RFC 6749 appendix A.1's VSCHAR).
func validClientID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// ResourceServer is an authenticated client of the introspection endpoint.
type ResourceServer struct {
	ClientID string
	// Method is the authentication method it used.
	Method    string
	audiences []string
	roles     []string
}

// MayLearn reports whether the client may see in as active: a client with
// audiences learns only about tokens whose aud names one of them, a client
// with roles only about leases of those roles (RFC 7662 section 4).
func (rs *ResourceServer) MayLearn(in *Introspection) bool {
	if len(rs.roles) > 0 && (in.Lease == nil || !slices.Contains(rs.roles, in.Lease.Role)) {
		return false
	}
	if len(rs.audiences) > 0 {
		var aud []string
		switch v := in.Claims["aud"].(type) {
		case string:
			aud = []string{v}
		case []any:
			for _, a := range v {
				if s, ok := a.(string); ok {
					aud = append(aud, s)
				}
			}
		}
		if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(rs.audiences, a) }) {
			return false
		}
	}
	return true
}

// ClientCredentials is what a caller presented to authenticate as an OAuth
// client (RFC 6749 section 2.3). The HTTP layer fills it from the request:
// Method says which method the request used, and only that method's fields
// are read.
type ClientCredentials struct {
	Method   string
	ClientID string
	// Secret is the client secret (client_secret_basic, client_secret_post).
	Secret string
	// Assertion is the client_assertion (private_key_jwt).
	Assertion string
	// Certificate is the client's TLS certificate, already verified against
	// tls.client_ca_file (tls_client_auth).
	Certificate *x509.Certificate
}

// ResourceServers authenticates the clients of the introspection endpoint.
// Secrets are compared as SHA-256 in constant time; client assertions are
// verified by a Verifier built from ClientAssertionIssuers.
type ResourceServers struct {
	clients    map[string]*rsClient
	assertions Verifier
	now        func() time.Time
	methods    []string
	algorithms []string
}

type rsClient struct {
	cfg IntrospectionClientConfig
	sum [sha256.Size]byte
}

// NewResourceServers builds the authenticator from a validated config.
// assertions verifies client assertions (the Verifier of
// cfg.ClientAssertionIssuers) and may be nil when no client uses
// private_key_jwt; now is the clock.
func NewResourceServers(cfg IntrospectionConfig, assertions Verifier, now func() time.Time) *ResourceServers {
	rs := &ResourceServers{clients: map[string]*rsClient{}, assertions: assertions, now: now}
	for _, cl := range cfg.Clients {
		c := &rsClient{cfg: cl}
		b, _ := hex.DecodeString(cl.ClientSecretSHA256) // validated by IntrospectionConfig.Validate
		copy(c.sum[:], b)
		rs.clients[cl.ClientID] = c
		if !slices.Contains(rs.methods, cl.AuthMethod) {
			rs.methods = append(rs.methods, cl.AuthMethod)
		}
		if cl.AuthMethod == AuthPrivateKeyJWT {
			for _, a := range cl.Algorithms {
				if !slices.Contains(rs.algorithms, a) {
					rs.algorithms = append(rs.algorithms, a)
				}
			}
		}
	}
	slices.Sort(rs.methods)
	slices.Sort(rs.algorithms)
	return rs
}

// Methods lists the authentication methods of the configured clients,
// sorted: what the introspection endpoint accepts. Empty when there are no
// clients.
func (rs *ResourceServers) Methods() []string { return slices.Clone(rs.methods) }

// SigningAlgorithms lists the JWS algorithms accepted in client assertions
// (introspection_endpoint_auth_signing_alg_values_supported), sorted.
func (rs *ResourceServers) SigningAlgorithms() []string { return slices.Clone(rs.algorithms) }

// errClientAuth is the one answer for a wrong client_id, a wrong secret and
// a method the client is not registered for, so callers cannot tell which
// client ids exist; the cause is logged.
func errClientAuth(cause string, args ...any) error {
	return Wrap(EUNAUTHORIZED, fmt.Errorf(cause, args...), "client authentication failed: unknown client, wrong credentials, or an authentication method the client is not registered for")
}

// Authenticate returns the client that cc proves to be. Errors: EUNAUTHORIZED
// when no method was used or the credentials do not prove a configured
// client using that method (the message never says which client ids
// exist); EUNAVAILABLE when a client's keys cannot be fetched or the jti
// cannot be recorded.
func (rs *ResourceServers) Authenticate(ctx context.Context, cc ClientCredentials) (*ResourceServer, error) {
	switch cc.Method {
	case AuthClientSecretBasic, AuthClientSecretPost:
		return rs.secret(cc)
	case AuthPrivateKeyJWT:
		return rs.assertion(ctx, cc)
	case AuthTLSClientAuth:
		return rs.certificate(cc)
	case "":
		return nil, Errorf(EUNAUTHORIZED, "client authentication is required (RFC 7662 section 2.1); accepted methods: %s", rs.methodList())
	default:
		return nil, Errorf(EUNAUTHORIZED, "client authentication method %s is not supported; accepted methods: %s", cc.Method, rs.methodList())
	}
}

func (rs *ResourceServers) methodList() string {
	if len(rs.methods) == 0 {
		return "none (no introspection clients are configured)"
	}
	return strings.Join(rs.methods, ", ")
}

func (rs *ResourceServers) secret(cc ClientCredentials) (*ResourceServer, error) {
	sum := sha256.Sum256([]byte(cc.Secret))
	c := rs.clients[cc.ClientID]
	var want [sha256.Size]byte // an unknown client is compared too, and fails
	if c != nil {
		want = c.sum
	}
	match := subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	switch {
	case c == nil:
		return nil, errClientAuth("unknown client_id %q", cc.ClientID)
	case c.cfg.AuthMethod != cc.Method:
		return nil, errClientAuth("client %q uses %s, not %s", cc.ClientID, c.cfg.AuthMethod, cc.Method)
	case !match:
		return nil, errClientAuth("wrong secret for client %q", cc.ClientID)
	}
	return c.resourceServer(cc.Method), nil
}

func (rs *ResourceServers) assertion(ctx context.Context, cc ClientCredentials) (*ResourceServer, error) {
	iss := peekIssuer(cc.Assertion)
	c := rs.clients[iss]
	switch {
	case c == nil || c.cfg.AuthMethod != AuthPrivateKeyJWT || rs.assertions == nil:
		return nil, errClientAuth("client_assertion iss %q is not a private_key_jwt client", iss)
	case cc.ClientID != "" && cc.ClientID != iss:
		return nil, Errorf(EUNAUTHORIZED, "client_id does not match the client_assertion's iss")
	}
	p, err := rs.assertions.Verify(ctx, cc.Assertion)
	if err != nil {
		if code := ErrorCode(err); code != EUNAUTHORIZED && code != ETOOLARGE {
			return nil, err
		}
		return nil, Wrap(EUNAUTHORIZED, err, "client_assertion: %s", ErrorMessage(err))
	}
	switch {
	case p.IssuerURL != iss:
		return nil, errClientAuth("client_assertion verified for iss %q, not %q", p.IssuerURL, iss)
	case p.Subject != iss:
		return nil, Errorf(EUNAUTHORIZED, "client_assertion: sub must be the client_id, as iss is (RFC 7523 section 3)")
	case p.ExpiresAt.After(rs.now().Add(MaxClientAssertionLifetime)):
		return nil, Errorf(EUNAUTHORIZED, "client_assertion: exp is more than %s away; use short-lived assertions", MaxClientAssertionLifetime)
	}
	return c.resourceServer(AuthPrivateKeyJWT), nil
}

func (rs *ResourceServers) certificate(cc ClientCredentials) (*ResourceServer, error) {
	c := rs.clients[cc.ClientID]
	switch {
	case cc.Certificate == nil:
		return nil, Errorf(EUNAUTHORIZED, "tls_client_auth needs a client certificate from the configured client CA")
	case c == nil || c.cfg.AuthMethod != AuthTLSClientAuth:
		return nil, errClientAuth("client_id %q is not a tls_client_auth client", cc.ClientID)
	case !c.matchesCertificate(cc.Certificate):
		return nil, errClientAuth("the certificate (subject %q) does not match client %q", cc.Certificate.Subject.String(), cc.ClientID)
	}
	return c.resourceServer(AuthTLSClientAuth), nil
}

// matchesCertificate applies RFC 8705 section 2.1.2: the one configured
// subject DN or SAN must match the certificate.
func (c *rsClient) matchesCertificate(cert *x509.Certificate) bool {
	cfg := c.cfg
	switch {
	case cfg.TLSClientAuthSubjectDN != "":
		return cert.Subject.String() == cfg.TLSClientAuthSubjectDN
	case cfg.TLSClientAuthSANDNS != "":
		return slices.ContainsFunc(cert.DNSNames, func(n string) bool { return strings.EqualFold(n, cfg.TLSClientAuthSANDNS) })
	case cfg.TLSClientAuthSANURI != "":
		return slices.ContainsFunc(cert.URIs, func(u *url.URL) bool { return u.String() == cfg.TLSClientAuthSANURI })
	case cfg.TLSClientAuthSANIP != "":
		want := net.ParseIP(cfg.TLSClientAuthSANIP)
		return slices.ContainsFunc(cert.IPAddresses, want.Equal)
	case cfg.TLSClientAuthSANEmail != "":
		return slices.Contains(cert.EmailAddresses, cfg.TLSClientAuthSANEmail)
	}
	return false
}

func (c *rsClient) resourceServer(method string) *ResourceServer {
	return &ResourceServer{ClientID: c.cfg.ClientID, Method: method, audiences: c.cfg.Audiences, roles: c.cfg.Roles}
}
