package jwt

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/leases/clock"
)

// TestReplicasStartingTogetherShareOneKey: replicas on one data_dir (a
// shared volume) that start at once, with no key yet, all sign with the
// one key that the file ends up holding: none keeps a key of its own
// that the others neither publish nor accept.
func TestReplicasStartingTogetherShareOneKey(t *testing.T) {
	dir := t.TempDir()
	deps := backends.Deps{DataDir: dir, KEK: testKEK, PublicURL: testIssuer, Clock: clock.NewFake(t0)}
	const n = 8
	kids := make([]string, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			be, err := New("tokens", nil, deps)
			if err != nil {
				t.Error(err)
				return
			}
			kids[i] = be.(*Backend).signingKey(t0).kid
		}()
	}
	start.Done()
	wg.Wait()
	later, err := New("tokens", nil, deps)
	if err != nil {
		t.Fatal(err)
	}
	want := later.(*Backend).signingKey(t0).kid
	for i, kid := range kids {
		if kid != want {
			t.Errorf("replica %d signs with key %s; the key file holds %s", i, kid, want)
		}
	}
}

// TestEmptyKeyFileGetsAKey: a key file with no keys in it is given the
// first key (not refused as "already there").
func TestEmptyKeyFileGetsAKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens", "keys.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"keys": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	deps := backends.Deps{DataDir: dir, KEK: testKEK, PublicURL: testIssuer, Clock: clock.NewFake(t0)}
	be, err := New("tokens", nil, deps)
	if err != nil {
		t.Fatal(err)
	}
	again, err := New("tokens", nil, deps)
	if err != nil {
		t.Fatal(err)
	}
	if k, k2 := be.(*Backend).signingKey(t0).kid, again.(*Backend).signingKey(t0).kid; k != k2 {
		t.Fatalf("the key written (%s) is not the key read back (%s)", k, k2)
	}
}

// TestReplicasFollowARotation: the leader's signing-key rotation writes
// the shared key file; every other replica on that data_dir publishes the
// new key, signs with it once it is active, and accepts the tokens it
// signs, within a second of the rotation.
func TestReplicasFollowARotation(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(t0)
	deps := backends.Deps{DataDir: dir, KEK: testKEK, PublicURL: testIssuer, Clock: clk}
	open := func() *Backend {
		be, err := New("tokens", nil, deps)
		if err != nil {
			t.Fatal(err)
		}
		return be.(*Backend)
	}
	leader, follower := open(), open()
	r, err := leader.RotateKey(clk.Now(), clk.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	var kids []string
	for _, k := range follower.PublicJWKs() {
		kids = append(kids, k["kid"].(string))
	}
	if !slices.Contains(kids, r.KeyID) {
		t.Fatalf("the follower publishes %v, not the new key %s", kids, r.KeyID)
	}
	clk.Advance(time.Minute)
	if kid := follower.signingKey(clk.Now()).kid; kid != r.KeyID {
		t.Fatalf("the follower signs with %s once the new key %s is active", kid, r.KeyID)
	}
	tok, kid, err := leader.sign(backends.MintRequest{AgentID: "a", CorrelationID: "l1", IssuedAt: clk.Now(), ExpiresAt: clk.Now().Add(time.Minute),
		Role: backends.RoleSpec{Name: "demo"}}, "", nil)
	if err != nil || kid != r.KeyID {
		t.Fatalf("the leader signs with %s (%v), want %s", kid, err, r.KeyID)
	}
	if _, err := follower.Introspect(tok); err != nil {
		t.Fatalf("the follower does not accept a token of the new key: %v", err)
	}
}
