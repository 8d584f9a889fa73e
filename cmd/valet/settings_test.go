package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases/clock"
)

// TestClockSkewZeroIsNoSkew: issuers[].clock_skew: 0s tolerates no skew at
// all. An attestation that expired 20s ago is refused with 401; with
// clock_skew absent (the default 30s) the same attestation mints.
func TestClockSkewZeroIsNoSkew(t *testing.T) {
	cases := []struct {
		name      string
		clockSkew string // "" leaves the key out
		want      int
		wantBody  string
	}{
		{"absent: the default 30s", "", http.StatusCreated, ""},
		{"0s: none", "0s", http.StatusUnauthorized, "allowed clock skew 0s"},
		{"0: none", "0", http.StatusUnauthorized, "allowed clock skew 0s"},
		{"10s", "10s", http.StatusUnauthorized, "allowed clock skew 10s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnvYAML(t, func(cfg string) string {
				if tc.clockSkew == "" {
					return cfg
				}
				return strings.Replace(cfg, "    algorithms: [ES256]\n", "    algorithms: [ES256]\n    clock_skew: "+tc.clockSkew+"\n", 1)
			}).Start()
			now := time.Now()
			tok := e.Attest("late-agent", map[string]any{"iat": now.Add(-5 * time.Minute).Unix(), "exp": now.Add(-20 * time.Second).Unix()})
			r := e.Do("POST", "/v1/credentials", tok, map[string]any{"role": "demo"})
			if r.Status != tc.want || !strings.Contains(string(r.Body), tc.wantBody) {
				t.Fatalf("status %d, body %s; want %d with %q", r.Status, r.Body, tc.want, tc.wantBody)
			}
		})
	}
}

// TestRetentionZeroKeepsNoEndedLeases: leases.retention: 0s deletes an
// ended lease at the next housekeeping pass (once a minute) instead of
// keeping it for the default 7 days; its audit records stay.
func TestRetentionZeroKeepsNoEndedLeases(t *testing.T) {
	e := newTestEnvYAML(t, func(cfg string) string { return cfg + "leases:\n  retention: 0s\n" })
	fake := clock.NewFake(time.Now())
	e.Clock = fake
	e.Issuer.SetClock(fake)
	e.Start()
	id, _ := e.Mint(e.Attest("short-lived", nil), "demo")["lease_id"].(string)
	if r := e.Do("DELETE", "/v1/leases/"+id, testOperatorToken, nil); r.Status != http.StatusOK {
		t.Fatalf("end lease: %d %s", r.Status, r.Body)
	}
	eventually(t, 10*time.Second, "ended lease pruned", func() bool {
		if fake.Waiters() > 0 {
			fake.Advance(time.Minute)
		}
		return e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).Status == http.StatusNotFound
	})
	if n := auditKinds(t, e)["lease.revoke"]; n == 0 {
		t.Fatalf("the ended lease's audit records are gone: %v", auditKinds(t, e))
	}
}
