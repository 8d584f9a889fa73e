package jwt

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/kek"
)

// TestOneDamagedKeyIsSkippedAndKept: one entry of the key file that cannot
// be unsealed does not stop the backend. It is not published nor used
// (tokens it signed no longer introspect: fail closed), it is reported
// once, and a rotation writes it back untouched, so nothing is destroyed.
func TestOneDamagedKeyIsSkippedAndKept(t *testing.T) {
	f := newFixture(t, map[string]any{"key_retention": "24h"})
	role := f.role(t, backends.RoleSpec{Name: "demo"})
	oldTok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
	f.clock.Advance(time.Hour)
	if err := f.b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	newTok, _ := mint(t, f.b, f.mintReq(role, time.Minute))
	ks := kids(f.b.PublicJWKs())
	newest, older := ks[0], ks[1]

	// Damage the newest key's ciphertext.
	raw, err := os.ReadFile(f.keyPath())
	if err != nil {
		t.Fatal(err)
	}
	var kf keyFile
	if err := json.Unmarshal(raw, &kf); err != nil {
		t.Fatal(err)
	}
	kf.Keys[0].Ciphertext[3] ^= 1
	damaged := kf.Keys[0]
	raw, _ = json.Marshal(kf)
	if err := os.WriteFile(f.keyPath(), raw, 0o600); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	be, err := New(f.name, f.opts, backends.Deps{DataDir: f.dir, KEK: testKEK, PublicURL: testIssuer, Clock: f.clock,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("New with one damaged key: %v; want the other keys used", err)
	}
	b := be.(*Backend)
	if got := kids(b.PublicJWKs()); !slices.Equal(got, []string{older}) {
		t.Errorf("published kids %v, want only the readable %s", got, older)
	}
	if err := b.CheckRole(role); err != nil {
		t.Fatal(err)
	}
	tok, _ := mint(t, b, f.mintReq(role, time.Minute))
	if h := header(t, tok); h["kid"] != older {
		t.Errorf("signs with kid %v, want the readable %s", h["kid"], older)
	}
	if _, err := b.Introspect(oldTok); err != nil {
		t.Errorf("a token of the readable key: %v", err)
	}
	if _, err := b.Introspect(newTok); err == nil {
		t.Error("a token of the damaged key still introspects")
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), newest) {
		t.Errorf("log %q; want one error naming kid %s", logs.String(), newest)
	}

	f.clock.Advance(time.Hour)
	if err := b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(f.keyPath())
	kf = keyFile{}
	if err := json.Unmarshal(raw, &kf); err != nil {
		t.Fatal(err)
	}
	if len(kf.Keys) != 3 || kf.Keys[1].KID != older || kf.Keys[2].KID != newest || !bytes.Equal(kf.Keys[2].Ciphertext, damaged.Ciphertext) {
		t.Errorf("key file after rotation has %d keys (%v); want the new one, %s, and the damaged %s untouched", len(kf.Keys), kf.Keys, older, newest)
	}
}

// TestKEKSwitch: during a switch of KEK the backend starts with the keys
// the previous KEK sealed, signs and verifies with them, and RewrapKEK
// seals them under the new KEK (a rotation meanwhile seals under the new
// one); afterwards the new KEK alone opens every key, and the old one
// none.
func TestKEKSwitch(t *testing.T) {
	f := newFixture(t, map[string]any{"key_retention": "24h"})
	role := f.role(t, backends.RoleSpec{Name: "demo"})
	oldTok, _ := mint(t, f.b, f.mintReq(role, time.Hour))
	f.clock.Advance(time.Hour)
	if err := f.b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	before := kids(f.b.PublicJWKs())
	newKEK := bytes.Repeat([]byte{0x43}, 32)

	open := func(kek, previous []byte) (*Backend, error) {
		be, err := New(f.name, f.opts, backends.Deps{DataDir: f.dir, KEK: kek, PreviousKEK: previous, PublicURL: testIssuer, Clock: f.clock})
		if err != nil {
			return nil, err
		}
		b := be.(*Backend)
		return b, b.CheckRole(role)
	}
	if _, err := open(newKEK, nil); err == nil || !strings.Contains(err.Error(), "VALET_KEK_PREVIOUS") {
		t.Fatalf("new KEK alone before the re-wrap: %v, want a refusal that names VALET_KEK_PREVIOUS", err)
	}
	b, err := open(newKEK, testKEK)
	if err != nil {
		t.Fatalf("new KEK with the previous one: %v", err)
	}
	if got := kids(b.PublicJWKs()); !slices.Equal(got, before) {
		t.Fatalf("keys during the switch %v, want %v", got, before)
	}
	if _, err := b.Introspect(oldTok); err != nil {
		t.Fatalf("a token signed before the switch: %v", err)
	}
	rep, err := b.RewrapKEK(context.Background())
	if err != nil || rep != (kek.Report{Rewrapped: 2}) {
		t.Fatalf("RewrapKEK: %+v, %v; want both keys re-wrapped", rep, err)
	}
	f.clock.Advance(time.Hour)
	if err := b.Rotate(f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if rep, err := b.RewrapKEK(context.Background()); err != nil || rep != (kek.Report{Current: 3}) {
		t.Fatalf("second RewrapKEK: %+v, %v; want three keys already under the new KEK", rep, err)
	}

	after, err := open(newKEK, nil)
	if err != nil {
		t.Fatalf("new KEK alone after the re-wrap: %v", err)
	}
	if got := kids(after.PublicJWKs()); len(got) != 3 || !slices.Equal(got[1:], before) {
		t.Fatalf("keys after the switch %v, want the new key and %v", got, before)
	}
	if _, err := after.Introspect(oldTok); err != nil {
		t.Fatalf("a token signed before the switch, after it: %v", err)
	}
	if _, err := open(testKEK, nil); err == nil {
		t.Fatal("the old KEK still opens the key file")
	}
}
