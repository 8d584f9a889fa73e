package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/config"
)

// TestFixedLifetimeCredentialOutlivesItsLeaseOnlyUntilRevoked: a backend
// whose credentials live a fixed hour (a GitHub installation token) mints
// for a one-minute lease. The intent records the latest time such a
// credential can be valid before the backend is called; the credential is
// accepted up to that bound and refused (and revoked) past it; and when
// the lease expires it is revoked at the backend instead of being assumed
// dead.
func TestFixedLifetimeCredentialOutlivesItsLeaseOnlyUntilRevoked(t *testing.T) {
	const mintTimeout = 10 * time.Second
	cases := []struct {
		name     string
		lifetime time.Duration // of the credential, from when the backend issues it
		wantErr  string
	}{
		{name: "its fixed hour", lifetime: time.Hour},
		{name: "past the hour the backend declared", lifetime: time.Hour + mintTimeout + time.Second, wantErr: "after the latest expiry its fixed lifetime allows"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *fixtureConfig) {
				cfg.Limits.MintTimeout = config.Duration(mintTimeout)
				cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
					r.Name, r.Backend, r.TTL = "gh", "fixed", config.Duration(time.Minute)
				}))
			})
			start := f.clock.Now()
			var intent *leases.Lease
			f.be.mint = func(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
				intent, _ = f.store.Get(ctx, req.CorrelationID)
				return &backends.Credential{Handle: "h-" + req.CorrelationID, ExpiresAt: f.clock.Now().Add(c.lifetime), Data: map[string]any{"token": "x"}}, nil
			}
			res, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest(t, "a"), Role: "gh"})
			if want := start.Add(mintTimeout + time.Hour); intent == nil || intent.State != leases.StatePending || !intent.CredentialExpires.Equal(want) {
				t.Fatalf("the intent the backend saw: %+v; want pending with credential_expires_at %s", intent, want)
			}
			if c.wantErr != "" {
				if res != nil || broker.ErrorCode(err) != broker.EBADGATEWAY || !strings.Contains(broker.ErrorMessage(err), c.wantErr) {
					t.Fatalf("Mint = %v, %v; want 502 saying %q", res, err, c.wantErr)
				}
				if n := f.be.alive(); n != 0 {
					t.Fatalf("%d credentials alive after the refusal", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := res.Lease
			if !l.ExpiresAt.Equal(start.Add(time.Minute)) || !l.CredentialExpires.Equal(start.Add(time.Hour)) {
				t.Fatalf("lease expires %s, credential %s; want the minute and the credential's hour", l.ExpiresAt, l.CredentialExpires)
			}
			if v := f.store.ValidUntil(l); !v.Equal(start.Add(time.Hour)) {
				t.Fatalf("ValidUntil = %s, want the credential's own expiry", v)
			}
			// The lease expires: the credential still lives, so it is revoked.
			f.clock.Advance(time.Minute)
			ended, err := f.store.ExpireDue(context.Background(), f.clock.Now(), 10)
			if err != nil || len(ended) != 1 || ended[0].State != leases.StateRevoking || ended[0].EndReason != leases.StateExpired {
				t.Fatalf("ExpireDue = %+v, %v; want the lease revoking, to end expired", ended, err)
			}
			out, err := f.queue.RevokeNow(context.Background(), ended[0])
			if err != nil || out.State != leases.StateExpired {
				t.Fatalf("after revocation the lease is %+v, %v", out, err)
			}
			if n := f.be.alive(); n != 0 || len(f.be.revoked) != 1 || f.be.revoked[0].Handle != "h-"+l.ID {
				t.Fatalf("alive %d, revocations %+v; want the credential revoked by its handle", n, f.be.revoked)
			}
		})
	}
}
