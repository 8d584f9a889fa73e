package audit

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
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)

// MustOpenDB opens a bbolt file in tb.TempDir() with the audit buckets and
// closes it when the test ends.
func MustOpenDB(tb testing.TB) *bbolt.DB {
	tb.Helper()
	db, err := bbolt.Open(filepath.Join(tb.TempDir(), "audit.db"), 0o600, nil)
	if err != nil {
		tb.Fatalf("open bbolt: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Update(Init); err != nil {
		tb.Fatalf("init audit buckets: %v", err)
	}
	return db
}

// entry returns the i-th entry of a varied test log: kinds, agents and
// leases cycle with different periods.
func entry(i int) Entry {
	kinds := []string{KindMint, KindRenew, KindRelease}
	return Entry{
		Kind:     kinds[i%3],
		Actor:    Actor{Type: ActorAgent, ID: fmt.Sprint("agent-", i%2)},
		Decision: Allow,
		Reason:   fmt.Sprint("reason ", i),
		AgentID:  fmt.Sprint("agent-", i%2),
		Role:     "demo",
		LeaseID:  fmt.Sprint("lease-", i%4),
		Details:  map[string]string{"i": fmt.Sprint(i)},
	}
}

// mustAppendN appends n entries, one transaction each, a second apart.
func mustAppendN(tb testing.TB, db *bbolt.DB, n int) []Record {
	tb.Helper()
	var out []Record
	for i := range n {
		err := db.Update(func(tx *bbolt.Tx) error {
			recs, err := AppendTx(tx, t0.Add(time.Duration(i)*time.Second), nil, entry(i))
			out = append(out, recs...)
			return err
		})
		if err != nil {
			tb.Fatalf("append: %v", err)
		}
	}
	return out
}

func mustVerify(tb testing.TB, db *bbolt.DB) VerifyResult {
	tb.Helper()
	res, err := Verify(db)
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
			db := MustOpenDB(t)
			var all []Record
			i := 0
			for _, n := range tc.perTx {
				var es []Entry
				for range n {
					es = append(es, entry(i))
					i++
				}
				err := db.Update(func(tx *bbolt.Tx) error {
					recs, err := AppendTx(tx, t0.In(time.FixedZone("X", 3600)), nil, es...)
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
			stored, err := List(db, Filter{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(stored) != len(all) {
				t.Fatalf("stored %d records, AppendTx returned %d", len(stored), len(all))
			}
			prev := strings.Repeat("0", 64)
			for i, r := range stored {
				if r.Seq != uint64(i+1) || r.PrevHash != prev || r.Hash != all[i].Hash || r.Time.Location() != time.UTC || !r.Time.Equal(t0) {
					t.Errorf("record %d = seq %d prev %s hash %s time %v; want seq %d prev %s hash %s time %v UTC",
						i, r.Seq, r.PrevHash, r.Hash, r.Time, i+1, prev, all[i].Hash, t0)
				}
				if r.Reason != entry(i).Reason {
					t.Errorf("record %d reason = %q, want %q", r.Seq, r.Reason, entry(i).Reason)
				}
				prev = r.Hash
			}
		})
	}
}

// TestAppendRolledBack: records appended in a transaction that does not
// commit leave no trace, and the sink never sees them.
func TestAppendRolledBack(t *testing.T) {
	db := MustOpenDB(t)
	mustAppendN(t, db, 2)
	sink := &recordingSink{}
	errFail := errors.New("the state change failed (injected)")
	err := db.Update(func(tx *bbolt.Tx) error {
		if _, err := AppendTx(tx, t0, sink, entry(2), entry(3)); err != nil {
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
		_, err := AppendTx(tx, t0, sink, entry(4))
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
	recs []Record
}

func (s *recordingSink) Write(recs []Record) {
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

func TestList(t *testing.T) {
	db := MustOpenDB(t)
	mustAppendN(t, db, 12)
	// Entry i is record i+1: kind cycles mint, renew, release; agent-<i%2>;
	// lease-<i%4>.
	cases := []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"everything in order", Filter{}, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{"after", Filter{AfterSeq: 9}, []uint64{10, 11, 12}},
		{"after the end", Filter{AfterSeq: 12}, nil},
		{"limit", Filter{Limit: 2}, []uint64{1, 2}},
		{"after with limit", Filter{AfterSeq: 4, Limit: 3}, []uint64{5, 6, 7}},
		{"kind", Filter{Kind: KindRenew}, []uint64{2, 5, 8, 11}},
		{"agent", Filter{AgentID: "agent-1"}, []uint64{2, 4, 6, 8, 10, 12}},
		{"lease", Filter{LeaseID: "lease-3"}, []uint64{4, 8, 12}},
		{"kind and agent", Filter{Kind: KindMint, AgentID: "agent-0"}, []uint64{1, 7}},
		{"kind and lease with limit", Filter{Kind: KindRelease, LeaseID: "lease-2", Limit: 1}, []uint64{3}},
		{"unknown kind", Filter{Kind: "nope"}, nil},
		{"newest", Filter{Newest: true, Limit: 3}, []uint64{12, 11, 10}},
		{"newest ignores after", Filter{Newest: true, AfterSeq: 10, Limit: 3}, []uint64{12, 11, 10}},
		{"newest before", Filter{Newest: true, BeforeSeq: 5}, []uint64{4, 3, 2, 1}},
		{"newest before the first", Filter{Newest: true, BeforeSeq: 1}, nil},
		{"newest before past the end", Filter{Newest: true, BeforeSeq: 100, Limit: 2}, []uint64{12, 11}},
		{"newest with kind", Filter{Newest: true, Kind: KindRelease}, []uint64{12, 9, 6, 3}},
		{"newest before with lease", Filter{Newest: true, BeforeSeq: 8, LeaseID: "lease-3"}, []uint64{4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := List(db, tc.f)
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

func TestListLimits(t *testing.T) {
	db := MustOpenDB(t)
	err := db.Update(func(tx *bbolt.Tx) error {
		es := make([]Entry, 1200)
		for i := range es {
			es[i] = entry(i)
		}
		_, err := AppendTx(tx, t0, nil, es...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ limit, want int }{{0, 100}, {-5, 100}, {1000, 1000}, {5000, 1000}} {
		recs, err := List(db, Filter{Limit: tc.limit})
		if err != nil || len(recs) != tc.want {
			t.Errorf("List(limit %d) = %d records, %v; want %d", tc.limit, len(recs), err, tc.want)
		}
	}
	// Paging newest first with BeforeSeq walks the whole log once.
	var seen []uint64
	f := Filter{Newest: true, Limit: 500}
	for {
		recs, err := List(db, f)
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
	b := tx.Bucket(bucketRecords)
	var m map[string]any
	if err := json.Unmarshal(b.Get(seqKey(seq)), &m); err != nil {
		return err
	}
	mutate(m)
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put(seqKey(seq), v)
}

// rehash changes record seq with mutate and recomputes its hash, so that
// the record is consistent with itself.
func rehash(tx *bbolt.Tx, seq uint64, mutate func(r *Record)) (string, error) {
	b := tx.Bucket(bucketRecords)
	var r Record
	if err := json.Unmarshal(b.Get(seqKey(seq)), &r); err != nil {
		return "", err
	}
	mutate(&r)
	sum, err := r.computeHash()
	if err != nil {
		return "", err
	}
	r.Hash = hex.EncodeToString(sum[:])
	v, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	return r.Hash, b.Put(seqKey(seq), v)
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
				return rewrite(tx, 3, func(m map[string]any) { m["decision"] = Deny })
			},
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "hash does not match its contents", "changed"},
		},
		{
			name: "changed time",
			tamper: func(tx *bbolt.Tx) error {
				return rewrite(tx, 2, func(m map[string]any) { m["time"] = t0.Add(-time.Hour).Format(time.RFC3339Nano) })
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
				return tx.Bucket(bucketRecords).Put(seqKey(4), []byte("not json"))
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
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(3)) },
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "missing", "deleted"},
		},
		{
			name:         "deleted first record",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(1)) },
			wantFirstBad: 1,
			wantProblem:  []string{"record 1", "missing", "deleted"},
		},
		{
			name:         "deleted last record",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(n)) },
			wantFirstBad: n,
			wantProblem:  []string{"ends at record 4", "head says 5", "deleted from the end"},
		},
		{
			name: "deleted the last two records",
			tamper: func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketRecords)
				return errors.Join(b.Delete(seqKey(n)), b.Delete(seqKey(n-1)))
			},
			wantFirstBad: n - 1,
			wantProblem:  []string{"deleted from the end"},
		},
		{
			name: "swapped two records",
			tamper: func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketRecords)
				v2 := slices.Clone(b.Get(seqKey(2)))
				v4 := slices.Clone(b.Get(seqKey(4)))
				return errors.Join(b.Put(seqKey(2), v4), b.Put(seqKey(4), v2))
			},
			wantFirstBad: 2,
			wantProblem:  []string{"record 2", "holds record 4", "reordered"},
		},
		{
			name: "changed and re-hashed middle record",
			tamper: func(tx *bbolt.Tx) error {
				_, err := rehash(tx, 3, func(r *Record) { r.Decision = Deny })
				return err
			},
			wantFirstBad: 3,
			wantProblem:  []string{"record 3", "re-hashed", "record 4"},
		},
		{
			name: "changed and re-hashed last record",
			tamper: func(tx *bbolt.Tx) error {
				_, err := rehash(tx, n, func(r *Record) { r.Reason = "nothing to see" })
				return err
			},
			wantFirstBad: n,
			wantProblem:  []string{"record 5", "head", "re-hashed"},
		},
		{
			name: "changed a record and re-hashed the rest of the chain",
			tamper: func(tx *bbolt.Tx) error {
				prev, err := rehash(tx, 3, func(r *Record) { r.Decision = Deny })
				for seq := uint64(4); seq <= n && err == nil; seq++ {
					prev, err = rehash(tx, seq, func(r *Record) { r.PrevHash = prev })
				}
				return err
			},
			wantFirstBad: n, // only the head still knows the true chain
			wantProblem:  []string{"record 5", "head", "re-hashed"},
		},
		{
			name: "record appended without the log",
			tamper: func(tx *bbolt.Tx) error {
				var last Record
				if err := json.Unmarshal(tx.Bucket(bucketRecords).Get(seqKey(n)), &last); err != nil {
					return err
				}
				forged := Record{Seq: n + 1, Time: t0, Entry: entry(9), PrevHash: last.Hash}
				sum, err := forged.computeHash()
				if err != nil {
					return err
				}
				forged.Hash = hex.EncodeToString(sum[:])
				v, _ := json.Marshal(forged)
				return tx.Bucket(bucketRecords).Put(seqKey(n+1), v)
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
				return tx.Bucket(bucketRecords).Put([]byte("zzz"), []byte("{}"))
			},
			wantFirstBad: n + 1,
			wantProblem:  []string{"malformed key"},
		},
		{
			name:         "corrupt head",
			tamper:       func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyHead, []byte{1, 2, 3}) },
			wantFirstBad: 0,
			wantProblem:  []string{"head is corrupt"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := MustOpenDB(t)
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
			db := MustOpenDB(t)
			mustAppendN(t, db, 3)
			err := db.Update(func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketRecords)
				v := slices.Clone(b.Get(seqKey(2)))
				edited := tc.edit(slices.Clone(v))
				if bytes.Equal(edited, v) {
					t.Fatalf("the edit changed nothing in %s", v)
				}
				// The edit keeps the content: the record decodes to what
				// was appended.
				var before, after Record
				if err := json.Unmarshal(v, &before); err != nil {
					return err
				}
				if err := json.Unmarshal(edited, &after); err != nil {
					return err
				}
				if !reflect.DeepEqual(before, after) {
					t.Fatalf("the edit changed the decoded record:\n%+v\n%+v", before, after)
				}
				return b.Put(seqKey(2), edited)
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
