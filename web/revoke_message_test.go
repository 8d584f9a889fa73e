package web

import (
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases"
)

// TestRevokeMessageSaysWhatBecameOfTheCredential: the console's answer to
// a revocation never claims more than the lease says, and for a credential
// its backend cannot revoke it says until when it stays valid instead of
// promising retries.
func TestRevokeMessageSaysWhatBecameOfTheCredential(t *testing.T) {
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name      string
		lease     leases.Lease
		want, not string
	}{
		{name: "revoked", lease: leases.Lease{State: leases.StateRevoked}, want: "Revoked lease"},
		{name: "not confirmed yet", lease: leases.Lease{State: leases.StateRevoking, EndReason: leases.StateRevoked},
			want: "has not confirmed the revocation yet and valet keeps retrying"},
		{name: "cannot be revoked", lease: leases.Lease{State: leases.StateRevoking, EndReason: leases.StateExpired, Unrevocable: true, ExpiresAt: expires},
			want: "cannot revoke the credential: it stays valid until 2030-01-02 03:04:05 UTC", not: "retrying"},
		{name: "cannot be revoked, outliving its lease",
			lease: leases.Lease{State: leases.StateRevoking, Unrevocable: true, ExpiresAt: expires, CredentialExpires: expires.Add(time.Hour)},
			want:  "stays valid until 2030-01-02 04:04:05 UTC", not: "retrying"},
		{name: "expired first", lease: leases.Lease{State: leases.StateExpired}, want: "expired on its own"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.lease.ID, c.lease.AgentID, c.lease.Role = "L1", "test/a", "r"
			got := revokeMessage(&c.lease)
			if !strings.Contains(got, c.want) || c.not != "" && strings.Contains(got, c.not) {
				t.Errorf("revokeMessage = %q; want it to say %q and not %q", got, c.want, c.not)
			}
		})
	}
}
