package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"
)

// Checkpoint is a signed statement of where the log ended: the sequence
// and hash of its last record at a time, signed with Ed25519 (RFC 8032)
// by the checkpoint key of the valet named by Origin. A checkpoint kept
// outside valet's database (by a witness) lets a verifier who trusts the
// key detect a log whose tail was cut, or whose records were changed and
// the chain recomputed from there on: neither can reproduce the signed
// hash at Seq.
type Checkpoint struct {
	// Origin names the valet whose log it is (its public URL).
	Origin string `json:"origin"`
	Seq    uint64 `json:"seq"`
	// Hash is the hex SHA-256 of record Seq (Record.Hash).
	Hash  string    `json:"hash"`
	Time  time.Time `json:"time"`
	KeyID string    `json:"key_id"`
	// Signature is the base64url (unpadded) Ed25519 signature of
	// Message().
	Signature string `json:"signature"`
}

// checkpointHeader is the first line of the signed message.
const checkpointHeader = "valet-audit-checkpoint/v1"

// Message is the byte string a checkpoint signs: its header line, then
// origin, sequence, hash, time (RFC 3339, UTC, nanoseconds) and key id,
// each on its own line ending in a newline.
func (c Checkpoint) Message() []byte {
	var b bytes.Buffer
	for _, l := range []string{checkpointHeader, c.Origin, strconv.FormatUint(c.Seq, 10), c.Hash,
		c.Time.UTC().Format(time.RFC3339Nano), c.KeyID} {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// CheckpointKeyID is the id of a checkpoint public key: the unpadded
// base64url of the first 12 bytes of its SHA-256.
func CheckpointKeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// SignCheckpoint signs head (its sequence and hash) at now for origin.
func SignCheckpoint(key ed25519.PrivateKey, origin string, head Head, now time.Time) Checkpoint {
	c := Checkpoint{Origin: origin, Seq: head.Seq, Hash: hex.EncodeToString(head.Hash[:]), Time: now.UTC(),
		KeyID: CheckpointKeyID(key.Public().(ed25519.PublicKey))}
	c.Signature = base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, c.Message()))
	return c
}

// Errors of Checkpoint.Verify.
var (
	// ErrCheckpointForeign: the checkpoint names another key than the
	// trusted one (a checkpoint of another valet, or of a key replaced
	// since).
	ErrCheckpointForeign = errors.New("the checkpoint was signed by another key than the trusted one (a checkpoint of another valet?)")
	// ErrCheckpointForged: the checkpoint names the trusted key but its
	// signature does not verify (forged, or changed after signing).
	ErrCheckpointForged = errors.New("the checkpoint's signature does not verify under the trusted key (forged or changed)")
)

// Verify checks the checkpoint's signature under pub, the trusted
// checkpoint key. It returns ErrCheckpointForeign or ErrCheckpointForged
// (wrapped with what the checkpoint says).
func (c Checkpoint) Verify(pub ed25519.PublicKey) error {
	if want := CheckpointKeyID(pub); c.KeyID != want {
		return fmt.Errorf("checkpoint of record %d at %s: key %q, not %q: %w", c.Seq, c.Time.UTC().Format(time.RFC3339), c.KeyID, want, ErrCheckpointForeign)
	}
	sig, err := base64.RawURLEncoding.DecodeString(c.Signature)
	if err != nil || !ed25519.Verify(pub, c.Message(), sig) {
		return fmt.Errorf("checkpoint of record %d at %s: %w", c.Seq, c.Time.UTC().Format(time.RFC3339), ErrCheckpointForged)
	}
	return nil
}

// ReadCheckpoints reads checkpoints as a witness keeps them: one JSON
// object per line (the file witness), a JSON array, or one object. Blank
// lines are skipped; anything else that is not a checkpoint is an error
// naming its line.
func ReadCheckpoints(r io.Reader) ([]Checkpoint, error) {
	br := bufio.NewReader(r)
	b, err := io.ReadAll(io.LimitReader(br, 256<<20))
	if err != nil {
		return nil, err
	}
	trimmed := bytes.TrimSpace(b)
	if bytes.HasPrefix(trimmed, []byte("[")) {
		var cps []Checkpoint
		if err := json.Unmarshal(trimmed, &cps); err != nil {
			return nil, fmt.Errorf("checkpoints: %w", err)
		}
		return cps, nil
	}
	var out []Checkpoint
	for i, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var c Checkpoint
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("checkpoints, line %d: %w", i+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no checkpoints found")
	}
	return out, nil
}

// checkpoints walks sorted checkpoints beside the chain.
type checkpoints struct {
	cps  []Checkpoint
	next int
	// matched is the sequence of the last checkpoint the log matched.
	matched uint64
	count   int
}

func newCheckpoints(cps []Checkpoint) *checkpoints {
	sorted := append([]Checkpoint(nil), cps...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Seq < sorted[j].Seq })
	return &checkpoints{cps: sorted}
}

// record compares record seq, whose recomputed hash is sum, with the
// checkpoints that vouch for it, and returns a problem or "".
func (c *checkpoints) record(seq uint64, sum [sha256.Size]byte) string {
	for ; c.next < len(c.cps) && c.cps[c.next].Seq <= seq; c.next++ {
		cp := c.cps[c.next]
		if cp.Seq < seq || cp.Seq == 0 {
			continue // cannot happen in a sorted walk from 1
		}
		if got := hex.EncodeToString(sum[:]); got != cp.Hash {
			return fmt.Sprintf("does not match the checkpoint signed at %s (the log has hash %s, the checkpoint %s): "+
				"the log was changed after record %d, the last one a checkpoint vouches for, and re-chained",
				cp.Time.UTC().Format(time.RFC3339), got, cp.Hash, c.matched)
		}
		c.matched = seq
		c.count++
	}
	return ""
}

// end reports checkpoints beyond the log's last record (a cut tail).
func (c *checkpoints) end(last uint64) (firstBad uint64, problem string) {
	if c.next < len(c.cps) {
		cp := c.cps[len(c.cps)-1]
		return last + 1, fmt.Sprintf("the log ends at record %d but the checkpoint signed at %s vouches for record %d: "+
			"records after %d were deleted (a cut tail)", last, cp.Time.UTC().Format(time.RFC3339), cp.Seq, last)
	}
	return 0, ""
}
