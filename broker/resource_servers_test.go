package broker

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
)

var secretSum = HashToken("rs-secret")

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
