package bolt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases/audit"
)

var a0 = time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)

// mustOpenAuditDB opens a bbolt file in tb.TempDir() with the audit buckets and
// closes it when the test ends.
func mustOpenAuditDB(tb testing.TB) *bbolt.DB {
	tb.Helper()
	db, err := bbolt.Open(filepath.Join(tb.TempDir(), "audit.db"), 0o600, nil)
	if err != nil {
		tb.Fatalf("open bbolt: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Update(initAudit); err != nil {
		tb.Fatalf("init audit buckets: %v", err)
	}
	return db
}

// entry returns the i-th entry of a varied test log: kinds, agents and
// leases cycle with different periods.
func auditEntry(i int) audit.Entry {
	kinds := []string{audit.KindMint, audit.KindRenew, audit.KindRelease}
	return audit.Entry{
		Kind:     kinds[i%3],
		Actor:    audit.Actor{Type: audit.ActorAgent, ID: fmt.Sprint("agent-", i%2)},
		Decision: audit.Allow,
		Reason:   fmt.Sprint("reason ", i),
		AgentID:  fmt.Sprint("agent-", i%2),
		Role:     "demo",
		LeaseID:  fmt.Sprint("lease-", i%4),
		Details:  map[string]string{"i": fmt.Sprint(i)},
	}
}

// mustAppendN appends n entries, one transaction each, a second apart.
func mustAppendN(tb testing.TB, db *bbolt.DB, n int) []audit.Record {
	tb.Helper()
	var out []audit.Record
	for i := range n {
		err := db.Update(func(tx *bbolt.Tx) error {
			recs, err := appendAudit(tx, a0.Add(time.Duration(i)*time.Second), nil, auditEntry(i))
			out = append(out, recs...)
			return err
		})
		if err != nil {
			tb.Fatalf("append: %v", err)
		}
	}
	return out
}

func mustVerify(tb testing.TB, db *bbolt.DB) audit.VerifyResult {
	tb.Helper()
	res, err := verifyAudit(db, "", nil)
	if err != nil {
		tb.Fatalf("Verify: %v", err)
	}
	return res
}

func TestAppendAndVerify(t *testing.T) {
	cases := []struct {
		name   string
		perTx  []int // entries appended by each transaction
		wantN  uint64
		wantOK bool
	}{
		{"empty log", nil, 0, true},
		{"one record", []int{1}, 1, true},
		{"one per transaction", []int{1, 1, 1, 1, 1}, 5, true},
		{"several per transaction", []int{3, 1, 4}, 8, true},
		{"a transaction with no entries", []int{2, 0, 2}, 4, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := mustOpenAuditDB(t)
			var all []audit.Record
			i := 0
			for _, n := range tc.perTx {
				var es []audit.Entry
				for range n {
					es = append(es, auditEntry(i))
					i++
				}
				err := db.Update(func(tx *bbolt.Tx) error {
					recs, err := appendAudit(tx, a0.In(time.FixedZone("X", 3600)), nil, es...)
					all = append(all, recs...)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			res := mustVerify(t, db)
			if res.OK != tc.wantOK || res.Records != tc.wantN || res.HeadSeq != tc.wantN || res.Problem != "" {
				t.Fatalf("Verify = %+v, want OK with %d records", res, tc.wantN)
			}
			wantHead := strings.Repeat("0", 64)
			if len(all) > 0 {
				wantHead = all[len(all)-1].Hash
			}
			if res.HeadHash != wantHead {
				t.Errorf("HeadHash = %s, want the last record's hash %s", res.HeadHash, wantHead)
			}
			// The chain as returned by AppendTx and as stored.
			stored, err := listAudit(db, "", audit.Filter{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(stored) != len(all) {
				t.Fatalf("stored %d records, AppendTx returned %d", len(stored), len(all))
			}
			prev := strings.Repeat("0", 64)
			for i, r := range stored {
				if r.Seq != uint64(i+1) || r.PrevHash != prev || r.Hash != all[i].Hash || r.Time.Location() != time.UTC || !r.Time.Equal(a0) {
					t.Errorf("record %d = seq %d prev %s hash %s time %v; want seq %d prev %s hash %s time %v UTC",
						i, r.Seq, r.PrevHash, r.Hash, r.Time, i+1, prev, all[i].Hash, a0)
				}
				if r.Reason != auditEntry(i).Reason {
					t.Errorf("record %d reason = %q, want %q", r.Seq, r.Reason, auditEntry(i).Reason)
				}
				prev = r.Hash
			}
		})
	}
}

// TestAppendRolledBack: records appended in a transaction that does not
// commit leave no trace, and the sink never sees them.
func TestAppendRolledBack(t *testing.T) {
	db := mustOpenAuditDB(t)
	mustAppendN(t, db, 2)
	sink := &recordingSink{}
	errFail := errors.New("the state change failed (injected)")
	err := db.Update(func(tx *bbolt.Tx) error {
		if _, err := appendAudit(tx, a0, sink, auditEntry(2), auditEntry(3)); err != nil {
			return err
		}
		return errFail
	})
	if !errors.Is(err, errFail) {
		t.Fatalf("Update = %v", err)
	}
	if got := sink.seqs(); len(got) != 0 {
		t.Errorf("sink received uncommitted records %v", got)
	}
	if res := mustVerify(t, db); !res.OK || res.Records != 2 {
		t.Errorf("Verify after a rollback = %+v, want OK with 2 records", res)
	}
	// The next commit continues the chain and reaches the sink.
	err = db.Update(func(tx *bbolt.Tx) error {
		_, err := appendAudit(tx, a0, sink, auditEntry(4))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := sink.seqs(); !slices.Equal(got, []uint64{3}) {
		t.Errorf("sink received %v, want [3]", got)
	}
	if res := mustVerify(t, db); !res.OK || res.Records != 3 {
		t.Errorf("Verify = %+v, want OK with 3 records", res)
	}
}

type recordingSink struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (s *recordingSink) Write(recs []audit.Record) {
	s.mu.Lock()
	s.recs = append(s.recs, recs...)
	s.mu.Unlock()
}

func (s *recordingSink) seqs() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for _, r := range s.recs {
		out = append(out, r.Seq)
	}
	return out
}

func TestAuditList(t *testing.T) {
	db := mustOpenAuditDB(t)
	mustAppendN(t, db, 12)
	// Entry i is record i+1: kind cycles mint, renew, release; agent-<i%2>;
	// lease-<i%4>.
	cases := []struct {
		name string
		f    audit.Filter
		want []uint64
	}{
		{"everything in order", audit.Filter{}, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{"after", audit.Filter{AfterSeq: 9}, []uint64{10, 11, 12}},
		{"after the end", audit.Filter{AfterSeq: 12}, nil},
		{"limit", audit.Filter{Limit: 2}, []uint64{1, 2}},
		{"after with limit", audit.Filter{AfterSeq: 4, Limit: 3}, []uint64{5, 6, 7}},
		{"kind", audit.Filter{Kind: audit.KindRenew}, []uint64{2, 5, 8, 11}},
		{"agent", audit.Filter{AgentID: "agent-1"}, []uint64{2, 4, 6, 8, 10, 12}},
		{"lease", audit.Filter{LeaseID: "lease-3"}, []uint64{4, 8, 12}},
		{"kind and agent", audit.Filter{Kind: audit.KindMint, AgentID: "agent-0"}, []uint64{1, 7}},
		{"kind and lease with limit", audit.Filter{Kind: audit.KindRelease, LeaseID: "lease-2", Limit: 1}, []uint64{3}},
		{"unknown kind", audit.Filter{Kind: "nope"}, nil},
		{"newest", audit.Filter{Newest: true, Limit: 3}, []uint64{12, 11, 10}},
		{"newest ignores after", audit.Filter{Newest: true, AfterSeq: 10, Limit: 3}, []uint64{12, 11, 10}},
		{"newest before", audit.Filter{Newest: true, BeforeSeq: 5}, []uint64{4, 3, 2, 1}},
		{"newest before the first", audit.Filter{Newest: true, BeforeSeq: 1}, nil},
		{"newest before past the end", audit.Filter{Newest: true, BeforeSeq: 100, Limit: 2}, []uint64{12, 11}},
		{"newest with kind", audit.Filter{Newest: true, Kind: audit.KindRelease}, []uint64{12, 9, 6, 3}},
		{"newest before with lease", audit.Filter{Newest: true, BeforeSeq: 8, LeaseID: "lease-3"}, []uint64{4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := listAudit(db, "", tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, r := range recs {
				got = append(got, r.Seq)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("List(%+v) = %v, want %v", tc.f, got, tc.want)
			}
		})
	}
}

func TestAuditListLimits(t *testing.T) {
	db := mustOpenAuditDB(t)
	err := db.Update(func(tx *bbolt.Tx) error {
		es := make([]audit.Entry, 1200)
		for i := range es {
			es[i] = auditEntry(i)
		}
		_, err := appendAudit(tx, a0, nil, es...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ limit, want int }{{0, 100}, {-5, 100}, {1000, 1000}, {5000, 1000}} {
		recs, err := listAudit(db, "", audit.Filter{Limit: tc.limit})
		if err != nil || len(recs) != tc.want {
			t.Errorf("List(limit %d) = %d records, %v; want %d", tc.limit, len(recs), err, tc.want)
		}
	}
	// Paging newest first with BeforeSeq walks the whole log once.
	var seen []uint64
	f := audit.Filter{Newest: true, Limit: 500}
	for {
		recs, err := listAudit(db, "", f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			seen = append(seen, r.Seq)
		}
		if len(recs) < f.Limit {
			break
		}
		f.BeforeSeq = recs[len(recs)-1].Seq
	}
	if len(seen) != 1200 || seen[0] != 1200 || seen[1199] != 1 || !slices.IsSortedFunc(seen, func(a, b uint64) int { return int(b) - int(a) }) {
		t.Errorf("paged %d records from %d to %d, want 1200 from 1200 down to 1", len(seen), seen[0], seen[len(seen)-1])
	}
}

// rewrite decodes record seq into a generic map, lets mutate change it and
// stores it back, bypassing AppendTx as an attacker with the file would.
func rewrite(tx *bbolt.Tx, seq uint64, mutate func(m map[string]any)) error {
	b := tx.Bucket(bucketAuditRecords)
	var m map[string]any
	if err := json.Unmarshal(b.Get(audit.SeqKey(seq)), &m); err != nil {
		return err
	}
	mutate(m)
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put(audit.SeqKey(seq), v)
}

// rehash changes record seq with mutate and recomputes its hash, so that
// the record is consistent with itself.
func rehash(tx *bbolt.Tx, seq uint64, mutate func(r *audit.Record)) (string, error) {
	b := tx.Bucket(bucketAuditRecords)
	var r audit.Record
	if err := json.Unmarshal(b.Get(audit.SeqKey(seq)), &r); err != nil {
		return "", err
	}
	mutate(&r)
	sum, err := r.Sum()
	if err != nil {
		return "", err
	}
	r.Hash = hex.EncodeToString(sum[:])
	v, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	return r.Hash, b.Put(audit.SeqKey(seq), v)
}

func TestVerifyDetectsTampering(t *testing.T) {
	const n = 5
	cases := []struct {
		name         string
		tamper       func(tx *bbolt.Tx) error
		wantFirstBad uint64
		wantProblem  []string // substrings of Problem
	}{
		{
			name: "changed field of a middle record",
			tamper: func(tx *bbolt.Tx) error {
				return rewrite(tx, 3, func(m map[string]any) { m["decision"] = audit.Deny })
			},
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "hash does not match its contents", "changed"},
		},
		{
			name: "changed time",
			tamper: func(tx *bbolt.Tx) error {
				return rewrite(tx, 2, func(m map[string]any) { m["time"] = a0.Add(-time.Hour).Format(time.RFC3339Nano) })
			},
			wantFirstBad: 2,
			wantProblem:  []string{"record 2", "changed"},
		},
		{
			name: "changed first record",
			tamper: func(tx *bbolt.Tx) error {
				return rewrite(tx, 1, func(m map[string]any) { m["agent_id"] = "someone-else" })
			},
			wantFirstBad: 1,
			wantProblem:  []string{"record 1", "changed"},
		},
		{
			name: "garbage value",
			tamper: func(tx *bbolt.Tx) error {
				return tx.Bucket(bucketAuditRecords).Put(audit.SeqKey(4), []byte("not json"))
			},
			wantFirstBad: 4,
			wantProblem:  []string{"record 4", "cannot be decoded"},
		},
		{
			name: "unknown field added",
			tamper: func(tx *bbolt.Tx) error {
				return rewrite(tx, 3, func(m map[string]any) { m["approved_by"] = "mallory" })
			},
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "unknown field", "approved_by"},
		},
		{
			name:         "deleted middle record",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketAuditRecords).Delete(audit.SeqKey(3)) },
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "missing", "deleted"},
		},
		{
			name:         "deleted first record",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketAuditRecords).Delete(audit.SeqKey(1)) },
			wantFirstBad: 1,
			wantProblem:  []string{"record 1", "missing", "deleted"},
		},
		{
			name:         "deleted last record",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketAuditRecords).Delete(audit.SeqKey(n)) },
			wantFirstBad: n,
			wantProblem:  []string{"ends at record 4", "head says 5", "deleted from the end"},
		},
		{
			name: "deleted the last two records",
			tamper: func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketAuditRecords)
				return errors.Join(b.Delete(audit.SeqKey(n)), b.Delete(audit.SeqKey(n-1)))
			},
			wantFirstBad: n - 1,
			wantProblem:  []string{"deleted from the end"},
		},
		{
			name: "swapped two records",
			tamper: func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketAuditRecords)
				v2 := slices.Clone(b.Get(audit.SeqKey(2)))
				v4 := slices.Clone(b.Get(audit.SeqKey(4)))
				return errors.Join(b.Put(audit.SeqKey(2), v4), b.Put(audit.SeqKey(4), v2))
			},
			wantFirstBad: 2,
			wantProblem:  []string{"record 2", "holds record 4", "reordered"},
		},
		{
			name: "changed and re-hashed middle record",
			tamper: func(tx *bbolt.Tx) error {
				_, err := rehash(tx, 3, func(r *audit.Record) { r.Decision = audit.Deny })
				return err
			},
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "re-hashed", "record 4"},
		},
		{
			name: "changed and re-hashed last record",
			tamper: func(tx *bbolt.Tx) error {
				_, err := rehash(tx, n, func(r *audit.Record) { r.Reason = "nothing to see" })
				return err
			},
			wantFirstBad: n,
			wantProblem:  []string{"record 5", "head", "re-hashed"},
		},
		{
			name: "changed a record and re-hashed the rest of the chain",
			tamper: func(tx *bbolt.Tx) error {
				prev, err := rehash(tx, 3, func(r *audit.Record) { r.Decision = audit.Deny })
				for seq := uint64(4); seq <= n && err == nil; seq++ {
					prev, err = rehash(tx, seq, func(r *audit.Record) { r.PrevHash = prev })
				}
				return err
			},
			wantFirstBad: n, // only the head still knows the true chain
			wantProblem:  []string{"record 5", "head", "re-hashed"},
		},
		{
			name: "record appended without the log",
			tamper: func(tx *bbolt.Tx) error {
				var last audit.Record
				if err := json.Unmarshal(tx.Bucket(bucketAuditRecords).Get(audit.SeqKey(n)), &last); err != nil {
					return err
				}
				forged := audit.Record{Seq: n + 1, Time: a0, Entry: auditEntry(9), PrevHash: last.Hash}
				sum, err := forged.Sum()
				if err != nil {
					return err
				}
				forged.Hash = hex.EncodeToString(sum[:])
				v, _ := json.Marshal(forged)
				return tx.Bucket(bucketAuditRecords).Put(audit.SeqKey(n+1), v)
			},
			wantFirstBad: n + 1,
			wantProblem:  []string{"record 6", "head", "appended"},
		},
		{
			name:         "prev_hash that is not hex",
			tamper:       func(tx *bbolt.Tx) error { return rewrite(tx, 2, func(m map[string]any) { m["prev_hash"] = "zz" }) },
			wantFirstBad: 2,
			wantProblem:  []string{"record 2", "prev_hash"},
		},
		{
			name: "malformed key",
			tamper: func(tx *bbolt.Tx) error {
				return tx.Bucket(bucketAuditRecords).Put([]byte("zzz"), []byte("{}"))
			},
			wantFirstBad: n + 1,
			wantProblem:  []string{"malformed key"},
		},
		{
			name:         "corrupt head",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketAuditMeta).Put(keyAuditHead, []byte{1, 2, 3}) },
			wantFirstBad: 0,
			wantProblem:  []string{"head is corrupt"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := mustOpenAuditDB(t)
			mustAppendN(t, db, n)
			if res := mustVerify(t, db); !res.OK {
				t.Fatalf("untouched log does not verify: %s", res.Problem)
			}
			if err := db.Update(tc.tamper); err != nil {
				t.Fatalf("tamper: %v", err)
			}
			res := mustVerify(t, db)
			if res.OK {
				t.Fatalf("Verify did not detect the tampering: %+v", res)
			}
			if res.FirstBad != tc.wantFirstBad {
				t.Errorf("FirstBad = %d, want %d (problem: %s)", res.FirstBad, tc.wantFirstBad, res.Problem)
			}
			for _, want := range tc.wantProblem {
				if !strings.Contains(res.Problem, want) {
					t.Errorf("Problem %q does not say %q", res.Problem, want)
				}
			}
		})
	}
}

// TestVerifyRequiresCanonicalBytes: the hash covers the stored bytes, so
// rewriting a record into bytes that decode to the same content (a
// duplicated key whose last value is the original, an escaped letter, a key
// in other case, whitespace, another key order) is tampering: a reader that
// keeps the first of two keys, or compares bytes, would see another record.
func TestVerifyRequiresCanonicalBytes(t *testing.T) {
	cases := []struct {
		name string
		edit func(v []byte) []byte
	}{
		{
			name: "duplicated key, original value last",
			edit: func(v []byte) []byte {
				return bytes.Replace(v, []byte(`"decision":"allow"`), []byte(`"decision":"deny","decision":"allow"`), 1)
			},
		},
		{
			name: "escaped letter",
			edit: func(v []byte) []byte {
				return bytes.Replace(v, []byte(`"role":"demo"`), []byte(`"role":"dem\u006f"`), 1)
			},
		},
		{
			name: "key in other case",
			edit: func(v []byte) []byte { return bytes.Replace(v, []byte(`"reason":`), []byte(`"Reason":`), 1) },
		},
		{
			name: "extra whitespace",
			edit: func(v []byte) []byte { return bytes.Replace(v, []byte(`"role":`), []byte(`"role": `), 1) },
		},
		{
			name: "reordered keys",
			edit: func(v []byte) []byte {
				var m map[string]any
				if err := json.Unmarshal(v, &m); err != nil {
					t.Fatal(err)
				}
				out, err := json.Marshal(m) // sorted keys
				if err != nil {
					t.Fatal(err)
				}
				return out
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := mustOpenAuditDB(t)
			mustAppendN(t, db, 3)
			err := db.Update(func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketAuditRecords)
				v := slices.Clone(b.Get(audit.SeqKey(2)))
				edited := tc.edit(slices.Clone(v))
				if bytes.Equal(edited, v) {
					t.Fatalf("the edit changed nothing in %s", v)
				}
				// The edit keeps the content: the record decodes to what
				// was appended.
				var before, after audit.Record
				if err := json.Unmarshal(v, &before); err != nil {
					return err
				}
				if err := json.Unmarshal(edited, &after); err != nil {
					return err
				}
				if !reflect.DeepEqual(before, after) {
					t.Fatalf("the edit changed the decoded record:\n%+v\n%+v", before, after)
				}
				return b.Put(audit.SeqKey(2), edited)
			})
			if err != nil {
				t.Fatal(err)
			}
			res := mustVerify(t, db)
			if res.OK {
				t.Fatalf("Verify accepted record 2 stored as non-canonical bytes: %+v", res)
			}
			if res.FirstBad != 2 || !strings.Contains(res.Problem, "record 2") {
				t.Errorf("FirstBad = %d, Problem = %q; want record 2 named", res.FirstBad, res.Problem)
			}
		})
	}
}
