package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA issues certificates for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "valet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for a server (ip set) or a client.
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// serveTLS configures e (before Start) to serve HTTPS with a certificate
// of a new test CA, which is also tls.client_ca_file, with the given
// tls.client_auth.
func serveTLS(t *testing.T, e *testEnv, clientAuth string) *testCA {
	t.Helper()
	ca := newTestCA(t)
	srvCert, srvKey := ca.issue(t, "valet", true)
	write := func(name string, b []byte) string {
		p := filepath.Join(e.Dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	e.Config.TLS = &TLSConfig{
		CertFile: write("tls.crt", srvCert), KeyFile: write("tls.key", srvKey),
		ClientCAFile: write("ca.pem", ca.pem), ClientAuth: clientAuth,
	}
	return ca
}

func TestTLSWithClientCertificates(t *testing.T) {
	e := newTestEnv(t)
	ca := serveTLS(t, e, "require")
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	e.Start()
	url := "https://" + e.Server.Addr() + "/healthz"
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	// Without a client certificate the handshake fails.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 5 * time.Second}
	if resp, err := noCert.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("request without a client certificate got %d, want a handshake failure", resp.StatusCode)
	}
	// A certificate from another CA is refused too.
	other := newTestCA(t)
	oc, ok := other.issue(t, "intruder", false)
	pair, _ := tls.X509KeyPair(oc, ok)
	bad := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}}, Timeout: 5 * time.Second}
	if resp, err := bad.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("request with a foreign client certificate got %d", resp.StatusCode)
	}
	// A client certificate from the configured CA works.
	cc, ck := ca.issue(t, "agent", false)
	pair, _ = tls.X509KeyPair(cc, ck)
	good := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}}, Timeout: 5 * time.Second}
	resp, err := good.Get(url)
	if err != nil {
		t.Fatalf("request with a valid client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestOperatorSSOToken(t *testing.T) {
	e := newTestEnv(t)
	sso := withOperatorIssuer(t, e, nil)
	e.Start()
	tok := idToken(t, sso, map[string]any{"sub": "u-123", "email": "alice@example.com", "email_verified": true, "groups": []string{"approvers"}})
	res := e.Mint(e.Attest("sso-target", nil), "demo")
	id := res["lease_id"].(string)

	if r := e.Do("GET", "/v1/leases", tok, nil); r.Status != http.StatusOK {
		t.Fatalf("operator ID token on an operator endpoint: %d %s", r.Status, r.Body)
	}
	// An operator revoke is audited under the operator's email.
	if r := e.Do("DELETE", "/v1/leases/"+id, tok, nil); r.Status != http.StatusOK || r.JSON(t)["state"] != "revoked" {
		t.Fatalf("operator revoke: %d %s", r.Status, r.Body)
	}
	r := e.Do("GET", "/v1/audit?kind=lease.revoke", testOperatorToken, nil)
	recs := r.JSON(t)["records"].([]any)
	if len(recs) != 1 || recs[0].(map[string]any)["actor"].(map[string]any)["id"] != "alice@example.com" {
		t.Fatalf("revoke audit records: %s", r.Body)
	}
	// An ID token with the wrong audience is refused, not taken for an agent.
	wrongAud, _ := sso.Sign(map[string]any{"sub": "u-123", "aud": "something-else"})
	if r := e.Do("GET", "/v1/leases", wrongAud, nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("operator token with a wrong audience: %d %s", r.Status, r.Body)
	}
	// An agent's attestation is not an operator credential.
	if r := e.Do("GET", "/v1/leases", e.Attest("sso-target", nil), nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("agent attestation on an operator endpoint: %d %s", r.Status, r.Body)
	}
}
