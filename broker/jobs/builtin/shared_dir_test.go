package builtin_test

import (
	"crypto/ed25519"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker/jobs/builtin"
)

// TestReplicasCreatingTheCheckpointKeyTogetherShareIt: replicas on one
// data_dir that load the checkpoint key at once, with none yet (a leader
// and a deposed one overlapping), all sign with the key the file ends up
// holding, the one verifiers are given.
func TestReplicasCreatingTheCheckpointKeyTogetherShareIt(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	const n = 8
	pubs := make([]ed25519.PublicKey, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			k, err := builtin.LoadCheckpointKey(dir, kek.Ring{Current: testKEK}, now)
			if err != nil {
				t.Error(err)
				return
			}
			pubs[i] = k.Public().(ed25519.PublicKey)
		}()
	}
	start.Done()
	wg.Wait()
	want, err := builtin.ReadCheckpointPublicKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pubs {
		if !p.Equal(want) {
			t.Errorf("replica %d signs with a key the file does not hold", i)
		}
	}
}
