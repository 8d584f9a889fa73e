package jwt

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

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
