package bolt

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
)

// archiveStore is a store whose archive segments hold at most 2,500
// records (so a few thousand records make several, each with several
// offsets), holding n records one second apart from a0.
func archiveStore(t *testing.T, n int) *Store {
	t.Helper()
	s := MustOpenStore(t)
	s.segmentRecords = 2500
	const perTx = 1000
	for i := 0; i < n; i += perTx {
		var es []audit.Entry
		for j := i; j < min(n, i+perTx); j++ {
			es = append(es, auditEntry(j))
		}
		err := s.update(context.Background(), func(tx *bbolt.Tx) error {
			for k, e := range es {
				if _, err := appendAudit(tx, a0.Add(time.Duration(i+k)*time.Second), nil, e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// listAll lists the whole log forwards, page by page.
func listAll(t *testing.T, s *Store, f audit.Filter) []audit.Record {
	t.Helper()
	var out []audit.Record
	for {
		recs, err := s.ListAudit(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, recs...)
		if len(recs) < f.Limit {
			return out
		}
		f.AfterSeq = recs[len(recs)-1].Seq
	}
}

// listAllNewest lists the whole log backwards, page by page.
func listAllNewest(t *testing.T, s *Store, f audit.Filter) []audit.Record {
	t.Helper()
	f.Newest = true
	var out []audit.Record
	for {
		recs, err := s.ListAudit(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, recs...)
		if len(recs) < f.Limit {
			return out
		}
		f.BeforeSeq = recs[len(recs)-1].Seq
	}
}

func hotSeqs(t *testing.T, s *Store) (first, last uint64, n int) {
	t.Helper()
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAuditRecords).Cursor()
		if k, _ := c.First(); k != nil {
			first = binary.BigEndian.Uint64(k)
		}
		if k, _ := c.Last(); k != nil {
			last = binary.BigEndian.Uint64(k)
		}
		n = tx.Bucket(bucketAuditRecords).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return first, last, n
}

// Archiving moves the records before the cutoff out of the database into
// segments, and every reader still sees one log: listings forwards and
// backwards, with filters and pages, give what they gave before, and the
// chain verifies with the same head, also against checkpoints signed
// before the records moved.
func TestArchiveAudit(t *testing.T) {
	const n = 6000
	s := archiveStore(t, n)
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	cps := []audit.Checkpoint{checkpointAt(t, s, key, a0.Add(time.Hour))}
	filters := []audit.Filter{{Limit: 1000}, {Limit: 7}, {Limit: 333, Kind: audit.KindRenew}, {Limit: 1000, AgentID: "agent-1"}, {Limit: 50, LeaseID: "lease-3"}}
	var forward, backward [][]audit.Record
	for _, f := range filters {
		forward = append(forward, listAll(t, s, f))
		backward = append(backward, listAllNewest(t, s, f))
	}
	before, err := s.VerifyAudit(ctx)
	if err != nil || !before.OK {
		t.Fatalf("VerifyAudit before archiving = %+v, %v", before, err)
	}

	// Records 1..5200 are older than the cutoff.
	res, err := s.ArchiveAudit(ctx, a0.Add(5200*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if want := (audit.Archived{Records: 5200, Segments: 3, Through: 5200}); res != want {
		t.Errorf("ArchiveAudit = %+v, want %+v", res, want)
	}
	if first, last, kept := hotSeqs(t, s); first != 5201 || last != n || kept != n-5200 {
		t.Errorf("the database holds records %d..%d (%d), want 5201..%d", first, last, kept, n)
	}
	ents, err := os.ReadDir(s.archiveDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o400 {
			t.Errorf("segment %s has mode %v, want 0400 (sealed)", e.Name(), fi.Mode().Perm())
		}
	}
	if want := []string{"00000000000000000001-00000000000000002500.jsonl", "00000000000000002501-00000000000000005000.jsonl",
		"00000000000000005001-00000000000000005200.jsonl"}; !slices.Equal(names, want) {
		t.Errorf("archive holds %v, want %v", names, want)
	}

	for i, f := range filters {
		if got := listAll(t, s, f); !sameRecords(got, forward[i]) {
			t.Errorf("forwards %+v: %d records, not the %d listed before archiving", f, len(got), len(forward[i]))
		}
		if got := listAllNewest(t, s, f); !sameRecords(got, backward[i]) {
			t.Errorf("backwards %+v: %d records, not the %d listed before archiving", f, len(got), len(backward[i]))
		}
	}
	after, err := s.VerifyAuditCheckpoints(ctx, cps)
	if err != nil || !after.OK || after.Records != n || after.HeadHash != before.HeadHash || after.Checkpoints != 1 {
		t.Errorf("VerifyAuditCheckpoints after archiving = %+v, %v; want OK over %d records, head %s, one checkpoint", after, err, n, before.HeadHash)
	}

	// Nothing more is old enough; new records chain on.
	if res, err := s.ArchiveAudit(ctx, a0.Add(5200*time.Second)); err != nil || res.Records != 0 || res.Through != 5200 {
		t.Errorf("second ArchiveAudit = %+v, %v; want nothing more", res, err)
	}
	if err := s.Audit(ctx, a0.Add(2*time.Hour), auditEntry(n)); err != nil {
		t.Fatal(err)
	}
	if res, err := s.VerifyAudit(ctx); err != nil || !res.OK || res.Records != n+1 {
		t.Errorf("VerifyAudit after one more record = %+v, %v", res, err)
	}
	// Everything can move out, and the log goes on from its head.
	if res, err := s.ArchiveAudit(ctx, a0.Add(3*time.Hour)); err != nil || res.Records != n+1-5200 {
		t.Errorf("archiving the rest = %+v, %v", res, err)
	}
	if _, _, kept := hotSeqs(t, s); kept != 0 {
		t.Errorf("the database still holds %d records", kept)
	}
	if err := s.Audit(ctx, a0.Add(4*time.Hour), auditEntry(n+1)); err != nil {
		t.Fatal(err)
	}
	if res, err := s.VerifyAudit(ctx); err != nil || !res.OK || res.Records != n+2 {
		t.Errorf("VerifyAudit after archiving all and appending = %+v, %v", res, err)
	}
	if recs := listAllNewest(t, s, audit.Filter{Limit: 3}); len(recs) != n+2 || recs[0].Seq != n+2 || recs[len(recs)-1].Seq != 1 {
		t.Errorf("newest first: %d records from %d to %d", len(recs), recs[0].Seq, recs[len(recs)-1].Seq)
	}
}

func sameRecords(a, b []audit.Record) bool {
	return slices.EqualFunc(a, b, func(x, y audit.Record) bool { return x.Seq == y.Seq && x.Hash == y.Hash })
}

// A change to the archive's files is found by verification at the first
// record it breaks, as it is in the database.
func TestArchiveTamperingIsDetected(t *testing.T) {
	seg2 := "00000000000000002501-00000000000000005000.jsonl"
	cases := []struct {
		name     string
		edit     func(t *testing.T, path string)
		firstBad uint64
		problem  string
	}{
		{"a record changed", func(t *testing.T, path string) {
			rewriteFile(t, path, func(b []byte) []byte { return bytes.Replace(b, []byte(`"reason 2999"`), []byte(`"reason 2998"`), 1) })
		}, 3000, "hash does not match its contents"},
		{"a record deleted", func(t *testing.T, path string) {
			rewriteFile(t, path, func(b []byte) []byte {
				lines := bytes.SplitAfter(b, []byte("\n"))
				return bytes.Join(slices.Delete(lines, 10, 11), nil)
			})
		}, 2511, "record 2511"},
		{"the segment removed", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, 2501, "no such file"},
		{"bytes appended", func(t *testing.T, path string) {
			rewriteFile(t, path, func(b []byte) []byte { return append(b, "\n"...) })
		}, 2501, audit.ErrSegmentChanged.Error()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := archiveStore(t, 6000)
			ctx := context.Background()
			if _, err := s.ArchiveAudit(ctx, a0.Add(5500*time.Second)); err != nil {
				t.Fatal(err)
			}
			tc.edit(t, filepath.Join(s.archiveDir, seg2))
			res, err := s.VerifyAudit(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if res.OK || res.FirstBad != tc.firstBad || !strings.Contains(res.Problem, tc.problem) {
				t.Errorf("VerifyAudit = %+v; want broken at record %d: %q", res, tc.firstBad, tc.problem)
			}
		})
	}
}

func rewriteFile(t *testing.T, path string, edit func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, edit(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A pass interrupted after its segment was written but before the
// database recorded it writes the segment again; one interrupted after
// the database recorded it but before its records were deleted from the
// database deletes them at the next pass, and readers meanwhile see each
// record once.
func TestArchiveInterrupted(t *testing.T) {
	ctx := context.Background()
	t.Run("segment written, not recorded", func(t *testing.T) {
		s := archiveStore(t, 3000)
		var stored [][]byte
		for _, r := range listAll(t, s, audit.Filter{Limit: 1000})[:100] {
			stored = append(stored, []byte("left by a crash "+r.Hash))
		}
		if _, err := audit.WriteSegment(s.archiveDir, 1, stored, "x"); err != nil {
			t.Fatal(err)
		}
		if res, err := s.ArchiveAudit(ctx, a0.Add(100*time.Second)); err != nil || res.Records != 100 {
			t.Fatalf("ArchiveAudit = %+v, %v", res, err)
		}
		if res, err := s.VerifyAudit(ctx); err != nil || !res.OK || res.Records != 3000 {
			t.Errorf("VerifyAudit = %+v, %v", res, err)
		}
	})
	t.Run("written, not recorded, cut elsewhere", func(t *testing.T) {
		// The stopped pass sealed records 1–150 (and left temporary files
		// of two more segments); the next pass archives 1–100, a segment
		// of another name. What was never recorded goes, so no file
		// holds the same records as a recorded one; other files stay.
		s := archiveStore(t, 3000)
		var stored [][]byte
		for _, r := range listAll(t, s, audit.Filter{Limit: 1000})[:150] {
			b, _ := json.Marshal(r)
			stored = append(stored, b)
		}
		orphan, err := audit.WriteSegment(s.archiveDir, 1, stored, "x")
		if err != nil {
			t.Fatal(err)
		}
		left := []string{
			fmt.Sprintf("%020d.jsonl.tmp", 151),
			fmt.Sprintf("%020d-%020d.jsonl.tmp", 151, 300),
		}
		kept := []string{"README", fmt.Sprintf("%020d.jsonl", 1)}
		for _, name := range append(left, kept...) {
			if err := os.WriteFile(filepath.Join(s.archiveDir, name), []byte("x"), 0o400); err != nil {
				t.Fatal(err)
			}
		}
		res, err := s.ArchiveAudit(ctx, a0.Add(100*time.Second))
		if err != nil || res.Records != 100 || res.Segments != 1 {
			t.Fatalf("ArchiveAudit = %+v, %v", res, err)
		}
		var names []string
		entries, _ := os.ReadDir(s.archiveDir)
		for _, e := range entries {
			names = append(names, e.Name())
		}
		want := append([]string{fmt.Sprintf("%020d-%020d.jsonl", 1, 100)}, kept...)
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("archive directory holds %v, want %v (%s removed)", names, want, orphan.Name)
		}
		if res, err := s.VerifyAudit(ctx); err != nil || !res.OK || res.Records != 3000 {
			t.Errorf("VerifyAudit = %+v, %v", res, err)
		}
	})
	t.Run("recorded, records not deleted", func(t *testing.T) {
		s := archiveStore(t, 3000)
		var stored [][]byte
		err := s.db.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketAuditRecords).Cursor()
			for k, v := c.First(); k != nil && len(stored) < 1500; k, v = c.Next() {
				stored = append(stored, bytes.Clone(v))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		recs := listAll(t, s, audit.Filter{Limit: 1000})
		seg, err := audit.WriteSegment(s.archiveDir, 1, stored, recs[1499].Hash)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.update(ctx, func(tx *bbolt.Tx) error {
			v, _ := json.Marshal(seg)
			return tx.Bucket(bucketAuditArchive).Put(audit.SeqKey(1), v)
		}); err != nil {
			t.Fatal(err)
		}
		if got := listAll(t, s, audit.Filter{Limit: 1000}); !sameRecords(got, recs) {
			t.Errorf("listing with the archived records still in the database: %d records, want %d once each", len(got), len(recs))
		}
		if res, err := s.VerifyAudit(ctx); err != nil || !res.OK || res.Records != 3000 {
			t.Errorf("VerifyAudit = %+v, %v", res, err)
		}
		if res, err := s.ArchiveAudit(ctx, a0); err != nil || res.Records != 0 || res.Through != 1500 {
			t.Fatalf("ArchiveAudit = %+v, %v", res, err)
		}
		if first, _, kept := hotSeqs(t, s); first != 1501 || kept != 1500 {
			t.Errorf("the database holds %d records from %d, want 1500 from 1501", kept, first)
		}
	})
}

// A gap in the log stops archiving at the gap, with an error naming the
// missing record, rather than sealing a broken segment.
func TestArchiveStopsAtAGap(t *testing.T) {
	s := archiveStore(t, 300)
	if err := s.update(context.Background(), func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketAuditRecords).Delete(audit.SeqKey(120))
	}); err != nil {
		t.Fatal(err)
	}
	res, err := s.ArchiveAudit(context.Background(), a0.Add(time.Hour))
	if err == nil || !strings.Contains(err.Error(), "audit record 120 is missing") || res.Records != 0 {
		t.Errorf("ArchiveAudit = %+v, %v; want a refusal naming record 120", res, err)
	}
	// The records before the gap went to a segment's temporary file,
	// which is removed: nothing is left in the archive.
	if files, err := os.ReadDir(s.archiveDir); err != nil && !errors.Is(err, os.ErrNotExist) || len(files) > 0 {
		t.Errorf("archive directory: %v, %v; want nothing written", files, err)
	}
}
