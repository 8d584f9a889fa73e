// Package ssf is valet as an OpenID Shared Signals transmitter: when valet
// revokes an agent's leases or quarantines it, resource servers that
// verify valet's tokens locally (and may cache sessions built on them)
// hear of it at once as a CAEP session-revoked event in a Security Event
// Token (RFC 8417), pushed to them (RFC 8935) by broker/notify's
// receivers of format "set".
//
// A SET names the agent as valet's tokens do: sub_id is an iss_sub
// subject identifier (RFC 9493) whose iss is valet's public URL and whose
// sub is the agent id. It is signed ES256 with the transmitter's own key
// (kid in its header, typ secevent+jwt), which is published in valet's
// JWKS beside the jwt backends' keys, so a receiver that verifies valet's
// tokens verifies its SETs with the same keys document. The private key
// lives in memory; on disk it is sealed under the key-encryption key
// (backends/kek) in data_dir/ssf/transmitter-key.json.
package ssf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// SessionRevoked is the CAEP event type valet transmits.
const SessionRevoked = broker.EventTypeSessionRevoked

// KeyFile is where the transmitter's sealed key is kept, under data_dir.
const KeyFile = "ssf/transmitter-key.json"

// Transmitter signs valet's SETs.
type Transmitter struct {
	issuer string
	key    *ecdsa.PrivateKey
	kid    string
	pub    map[string]any
	clock  clock.Clock
}

type keyFile struct {
	KID       string    `json:"kid"`
	CreatedAt time.Time `json:"created_at"`
	// Sealed is the PKCS#8 DER of the private key, sealed under the KEK.
	kek.Sealed
}

func aad(kid string) []byte { return []byte("valet/ssf-key/" + kid) }

// Open loads the transmitter's key from dataDir (creating one the first
// time, sealed under ring.Current), opening it under either KEK of ring
// (while valet switches KEKs the kek-rotation job seals it again under
// the current one: RewrapKey). issuer is valet's public URL, the iss of
// its SETs. It fails when the file cannot be read or opened with either
// KEK, or a KEK is not one.
func Open(dataDir string, ring kek.Ring, issuer string, clk clock.Clock) (*Transmitter, error) {
	if err := ring.Check(); err != nil {
		return nil, fmt.Errorf("ssf transmitter: %w", err)
	}
	if clk == nil {
		clk = clock.Real{}
	}
	path := filepath.Join(dataDir, KeyFile)
	t := &Transmitter{issuer: issuer, clock: clk}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		if err := t.use(priv); err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		sealed, err := ring.Seal(aad(t.kid), der)
		if err != nil {
			return nil, err
		}
		// Created only if still absent: another replica on the same
		// data_dir may have created it meanwhile, and its key is the one.
		err = kek.CreateFile(path, keyFile{KID: t.kid, CreatedAt: clk.Now().UTC(), Sealed: sealed})
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("ssf transmitter: save its key: %w", err)
		}
		t = &Transmitter{issuer: issuer, clock: clk}
		if b, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("ssf transmitter: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("ssf transmitter: %w", err)
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("ssf transmitter: %s: %w", path, err)
	}
	der, _, err := ring.Open(aad(f.KID), f.Sealed)
	if errors.Is(err, kek.ErrOpen) && ring.Previous == nil {
		return nil, fmt.Errorf("ssf transmitter: %s: its key cannot be unsealed: %w (while switching to a new key-encryption key, set the old one as VALET_KEK_PREVIOUS or kek_previous_file)", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ssf transmitter: %s: its key cannot be unsealed: %w", path, err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("ssf transmitter: %s: %w", path, err)
	}
	ec, ok := priv.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ssf transmitter: %s does not hold a P-256 key", path)
	}
	if err := t.use(ec); err != nil {
		return nil, err
	}
	if t.kid != f.KID {
		return nil, fmt.Errorf("ssf transmitter: %s: kid does not match the key", path)
	}
	return t, nil
}

// RewrapKey seals the transmitter's key in dataDir under ring.Current if
// only ring.Previous opens it (one atomic write of the key file); a data
// directory without the key has nothing to re-wrap. The kek-rotation job
// calls it, whether or not a set receiver is configured now.
func RewrapKey(dataDir string, ring kek.Ring) (kek.Report, error) {
	return kek.RewrapFile(filepath.Join(dataDir, KeyFile), ring, func(f *keyFile) []kek.Value {
		return []kek.Value{{AAD: aad(f.KID), Sealed: &f.Sealed}}
	})
}

// use makes priv the signing key: its kid is derived from the public key.
func (t *Transmitter) use(priv *ecdsa.PrivateKey) error {
	spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(spki)
	t.key, t.kid = priv, "ssf-"+base64.RawURLEncoding.EncodeToString(sum[:12])
	pk, err := jwk.FromRaw(&priv.PublicKey)
	if err != nil {
		return err
	}
	b, err := json.Marshal(pk)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &t.pub); err != nil {
		return err
	}
	t.pub["kid"], t.pub["alg"], t.pub["use"] = t.kid, "ES256", "sig"
	return nil
}

// KeyID is the kid of the transmitter's key.
func (t *Transmitter) KeyID() string { return t.kid }

// PublicJWKs returns the transmitter's public key as a JWK
// (backends.KeyPublisher).
func (t *Transmitter) PublicJWKs() []map[string]any {
	cp := make(map[string]any, len(t.pub))
	for k, v := range t.pub {
		cp[k] = v
	}
	return []map[string]any{cp}
}

// Sign returns the SET that tells audience about e, or ok false when e is
// not an event valet transmits: a mass revocation of an agent's leases
// (broker.EventLeasesRevoked) becomes a CAEP session-revoked event about
// the agent, whose event_timestamp is the event's time,
// initiating_entity "admin" for an operator and "policy" otherwise, and
// reason_admin the event's reason. Each SET has a fresh jti; the signal
// behind the event, if any, is its txn.
func (t *Transmitter) Sign(e broker.Event, audience string) (set []byte, ok bool, err error) {
	if e.Type != broker.EventLeasesRevoked || e.Agent == nil {
		return nil, false, nil
	}
	initiator := "policy"
	if e.Agent.By.Type == audit.ActorOperator {
		initiator = "admin"
	}
	payload := map[string]any{"event_timestamp": e.Time.Unix(), "initiating_entity": initiator}
	if e.Agent.Reason != "" {
		payload["reason_admin"] = map[string]string{"en": e.Agent.Reason}
	}
	claims := map[string]any{
		"iss": t.issuer, "aud": audience, "iat": t.clock.Now().Unix(), "jti": rand.Text(),
		"sub_id": map[string]string{"format": "iss_sub", "iss": t.issuer, "sub": e.Agent.ID},
		"events": map[string]any{SessionRevoked: payload},
	}
	if e.Agent.SignalID != "" {
		claims["txn"] = e.Agent.SignalID
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return nil, true, err
	}
	hdr := jws.NewHeaders()
	for k, v := range map[string]any{jws.KeyIDKey: t.kid, jws.TypeKey: "secevent+jwt"} {
		if err := hdr.Set(k, v); err != nil {
			return nil, true, err
		}
	}
	out, err := jws.Sign(body, jws.WithKey(jwa.ES256, t.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, true, fmt.Errorf("sign a SET: %w", err)
	}
	return out, true, nil
}
