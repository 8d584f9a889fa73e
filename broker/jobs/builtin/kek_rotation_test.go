package builtin_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/jwt"
	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/leases/clock"
)

// failingRewrapper is a backend whose sealed values cannot be re-wrapped.
type failingRewrapper struct{ backends.Backend }

func (failingRewrapper) RewrapKEK(context.Context) (kek.Report, error) {
	return kek.Report{}, errors.New("disk full")
}

// kekJob builds the kek-rotation job over dir with these backends and
// KEKs.
func kekJob(t *testing.T, dir string, bes map[string]backends.Backend, current, previous []byte) jobs.Job {
	t.Helper()
	resolved, err := builtin.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resolved {
		if r.Name == builtin.KEKRotation {
			entries, err := builtin.Build([]jobs.Resolved{r}, builtin.Deps{Backends: bes, DataDir: dir, KEK: current, PreviousKEK: previous})
			if err != nil {
				t.Fatal(err)
			}
			return entries[0].Job
		}
	}
	t.Fatal("kek-rotation is not a default job")
	return nil
}

// The kek-rotation job re-wraps the jwt backend's keys and the checkpoint
// key sealed under the previous KEK, names both KEKs by id, and finds
// nothing left on its next run; a backend that fails is named and the
// others are still re-wrapped; after the run the new KEK alone opens
// everything.
func TestKEKRotationJob(t *testing.T) {
	dir := t.TempDir()
	oldKEK, newKEK := testKEK, bytes.Repeat([]byte{9}, 32)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(now)
	openJWT := func(current, previous []byte) (backends.Backend, error) {
		return jwt.New("tokens", nil, backends.Deps{DataDir: dir, KEK: current, PreviousKEK: previous, PublicURL: "https://valet.test", Clock: clk})
	}
	be, err := openJWT(oldKEK, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.(backends.KeyRotator).RotateKey(now, now); err != nil {
		t.Fatal(err)
	}
	if _, err := builtin.LoadCheckpointKey(dir, kek.Ring{Current: oldKEK}, now); err != nil {
		t.Fatal(err)
	}

	be, err = openJWT(newKEK, oldKEK)
	if err != nil {
		t.Fatal(err)
	}
	bes := map[string]backends.Backend{"tokens": be, "broken": failingRewrapper{}}
	job := kekJob(t, dir, bes, newKEK, oldKEK)
	res, err := job.Run(context.Background(), now)
	if err == nil || !strings.Contains(err.Error(), "backend.broken: disk full") {
		t.Fatalf("run error %v, want the failing backend named", err)
	}
	want := map[string]string{
		"kek_id": kek.ID(newKEK), "previous_kek_id": kek.ID(oldKEK),
		"backend.tokens.rewrapped": "2", "audit_checkpoint_key.rewrapped": "1",
		"rewrapped": "3", "current": "0", "unreadable": "0",
	}
	if !equalMaps(res.Changes, want) {
		t.Fatalf("changes %v, want %v", res.Changes, want)
	}
	for k, v := range res.Changes {
		for _, key := range [][]byte{newKEK, oldKEK} {
			if strings.Contains(v, hex.EncodeToString(key)) || strings.Contains(v, string(key)) {
				t.Fatalf("change %s=%s shows a KEK", k, v)
			}
		}
	}

	delete(bes, "broken")
	res, err = kekJob(t, dir, bes, newKEK, oldKEK).Run(context.Background(), now)
	if err != nil || res.Changes["rewrapped"] != "0" || res.Changes["current"] != "3" || res.Changes["backend.tokens.current"] != "2" {
		t.Fatalf("second run: %v, %v; want nothing left to re-wrap", res.Changes, err)
	}

	// The previous KEK is no longer needed.
	if _, err := openJWT(newKEK, nil); err != nil {
		t.Fatalf("jwt backend under the new KEK alone: %v", err)
	}
	if _, err := builtin.LoadCheckpointKey(dir, kek.Ring{Current: newKEK}, now); err != nil {
		t.Fatalf("checkpoint key under the new KEK alone: %v", err)
	}
	res, err = kekJob(t, dir, bes, newKEK, nil).Run(context.Background(), now)
	if err != nil || res.Changes["previous_kek_id"] != "none" || res.Changes["current"] != "3" {
		t.Fatalf("run without a previous KEK: %v, %v", res.Changes, err)
	}
}

// The job refuses to build with the previous KEK equal to the current
// one (the operator swapped nothing) or of the wrong length.
func TestKEKRotationJobRefusesBadKEKs(t *testing.T) {
	resolved, _ := builtin.Resolve(nil)
	for _, c := range []struct {
		name     string
		previous []byte
		want     string
	}{
		{"previous is current", bytes.Clone(testKEK), "the previous key-encryption key is the current one"},
		{"short previous", []byte("short"), "the previous key-encryption key: the key-encryption key must be 32 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, r := range resolved {
				if r.Name != builtin.KEKRotation {
					continue
				}
				_, err := builtin.Build([]jobs.Resolved{r}, builtin.Deps{DataDir: t.TempDir(), KEK: testKEK, PreviousKEK: c.previous})
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Build: %v, want %q", err, c.want)
				}
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// The job re-wraps Deps.Sealed after the backends and the checkpoint key,
// naming each in its changes and counting it in the totals; one that
// fails is named in the error.
func TestKEKRotationJobSealedFiles(t *testing.T) {
	resolved, err := builtin.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	newKEK := bytes.Repeat([]byte{9}, 32)
	var seen []kek.Ring
	deps := builtin.Deps{DataDir: t.TempDir(), KEK: newKEK, PreviousKEK: testKEK, Sealed: []builtin.SealedFile{
		{Name: "ssf_transmitter_key", Rewrap: func(r kek.Ring) (kek.Report, error) {
			seen = append(seen, r)
			return kek.Report{Rewrapped: 1}, nil
		}},
		{Name: "other", Rewrap: func(kek.Ring) (kek.Report, error) { return kek.Report{}, errors.New("read-only") }},
	}}
	for _, r := range resolved {
		if r.Name != builtin.KEKRotation {
			continue
		}
		entries, err := builtin.Build([]jobs.Resolved{r}, deps)
		if err != nil {
			t.Fatal(err)
		}
		res, err := entries[0].Job.Run(context.Background(), time.Now())
		if err == nil || !strings.Contains(err.Error(), "other: read-only") {
			t.Fatalf("run error %v, want the failing one named", err)
		}
		if res.Changes["ssf_transmitter_key.rewrapped"] != "1" || res.Changes["rewrapped"] != "1" {
			t.Fatalf("changes %v", res.Changes)
		}
		if len(seen) != 1 || !bytes.Equal(seen[0].Current, newKEK) || !bytes.Equal(seen[0].Previous, testKEK) {
			t.Fatalf("rewrap called with %v", seen)
		}
		return
	}
	t.Fatal("kek-rotation is not a default job")
}
