package main

import (
	"net/http"
	"strings"
	"testing"
	"time"
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
