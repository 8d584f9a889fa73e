package bolt

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/leases/audit"
)

// appendRecords appends n records, one a second from start.
func appendRecords(t *testing.T, s *Store, start time.Time, n int) {
	t.Helper()
	for i := range n {
		if err := s.Audit(context.Background(), start.Add(time.Duration(i)*time.Second), auditEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func checkpointAt(t *testing.T, s *Store, key ed25519.PrivateKey, now time.Time) audit.Checkpoint {
	t.Helper()
	h, err := s.AuditHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return audit.SignCheckpoint(key, "https://valet.example.com", h, now)
}

func cut(keep int) func(stored [][]byte) [][]byte {
	return func(stored [][]byte) [][]byte { return stored[:keep] }
}

// Checkpoints kept outside the log detect what the chain alone cannot: a
// tail cut with the head moved back, and records changed with every later
// hash recomputed. Checkpoints are trusted only under the right key.
func TestAuditCheckpoints(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		tamper    func([][]byte) [][]byte
		wantOK    bool
		firstBad  uint64
		problem   string
		chainOnly bool // what VerifyAudit without checkpoints says
	}{
		{"untouched", nil, true, 0, "", true},
		{"tail cut and head moved back", cut(7), false, 8, "the log ends at record 7 but the checkpoint signed at 2030-01-01T01:00:00Z vouches for record 10", true},
		{"changed and re-chained after the first checkpoint", Rechain(7), false, 6,
			"record 10 does not match the checkpoint signed at 2030-01-01T01:00:00Z", true},
		{"changed and re-chained before the first checkpoint", Rechain(2), false, 1,
			"record 5 does not match the checkpoint signed at 2030-01-01T00:30:00Z", true},
		{"changed without re-chaining", func(st [][]byte) [][]byte {
			st[8] = []byte(strings.Replace(string(st[8]), `"reason":"`, `"reason":"x`, 1))
			return st
		}, false, 9, "record 9: hash does not match its contents", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := MustOpenStore(t)
			appendRecords(t, s, start, 5)
			cp1 := checkpointAt(t, s, key, start.Add(30*time.Minute))
			appendRecords(t, s, start.Add(time.Minute), 5)
			cp2 := checkpointAt(t, s, key, start.Add(time.Hour))
			if cp1.Seq != 5 || cp2.Seq != 10 {
				t.Fatalf("checkpoints at %d and %d", cp1.Seq, cp2.Seq)
			}
			for _, cp := range []audit.Checkpoint{cp1, cp2} {
				if err := cp.Verify(pub); err != nil {
					t.Fatal(err)
				}
			}
			if tc.tamper != nil {
				if err := s.RewriteAudit(tc.tamper); err != nil {
					t.Fatal(err)
				}
			}
			plain, err := s.VerifyAudit(context.Background())
			if err != nil || plain.OK != tc.chainOnly {
				t.Fatalf("VerifyAudit without checkpoints: %+v, %v; want ok %v", plain, err, tc.chainOnly)
			}
			res, err := s.VerifyAuditCheckpoints(context.Background(), []audit.Checkpoint{cp2, cp1})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != tc.wantOK || res.FirstBad != tc.firstBad || !strings.Contains(res.Problem, tc.problem) {
				t.Fatalf("VerifyAuditCheckpoints = %+v; want ok %v, first bad %d, problem containing %q", res, tc.wantOK, tc.firstBad, tc.problem)
			}
			if tc.wantOK && (res.Checkpoints != 2 || res.LastCheckpoint != 10) {
				t.Errorf("matched %d checkpoints up to %d, want 2 up to 10", res.Checkpoints, res.LastCheckpoint)
			}
		})
	}
}

func TestCheckpointSignature(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	h := audit.Head{Seq: 42}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	good := audit.SignCheckpoint(key, "https://valet.example.com", h, now)
	moved := good
	moved.Seq = 41 // a checkpoint edited to vouch for less
	foreign := audit.SignCheckpoint(other, "https://valet.example.com", h, now)
	forgedKeyID := foreign
	forgedKeyID.KeyID = good.KeyID // claims the trusted key, signed by another
	cases := []struct {
		name string
		cp   audit.Checkpoint
		want error
	}{
		{"genuine", good, nil},
		{"edited after signing", moved, audit.ErrCheckpointForged},
		{"another valet's", foreign, audit.ErrCheckpointForeign},
		{"another key claiming ours", forgedKeyID, audit.ErrCheckpointForged},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cp.Verify(pub)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	// The witness file format reads back.
	var lines []string
	for _, cp := range []audit.Checkpoint{good, foreign} {
		b, _ := json.Marshal(cp)
		lines = append(lines, string(b))
	}
	got, err := audit.ReadCheckpoints(strings.NewReader(strings.Join(lines, "\n") + "\n\n"))
	if err != nil || len(got) != 2 || got[0] != good {
		t.Fatalf("ReadCheckpoints = %+v, %v", got, err)
	}
	if _, err := audit.ReadCheckpoints(strings.NewReader(fmt.Sprintf("%s\nnot json\n", lines[0]))); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("a bad line: %v", err)
	}
}
