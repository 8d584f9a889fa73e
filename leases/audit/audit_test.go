package audit

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/chain.golden from the current encoding")

// goldenEntries cover what changes an encoding: optional fields empty and
// set, several details (sorted by key), characters encoding/json escapes
// (<, >, &, U+2028, control characters) and non-ASCII text.
func goldenEntries() []Entry {
	return []Entry{
		{Kind: KindServerStart, Actor: SystemActor},
		{
			Kind: KindMint, Actor: Actor{Type: ActorAgent, ID: "dev/agent-7"}, Decision: Allow,
			AgentID: "dev/agent-7", Role: "demo", LeaseID: "lse_01J9Z8Q4", PolicyVersion: "sha256:3f2a",
			PolicyIDs: []string{"demo-permit", "guard"}, RequestID: "req-1",
			Details: map[string]string{"ttl": "15m0s", "backend": "tokens", "lineage": "jti:dev#abc", "approvals": "0"},
		},
		{
			Kind: KindMint, Actor: Actor{Type: ActorAgent, ID: "dev/<script>&"}, Decision: Deny,
			Reason:       "policy denied: \"quoted\" <b>bold</b> & more\u2028next\tTab\x01 – café ✓",
			PolicyErrors: []string{"forbid-risk"}, Details: map[string]string{"z": "last", "a": "first", "é": "accent"},
		},
		{Kind: KindRevoke, Actor: Actor{Type: ActorOperator, ID: "alice"}, LeaseID: "lse_01J9Z8Q4", Details: map[string]string{}},
	}
}

// goldenTime has a fraction of a second, which the encoding keeps.
var goldenTime = time.Date(2026, 3, 2, 10, 4, 5, 123456789, time.FixedZone("CET", 3600))

const goldenFile = "testdata/chain.golden"

// Records written by earlier versions of valet must keep verifying, and
// new ones must be encoded the same way: the stored bytes and hashes of a
// chain are fixed in testdata/chain.golden.
func TestChainMatchesGolden(t *testing.T) {
	_, stored, head, err := Chain(Head{}, goldenTime, goldenEntries()...)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll(filepath.Dir(goldenFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenFile, append(bytes.Join(stored, []byte("\n")), '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden := readGolden(t)
	if len(stored) != len(golden) {
		t.Fatalf("Chain stored %d records, golden file has %d", len(stored), len(golden))
	}
	for i := range golden {
		if !bytes.Equal(stored[i], golden[i]) {
			t.Errorf("record %d:\n got %s\nwant %s", i+1, stored[i], golden[i])
		}
	}

	// The golden records verify as a stored log, and end at Chain's head.
	i := 0
	res := VerifyChain(head.Bytes(), func() ([]byte, []byte, bool) {
		if i == len(golden) {
			return nil, nil, false
		}
		i++
		return SeqKey(uint64(i)), golden[i-1], true
	})
	if !res.OK || res.Records != uint64(len(golden)) || res.HeadHash != hex.EncodeToString(head.Hash[:]) {
		t.Errorf("VerifyChain(golden) = %+v, want OK over %d records ending at %x", res, len(golden), head.Hash)
	}
}

func readGolden(t *testing.T) [][]byte {
	t.Helper()
	f, err := os.Open(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, bytes.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// BenchmarkChain appends one mint record, as a mint does.
func BenchmarkChain(b *testing.B) {
	e := goldenEntries()[1]
	head := Head{Seq: 41, Hash: [32]byte{1, 2, 3}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := Chain(head, goldenTime, e); err != nil {
			b.Fatal(err)
		}
	}
}
