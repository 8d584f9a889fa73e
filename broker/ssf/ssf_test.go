package ssf_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/broker/ssf"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

var (
	kekA  = bytes.Repeat([]byte{7}, 32)
	kekB  = bytes.Repeat([]byte{8}, 32)
	ringA = kek.Ring{Current: kekA}
)

func TestTransmitterKeyIsKeptSealed(t *testing.T) {
	dir := t.TempDir()
	tx, err := ssf.Open(dir, ringA, "https://valet.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ssf.Open(dir, ringA, "https://valet.test", nil)
	if err != nil || again.KeyID() != tx.KeyID() {
		t.Fatalf("reopened: %v, kid %s want %s", err, again.KeyID(), tx.KeyID())
	}
	raw, err := os.ReadFile(filepath.Join(dir, ssf.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE")) || !bytes.Contains(raw, []byte(`"ciphertext"`)) {
		t.Fatalf("the key file does not look sealed: %s", raw)
	}
	if _, err := ssf.Open(dir, kek.Ring{Current: kekB}, "https://valet.test", nil); err == nil || !strings.Contains(err.Error(), "VALET_KEK_PREVIOUS") {
		t.Fatalf("opened with another KEK: %v", err)
	}
	jwks := tx.PublicJWKs()
	if len(jwks) != 1 || jwks[0]["kid"] != tx.KeyID() || jwks[0]["alg"] != "ES256" || jwks[0]["d"] != nil {
		t.Fatalf("public JWK %v", jwks)
	}
}

// TestTransmitterKeyRewrapped: while valet switches KEKs the key opens
// under the previous one; RewrapKey seals it under the new one (once), after
// which the new KEK alone opens it and the kid stays.
func TestTransmitterKeyRewrapped(t *testing.T) {
	dir := t.TempDir()
	if rep, err := ssf.RewrapKey(dir, kek.Ring{Current: kekB, Previous: kekA}); err != nil || rep != (kek.Report{}) {
		t.Fatalf("re-wrap without a key: %+v, %v", rep, err)
	}
	tx, err := ssf.Open(dir, ringA, "https://valet.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	switching := kek.Ring{Current: kekB, Previous: kekA}
	if again, err := ssf.Open(dir, switching, "https://valet.test", nil); err != nil || again.KeyID() != tx.KeyID() {
		t.Fatalf("open while switching: %v", err)
	}
	if rep, err := ssf.RewrapKey(dir, switching); err != nil || rep.Rewrapped != 1 {
		t.Fatalf("re-wrap: %+v, %v", rep, err)
	}
	if rep, err := ssf.RewrapKey(dir, switching); err != nil || rep.Rewrapped != 0 || rep.Current != 1 {
		t.Fatalf("second re-wrap: %+v, %v", rep, err)
	}
	again, err := ssf.Open(dir, kek.Ring{Current: kekB}, "https://valet.test", nil)
	if err != nil || again.KeyID() != tx.KeyID() {
		t.Fatalf("open under the new KEK alone: %v", err)
	}
	if _, err := ssf.Open(dir, ringA, "https://valet.test", nil); err == nil {
		t.Fatal("the old KEK still opens the re-wrapped key")
	}
}

// receiver is an RFC 8935 push endpoint that verifies each SET against
// the transmitter's published keys, as a resource server would.
type receiver struct {
	t      *testing.T
	keys   jwk.Set
	status int
	mu     sync.Mutex
	got    []map[string]any
	header http.Header
}

func newReceiver(t *testing.T, tx *ssf.Transmitter, status int) (*receiver, *httptest.Server) {
	b, _ := json.Marshal(map[string]any{"keys": tx.PublicJWKs()})
	keys, err := jwk.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, keys: keys, status: status}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	msg, err := jws.Parse(body)
	if err != nil || len(msg.Signatures()) != 1 {
		http.Error(w, `{"err":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	if typ := msg.Signatures()[0].ProtectedHeaders().Type(); typ != "secevent+jwt" {
		http.Error(w, `{"err":"invalid_request","description":"typ"}`, http.StatusBadRequest)
		return
	}
	payload, err := jws.Verify(body, jws.WithKeySet(r.keys, jws.WithRequireKid(true)), jws.WithValidateKey(true))
	if err != nil {
		http.Error(w, `{"err":"invalid_key"}`, http.StatusBadRequest)
		return
	}
	var claims map[string]any
	_ = json.Unmarshal(payload, &claims)
	r.mu.Lock()
	r.got = append(r.got, claims)
	r.header = req.Header.Clone()
	r.mu.Unlock()
	w.WriteHeader(r.status)
}

func (r *receiver) sets() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

func dispatcher(t *testing.T, tx *ssf.Transmitter, hooks ...notify.WebhookConfig) *notify.Dispatcher {
	t.Helper()
	d, err := notify.New(notify.Options{Webhooks: hooks, SETs: tx})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// TestSessionRevokedPush: a mass revocation reaches a set receiver as a
// CAEP session-revoked SET that verifies against valet's published key;
// other events are not sent to it.
func TestSessionRevokedPush(t *testing.T) {
	tx, err := ssf.Open(t.TempDir(), ringA, "https://valet.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	rcv, srv := newReceiver(t, tx, http.StatusAccepted)
	secret := filepath.Join(t.TempDir(), "bearer")
	os.WriteFile(secret, []byte("push-token\n"), 0o600)
	d := dispatcher(t, tx, config.Defaulted(func(w *notify.WebhookConfig) {
		w.Name, w.URL, w.Format, w.Audience, w.SecretFile = "gateway", srv.URL, "set", "https://gateway.test", secret
	}))
	now := time.Now()
	d.Notify(broker.Event{Type: broker.EventAgentQuarantined, Time: now, Agent: &broker.AgentEvent{ID: "k8s/a"}})
	d.Notify(broker.Event{Type: broker.EventLeasesRevoked, Time: now, Agent: &broker.AgentEvent{ID: "k8s/a", Reason: "signal X: bad",
		By: audit.Actor{Type: audit.ActorDetector, ID: "source:siem"}, SignalID: "SIG1", Revoked: 3}})
	deadline := time.Now().Add(10 * time.Second)
	for len(rcv.sets()) == 0 || d.Stats()[0].Pending > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no SET delivered: %+v", d.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := rcv.sets()
	if len(got) != 1 {
		t.Fatalf("%d SETs, want 1 (only the mass revocation): %v", len(got), got)
	}
	c := got[0]
	sub, _ := c["sub_id"].(map[string]any)
	ev, _ := c["events"].(map[string]any)[ssf.SessionRevoked].(map[string]any)
	if c["iss"] != "https://valet.test" || c["aud"] != "https://gateway.test" || c["txn"] != "SIG1" || c["jti"] == "" ||
		sub["format"] != "iss_sub" || sub["iss"] != "https://valet.test" || sub["sub"] != "k8s/a" ||
		ev["initiating_entity"] != "policy" || ev["reason_admin"].(map[string]any)["en"] != "signal X: bad" || ev["event_timestamp"] != float64(now.Unix()) {
		t.Fatalf("SET claims %v", c)
	}
	rcv.mu.Lock()
	h := rcv.header
	rcv.mu.Unlock()
	if h.Get("Content-Type") != "application/secevent+jwt" || h.Get("Authorization") != "Bearer push-token" {
		t.Fatalf("request headers %v", h)
	}
	if s := d.Stats()[0]; s.Delivered != 1 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestSessionRevokedRefused: a receiver's RFC 8935 error is a permanent
// failure, counted and not retried.
func TestSessionRevokedRefused(t *testing.T) {
	tx, err := ssf.Open(t.TempDir(), ringA, "https://valet.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, srv := newReceiver(t, tx, http.StatusBadRequest)
	d := dispatcher(t, tx, config.Defaulted(func(w *notify.WebhookConfig) { w.Name, w.URL, w.Format = "gateway", srv.URL, "set" }))
	d.Notify(broker.Event{Type: broker.EventLeasesRevoked, Time: time.Now(), Agent: &broker.AgentEvent{ID: "k8s/a", By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}}})
	deadline := time.Now().Add(10 * time.Second)
	for d.Stats()[0].Failed == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the refusal was not counted: %+v", d.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := d.Stats()[0]; s.Retries != 0 || !strings.Contains(s.LastError, "400") {
		t.Fatalf("stats %+v", s)
	}
	if _, err := notify.New(notify.Options{Webhooks: []notify.WebhookConfig{config.Defaulted(func(w *notify.WebhookConfig) {
		w.Name, w.URL, w.Format = "gateway", srv.URL, "set"
	})}}); err == nil {
		t.Fatal("a set receiver without a transmitter was accepted")
	}
}
