package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
)

// The tests in this file check that internal error text (addresses,
// paths, a backend's own error) never reaches a client, and that the log
// keeps it.

// failingBody is a request body whose read fails the way a broken
// connection does.
type failingBody struct{ err error }

func (b failingBody) Read([]byte) (int, error) { return 0, b.err }

// A body that cannot be read is EINVALID with a message that does not
// carry the read error (which names the server's own address).
func TestUnreadableBodyHidesTheCause(t *testing.T) {
	cause := errors.New("read tcp 10.1.2.3:8750->10.9.9.9:4242: i/o timeout")
	r := httptest.NewRequest("POST", "/v1/credentials", io.NopCloser(failingBody{cause}))
	r.Header.Set("Content-Type", "application/json")
	err := decodeJSON(r, &credentialRequest{})
	var be *broker.Error
	if !errors.As(err, &be) || be.Code != broker.EINVALID || !strings.Contains(be.Message, "request body cannot be read") {
		t.Fatalf("decodeJSON = %v, want EINVALID saying the body cannot be read", err)
	}
	if strings.Contains(be.Message, "10.1.2.3") || strings.Contains(be.Message, "i/o timeout") {
		t.Errorf("client message %q carries the read error", be.Message)
	}
	if !errors.Is(err, cause) {
		t.Errorf("the cause is not kept for the log: %v", err)
	}
}

// /readyz says the server is not ready without the reason's internal
// text; the log has it.
func TestReadyzHidesTheCause(t *testing.T) {
	var logs bytes.Buffer
	s := New(Config{
		Metrics: NewMetrics(prometheus.NewRegistry(), KnownLabels{}),
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		Ready:   func() error { return errors.New("open /var/lib/valet/valet.db: timeout") },
	})
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
	var p Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || w.Code != http.StatusServiceUnavailable || !strings.Contains(p.Detail, "not ready") {
		t.Fatalf("GET /readyz = %d %s, want 503 saying it is not ready", w.Code, w.Body)
	}
	if strings.Contains(p.Detail, "/var/lib/valet") {
		t.Errorf("detail %q carries the internal reason", p.Detail)
	}
	if !strings.Contains(logs.String(), "/var/lib/valet/valet.db") {
		t.Errorf("the log does not keep the reason:\n%s", logs.String())
	}
}

// A lease's last revocation error is the backend's own text: operators see
// it, the agent does not.
func TestLeaseViewShowsRevocationErrorsToOperatorsOnly(t *testing.T) {
	l := &leases.Lease{ID: "01J0000000000000000000000A", State: leases.StateRevoking, RevokeAttempts: 2,
		LastError: "Error making API request. URL: PUT https://vault.internal:8200/v1/auth/token/revoke-accessor Code: 503",
		CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Minute)}
	cases := []struct {
		name     string
		operator bool
		want     string
	}{
		{"operator", true, l.LastError},
		{"agent", false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := viewLease(l, c.operator).LastError; got != c.want {
				t.Errorf("last_error %q, want %q", got, c.want)
			}
		})
	}
}
