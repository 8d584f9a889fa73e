package attest_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

const (
	transmitterIss = "https://idp.test"
	valetURL       = "https://valet.test"
)

// setEnv is a SETVerifier trusting one transmitter, "idp", whose keys a
// dev issuer holds.
type setEnv struct {
	clk *clock.Fake
	dev *attest.DevIssuer
	sv  *attest.SETVerifier
}

func newSETEnv(t *testing.T, edit func(*attest.TransmitterConfig)) *setEnv {
	t.Helper()
	clk := clock.NewFake(start)
	dev := newDev(t, transmitterIss, clk)
	tc := config.Defaulted(func(tc *attest.TransmitterConfig) {
		tc.Name, tc.Issuer, tc.JWKSFile, tc.Algorithms = "idp", transmitterIss, writeJWKS(t, dev), []string{"ES256"}
		if edit != nil {
			edit(tc)
		}
	})
	if err := attest.ValidateTransmitters([]attest.TransmitterConfig{tc}, nil); err != nil {
		t.Fatal(err)
	}
	sv, err := attest.NewSETVerifier(context.Background(), attest.SETOptions{Transmitters: []attest.TransmitterConfig{tc}, PublicURL: valetURL,
		MaxTokenBytes: broker.DefaultMaxAttestationBytes, Replay: newReplayCache(t, clk), Options: attest.Options{Clock: clk, Logger: discardLogger()}})
	if err != nil {
		t.Fatal(err)
	}
	return &setEnv{clk: clk, dev: dev, sv: sv}
}

const sessionRevoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"

// setClaims are the claims of a valid SET, with extra merged in (nil
// deletes).
func setClaims(jti string, extra map[string]any) map[string]any {
	c := map[string]any{
		"aud": valetURL, "jti": jti, "exp": nil,
		"sub_id": map[string]any{"format": "opaque", "id": "test/agent-1"},
		"events": map[string]any{sessionRevoked: map[string]any{"event_timestamp": start.Unix()}},
	}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func (e *setEnv) sign(t *testing.T, claims map[string]any, headers map[string]any) string {
	t.Helper()
	h := map[string]any{"typ": "secevent+jwt"}
	for k, v := range headers {
		h[k] = v
	}
	tok, err := e.dev.SignWithHeaders(claims, h)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerifySET(t *testing.T) {
	e := newSETEnv(t, nil)
	ev, err := e.sv.VerifySET(context.Background(), e.sign(t, setClaims("set-1", nil), nil))
	if err != nil {
		t.Fatal(err)
	}
	if ev.JTI != "set-1" || ev.Source.Source != (agents.Source{Kind: agents.SourceSET, Name: "idp"}) || ev.SubID["id"] != "test/agent-1" {
		t.Fatalf("verified SET: %+v", ev)
	}
	if _, ok := ev.Events[sessionRevoked]; !ok {
		t.Fatalf("events %v", ev.Events)
	}
}

// TestVerifySETRefusals: every rule refuses with its RFC 8935 code and a
// message that says which rule.
func TestVerifySETRefusals(t *testing.T) {
	other := newDev(t, transmitterIss, clock.NewFake(start)) // same iss, another key
	cases := []struct {
		name  string
		token func(e *setEnv) string
		code  broker.SETErrorCode
		msg   string
	}{
		{"a bad signature", func(e *setEnv) string {
			tok, _ := other.SignWithHeaders(setClaims("s", nil), map[string]any{"typ": "secevent+jwt", "kid": e.dev.KeyID()})
			return tok
		}, broker.SETInvalidKey, "signature does not verify"},
		{"a wrong audience", func(e *setEnv) string { return e.sign(t, setClaims("s", map[string]any{"aud": "https://other"}), nil) },
			broker.SETInvalidAudience, "audience"},
		{"alg none", func(e *setEnv) string {
			h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "secevent+jwt"})
			p, _ := json.Marshal(setClaims("s", map[string]any{"iss": transmitterIss, "iat": start.Unix()}))
			return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
		}, broker.SETInvalidRequest, "unsigned"},
		{"alg none with a signature", func(e *setEnv) string { return e.sign(t, setClaims("s", nil), map[string]any{"alg": "none"}) },
			broker.SETInvalidKey, "algorithm none is not allowed"},
		{"HMAC", func(e *setEnv) string { return e.sign(t, setClaims("s", nil), map[string]any{"alg": "HS256"}) },
			broker.SETInvalidKey, "HMAC is never accepted"},
		{"not a SET (typ JWT)", func(e *setEnv) string { return e.sign(t, setClaims("s", nil), map[string]any{"typ": "JWT"}) },
			broker.SETInvalidRequest, "not a Security Event Token"},
		{"no typ", func(e *setEnv) string {
			tok, _ := e.dev.SignWithHeaders(setClaims("s", nil), map[string]any{"typ": nil})
			return tok
		}, broker.SETInvalidRequest, "not a Security Event Token"},
		{"an unknown transmitter", func(e *setEnv) string { return e.sign(t, setClaims("s", map[string]any{"iss": "https://evil"}), nil) },
			broker.SETInvalidIssuer, "is not trusted"},
		{"no iat", func(e *setEnv) string { return e.sign(t, setClaims("s", map[string]any{"iat": nil}), nil) },
			broker.SETInvalidRequest, "no iat"},
		{"too old", func(e *setEnv) string {
			return e.sign(t, setClaims("s", map[string]any{"iat": start.Add(-2 * time.Hour).Unix()}), nil)
		}, broker.SETInvalidRequest, "too old"},
		{"expired", func(e *setEnv) string {
			return e.sign(t, setClaims("s", map[string]any{"exp": start.Add(-time.Minute).Unix()}), nil)
		}, broker.SETInvalidRequest, "expired"},
		{"no jti", func(e *setEnv) string { return e.sign(t, setClaims("", nil), nil) }, broker.SETInvalidRequest, "no jti"},
		{"no events", func(e *setEnv) string { return e.sign(t, setClaims("s", map[string]any{"events": nil}), nil) },
			broker.SETInvalidRequest, "events claim"},
		{"an event that is not an object", func(e *setEnv) string {
			return e.sign(t, setClaims("s", map[string]any{"events": map[string]any{sessionRevoked: "x"}}), nil)
		}, broker.SETInvalidRequest, "must be a JSON object"},
		{"a sub_id that is not an object", func(e *setEnv) string { return e.sign(t, setClaims("s", map[string]any{"sub_id": "x"}), nil) },
			broker.SETInvalidRequest, "sub_id"},
		{"the JSON serialization", func(e *setEnv) string { return `{"payload":"x"}` }, broker.SETInvalidRequest, "compact"},
		{"a key named by jku is never fetched", func(e *setEnv) string {
			tok, _ := other.SignWithHeaders(setClaims("s", nil), map[string]any{"typ": "secevent+jwt", "kid": e.dev.KeyID(),
				"jku": "https://evil/jwks.json"})
			return tok
		}, broker.SETInvalidKey, "signature does not verify"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSETEnv(t, nil)
			_, err := e.sv.VerifySET(context.Background(), c.token(e))
			var se *broker.SETError
			if broker.ErrorCode(err) != broker.EUNAUTHORIZED || !errors.As(err, &se) || se.Code != c.code ||
				!strings.Contains(broker.ErrorMessage(err), c.msg) {
				t.Fatalf("error %v, want %s containing %q", err, c.code, c.msg)
			}
			if strings.Contains(broker.ErrorMessage(err), "attestation") {
				t.Errorf("the message speaks of an attestation: %s", broker.ErrorMessage(err))
			}
		})
	}
}

// TestVerifySETReplay: a SET is accepted once.
func TestVerifySETReplay(t *testing.T) {
	e := newSETEnv(t, nil)
	tok := e.sign(t, setClaims("set-1", nil), nil)
	if _, err := e.sv.VerifySET(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	_, err := e.sv.VerifySET(context.Background(), tok)
	var se *broker.SETError
	if !errors.As(err, &se) || se.Code != broker.SETInvalidRequest || !strings.Contains(broker.ErrorMessage(err), "received already") {
		t.Fatalf("the same SET again: %v", err)
	}
	// A refused SET does not use up its jti.
	bad := e.sign(t, setClaims("set-2", map[string]any{"aud": "https://other"}), nil)
	if _, err := e.sv.VerifySET(context.Background(), bad); err == nil {
		t.Fatal("a wrong audience was accepted")
	}
	if _, err := e.sv.VerifySET(context.Background(), e.sign(t, setClaims("set-2", nil), nil)); err != nil {
		t.Fatalf("set-2 after a refused SET with its jti: %v", err)
	}
}

func TestValidateTransmitters(t *testing.T) {
	base := func(edit func(*attest.TransmitterConfig)) []attest.TransmitterConfig {
		return []attest.TransmitterConfig{config.Defaulted(func(tc *attest.TransmitterConfig) {
			tc.Name, tc.Issuer, tc.JWKSFile = "idp", transmitterIss, "/etc/valet/idp.json"
			if edit != nil {
				edit(tc)
			}
		})}
	}
	cases := []struct {
		name string
		ts   []attest.TransmitterConfig
		want string
	}{
		{"no issuer", base(func(tc *attest.TransmitterConfig) { tc.Issuer = "" }), "signals.transmitters[0].issuer must be set"},
		{"two key sources", base(func(tc *attest.TransmitterConfig) { tc.JWKSURL = "https://idp/jwks" }), "exactly one of jwks_file or jwks_url"},
		{"HMAC", base(func(tc *attest.TransmitterConfig) { tc.Algorithms = []string{"HS256"} }), `algorithms[0] "HS256" is not allowed`},
		{"max_age 0", base(func(tc *attest.TransmitterConfig) { tc.MaxAge = 0 }), "signals.transmitters[0].max_age must be between 1m"},
		{"an unknown email issuer", base(func(tc *attest.TransmitterConfig) { tc.EmailIssuer = "sso" }), `email_issuer "sso" is not one of issuers`},
		{"empty audiences", base(func(tc *attest.TransmitterConfig) { tc.Audiences = []string{} }), "audiences must not be empty"},
		{"no allowed actions", base(func(tc *attest.TransmitterConfig) { tc.AllowedActions = []agents.Action{} }), "allowed_actions must not be empty"},
		{"an action beyond the allowed", base(func(tc *attest.TransmitterConfig) {
			tc.AllowedActions = []agents.Action{agents.ActionAlert}
			tc.Actions.High = agents.ActionQuarantine
		}), `actions.high "quarantine" is not among allowed_actions`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := attest.ValidateTransmitters(c.ts, map[string]bool{"k8s": true})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}
