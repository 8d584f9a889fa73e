package attest

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// TestCacheSizeIsTakenAsGiven: limits.attestation_cache 0 turns the cache
// off (a verified token is not remembered); a positive size remembers it.
func TestCacheSizeIsTakenAsGiven(t *testing.T) {
	for _, tc := range []struct {
		name       string
		size       int
		wantCached bool
	}{
		{"0 turns the cache off", 0, false},
		{"16 remembers", 16, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
			dev, err := NewDevIssuer("https://issuer.test")
			if err != nil {
				t.Fatal(err)
			}
			dev.SetClock(clk)
			jwks := filepath.Join(t.TempDir(), "jwks.json")
			if err := dev.WriteJWKS(jwks); err != nil {
				t.Fatal(err)
			}
			ic := config.Defaulted(func(ic *IssuerConfig) {
				ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile = "oidc", dev.Issuer(), []string{"valet"}, jwks
			})
			v, err := New(context.Background(), Options{Issuers: []IssuerConfig{ic}, MaxTokenBytes: broker.DefaultMaxAttestationBytes, Clock: clk, CacheSize: tc.size})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := dev.Sign(map[string]any{"sub": "agent", "aud": "valet"})
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					t.Fatal(err)
				}
			}
			if cached := v.cache.get(sha256.Sum256([]byte(tok))) != nil; cached != tc.wantCached {
				t.Fatalf("token cached: %v, want %v", cached, tc.wantCached)
			}
		})
	}
}
