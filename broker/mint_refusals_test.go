package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// TestMintRefusalsAreTellable checks that front ends can tell refusals
// apart by code and errors.Is, not by message: a refused scope carries
// ErrScopeRefused (OAuth invalid_scope), other bad requests do not, and an
// Immediate mint of a role that needs approval is refused after
// authentication and policy, audited, without opening a grant.
func TestMintRefusalsAreTellable(t *testing.T) {
	cases := []struct {
		name      string
		req       func(f *fixture) broker.MintRequest
		wantCode  string
		wantScope bool
		wantAudit []string
	}{
		{"scope on a backend without scopes", func(f *fixture) broker.MintRequest {
			return broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r", Scope: map[string]any{"scopes": []any{"read"}}}
		}, broker.EINVALID, true, nil},
		{"ttl under a second", func(f *fixture) broker.MintRequest {
			return broker.MintRequest{Attestation: f.attest(t, "a"), Role: "r", TTL: time.Millisecond}
		}, broker.EINVALID, false, nil},
		{"immediate mint of a role that needs approval", func(f *fixture) broker.MintRequest {
			return broker.MintRequest{Attestation: f.attest(t, "a"), Role: "approved", Immediate: true}
		}, broker.EFORBIDDEN, false, []string{"mint/deny"}},
		{"immediate mint with a bad attestation", func(f *fixture) broker.MintRequest {
			return broker.MintRequest{Attestation: "not.a.jwt", Role: "approved", Immediate: true}
		}, broker.EUNAUTHORIZED, false, []string{"mint/deny"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) { r.Name, r.Backend, r.Approval.Required = "approved", "ext", 1 }))
			})
			res, err := f.b.Mint(context.Background(), c.req(f))
			if res != nil || broker.ErrorCode(err) != c.wantCode {
				t.Fatalf("Mint = %+v, %v; want %s", res, err, c.wantCode)
			}
			if errors.Is(err, broker.ErrScopeRefused) != c.wantScope {
				t.Errorf("errors.Is(%v, ErrScopeRefused) = %v, want %v", err, !c.wantScope, c.wantScope)
			}
			if got := f.counts(t); len(got) != 0 {
				t.Errorf("leases = %v, want none", got)
			}
			if got := f.auditKinds(t); !slices.Equal(got, c.wantAudit) {
				t.Errorf("audit = %v, want %v", got, c.wantAudit)
			}
		})
	}
}
