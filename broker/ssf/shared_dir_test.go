package ssf_test

import (
	"sync"
	"testing"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker/ssf"
)

// TestReplicasStartingTogetherShareOneKey: replicas on one data_dir that
// start at once, with no transmitter key yet, all sign SETs with the one
// key the file ends up holding (the one receivers find in the JWKS).
func TestReplicasStartingTogetherShareOneKey(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	kids := make([]string, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			tx, err := ssf.Open(dir, kek.Ring{Current: kekA}, "https://valet.test", nil)
			if err != nil {
				t.Error(err)
				return
			}
			kids[i] = tx.KeyID()
		}()
	}
	start.Done()
	wg.Wait()
	later, err := ssf.Open(dir, kek.Ring{Current: kekA}, "https://valet.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, kid := range kids {
		if kid != later.KeyID() {
			t.Errorf("replica %d signs with key %s; the key file holds %s", i, kid, later.KeyID())
		}
	}
}
