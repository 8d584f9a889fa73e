// Package migrate copies valet's data from one storage engine to another
// (`valet storage migrate`): every record as the source stores it — the
// leases (their indexes and the revocation queue follow from them), the
// grants, the agent records with their quarantines, the signals, the job
// state, the live entries of the replay cache and the audit log, record
// by record with its head — read from a Source in one consistent snapshot
// and written through a Target's import path, which builds the target
// engine's own keys and indexes. Neither engine's layout leaks into the
// other. Then Copy reads the target back and compares: counts and a
// digest per kind, and the audit chain, verified on the target, with the
// source's head.
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"

	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// ReplayEntry is a consumed attestation id in the replay cache: the key
// ("<issuer-name>/<jti>") and when it stops counting as consumed, in whole
// seconds.
type ReplayEntry struct {
	Key     string
	Expires time.Time
}

// AuditRecord is one record of the audit log as stored: its sequence and
// its exact stored bytes (the canonical encoding its hash covers).
type AuditRecord struct {
	Seq    uint64
	Stored []byte
}

// Batch is a part of a store's records. An export hands them over in
// batches of a few hundred records; an import writes a batch's records,
// in as many transactions as the target engine needs.
type Batch struct {
	Leases  []*leases.Lease
	Grants  []*grants.Grant
	Agents  []*agents.Agent
	Signals []*agents.Signal
	Jobs    []*jobs.State
	Replay  []ReplayEntry
	Audit   []AuditRecord
	// Head is the audit log's head as stored with the records exported;
	// set on the last batch of an export only (nil for an empty log). An
	// import writes it after the batch's records.
	Head *audit.Head
}

// Len is how many records the batch holds (the head is not one).
func (b *Batch) Len() int {
	return len(b.Leases) + len(b.Grants) + len(b.Agents) + len(b.Signals) + len(b.Jobs) + len(b.Replay) + len(b.Audit)
}

// BatchSize is how many records an export puts in one batch, at most.
const BatchSize = 256

// Source is a store whose records can be read whole.
type Source interface {
	// Export calls fn with every record of the store, in batches of at
	// most BatchSize records, all read from one consistent snapshot
	// (bbolt: one read transaction; etcd: one revision). Within a kind
	// the records come in the order of their keys; the last batch
	// carries the audit head (and is handed over even when empty). A
	// record that cannot be decoded fails the export, naming it: a
	// migration copies every record or stops. fn's error ends the
	// export and is returned.
	Export(ctx context.Context, fn func(b *Batch) error) error
	// VerifyAudit walks the whole audit log (audit.Reader).
	VerifyAudit(ctx context.Context) (audit.VerifyResult, error)
}

// Target is a store that records can be imported into.
type Target interface {
	Source
	// KeyCount returns how many keys the store holds (0: empty).
	KeyCount(ctx context.Context) (int64, error)
	// Import writes b's records as they are — no state change, no audit
	// record of its own — with every index the engine keeps for them,
	// and b.Head, when set, as the audit log's head. A record whose key
	// exists already in the target is refused (the import fails, naming
	// it): an import never overwrites. A batch may take several
	// transactions; when Import fails, what it wrote before stays.
	Import(ctx context.Context, b *Batch) error
}

// ErrNotEmpty: the target holds keys already. Copy writes only into an
// empty target, so that what it verifies afterwards is the copy alone.
var ErrNotEmpty = errors.New("the target is not empty")

// Kinds of records, in the order Report lists them. The indented kinds
// are parts of the one above, counted from its records.
const (
	KindLeases          = "leases"
	KindRevocationQueue = "  revocation queue"
	KindGrants          = "grants"
	KindAgents          = "agents"
	KindQuarantined     = "  quarantined"
	KindSignals         = "signals"
	KindPendingSignals  = "  containment pending"
	KindJobs            = "job states"
	KindReplay          = "replay entries"
	KindAudit           = "audit records"
	KindCheckpoints     = "  checkpoints"
)

// Kinds lists the kinds in report order.
var Kinds = []string{KindLeases, KindRevocationQueue, KindGrants, KindAgents, KindQuarantined, KindSignals,
	KindPendingSignals, KindJobs, KindReplay, KindAudit, KindCheckpoints}

// Count is one row of a Report: how many records of a kind the source
// had, how many were copied and how many the target holds, and whether
// the target's records are the copied ones (their digest).
type Count struct {
	Kind   string
	Source int64
	Copied int64
	Target int64
	// Same: the target holds exactly the copied records (count and
	// SHA-256 digest over their encodings, in key order).
	Same bool
}

// Report is what Copy did and found.
type Report struct {
	Counts []Count
	// ExpiredReplay counts replay entries not copied because they had
	// expired at the time Copy was given: they no longer count as
	// consumed.
	ExpiredReplay int64
	// SourceHead and TargetHead are the audit heads as stored.
	SourceHead, TargetHead audit.Head
	// TargetAudit is the verification of the target's audit log.
	TargetAudit audit.VerifyResult
}

// OK reports whether the copy is verified: every kind the same, and the
// target's audit chain verifies with the source's head.
func (r *Report) OK() bool {
	for _, c := range r.Counts {
		if !c.Same {
			return false
		}
	}
	return r.TargetAudit.OK && r.SourceHead == r.TargetHead &&
		r.TargetAudit.HeadSeq == r.SourceHead.Seq && r.TargetAudit.HeadHash == hex.EncodeToString(r.SourceHead.Hash[:])
}

// Copy copies every record of src into dst and verifies the copy. now
// decides which replay entries are still live (only those are copied).
// It refuses, before writing anything, a dst that holds keys (ErrNotEmpty,
// wrapped with the count) and a src whose audit chain does not verify
// (the copy would carry the break into the new store; investigate first).
// When the copy is made but does not verify, Copy returns the Report
// (Report.OK false) and no error: the Report says what differs.
func Copy(ctx context.Context, src Source, dst Target, now time.Time) (*Report, error) {
	n, err := dst.KeyCount(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the target: %w", err)
	}
	if n > 0 {
		return nil, fmt.Errorf("%w: it holds %d keys", ErrNotEmpty, n)
	}
	v, err := src.VerifyAudit(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify the source's audit log: %w", err)
	}
	if !v.OK {
		return nil, fmt.Errorf("the source's audit log does not verify (%s, after %d good records): a copy would carry the break into the target; investigate with `valet audit verify` first", v.Problem, v.Records)
	}

	rep := &Report{}
	source, copied := newTally(), newTally()
	err = src.Export(ctx, func(b *Batch) error {
		if err := source.add(b); err != nil {
			return err
		}
		live := b.Replay[:0:0]
		for _, r := range b.Replay {
			if r.Expires.After(now) {
				live = append(live, r)
			} else {
				rep.ExpiredReplay++
			}
		}
		cp := *b
		cp.Replay = live
		if err := copied.add(&cp); err != nil {
			return err
		}
		if b.Head != nil {
			rep.SourceHead = *b.Head
		}
		return dst.Import(ctx, &cp)
	})
	if err != nil {
		return nil, fmt.Errorf("copy: %w", err)
	}

	target := newTally()
	if err := dst.Export(ctx, func(b *Batch) error {
		if b.Head != nil {
			rep.TargetHead = *b.Head
		}
		return target.add(b)
	}); err != nil {
		return nil, fmt.Errorf("read the target back: %w", err)
	}
	if rep.TargetAudit, err = dst.VerifyAudit(ctx); err != nil {
		return nil, fmt.Errorf("verify the target's audit log: %w", err)
	}
	for _, k := range Kinds {
		s, c, t := source.kinds[k], copied.kinds[k], target.kinds[k]
		rep.Counts = append(rep.Counts, Count{Kind: k, Source: s.n, Copied: c.n, Target: t.n,
			Same: c.n == t.n && string(c.h.Sum(nil)) == string(t.h.Sum(nil))})
	}
	return rep, nil
}

// tally counts the records of each kind and digests their encodings in
// the order they come.
type tally struct {
	kinds map[string]*kindTally
}

type kindTally struct {
	n int64
	h hash.Hash
}

func newTally() *tally {
	t := &tally{kinds: map[string]*kindTally{}}
	for _, k := range Kinds {
		t.kinds[k] = &kindTally{h: sha256.New()}
	}
	return t
}

// note counts one record of kind k with its encoding v.
func (t *tally) note(k string, v []byte) {
	kt := t.kinds[k]
	kt.n++
	var l [8]byte
	binary.BigEndian.PutUint64(l[:], uint64(len(v)))
	kt.h.Write(l[:])
	kt.h.Write(v)
}

func (t *tally) add(b *Batch) error {
	enc := func(k string, x any) ([]byte, error) {
		v, err := json.Marshal(x)
		if err != nil {
			return nil, fmt.Errorf("encode a record of %s: %w", k, err)
		}
		t.note(k, v)
		return v, nil
	}
	for _, l := range b.Leases {
		v, err := enc(KindLeases, l)
		if err != nil {
			return err
		}
		if l.State == leases.StateRevoking || l.State == leases.StateIrrevocable {
			t.note(KindRevocationQueue, v)
		}
	}
	for _, g := range b.Grants {
		if _, err := enc(KindGrants, g); err != nil {
			return err
		}
	}
	for _, a := range b.Agents {
		v, err := enc(KindAgents, a)
		if err != nil {
			return err
		}
		if a.Quarantine != nil {
			t.note(KindQuarantined, v)
		}
	}
	for _, s := range b.Signals {
		v, err := enc(KindSignals, s)
		if err != nil {
			return err
		}
		if s.Pending() {
			t.note(KindPendingSignals, v)
		}
	}
	for _, j := range b.Jobs {
		if _, err := enc(KindJobs, j); err != nil {
			return err
		}
	}
	for _, r := range b.Replay {
		t.note(KindReplay, fmt.Appendf(nil, "%s %d", r.Key, r.Expires.Unix()))
	}
	for _, r := range b.Audit {
		t.note(KindAudit, fmt.Appendf(append(binary.BigEndian.AppendUint64(nil, r.Seq), ' '), "%s", r.Stored))
		var rec struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(r.Stored, &rec); err != nil {
			return fmt.Errorf("audit record %d cannot be decoded: %w", r.Seq, err)
		}
		if rec.Kind == audit.KindCheckpoint {
			t.note(KindCheckpoints, r.Stored)
		}
	}
	return nil
}
