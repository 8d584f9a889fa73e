package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The audit archive keeps the records older than the database's hot
// window in sealed segment files, so the database stays small while the
// whole history stays verifiable. A segment holds consecutive records,
// one per line, with exactly the bytes the engine stored: the chain runs
// through the archive into the database unchanged, and checkpoints of
// any record still match (VerifyChainCheckpoints over the archive, then
// the database). The engine keeps each segment's description (Segment)
// beside its records and moves its records out of the database only
// once the segment is durable.

// ArchiveDir is the directory of the audit archive under a data
// directory.
func ArchiveDir(dataDir string) string { return filepath.Join(dataDir, "audit", "archive") }

// SegmentStride is how many records apart Segment.Offsets are.
const SegmentStride = 1024

// MaxSegmentRecords bounds the records of one segment.
const MaxSegmentRecords = 64 * SegmentStride

// Segment describes a sealed file of the archive: the records First to
// Last (their stored bytes, one per line), the hash of the last one, and
// the file's SHA-256 and size as written. Offsets holds the byte offset of
// record First + i·SegmentStride, so a reader starts near any record.
type Segment struct {
	Name     string  `json:"name"`
	First    uint64  `json:"first"`
	Last     uint64  `json:"last"`
	LastHash string  `json:"last_hash"`
	SHA256   string  `json:"sha256"`
	Size     int64   `json:"size"`
	Offsets  []int64 `json:"offsets"`
}

// Archived is what one pass of an engine's ArchiveAudit moved out of the
// database.
type Archived struct {
	// Records and Segments count what the pass archived.
	Records, Segments int
	// Through is the last archived record's sequence (0: none ever).
	Through uint64
}

// WriteSegment writes stored, the stored bytes of records first,
// first+1, …, as a sealed segment in dir (a SegmentWriter given each in
// turn). lastHash is the hex hash of the last record.
func WriteSegment(dir string, first uint64, stored [][]byte, lastHash string) (Segment, error) {
	if len(stored) == 0 {
		return Segment{}, errors.New("audit archive: an empty segment")
	}
	sw, err := NewSegmentWriter(dir, first)
	if err != nil {
		return Segment{}, err
	}
	for _, v := range stored {
		if err := sw.Add(v); err != nil {
			sw.Abort()
			return Segment{}, err
		}
	}
	return sw.Seal(lastHash)
}

// segmentBuffer is the write buffer of a SegmentWriter: all it holds of
// the records it was given.
const segmentBuffer = 256 << 10

// SegmentWriter writes a segment record by record, holding no more than
// its write buffer (256 KiB) of them, so archiving a segment of
// MaxSegmentRecords costs the same memory as one of ten records. Add
// appends a record; Seal makes the segment durable and whole under its
// final name; Abort removes what was written. The records go to a
// temporary file, synced, made read-only and renamed into place, then
// the directory is synced, so that the segment is durable and whole
// before the engine records it. A file of the same name, or a temporary
// file of a segment from the same record, left by an interrupted pass is
// replaced.
type SegmentWriter struct {
	dir string
	tmp string
	f   *os.File
	w   *bufio.Writer
	sum hash.Hash
	seg Segment
	n   uint64 // records added
}

// NewSegmentWriter starts the segment of records first, first+1, … in
// dir, creating dir if needed.
func NewSegmentWriter(dir string, first uint64) (*SegmentWriter, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit archive: %w", err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf("%020d.jsonl.tmp", first))
	// A pass that stopped (a crash) left this file if it got no further
	// than this segment: removed, not reopened, as one that stopped
	// between Seal's chmod and rename is read-only, and a process that is
	// not root cannot open it for writing.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("audit archive: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit archive: %w", err)
	}
	sw := &SegmentWriter{dir: dir, tmp: tmp, f: f, sum: sha256.New(), seg: Segment{First: first}}
	sw.w = bufio.NewWriterSize(io.MultiWriter(f, sw.sum), segmentBuffer)
	return sw, nil
}

// Add appends the stored bytes of the segment's next record. A record
// holding a newline is refused (the segment's records are one per line);
// so is one past MaxSegmentRecords.
func (sw *SegmentWriter) Add(v []byte) error {
	seq := sw.seg.First + sw.n
	if bytes.IndexByte(v, '\n') >= 0 {
		return fmt.Errorf("audit archive: record %d holds a newline", seq)
	}
	if sw.n >= MaxSegmentRecords {
		return fmt.Errorf("audit archive: record %d is past the %d records of a segment", seq, MaxSegmentRecords)
	}
	if sw.n%SegmentStride == 0 {
		sw.seg.Offsets = append(sw.seg.Offsets, sw.seg.Size)
	}
	// Write errors stay in the bufio.Writer and come out of Seal's Flush.
	sw.w.Write(v)
	sw.w.WriteByte('\n')
	sw.seg.Size += int64(len(v)) + 1
	sw.n++
	return nil
}

// Len is the number of records added.
func (sw *SegmentWriter) Len() int { return int(sw.n) }

// Seal makes the segment durable under its final name and returns it;
// lastHash is the hex hash of its last record. An empty segment is
// refused. After Seal, or its error, the writer is done (the temporary
// file is removed on error).
func (sw *SegmentWriter) Seal(lastHash string) (Segment, error) {
	if sw.n == 0 {
		sw.Abort()
		return Segment{}, errors.New("audit archive: an empty segment")
	}
	seg := sw.seg
	seg.Last, seg.LastHash = seg.First+sw.n-1, lastHash
	seg.Name = fmt.Sprintf("%020d-%020d.jsonl", seg.First, seg.Last)
	path := filepath.Join(sw.dir, seg.Name)
	err := sw.w.Flush()
	if err == nil {
		err = sw.f.Sync()
	}
	if cerr := sw.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(sw.tmp, 0o400)
	}
	if err == nil {
		err = os.Rename(sw.tmp, path)
	}
	if err == nil {
		err = syncDir(sw.dir)
	}
	if err != nil {
		os.Remove(sw.tmp)
		return Segment{}, fmt.Errorf("audit archive: write %s: %w", seg.Name, err)
	}
	seg.SHA256 = hex.EncodeToString(sw.sum.Sum(nil))
	return seg, nil
}

// Abort closes and removes what was written.
func (sw *SegmentWriter) Abort() {
	sw.f.Close()
	os.Remove(sw.tmp)
}

// RemoveUnrecorded removes from dir what archive passes that stopped
// before their engine recorded a segment left behind: segment files and
// temporary files whose first record is after through, the last record
// the engine's archive holds. Recorded segments all end at or before
// through, so none is touched, nor is any file whose name is not a
// segment's. A sealed segment the engine never recorded would otherwise
// stay beside the segment that later holds the same records, under
// another name. It returns the names removed.
func RemoveUnrecorded(dir string, through uint64) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit archive: %w", err)
	}
	var removed []string
	for _, e := range entries {
		first, ok := segmentFileFirst(e.Name())
		if !ok || first <= through {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return removed, fmt.Errorf("audit archive: %w", err)
		}
		removed = append(removed, e.Name())
	}
	if len(removed) > 0 {
		if err := syncDir(dir); err != nil {
			return removed, fmt.Errorf("audit archive: %w", err)
		}
	}
	return removed, nil
}

// segmentFileFirst returns the first record of a file named as a segment
// (first-last.jsonl) or a segment's temporary file (first.jsonl.tmp, or
// first-last.jsonl.tmp as older versions named it), each number 20
// digits.
func segmentFileFirst(name string) (uint64, bool) {
	digits := func(s string) bool {
		if len(s) != 20 {
			return false
		}
		for _, c := range []byte(s) {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	base, ok := strings.CutSuffix(name, ".jsonl.tmp")
	if !ok {
		if base, ok = strings.CutSuffix(name, ".jsonl"); !ok {
			return 0, false
		}
	}
	first, last, two := strings.Cut(base, "-")
	if !digits(first) || two && !digits(last) || !two && !strings.HasSuffix(name, ".tmp") {
		return 0, false
	}
	n, err := strconv.ParseUint(first, 10, 64)
	return n, err == nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ErrSegmentChanged is returned by ScanSegment when a segment read whole
// does not have the size or SHA-256 it was written with.
var ErrSegmentChanged = errors.New("the segment's file is not as it was written")

// ScanSegment calls fn with the sequence and stored bytes of each record
// of seg in dir, from record from (at least seg.First) to seg.Last, until
// fn returns false. It starts reading at the nearest offset before from.
// Read whole (from seg.First, to the end), the file must have the size
// and SHA-256 it was written with, or it returns ErrSegmentChanged
// (wrapped) after the last record. A line too long to be a record, a
// file that cannot be read or one that ends early are errors naming the
// segment.
func ScanSegment(dir string, seg Segment, from uint64, fn func(seq uint64, v []byte) bool) error {
	if from < seg.First {
		from = seg.First
	}
	if from > seg.Last {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, seg.Name))
	if err != nil {
		return fmt.Errorf("audit archive segment %s: %w", seg.Name, err)
	}
	defer f.Close()
	block := (from - seg.First) / SegmentStride
	seq := seg.First + block*SegmentStride
	var sum hash.Hash
	var r io.Reader = f
	if block > 0 {
		if block >= uint64(len(seg.Offsets)) {
			return fmt.Errorf("audit archive segment %s: no offset for record %d", seg.Name, from)
		}
		if _, err := f.Seek(seg.Offsets[block], io.SeekStart); err != nil {
			return fmt.Errorf("audit archive segment %s: %w", seg.Name, err)
		}
	} else {
		sum = sha256.New()
		r = io.TeeReader(f, sum)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	var size int64
	for ; seq <= seg.Last; seq++ {
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				return fmt.Errorf("audit archive segment %s, record %d: %w", seg.Name, seq, err)
			}
			return fmt.Errorf("audit archive segment %s ends before record %d", seg.Name, seq)
		}
		size += int64(len(sc.Bytes())) + 1
		if seq < from {
			continue
		}
		if !fn(seq, sc.Bytes()) {
			return nil
		}
	}
	if sum == nil {
		return nil
	}
	// Read whole: the rest of the file, then its size and digest.
	for sc.Scan() {
		size += int64(len(sc.Bytes())) + 1
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit archive segment %s: %w", seg.Name, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); size != seg.Size || got != seg.SHA256 {
		return fmt.Errorf("audit archive segment %s: %d bytes with SHA-256 %s, written as %d bytes with %s: %w",
			seg.Name, size, got, seg.Size, seg.SHA256, ErrSegmentChanged)
	}
	return nil
}
