package broker_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

const idpIss = "https://idp.test"

// ssfFixture is a fixture whose broker trusts the SSF transmitter "idp"
// (signing with tx) and, when edit says so, others.
func ssfFixture(t *testing.T, edit func(*attest.TransmitterConfig)) (*fixture, *attest.DevIssuer) {
	t.Helper()
	tx, err := attest.NewDevIssuer(idpIss)
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "idp.json")
	if err := tx.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *fixtureConfig) {
		c.PublicURL = "https://valet.test"
		c.Transmitters = []attest.TransmitterConfig{config.Defaulted(func(tc *attest.TransmitterConfig) {
			tc.Name, tc.Issuer, tc.JWKSFile, tc.Algorithms, tc.EmailIssuer = "idp", idpIss, jwks, []string{"ES256"}, ""
			if edit != nil {
				edit(tc)
			}
		})}
	})
	tx.SetClock(f.clock)
	return f, tx
}

func signSET(t *testing.T, tx *attest.DevIssuer, jti string, subID map[string]any, events map[string]any) string {
	t.Helper()
	c := map[string]any{"aud": "https://valet.test", "jti": jti, "exp": nil, "events": events}
	if subID != nil {
		c["sub_id"] = subID
	}
	tok, err := tx.SignWithHeaders(c, map[string]any{"typ": "secevent+jwt"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func event(typ string) map[string]any {
	return map[string]any{typ: map[string]any{"reason_admin": map[string]any{"en": "session ended\nat the IdP"}}}
}

// TestReceiveSET: each event valet acts on becomes a signal of the
// transmitter, about the subject its identifier names; other events and
// subjects are recorded and ignored, and an unknown subject is refused
// without failing the SET.
func TestReceiveSET(t *testing.T) {
	f, tx := ssfFixture(t, nil)
	ctx := context.Background()
	tok, err := f.issuer.Sign(map[string]any{"sub": "agent-1", "aud": "valet", "jti": "att-1"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Lease
	f.mint(t, "agent-2", "r", 0)
	cases := []struct {
		name    string
		subID   map[string]any
		events  map[string]any
		outcome string
		action  agents.Action
		subject agents.Subject
	}{
		{"session-revoked for an attestation issuer's iss_sub", map[string]any{"format": "iss_sub", "iss": "https://issuer.test", "sub": "agent-1"},
			event(broker.EventTypeSessionRevoked), "accepted", agents.ActionRevoke, agentSubject("test/agent-1")},
		{"valet's own iss_sub names the agent id", map[string]any{"format": "iss_sub", "iss": "https://valet.test", "sub": "test/agent-2"},
			event(broker.EventTypeTokenClaimsChange), "accepted", agents.ActionRevoke, agentSubject("test/agent-2")},
		{"jwt_id names a lineage", map[string]any{"format": "jwt_id", "iss": "https://issuer.test", "jti": "att-1"},
			event(broker.EventTypeCredentialChange), "accepted", agents.ActionRevoke, agents.Subject{Kind: agents.SubjectLineage, ID: "jti:https://issuer.test#att-1"}},
		{"an opaque lease id", map[string]any{"format": "opaque", "id": l.ID},
			event(broker.EventTypeSessionRevoked), "accepted", agents.ActionRevoke, agents.Subject{Kind: agents.SubjectLease, ID: l.ID}},
		{"aliases: the first that maps", map[string]any{"format": "aliases", "identifiers": []any{
			map[string]any{"format": "phone_number", "phone_number": "+1"}, map[string]any{"format": "opaque", "id": "test/agent-1"}}},
			event(broker.EventTypeAccountDisabled), "accepted", agents.ActionQuarantine, agentSubject("test/agent-1")},
		{"an unknown event type", map[string]any{"format": "opaque", "id": "test/agent-1"},
			event("https://example.com/event/made-up"), "ignored", "", agents.Subject{}},
		{"an email without email_issuer", map[string]any{"format": "email", "email": "a@example.com"},
			event(broker.EventTypeSessionRevoked), "ignored", "", agents.Subject{}},
		{"an unknown agent", map[string]any{"format": "opaque", "id": "test/nobody"},
			event(broker.EventTypeSessionRevoked), "refused", "", agents.Subject{}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mark := f.auditMark(t)
			out, err := f.b.ReceiveSET(ctx, signSET(t, tx, "set-"+string(rune('a'+i)), c.subID, c.events), "192.0.2.1", "req-1")
			if err != nil {
				t.Fatalf("ReceiveSET: %v", err)
			}
			if len(out) != 1 || out[0].Outcome != c.outcome {
				t.Fatalf("outcomes %+v, want one %s", out, c.outcome)
			}
			recs := f.written(t, mark)
			if c.outcome != "accepted" {
				if got := kinds(recs); len(got) != 1 || !slices.Contains([]string{"signal/", "signal/deny"}, got[0]) {
					t.Fatalf("records %v, want one signal record", got)
				}
				return
			}
			sig, err := f.b.GetSignal(ctx, out[0].SignalID)
			if err != nil {
				t.Fatal(err)
			}
			if sig.Action != c.action || sig.Subject != c.subject || sig.Source.String() != "ssf:idp" || sig.Event == nil || sig.Event.JTI == "" {
				t.Fatalf("signal %+v, want action %s about %s", sig, c.action, c.subject)
			}
			if sig.Reason != "CAEP session-revoked from transmitter idp: session ended at the IdP" && sig.Event.EventType == broker.EventTypeSessionRevoked {
				t.Errorf("reason %q", sig.Reason)
			}
		})
	}
	if got := f.lease(t, l.ID); got.State != leases.StateRevoking {
		t.Errorf("the lease of the revoked session is %s", got.State)
	}
}

// TestReceiveSETCapsActions: a transmitter allowed only to alert raises
// alerts, whatever its events would do.
func TestReceiveSETCapsActions(t *testing.T) {
	f, tx := ssfFixture(t, func(tc *attest.TransmitterConfig) { tc.AllowedActions = []agents.Action{agents.ActionAlert} })
	l := f.mint(t, "agent-1", "r", 0)
	out, err := f.b.ReceiveSET(context.Background(), signSET(t, tx, "s1", map[string]any{"format": "opaque", "id": "test/agent-1"},
		event(broker.EventTypeCredentialCompromise)), "", "")
	if err != nil || len(out) != 1 || out[0].Outcome != "accepted" {
		t.Fatalf("%+v, %v", out, err)
	}
	sig, _ := f.b.GetSignal(context.Background(), out[0].SignalID)
	if sig.Action != agents.ActionAlert || sig.Requested != agents.ActionQuarantine {
		t.Fatalf("action %s (asked %s), want alert", sig.Action, sig.Requested)
	}
	if got := f.lease(t, l.ID); got.State != leases.StateActive {
		t.Fatalf("lease %s", got.State)
	}
}

// TestReceiveSETRefusals: a SET that does not verify changes nothing and
// is refused through the failure budget of its address; with no
// transmitter configured, every SET is refused.
func TestReceiveSETRefusals(t *testing.T) {
	f, tx := ssfFixture(t, nil)
	mark := f.auditMark(t)
	_, err := f.b.ReceiveSET(context.Background(), "not.a.set", "192.0.2.1", "req-1")
	var se *broker.SETError
	if broker.ErrorCode(err) != broker.EUNAUTHORIZED || !errors.As(err, &se) {
		t.Fatalf("garbage: %v", err)
	}
	recs := f.written(t, mark)
	if got := kinds(recs); !slices.Equal(got, []string{"signal/deny"}) || recs[0].Actor.Type != audit.ActorAnonymous || recs[0].Details["credential"] != "set" {
		t.Fatalf("records %v %+v, want one refused credential", got, recs)
	}

	plain := newFixture(t, nil)
	_, err = plain.b.ReceiveSET(context.Background(), signSET(t, tx, "s1", nil, event(broker.EventTypeSessionRevoked)), "", "")
	if !errors.As(err, &se) || se.Code != broker.SETInvalidIssuer {
		t.Fatalf("a server without transmitters: %v", err)
	}
}
