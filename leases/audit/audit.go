// Package audit is valet's append-only, hash-chained audit log: its records
// and the chain that links them. A storage engine keeps the records in the
// same store as the state they describe and appends them in the same
// transaction as the change (Chain computes them), so a state change without
// its record (or the reverse) cannot be committed. Each record carries the
// hash of the one before it; VerifyChain recomputes the chain over the
// stored bytes and detects any changed, deleted or reordered record.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Actor types.
const (
	ActorAgent     = "agent"
	ActorOperator  = "operator"
	ActorJob       = "job"
	ActorDetector  = "detector"
	ActorSystem    = "system"
	ActorAnonymous = "anonymous" // a caller whose credentials did not verify
)

// SystemActor is valet itself: its background work (expiry, revocation,
// recovery) and its own start-up.
var SystemActor = Actor{Type: ActorSystem, ID: "valet"}

// Decisions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Record kinds written by valet.
const (
	KindMint          = "mint"          // allowed, or denied with a reason
	KindMintFailed    = "mint.failed"   // policy allowed, the backend failed
	KindRenew         = "lease.renew"   // allowed or denied
	KindRelease       = "lease.release" // the agent ended its lease
	KindRevoke        = "lease.revoke"  // an operator (or recovery) ended a lease
	KindRevoked       = "lease.revoked" // the backend confirmed revocation
	KindRevokeFailed  = "lease.revoke_failed"
	KindIrrevocable   = "lease.irrevocable"
	KindUnrevocable   = "lease.unrevocable" // the backend cannot revoke it: valid until its expiry
	KindExpire        = "lease.expire"
	KindRecover       = "lease.recover" // a pending lease left by a crash
	KindLeaseAccess   = "lease.access"  // a caller whose attestation did not verify read or changed a lease
	KindPolicyReload  = "policy.reload"
	KindConfigLoad    = "config.load"
	KindServerStart   = "server.start"
	KindIntrospection = "introspect"

	KindGrantRequest = "grant.request" // an elevated role was asked for
	KindGrantApprove = "grant.approve" // one operator approved (the grant may need more)
	KindGrantDeny    = "grant.deny"    // an operator denied; the request ended
	KindGrantExpired = "grant.expire"  // not approved, or not redeemed, in time
	KindGrantRedeem  = "grant.redeem"  // the agent redeemed an approved grant
	KindBreakGlass   = "break_glass"   // emergency access minted without approval
	KindGrantReview  = "grant.review"  // an operator reviewed a break-glass grant

	// KindOperatorAuth is a refused operator credential: a bearer token at
	// an operator endpoint or a console sign-in that did not verify.
	KindOperatorAuth = "operator.auth"
	// KindAuthRefusedSummary counts the refused credentials that were not
	// recorded one by one (their address was over its failure budget, or
	// too many were refused at once): counts by credential type, the
	// number of addresses and the busiest ones. At most one a minute.
	KindAuthRefusedSummary = "auth.refused.summary"

	// KindSignal is a signal: accepted (allow, one record per agent it
	// concerns) or refused (deny: bad shape, unknown subject, an action
	// the source may not ask for, ignored SET events).
	KindSignal = "signal"
	// KindSignalContained is the end of a signal's mass revocation: how
	// many live leases it ended.
	KindSignalContained = "signal.contained"
	// KindAgentQuarantine is an agent quarantined (by a signal or an
	// operator); KindAgentRelease its release (by an operator, or by valet
	// at the quarantine's release time).
	KindAgentQuarantine = "agent.quarantine"
	KindAgentRelease    = "agent.release"
	// KindJobStart and KindJobEnd bracket a run of a scheduled job
	// (details: job, run, trigger; at the end outcome, duration and what
	// changed). KindCheckpoint is a signed checkpoint of the log's head.
	KindJobStart   = "job.start"
	KindJobEnd     = "job.end"
	KindCheckpoint = "audit.checkpoint"
)

// Kinds lists every kind of record valet writes, for filters that must
// name one.
var Kinds = []string{
	KindMint, KindMintFailed, KindRenew, KindRelease, KindRevoke, KindRevoked, KindRevokeFailed, KindIrrevocable,
	KindUnrevocable, KindExpire, KindRecover, KindLeaseAccess, KindPolicyReload, KindConfigLoad, KindServerStart, KindIntrospection,
	KindGrantRequest, KindGrantApprove, KindGrantDeny, KindGrantExpired, KindGrantRedeem, KindBreakGlass, KindGrantReview,
	KindOperatorAuth, KindAuthRefusedSummary, KindJobStart, KindJobEnd, KindCheckpoint,
	KindSignal, KindSignalContained, KindAgentQuarantine, KindAgentRelease,
}

// Actor is who caused a record.
type Actor struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}

// Entry is what a caller records; the log adds sequence, time and hashes.
// No field may ever hold a secret: no tokens, passwords, keys or raw
// attestations.
type Entry struct {
	Kind          string   `json:"kind"`
	Actor         Actor    `json:"actor"`
	Decision      string   `json:"decision,omitempty"`
	Reason        string   `json:"reason,omitempty"`
	AgentID       string   `json:"agent_id,omitempty"`
	Role          string   `json:"role,omitempty"`
	LeaseID       string   `json:"lease_id,omitempty"`
	PolicyVersion string   `json:"policy_version,omitempty"`
	PolicyIDs     []string `json:"policy_ids,omitempty"`
	// PolicyErrors are the ids of the policies that failed to evaluate
	// for this decision (whatever it was).
	PolicyErrors []string          `json:"policy_errors,omitempty"`
	RequestID    string            `json:"request_id,omitempty"`
	Details      map[string]string `json:"details,omitempty"`
}

// Record is one entry of the log.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Entry
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// Head is where the log ends: the sequence and hash of its last record
// (zero for an empty log). An engine stores it beside the records and moves
// it in the transaction that appends.
type Head struct {
	Seq  uint64
	Hash [sha256.Size]byte
}

// Bytes is the stored form of the head: 8 bytes of big-endian sequence,
// then the hash.
func (h Head) Bytes() []byte {
	v := make([]byte, 8+sha256.Size)
	binary.BigEndian.PutUint64(v, h.Seq)
	copy(v[8:], h.Hash[:])
	return v
}

// ParseHead reads a stored head; nil (no head stored) is the empty log's.
func ParseHead(v []byte) (Head, error) {
	var h Head
	if v == nil {
		return h, nil
	}
	if len(v) != 8+sha256.Size {
		return h, errors.New("audit head is corrupt")
	}
	h.Seq = binary.BigEndian.Uint64(v[:8])
	copy(h.Hash[:], v[8:])
	return h, nil
}

// Chain returns the records for entries appended after head at now, their
// stored bytes (in order; stored[i] goes under SeqKey(recs[i].Seq)) and the
// new head. The engine writes them and the head in one transaction with the
// state change they describe.
func Chain(head Head, now time.Time, entries ...Entry) (recs []Record, stored [][]byte, next Head, err error) {
	recs = make([]Record, 0, len(entries))
	stored = make([][]byte, 0, len(entries))
	at := now.UTC().Round(0)
	prevHex := hex.EncodeToString(head.Hash[:])
	for _, e := range entries {
		recs = append(recs, Record{Seq: head.Seq + 1, Time: at, Entry: e, PrevHash: prevHex})
		r := &recs[len(recs)-1]
		v, sum, err := r.encodeAfter(head.Hash[:])
		if err != nil {
			return nil, nil, head, err
		}
		r.Hash = hex.EncodeToString(sum[:])
		head = Head{Seq: r.Seq, Hash: sum}
		prevHex = r.Hash
		stored = append(stored, v)
	}
	return recs, stored, head, nil
}

// Sum is the hash of the record's contents: SHA-256 over the previous hash
// and the record's canonical JSON with Hash empty (see encode).
func (r Record) Sum() ([sha256.Size]byte, error) { return r.computeHash() }

// computeHash is SHA-256 over the previous hash and the record's canonical
// JSON with Hash empty (see encode).
func (r Record) computeHash() ([sha256.Size]byte, error) {
	r.Hash = ""
	_, sum, err := r.encode()
	return sum, err
}

// emptyHash ends the canonical JSON of a record whose Hash is empty: Hash
// is the last field.
var emptyHash = []byte(`"hash":""}`)

// encode returns the stored form of r (whose Hash is empty) and its hash,
// marshalling once. The canonical JSON is encoding/json's: struct fields in
// declaration order, map keys sorted, no whitespace, the hash as the last
// field. The hash is SHA-256 over the previous hash and the canonical JSON
// with Hash empty; the stored form is the same JSON with the hash written
// into its last field, so a record verifies only if its stored bytes are
// exactly its canonical encoding.
func (r Record) encode() ([]byte, [sha256.Size]byte, error) {
	prev, err := hex.DecodeString(r.PrevHash)
	if err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("encode audit record: unexpected shape")
	}
	return r.encodeAfter(prev)
}

// encodeAfter is encode for a caller that has r.PrevHash decoded: prev. It
// takes r by pointer so that encoding it does not copy it to the heap.
func (r *Record) encodeAfter(prev []byte) ([]byte, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	w := encoders.Get().(*recordEncoder)
	defer encoders.Put(w)
	// The hash input is prev followed by the JSON: encode straight after
	// prev, then hash and copy out the one buffer.
	w.buf.Reset()
	w.buf.Write(prev)
	// Encoder.Encode is Marshal (the same escaping, HTML included) followed
	// by a newline.
	if err := w.enc.Encode(r); err != nil {
		return nil, sum, fmt.Errorf("encode audit record: %w", err)
	}
	in := bytes.TrimSuffix(w.buf.Bytes(), []byte{'\n'})
	body := in[len(prev):]
	if !bytes.HasSuffix(body, emptyHash) {
		return nil, sum, fmt.Errorf("encode audit record: unexpected shape")
	}
	sum = sha256.Sum256(in)
	v := make([]byte, 0, len(body)+2*sha256.Size)
	v = append(v, body[:len(body)-2]...) // up to `"hash":"`
	v = hex.AppendEncode(v, sum[:])
	v = append(v, '"', '}')
	if w.buf.Cap() > maxPooledRecordBytes {
		*w = *newRecordEncoder() // do not keep a rare large buffer
	}
	return v, sum, nil
}

// recordEncoder is a JSON encoder writing into its own buffer, kept in
// encoders between records.
type recordEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// maxPooledRecordBytes bounds the buffer a pooled recordEncoder keeps.
const maxPooledRecordBytes = 64 << 10

var encoders = sync.Pool{New: func() any { return newRecordEncoder() }}

func newRecordEncoder() *recordEncoder {
	w := new(recordEncoder)
	w.enc = json.NewEncoder(&w.buf)
	return w
}

// SeqKey is the key a record is stored under: its sequence as 8 bytes,
// big-endian, so keys sort in sequence order.
func SeqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// Filter selects records for List.
type Filter struct {
	AfterSeq uint64 // only records with a greater sequence
	Kind     string
	AgentID  string
	LeaseID  string
	Limit    int // default 100, at most 1000
	// Newest lists from the end backwards (AfterSeq is then ignored and
	// BeforeSeq, when set, bounds from above).
	Newest    bool
	BeforeSeq uint64
}

// Match reports whether r passes the filter's kind, agent and lease
// (sequence bounds and limits are the engine's to apply).
func (f Filter) Match(r *Record) bool {
	return (f.Kind == "" || r.Kind == f.Kind) && (f.AgentID == "" || r.AgentID == f.AgentID) && (f.LeaseID == "" || r.LeaseID == f.LeaseID)
}

// VerifyResult is the outcome of VerifyChain.
type VerifyResult struct {
	OK      bool   `json:"ok"`
	Records uint64 `json:"records"`
	// HeadSeq and HeadHash identify the last record; a verifier can keep
	// them to detect later truncation.
	HeadSeq  uint64 `json:"head_seq"`
	HeadHash string `json:"head_hash"`
	// Problem says what broke the chain, e.g. "record 42: hash does not
	// match its contents (changed)". Empty when OK.
	Problem string `json:"problem,omitempty"`
	// FirstBad is the sequence of the first record that cannot be trusted
	// (for a deleted tail, the first missing one; for a log changed and
	// re-chained, the first record after the last one a checkpoint vouches
	// for).
	FirstBad uint64 `json:"first_bad_seq,omitempty"`
	// Checkpoints counts the checkpoints the log matched
	// (VerifyChainCheckpoints); LastCheckpoint is the sequence of the
	// last of them.
	Checkpoints    int    `json:"checkpoints,omitempty"`
	LastCheckpoint uint64 `json:"last_checkpoint_seq,omitempty"`
}

// VerifyChain walks a whole stored log and checks that sequence numbers are
// contiguous from 1, that every record's key matches its sequence, that each
// record's prev_hash is the previous record's hash, that every hash matches
// the record's contents, that every record's stored bytes are exactly its
// canonical encoding (see encode), and that the stored head points at the
// last record (so a deleted tail, a record appended without moving the
// head, and a changed last record whose hash was recomputed are detected
// too). storedHead is the head as stored (ParseHead reads it); next returns
// the stored records in key order, each key and its stored bytes, until ok
// is false.
func VerifyChain(storedHead []byte, next func() (k, v []byte, ok bool)) VerifyResult {
	return VerifyChainCheckpoints(storedHead, next, nil)
}

// VerifyChainCheckpoints is VerifyChain that also compares the log with
// checkpoints whose signatures the caller has verified (Checkpoint.Verify
// with the trusted key): a record a checkpoint vouches for must have the
// checkpoint's hash, and the log must reach the last checkpoint's
// sequence. A log changed and re-chained (every later hash recomputed,
// the head rewritten) passes VerifyChain but fails here at the first
// checkpoint after the change, with FirstBad the first record after the
// last checkpoint it still matches; a cut tail whose head was rewritten
// fails with FirstBad the first missing record.
func VerifyChainCheckpoints(storedHead []byte, next func() (k, v []byte, ok bool), cps []Checkpoint) (res VerifyResult) {
	trusted := newCheckpoints(cps)
	defer func() { res.Checkpoints, res.LastCheckpoint = trusted.count, trusted.matched }()
	h, err := ParseHead(storedHead)
	if err != nil {
		res.Problem = err.Error()
		return
	}
	fail := func(seq uint64, format string, args ...any) {
		res.Problem = fmt.Sprintf("record %d: ", seq) + fmt.Sprintf(format, args...)
		res.FirstBad = seq
	}
	var prev [sha256.Size]byte
	var want uint64 = 1
	for k, v, ok := next(); ok; k, v, ok = next() {
		if len(k) != 8 {
			fail(want, "malformed key")
			return
		}
		seq := binary.BigEndian.Uint64(k)
		if seq != want {
			fail(want, "missing (the next stored record is %d): records were deleted", seq)
			return
		}
		r, canon, sum, problem := checkStored(v)
		if problem != "" {
			fail(seq, "%s", problem)
			return
		}
		if r.Seq != seq {
			fail(seq, "holds record %d (reordered)", r.Seq)
			return
		}
		if r.PrevHash != hex.EncodeToString(prev[:]) {
			if seq > 1 && bytes.Equal(v, canon) {
				// This record is intact and still names the hash its
				// predecessor had when it was appended: the
				// predecessor was changed and its hash recomputed.
				fail(seq-1, "changed and re-hashed: its hash no longer matches the prev_hash of record %d", seq)
				return
			}
			fail(seq, "prev_hash does not match the hash of record %d (reordered or changed)", seq-1)
			return
		}
		if r.Hash != hex.EncodeToString(sum[:]) {
			fail(seq, "hash does not match its contents (changed)")
			return
		}
		// The hash covers the canonical encoding; the stored bytes must
		// be exactly that, or a reader that parses JSON differently
		// (first of two duplicated keys, say) would see another record.
		if !bytes.Equal(v, canon) {
			fail(seq, "stored bytes are not the canonical encoding of the record (changed: a duplicated key, an escaped character, a key in other case, whitespace or another key order)")
			return
		}
		if problem := trusted.record(seq, sum); problem != "" {
			res.Problem = fmt.Sprintf("record %d %s", seq, problem)
			res.FirstBad = trusted.matched + 1
			return
		}
		prev = sum
		res.Records++
		want++
	}
	switch {
	case h.Seq > res.Records:
		res.Problem = fmt.Sprintf("the log ends at record %d but its head says %d: records were deleted from the end", res.Records, h.Seq)
		res.FirstBad = res.Records + 1
		return
	case h.Seq < res.Records:
		fail(h.Seq+1, "follows the log's head (record %d): records were appended outside the log", h.Seq)
		return
	case h.Seq > 0 && h.Hash != prev:
		fail(h.Seq, "hash does not match the log's head: the record was changed and re-hashed (or records before it were)")
		return
	}
	if firstBad, problem := trusted.end(res.Records); problem != "" {
		res.Problem, res.FirstBad = problem, firstBad
		return
	}
	res.OK = true
	res.HeadSeq = h.Seq
	res.HeadHash = hex.EncodeToString(h.Hash[:])
	return res
}

// checkStored decodes the stored bytes of a record strictly and returns it,
// its canonical stored form (see encode) and the hash of its contents, or a
// problem.
func checkStored(v []byte) (r Record, canon []byte, sum [sha256.Size]byte, problem string) {
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, nil, sum, fmt.Sprintf("cannot be decoded (changed): %v", err)
	}
	if b, err := hex.DecodeString(r.PrevHash); err != nil || len(b) != sha256.Size {
		return r, nil, sum, "prev_hash is not a hex SHA-256 (changed)"
	}
	c := r
	c.Hash = ""
	canon, sum, err := c.encode()
	if err != nil {
		return r, nil, sum, fmt.Sprintf("cannot be encoded: %v", err)
	}
	return r, canon, sum, ""
}
