package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A segment is read back from any record, through its offsets, and read
// whole it must be byte for byte what was written.
func TestSegmentWriteAndScan(t *testing.T) {
	dir := t.TempDir()
	var stored [][]byte
	for i := range 3000 {
		stored = append(stored, []byte(fmt.Sprintf(`{"seq":%d}`, 100+i)))
	}
	seg, err := WriteSegment(dir, 100, stored, "h")
	if err != nil {
		t.Fatal(err)
	}
	if seg.First != 100 || seg.Last != 3099 || len(seg.Offsets) != 3 || seg.Name != "00000000000000000100-00000000000000003099.jsonl" {
		t.Fatalf("segment %+v", seg)
	}
	for _, from := range []uint64{0, 100, 1123, 2148, 3099, 3100} {
		var got []uint64
		err := ScanSegment(dir, seg, from, func(seq uint64, v []byte) bool {
			if want := fmt.Sprintf(`{"seq":%d}`, seq); string(v) != want {
				t.Errorf("from %d: record %d reads %s", from, seq, v)
			}
			got = append(got, seq)
			return len(got) < 5
		})
		first := max(from, 100)
		if err != nil || (first <= 3099 && (len(got) == 0 || got[0] != first)) || (first > 3099 && len(got) > 0) {
			t.Errorf("ScanSegment from %d = %v, %v", from, got, err)
		}
	}
	n := 0
	if err := ScanSegment(dir, seg, 0, func(uint64, []byte) bool { n++; return true }); err != nil || n != 3000 {
		t.Errorf("whole scan: %d records, %v", n, err)
	}
	path := filepath.Join(dir, seg.Name)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("segment file: %v, %v; want mode 0400", fi, err)
	}
	os.Chmod(path, 0o600)
	b, _ := os.ReadFile(path)
	os.WriteFile(path, append(b, "junk\n"...), 0o600)
	if err := ScanSegment(dir, seg, 0, func(uint64, []byte) bool { return true }); !errors.Is(err, ErrSegmentChanged) {
		t.Errorf("whole scan of a changed file: %v, want ErrSegmentChanged", err)
	}
	if _, err := WriteSegment(dir, 1, [][]byte{[]byte("a\nb")}, "h"); err == nil {
		t.Error("a record holding a newline was written")
	}
}

// A SegmentWriter refuses more than MaxSegmentRecords and an empty seal,
// and leaves nothing behind when aborted or refused.
func TestSegmentWriterBounds(t *testing.T) {
	dir := t.TempDir()
	sw, err := NewSegmentWriter(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxSegmentRecords {
		if err := sw.Add([]byte(fmt.Sprintf(`{"seq":%d}`, 7+i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := sw.Add([]byte(`{}`)); err == nil || sw.Len() != MaxSegmentRecords {
		t.Fatalf("record %d of a segment: %v, Len %d; want a refusal", MaxSegmentRecords+1, err, sw.Len())
	}
	seg, err := sw.Seal("h")
	if err != nil || seg.Last != 7+MaxSegmentRecords-1 || len(seg.Offsets) != MaxSegmentRecords/SegmentStride {
		t.Fatalf("Seal = %+v, %v", seg.Last, err)
	}
	n := 0
	if err := ScanSegment(dir, seg, 0, func(uint64, []byte) bool { n++; return true }); err != nil || n != MaxSegmentRecords {
		t.Errorf("whole scan: %d records, %v", n, err)
	}

	empty, err := NewSegmentWriter(dir, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Seal("h"); err == nil {
		t.Error("an empty segment was sealed")
	}
	aborted, err := NewSegmentWriter(dir, 1<<41)
	if err != nil {
		t.Fatal(err)
	}
	aborted.Add([]byte(`{}`))
	aborted.Abort()
	if files, _ := os.ReadDir(dir); len(files) != 1 || files[0].Name() != seg.Name {
		t.Errorf("archive directory holds %v, want only %s", files, seg.Name)
	}
}

// A pass that stopped while writing a segment (a crash, a kill) leaves its
// temporary file, named after the segment's first record; the next pass
// starts the segment from that record again and must not trip on it. A
// file left between the seal's chmod and its rename is read-only: a
// process not running as root (valet's Dockerfile, systemd unit and
// manifests all run it as an unprivileged user) cannot open it for
// writing, so the archive would stop there for good.
func TestSegmentWriterReplacesALeftoverTemporaryFile(t *testing.T) {
	var stored [][]byte
	for i := range 1500 {
		stored = append(stored, []byte(fmt.Sprintf(`{"seq":%d}`, 5+i)))
	}
	for _, tc := range []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"half written", `{"seq":5}` + "\n" + `{"se`, 0o600},
		{"sealed, not renamed", strings.Repeat(`{"seq":"left by the stopped pass"}`+"\n", 2000), 0o400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			leftover := filepath.Join(dir, fmt.Sprintf("%020d.jsonl.tmp", 5))
			if err := os.WriteFile(leftover, []byte(tc.data), tc.mode); err != nil {
				t.Fatal(err)
			}
			seg, err := WriteSegment(dir, 5, stored, "h")
			if err != nil {
				t.Fatalf("WriteSegment over a leftover temporary file: %v", err)
			}
			n := 0
			if err := ScanSegment(dir, seg, 0, func(seq uint64, v []byte) bool {
				if want := fmt.Sprintf(`{"seq":%d}`, seq); string(v) != want {
					t.Errorf("record %d reads %s", seq, v)
				}
				n++
				return true
			}); err != nil || n != len(stored) {
				t.Errorf("whole scan: %d records, %v; want %d", n, err, len(stored))
			}
			if files, _ := os.ReadDir(dir); len(files) != 1 || files[0].Name() != seg.Name {
				t.Errorf("archive directory holds %v, want only %s", files, seg.Name)
			}
		})
	}
}

// RemoveUnrecorded removes only segment and temporary files that begin
// after the recorded end, never a recorded segment or a file that is not
// a segment's.
func TestRemoveUnrecorded(t *testing.T) {
	dir := t.TempDir()
	name := func(first, last uint64) string { return fmt.Sprintf("%020d-%020d.jsonl", first, last) }
	recorded := []string{name(1, 100), name(101, 200), fmt.Sprintf("%020d.jsonl.tmp", 200)}
	others := []string{"README", "notes.jsonl", fmt.Sprintf("%020d.jsonl", 500), "x" + name(300, 400), name(300, 400) + ".bak"}
	unrecorded := []string{name(201, 260), fmt.Sprintf("%020d.jsonl.tmp", 201), name(201, 300) + ".tmp"}
	for _, n := range slices.Concat(recorded, others, unrecorded) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := RemoveUnrecorded(dir, 200)
	slices.Sort(removed)
	slices.Sort(unrecorded)
	if err != nil || !slices.Equal(removed, unrecorded) {
		t.Fatalf("RemoveUnrecorded = %v, %v; want %v", removed, err, unrecorded)
	}
	for _, n := range slices.Concat(recorded, others) {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s: %v, want it kept", n, err)
		}
	}
	if removed, err := RemoveUnrecorded(filepath.Join(dir, "none"), 0); err != nil || len(removed) != 0 {
		t.Errorf("a missing directory: %v, %v", removed, err)
	}
}
