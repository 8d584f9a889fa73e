package broker

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
)

// withIntrospection is minimalConfig with an introspection section.
func withIntrospection(clients string) string {
	return minimalConfig + "introspection:\n  clients:\n" + clients
}

var secretSum = HashToken("rs-secret")

func TestIntrospectionConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(withIntrospection(`
    - client_id: orders-api
      client_secret_sha256: ` + secretSum + `
    - client_id: https://rs.example.com
      auth_method: private_key_jwt
      jwks_url: https://rs.example.com/jwks.json
`)))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Introspection.Clients
	if c[0].AuthMethod != AuthClientSecretBasic {
		t.Errorf("auth_method left out = %q, want client_secret_basic (RFC 7591's default)", c[0].AuthMethod)
	}
	if c[0].Algorithms != nil {
		t.Errorf("a secret client got algorithms %v", c[0].Algorithms)
	}
	if !slices.Equal(c[1].Algorithms, []string{"RS256", "ES256"}) {
		t.Errorf("private_key_jwt algorithms left out = %v, want [RS256 ES256]", c[1].Algorithms)
	}
	iss := cfg.Introspection.ClientAssertionIssuers(cfg.PublicURL)
	if len(iss) != 1 || iss[0].Issuer != "https://rs.example.com" || !iss[0].RequireJTI || iss[0].MaxTokenAge != 0 ||
		!slices.Contains(iss[0].Audiences, cfg.PublicURL+"/v1/introspect") || iss[0].Name != "introspection:https://rs.example.com" {
		t.Errorf("client assertion issuers = %+v", iss)
	}
	// No section: no clients, so introspection refuses everyone.
	cfg, err = ParseConfig([]byte(minimalConfig))
	if err != nil || len(cfg.Introspection.Clients) != 0 {
		t.Fatalf("config without introspection: %v %+v", err, cfg.Introspection)
	}
}

func TestIntrospectionConfigResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	text := withIntrospection(`
    - client_id: rs
      auth_method: private_key_jwt
      jwks_file: rs-jwks.json
`)
	path := filepath.Join(dir, "valet.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Introspection.Clients[0].JWKSFile; got != filepath.Join(dir, "rs-jwks.json") {
		t.Fatalf("jwks_file = %q, want it resolved against the config's directory", got)
	}
}

func TestIntrospectionConfigRejects(t *testing.T) {
	const tlsSection = "tls:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n  client_auth: verify_if_given\n"
	cases := []struct {
		name    string
		clients string
		extra   string
		want    string
	}{
		{"no client_id", "    - client_secret_sha256: " + secretSum + "\n", "", `introspection.clients[0].client_id "" must be 1 to 255 printable ASCII characters`},
		{"control character in client_id", "    - client_id: \"a\\tb\"\n      client_secret_sha256: " + secretSum + "\n", "", "introspection.clients[0].client_id"},
		{"client_id twice", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n    - client_id: a\n      client_secret_sha256: " + secretSum + "\n", "", `introspection.clients[1].client_id "a" is used twice`},
		{"no secret", "    - client_id: a\n", "", "introspection.clients[0].client_secret_sha256 must be the hex SHA-256 of the client secret"},
		{"secret in clear", "    - client_id: a\n      client_secret_sha256: hunter2\n", "", "introspection.clients[0].client_secret_sha256 must be the hex SHA-256"},
		{"unknown method", "    - client_id: a\n      auth_method: none\n", "", `introspection.clients[0].auth_method "none" must be client_secret_basic, client_secret_post, private_key_jwt or tls_client_auth`},
		{"jwks on a secret client", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      jwks_file: k.json\n", "", "introspection.clients[0].jwks_file does not apply to auth_method client_secret_basic"},
		{"private_key_jwt without keys", "    - client_id: a\n      auth_method: private_key_jwt\n", "", "introspection.clients[0] needs exactly one of jwks_file or jwks_url"},
		{"private_key_jwt with two key sources", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      jwks_url: https://a/jwks\n", "", "introspection.clients[0] needs exactly one of jwks_file or jwks_url"},
		{"private_key_jwt with a secret", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      client_secret_sha256: " + secretSum + "\n", "", "introspection.clients[0].client_secret_sha256 does not apply to auth_method private_key_jwt"},
		{"HMAC algorithm", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      algorithms: [HS256]\n", "", `introspection.clients[0].algorithms[0] "HS256" is not allowed`},
		{"algorithms set to nothing", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_file: k.json\n      algorithms: []\n", "", "introspection.clients[0].algorithms must not be empty"},
		{"relative jwks_url", "    - client_id: a\n      auth_method: private_key_jwt\n      jwks_url: /jwks\n", "", `introspection.clients[0].jwks_url "/jwks" must be an absolute http(s) URL`},
		{"tls_client_auth without tls", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n", "", "introspection.clients[0]: auth_method tls_client_auth needs tls.client_ca_file and tls.client_auth verify_if_given or require"},
		{"tls_client_auth with client_auth none", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n", "tls:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n  client_auth: none\n", "needs tls.client_ca_file and tls.client_auth verify_if_given or require"},
		{"tls_client_auth without a name", "    - client_id: a\n      auth_method: tls_client_auth\n", tlsSection, "introspection.clients[0] needs exactly one of tls_client_auth_subject_dn"},
		{"tls_client_auth with two names", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_subject_dn: CN=a\n      tls_client_auth_san_dns: a.example\n", tlsSection, "introspection.clients[0] needs exactly one of tls_client_auth_subject_dn"},
		{"bad SAN IP", "    - client_id: a\n      auth_method: tls_client_auth\n      tls_client_auth_san_ip: 10.0.0\n", tlsSection, `introspection.clients[0].tls_client_auth_san_ip "10.0.0" is not an IP address`},
		{"certificate name on a secret client", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      tls_client_auth_san_dns: a.example\n", "", "introspection.clients[0].tls_client_auth_san_dns does not apply to auth_method client_secret_basic"},
		{"audiences set to nothing", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      audiences: []\n", "", "introspection.clients[0].audiences must not be empty; leave it out"},
		{"empty audience", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      audiences: [\"\"]\n", "", "introspection.clients[0].audiences[0] must not be empty"},
		{"roles set to nothing", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      roles: []\n", "", "introspection.clients[0].roles must not be empty; leave it out"},
		{"unknown role", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      roles: [demo, nope]\n", "", `introspection.clients[0].roles[1] "nope" is not a configured role`},
		{"unknown key", "    - client_id: a\n      client_secret_sha256: " + secretSum + "\n      client_secret: s\n", "", "field client_secret not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(withIntrospection(c.clients) + c.extra))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestResourceServersAuthenticateSecrets(t *testing.T) {
	rs := NewResourceServers(IntrospectionConfig{Clients: []IntrospectionClientConfig{
		{ClientID: "basic-rs", AuthMethod: AuthClientSecretBasic, ClientSecretSHA256: secretSum},
		{ClientID: "post-rs", AuthMethod: AuthClientSecretPost, ClientSecretSHA256: HashToken("other-secret")},
	}}, nil, time.Now)
	if got := rs.Methods(); !slices.Equal(got, []string{AuthClientSecretBasic, AuthClientSecretPost}) {
		t.Errorf("Methods() = %v", got)
	}
	cases := []struct {
		name string
		cc   ClientCredentials
		want string // client id, or "" for EUNAUTHORIZED
	}{
		{"basic", ClientCredentials{Method: AuthClientSecretBasic, ClientID: "basic-rs", Secret: "rs-secret"}, "basic-rs"},
		{"post", ClientCredentials{Method: AuthClientSecretPost, ClientID: "post-rs", Secret: "other-secret"}, "post-rs"},
		{"no method", ClientCredentials{ClientID: "basic-rs", Secret: "rs-secret"}, ""},
		{"wrong secret", ClientCredentials{Method: AuthClientSecretBasic, ClientID: "basic-rs", Secret: "rs-secreT"}, ""},
		{"empty secret", ClientCredentials{Method: AuthClientSecretBasic, ClientID: "basic-rs"}, ""},
		{"another client's secret", ClientCredentials{Method: AuthClientSecretBasic, ClientID: "basic-rs", Secret: "other-secret"}, ""},
		{"unknown client", ClientCredentials{Method: AuthClientSecretBasic, ClientID: "nobody", Secret: "rs-secret"}, ""},
		{"the other method", ClientCredentials{Method: AuthClientSecretPost, ClientID: "basic-rs", Secret: "rs-secret"}, ""},
		{"assertion without a verifier", ClientCredentials{Method: AuthPrivateKeyJWT, Assertion: "a.b.c"}, ""},
		{"certificate for a secret client", ClientCredentials{Method: AuthTLSClientAuth, ClientID: "basic-rs", Certificate: &x509.Certificate{}}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := rs.Authenticate(context.Background(), c.cc)
			if c.want != "" {
				if err != nil || got.ClientID != c.want || got.Method != c.cc.Method {
					t.Fatalf("Authenticate = %+v, %v; want client %s", got, err, c.want)
				}
				return
			}
			if ErrorCode(err) != EUNAUTHORIZED || got != nil {
				t.Fatalf("Authenticate = %+v, %v; want EUNAUTHORIZED", got, err)
			}
			if strings.Contains(ErrorMessage(err), c.cc.ClientID) && c.cc.ClientID != "" {
				t.Errorf("message %q names the client id", ErrorMessage(err))
			}
		})
	}
	// The refusal is the same whether or not the client exists.
	_, e1 := rs.Authenticate(context.Background(), ClientCredentials{Method: AuthClientSecretBasic, ClientID: "nobody", Secret: "x"})
	_, e2 := rs.Authenticate(context.Background(), ClientCredentials{Method: AuthClientSecretBasic, ClientID: "basic-rs", Secret: "x"})
	if ErrorMessage(e1) != ErrorMessage(e2) {
		t.Errorf("unknown client %q and wrong secret %q are told apart", ErrorMessage(e1), ErrorMessage(e2))
	}
}

func TestResourceServersAuthenticateCertificates(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://example.org/ns/shop/sa/orders")
	cert := &x509.Certificate{
		Subject:        pkix.Name{CommonName: "orders-api", Organization: []string{"Acme"}},
		DNSNames:       []string{"Orders.Example.com"},
		URIs:           []*url.URL{spiffe},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.7")},
		EmailAddresses: []string{"rs@example.com"},
	}
	cfgs := map[string]IntrospectionClientConfig{
		"dn":    {TLSClientAuthSubjectDN: "CN=orders-api,O=Acme"},
		"dns":   {TLSClientAuthSANDNS: "orders.example.com"},
		"uri":   {TLSClientAuthSANURI: "spiffe://example.org/ns/shop/sa/orders"},
		"ip":    {TLSClientAuthSANIP: "10.0.0.7"},
		"email": {TLSClientAuthSANEmail: "rs@example.com"},
		"other": {TLSClientAuthSubjectDN: "CN=billing-api,O=Acme"},
		"wrong": {TLSClientAuthSANURI: "spiffe://example.org/ns/shop/sa/billing"},
	}
	var ic IntrospectionConfig
	for id, c := range cfgs {
		c.ClientID, c.AuthMethod = id, AuthTLSClientAuth
		ic.Clients = append(ic.Clients, c)
	}
	rs := NewResourceServers(ic, nil, time.Now)
	for id := range cfgs {
		t.Run(id, func(t *testing.T) {
			got, err := rs.Authenticate(context.Background(), ClientCredentials{Method: AuthTLSClientAuth, ClientID: id, Certificate: cert})
			if id == "other" || id == "wrong" {
				if ErrorCode(err) != EUNAUTHORIZED {
					t.Fatalf("a certificate that does not match client %s: %+v, %v", id, got, err)
				}
				return
			}
			if err != nil || got.ClientID != id {
				t.Fatalf("Authenticate = %+v, %v", got, err)
			}
		})
	}
	if _, err := rs.Authenticate(context.Background(), ClientCredentials{Method: AuthTLSClientAuth, ClientID: "dn"}); ErrorCode(err) != EUNAUTHORIZED {
		t.Errorf("tls_client_auth without a certificate: %v", err)
	}
}

func TestResourceServerMayLearn(t *testing.T) {
	in := func(role string, aud any) *Introspection {
		return &Introspection{Active: true, Claims: map[string]any{"aud": aud}, Lease: &leases.Lease{Role: role}}
	}
	cases := []struct {
		name string
		rs   ResourceServer
		in   *Introspection
		want bool
	}{
		{"unrestricted", ResourceServer{}, in("demo", nil), true},
		{"audience as a string", ResourceServer{audiences: []string{"orders-api"}}, in("demo", "orders-api"), true},
		{"audience in an array", ResourceServer{audiences: []string{"orders-api"}}, in("demo", []any{"x", "orders-api"}), true},
		{"other audience", ResourceServer{audiences: []string{"orders-api"}}, in("demo", "billing-api"), false},
		{"no audience", ResourceServer{audiences: []string{"orders-api"}}, in("demo", nil), false},
		{"role allowed", ResourceServer{roles: []string{"demo"}}, in("demo", nil), true},
		{"role not allowed", ResourceServer{roles: []string{"other"}}, in("demo", nil), false},
		{"both must hold", ResourceServer{roles: []string{"demo"}, audiences: []string{"orders-api"}}, in("demo", "billing-api"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.rs.MayLearn(c.in); got != c.want {
				t.Fatalf("MayLearn = %v, want %v", got, c.want)
			}
		})
	}
}
