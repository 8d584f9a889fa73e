package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/leasetest"
)

func TestLifecycle(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	l := leasetest.NewPending(t0, "agent-1", 15*time.Minute)
	l.Lineage = leases.Lineage{Issuer: "https://issuer", JTI: "att-1", PodUID: "pod-1"}
	endAt := t0.Add(5 * time.Minute)
	doneAt := endAt.Add(time.Second)

	steps := []struct {
		name       string
		do         func() (*leases.Lease, error)
		wantState  leases.State
		wantReason leases.State
		wantEnded  time.Time
		wantCounts map[leases.State]int64
		wantKinds  []string
		wantExpiry bool // the lease is in the expiry index
		wantDue    bool // the lease is in the revocation queue
	}{
		{
			name: "create pending",
			do: func() (*leases.Lease, error) {
				if err := s.CreatePending(ctx, l); err != nil {
					return nil, err
				}
				return s.Get(ctx, l.ID)
			},
			wantState:  leases.StatePending,
			wantCounts: map[leases.State]int64{leases.StatePending: 1},
			wantKinds:  []string{},
		},
		{
			name: "activate",
			do: func() (*leases.Lease, error) {
				return s.Activate(ctx, l.ID, leases.Activation{Handle: "accessor-1", Details: map[string]string{"policy": "ro"}}, t0.Add(time.Second),
					audit.Entry{Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAgent, ID: "agent-1"}, Decision: audit.Allow})
			},
			wantState:  leases.StateActive,
			wantCounts: map[leases.State]int64{leases.StateActive: 1},
			wantKinds:  []string{audit.KindMint},
			wantExpiry: true,
		},
		{
			name: "end released",
			do: func() (*leases.Lease, error) {
				return s.End(ctx, l.ID, leases.StateReleased, endAt,
					audit.Entry{Kind: audit.KindRelease, Actor: audit.Actor{Type: audit.ActorAgent, ID: "agent-1"}})
			},
			wantState:  leases.StateRevoking,
			wantReason: leases.StateReleased,
			wantEnded:  endAt,
			wantCounts: map[leases.State]int64{leases.StateRevoking: 1},
			wantKinds:  []string{audit.KindMint, audit.KindRelease},
			wantDue:    true,
		},
		{
			name: "revocation done",
			do: func() (*leases.Lease, error) {
				return s.RevocationDone(ctx, l.ID, leases.StateReleased, doneAt, audit.Entry{Kind: audit.KindRevoked, Actor: audit.SystemActor})
			},
			wantState:  leases.StateReleased,
			wantEnded:  endAt, // the lease ended when it was released, not when the backend confirmed
			wantCounts: map[leases.State]int64{leases.StateReleased: 1},
			wantKinds:  []string{audit.KindMint, audit.KindRelease, audit.KindRevoked},
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			got, err := st.do()
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			stored := leasetest.MustGet(t, s, l.ID)
			if !reflect.DeepEqual(got, stored) {
				t.Errorf("returned lease differs from the stored one:\n got    %+v\n stored %+v", got, stored)
			}
			if stored.State != st.wantState || stored.EndReason != st.wantReason || !stored.EndedAt.Equal(st.wantEnded) {
				t.Errorf("state, end reason, ended = %s, %q, %v; want %s, %q, %v",
					stored.State, stored.EndReason, stored.EndedAt, st.wantState, st.wantReason, st.wantEnded)
			}
			if st.wantState != leases.StatePending && stored.Handle != "accessor-1" {
				t.Errorf("Handle = %q, want it kept as accessor-1", stored.Handle)
			}
			leasetest.WantCounts(t, s, st.wantCounts)
			if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, st.wantKinds) {
				t.Errorf("audit kinds for the lease = %v, want %v", kinds, st.wantKinds)
			}
			next, ok, err := s.NextExpiry()
			if err != nil || ok != st.wantExpiry || (ok && !next.Equal(l.ExpiresAt)) {
				t.Errorf("NextExpiry() = %v, %v, %v; want in index: %v at %v", next, ok, err, st.wantExpiry, l.ExpiresAt)
			}
			due, err := s.DueRevocations(t0.Add(24*time.Hour), 10)
			if err != nil {
				t.Fatal(err)
			}
			if inQueue := len(due) == 1 && due[0].ID == l.ID; inQueue != st.wantDue || len(due) > 1 {
				t.Errorf("DueRevocations = %d leases, want the lease queued: %v", len(due), st.wantDue)
			}
			leasetest.MustVerifyAudit(t, s)
		})
	}

	// Every record carries the lease, agent and role even though the
	// callers left them empty, and the time of its change.
	recs, err := listAudit(s.db, "", audit.Filter{LeaseID: l.ID})
	if err != nil {
		t.Fatal(err)
	}
	wantTimes := []time.Time{t0.Add(time.Second), endAt, doneAt}
	for i, r := range recs {
		if r.AgentID != "agent-1" || r.Role != "demo" || !r.Time.Equal(wantTimes[i]) {
			t.Errorf("record %d = agent %q role %q time %v; want agent-1, demo, %v", r.Seq, r.AgentID, r.Role, r.Time, wantTimes[i])
		}
	}
	if res := leasetest.MustVerifyAudit(t, s); res.Records != 3 {
		t.Errorf("audit log has %d records, want 3 (one per change)", res.Records)
	}
}

// TestRefusedChanges checks operations that must fail, with the right error,
// and leave the lease and the audit log exactly as they were.
func TestRefusedChanges(t *testing.T) {
	ctx := context.Background()
	entry := audit.Entry{Kind: audit.KindRenew, Actor: audit.Actor{Type: audit.ActorAgent}}
	cases := []struct {
		name string
		// setup returns the id to operate on.
		setup   func(t *testing.T, s *Store) string
		op      func(s *Store, id string) error
		wantErr error // nil: any error
	}{
		{
			name: "activate an active lease",
			setup: func(t *testing.T, s *Store) string {
				return leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour)).ID
			},
			op:      activateOp,
			wantErr: leases.ErrState,
		},
		{
			name: "activate a revoking lease",
			setup: func(t *testing.T, s *Store) string {
				l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
				return leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0).ID
			},
			op:      activateOp,
			wantErr: leases.ErrState,
		},
		{
			name:    "activate an unknown lease",
			setup:   func(t *testing.T, s *Store) string { return leases.NewID(t0) },
			op:      activateOp,
			wantErr: leases.ErrNotFound,
		},
		{
			name:  "get an unknown lease",
			setup: func(t *testing.T, s *Store) string { return leases.NewID(t0) },
			op: func(s *Store, id string) error {
				_, err := s.Get(ctx, id)
				return err
			},
			wantErr: leases.ErrNotFound,
		},
		{
			name: "renew a pending lease",
			setup: func(t *testing.T, s *Store) string {
				l := leasetest.NewPending(t0, "a", time.Hour)
				leasetest.MustCreate(t, s, l)
				return l.ID
			},
			op: func(s *Store, id string) error {
				_, err := s.Renew(ctx, id, t0, t0.Add(2*time.Hour), entry)
				return err
			},
			wantErr: leases.ErrState,
		},
		{
			name: "renew at the instant of expiry",
			setup: func(t *testing.T, s *Store) string {
				return leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour)).ID
			},
			op: func(s *Store, id string) error {
				_, err := s.Renew(ctx, id, t0.Add(time.Hour), t0.Add(2*time.Hour), entry)
				return err
			},
			wantErr: leases.ErrState,
		},
		{
			name: "renew past expiry",
			setup: func(t *testing.T, s *Store) string {
				return leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour)).ID
			},
			op: func(s *Store, id string) error {
				_, err := s.Renew(ctx, id, t0.Add(time.Hour+time.Second), t0.Add(2*time.Hour), entry)
				return err
			},
			wantErr: leases.ErrState,
		},
		{
			name: "renew a released lease",
			setup: func(t *testing.T, s *Store) string {
				l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
				return leasetest.MustEnd(t, s, l.ID, leases.StateReleased, t0).ID
			},
			op: func(s *Store, id string) error {
				_, err := s.Renew(ctx, id, t0, t0.Add(2*time.Hour), entry)
				return err
			},
			wantErr: leases.ErrState,
		},
		{
			name: "end for a reason that is not terminal",
			setup: func(t *testing.T, s *Store) string {
				return leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour)).ID
			},
			op: func(s *Store, id string) error {
				_, err := s.End(ctx, id, leases.StateRevoking, t0, entry)
				return err
			},
		},
		{
			name: "create a lease that already exists",
			setup: func(t *testing.T, s *Store) string {
				return leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour)).ID
			},
			op: func(s *Store, id string) error {
				l := leasetest.NewPending(t0, "intruder", time.Hour)
				l.ID = id
				return s.CreatePending(ctx, l)
			},
		},
		{
			name:  "create a lease that is not pending",
			setup: func(t *testing.T, s *Store) string { return leases.NewID(t0) },
			op: func(s *Store, id string) error {
				l := leasetest.NewPending(t0, "a", time.Hour)
				l.ID, l.State = id, leases.StateActive
				return s.CreatePending(ctx, l)
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := MustOpenStore(t)
			id := tc.setup(t, s)
			before, _ := s.Get(ctx, id)
			countsBefore := leasetest.MustCounts(t, s)
			headBefore := leasetest.MustVerifyAudit(t, s)

			err := tc.op(s, id)
			if err == nil {
				t.Fatal("got no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			after, _ := s.Get(ctx, id)
			if !reflect.DeepEqual(before, after) {
				t.Errorf("the lease changed:\n before %+v\n after  %+v", before, after)
			}
			if got := leasetest.MustCounts(t, s); !reflect.DeepEqual(got, countsBefore) {
				t.Errorf("counts changed from %v to %v", countsBefore, got)
			}
			if head := leasetest.MustVerifyAudit(t, s); head.HeadSeq != headBefore.HeadSeq {
				t.Errorf("audit log grew from %d to %d records", headBefore.HeadSeq, head.HeadSeq)
			}
		})
	}
}

func activateOp(s *Store, id string) error {
	_, err := s.Activate(context.Background(), id, leases.Activation{Handle: "other"}, t0, audit.Entry{Kind: audit.KindMint})
	return err
}

func TestRenewMovesExpiry(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	a := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", 10*time.Minute))
	b := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "b", 20*time.Minute))

	wantNext := func(want time.Time) {
		t.Helper()
		next, ok, err := s.NextExpiry()
		if err != nil || !ok || !next.Equal(want) {
			t.Fatalf("NextExpiry() = %v, %v, %v; want %v", next, ok, err, want)
		}
	}
	wantNext(a.ExpiresAt)

	renewed, err := s.Renew(ctx, a.ID, t0.Add(5*time.Minute), t0.Add(30*time.Minute),
		audit.Entry{Kind: audit.KindRenew, Actor: audit.Actor{Type: audit.ActorAgent, ID: "a"}, Decision: audit.Allow})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.RenewCount != 1 || !renewed.ExpiresAt.Equal(t0.Add(30*time.Minute)) || renewed.State != leases.StateActive {
		t.Errorf("renewed lease = count %d, expires %v, %s; want 1, %v, active", renewed.RenewCount, renewed.ExpiresAt, renewed.State, t0.Add(30*time.Minute))
	}
	// a no longer expires first: its old index entry is gone.
	wantNext(b.ExpiresAt)
	if got := leasetest.AuditKinds(t, s, a.ID); !slices.Equal(got, []string{audit.KindMint, audit.KindRenew}) {
		t.Errorf("audit kinds = %v, want mint then renew", got)
	}
	// Expiring everything up to b's expiry leaves a alone.
	expired, err := s.ExpireDue(ctx, b.ExpiresAt, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(expired) != 1 || expired[0].ID != b.ID {
		t.Fatalf("ExpireDue expired %d leases, want only b", len(expired))
	}
	wantNext(renewed.ExpiresAt)
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateActive: 1, leases.StateExpired: 1})
}

func TestEndTwiceIsHarmless(t *testing.T) {
	for _, reason := range []leases.State{leases.StateReleased, leases.StateRevoked, leases.StateExpired} {
		t.Run(string(reason), func(t *testing.T) {
			s := MustOpenStore(t)
			l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
			first := leasetest.MustEnd(t, s, l.ID, reason, t0.Add(time.Minute))
			second := leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0.Add(2*time.Minute))
			if !reflect.DeepEqual(first, second) {
				t.Errorf("second End changed the lease:\n first  %+v\n second %+v", first, second)
			}
			if second.EndReason != reason || !second.EndedAt.Equal(t0.Add(time.Minute)) {
				t.Errorf("end reason, ended = %s, %v; want the first end's %s, %v", second.EndReason, second.EndedAt, reason, t0.Add(time.Minute))
			}
			if got := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(got, []string{audit.KindMint, audit.KindRelease}) {
				t.Errorf("audit kinds = %v, want one release record", got)
			}
			// Ending a lease whose revocation completed is harmless too.
			if _, err := s.RevocationDone(context.Background(), l.ID, reason, t0.Add(3*time.Minute), audit.Entry{Kind: audit.KindRevoked}); err != nil {
				t.Fatal(err)
			}
			third := leasetest.MustEnd(t, s, l.ID, leases.StateRevoked, t0.Add(4*time.Minute))
			if third.State != reason {
				t.Errorf("state after ending an ended lease = %s, want %s", third.State, reason)
			}
			leasetest.WantCounts(t, s, map[leases.State]int64{reason: 1})
			if n := len(leasetest.AuditKinds(t, s, l.ID)); n != 3 {
				t.Errorf("%d audit records, want 3 (mint, release, revoked)", n)
			}
		})
	}
}

func TestAbandon(t *testing.T) {
	ctx := context.Background()
	entry := audit.Entry{Kind: audit.KindMintFailed, Actor: audit.Actor{Type: audit.ActorAgent}}
	t.Run("pending lease keeps the handle and is queued", func(t *testing.T) {
		s := MustOpenStore(t)
		l := leasetest.NewPending(t0, "a", time.Hour)
		leasetest.MustCreate(t, s, l)
		got, err := s.Abandon(ctx, l.ID, "accessor-9", t0.Add(time.Second), entry)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != leases.StateRevoking || got.EndReason != leases.StateRevoked || got.Handle != "accessor-9" || !got.EndedAt.Equal(t0.Add(time.Second)) {
			t.Errorf("abandoned lease = %s/%s handle %q ended %v; want revoking/revoked, accessor-9, %v",
				got.State, got.EndReason, got.Handle, got.EndedAt, t0.Add(time.Second))
		}
		due, err := s.DueRevocations(t0.Add(time.Second), 10)
		if err != nil || len(due) != 1 || due[0].Handle != "accessor-9" {
			t.Errorf("DueRevocations = %v, %v; want the lease with its handle", due, err)
		}
		if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, []string{audit.KindMintFailed}) {
			t.Errorf("audit kinds = %v", kinds)
		}
		leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateRevoking: 1})
	})
	t.Run("active lease is left alone", func(t *testing.T) {
		s := MustOpenStore(t)
		l := leasetest.MustActivate(t, s, leasetest.NewPending(t0, "a", time.Hour))
		got, err := s.Abandon(ctx, l.ID, "other", t0.Add(time.Second), entry)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("Abandon changed an active lease:\n before %+v\n after  %+v", l, got)
		}
		if kinds := leasetest.AuditKinds(t, s, l.ID); !slices.Equal(kinds, []string{audit.KindMint}) {
			t.Errorf("audit kinds = %v, want no mint.failed", kinds)
		}
	})
}

// listFixture creates 12 leases a second apart (so ids order by creation):
// lease i belongs to agent a<i%3>, role r<i%2>, backend jwt (i<6) or vault,
// pod p<i%4> and attestation j<i>; every fifth lease is released.
func listFixture(t *testing.T, s *Store) []*leases.Lease {
	t.Helper()
	var ls []*leases.Lease
	for i := range 12 {
		now := t0.Add(time.Duration(i) * time.Second)
		l := leasetest.NewPending(now, fmt.Sprintf("a%d", i%3), time.Hour)
		l.Role = fmt.Sprintf("r%d", i%2)
		if i >= 6 {
			l.Backend = "vault"
		}
		l.Lineage = leases.Lineage{Issuer: "iss", JTI: fmt.Sprintf("j%d", i), PodUID: fmt.Sprintf("p%d", i%4)}
		l = leasetest.MustActivate(t, s, l)
		if i%5 == 0 {
			leasetest.MustEnd(t, s, l.ID, leases.StateReleased, now)
			if _, err := s.RevocationDone(context.Background(), l.ID, leases.StateReleased, now, audit.Entry{}); err != nil {
				t.Fatal(err)
			}
		}
		ls = append(ls, l)
	}
	return ls
}

func TestList(t *testing.T) {
	s := MustOpenStore(t)
	ls := listFixture(t, s)
	after := leases.NewID(t0.Add(time.Hour)) // newer than every lease
	cases := []struct {
		name string
		f    leases.Filter
		want []int // indexes into ls, newest first
	}{
		{"everything", leases.Filter{}, []int{11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0}},
		{"agent", leases.Filter{AgentID: "a0"}, []int{9, 6, 3, 0}},
		{"unknown agent", leases.Filter{AgentID: "nobody"}, nil},
		{"agent that is a prefix of no other", leases.Filter{AgentID: "a"}, nil},
		{"state released", leases.Filter{State: leases.StateReleased}, []int{10, 5, 0}},
		{"state active", leases.Filter{State: leases.StateActive}, []int{11, 9, 8, 7, 6, 4, 3, 2, 1}},
		{"role", leases.Filter{Role: "r1"}, []int{11, 9, 7, 5, 3, 1}},
		{"backend", leases.Filter{Backend: "vault"}, []int{11, 10, 9, 8, 7, 6}},
		{"lineage pod", leases.Filter{Lineage: "pod:p1"}, []int{9, 5, 1}},
		{"lineage jti", leases.Filter{Lineage: "jti:iss#j7"}, []int{7}},
		{"agent and role", leases.Filter{AgentID: "a1", Role: "r1"}, []int{7, 1}},
		{"agent and state", leases.Filter{AgentID: "a0", State: leases.StateReleased}, []int{0}},
		{"lineage and backend", leases.Filter{Lineage: "pod:p0", Backend: "vault"}, []int{8}},
		{"limit", leases.Filter{Limit: 3}, []int{11, 10, 9}},
		{"role with limit", leases.Filter{Role: "r1", Limit: 2}, []int{11, 9}},
		{"before", leases.Filter{Before: ls[5].ID}, []int{4, 3, 2, 1, 0}},
		{"before with limit", leases.Filter{Before: ls[5].ID, Limit: 2}, []int{4, 3}},
		{"before with agent", leases.Filter{Before: ls[5].ID, AgentID: "a2"}, []int{2}},
		{"before with state", leases.Filter{Before: ls[10].ID, State: leases.StateReleased}, []int{5, 0}},
		{"before the oldest", leases.Filter{Before: ls[0].ID}, nil},
		{"before the oldest with agent", leases.Filter{Before: ls[0].ID, AgentID: "a0"}, nil},
		{"before a cursor newer than everything", leases.Filter{Before: after}, []int{11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0}},
		{"before a newer cursor with agent", leases.Filter{Before: after, AgentID: "a2"}, []int{11, 8, 5, 2}},
		{"before a newer cursor with the last agent", leases.Filter{Before: after, Lineage: "pod:p3"}, []int{11, 7, 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(context.Background(), tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := leaseIndexes(ls, got), tc.want; !slices.Equal(g, w) {
				t.Errorf("List(%+v) = leases %v, want %v", tc.f, g, w)
			}
		})
	}
}

// leaseIndexes maps listed leases back to their index in the fixture.
func leaseIndexes(fixture, listed []*leases.Lease) []int {
	var out []int
	for _, l := range listed {
		out = append(out, slices.IndexFunc(fixture, func(f *leases.Lease) bool { return f.ID == l.ID }))
	}
	return out
}

func TestListPaging(t *testing.T) {
	s := MustOpenStore(t)
	ls := listFixture(t, s)
	for _, f := range []leases.Filter{{}, {AgentID: "a1"}, {Backend: "jwt"}, {State: leases.StateActive}, {Lineage: "pod:p2"}} {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			all := f
			all.Limit = 1000
			want, err := s.List(context.Background(), all)
			if err != nil {
				t.Fatal(err)
			}
			var got []*leases.Lease
			page := f
			page.Limit = 2
			for range 20 {
				p, err := s.List(context.Background(), page)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, p...)
				if len(p) < page.Limit {
					break
				}
				page.Before = p[len(p)-1].ID
			}
			if g, w := leaseIndexes(ls, got), leaseIndexes(ls, want); !slices.Equal(g, w) || len(w) == 0 {
				t.Errorf("pages of 2 = %v, want %v", g, w)
			}
		})
	}
}

func TestListLimitDefaults(t *testing.T) {
	s := MustOpenStore(t)
	var ls []*leases.Lease
	for i := range 1100 {
		ls = append(ls, leasetest.NewPending(t0.Add(time.Duration(i)*time.Millisecond), "a", time.Hour))
	}
	leasetest.SeedActive(t, s, ls)
	cases := []struct {
		limit, want int
	}{{0, 100}, {-1, 100}, {7, 7}, {1000, 1000}, {5000, 1000}}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.limit), func(t *testing.T) {
			for _, f := range []leases.Filter{{Limit: tc.limit}, {Limit: tc.limit, AgentID: "a"}} {
				got, err := s.List(context.Background(), f)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != tc.want || got[0].ID != ls[len(ls)-1].ID {
					t.Errorf("List(%+v) returned %d leases, want %d starting with the newest", f, len(got), tc.want)
				}
			}
		})
	}
}

func TestGroupCommit(t *testing.T) {
	s := MustOpenStore(t)
	const n = 200
	before := lastCommittedTx(t, s.db)

	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			l := leasetest.NewPending(t0, fmt.Sprintf("agent-%d", i), time.Hour)
			if err := s.CreatePending(context.Background(), l); err != nil {
				errs <- err
				return
			}
			if _, err := s.Activate(context.Background(), l.ID, leases.Activation{Handle: "h"}, t0, audit.Entry{Kind: audit.KindMint}); err != nil {
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	writes := 2 * n
	commits := lastCommittedTx(t, s.db) - before
	t.Logf("%d writes in %d commits", writes, commits)
	if commits > writes/4 {
		t.Errorf("%d writes took %d commits; group commit should share commits (want at most %d)", writes, commits, writes/4)
	}
	active, err := s.List(context.Background(), leases.Filter{State: leases.StateActive, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != n {
		t.Errorf("%d active leases listed, want %d", len(active), n)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateActive: n})
	if res := leasetest.MustVerifyAudit(t, s); res.Records != n {
		t.Errorf("%d audit records, want %d", res.Records, n)
	}
}

// TestGroupCommitIsolatesFailures holds the committer inside one transaction
// so that good writes and a failing one queue up and share the next batch.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	bucket := []byte("test.batch")
	if err := s.update(ctx, func(tx *bbolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err }); err != nil {
		t.Fatal(err)
	}
	before := lastCommittedTx(t, s.db)

	entered, release := make(chan struct{}), make(chan struct{})
	blockerDone := make(chan error, 1)
	go func() {
		blockerDone <- s.update(ctx, func(tx *bbolt.Tx) error {
			close(entered)
			<-release
			return tx.Bucket(bucket).Put([]byte("blocker"), []byte("ok"))
		})
	}()
	<-entered

	const good = 20
	errBad := errors.New("this write is invalid (injected)")
	type result struct {
		key string
		err error
	}
	results := make(chan result, good+1)
	for i := range good + 1 {
		key := fmt.Sprintf("k%02d", i)
		bad := i == good/2
		go func() {
			err := s.update(ctx, func(tx *bbolt.Tx) error {
				if err := tx.Bucket(bucket).Put([]byte(key), []byte("v")); err != nil {
					return err
				}
				if bad {
					return errBad
				}
				return nil
			})
			results <- result{key, err}
		}()
	}
	// All of them are queued behind the blocked commit.
	leasetest.Eventually(t, "the writes are queued", func() bool { return len(s.c.reqs) == good+1 })
	close(release)
	if err := <-blockerDone; err != nil {
		t.Fatalf("blocking write: %v", err)
	}

	badKey := fmt.Sprintf("k%02d", good/2)
	for range good + 1 {
		r := <-results
		switch {
		case r.key == badKey && !errors.Is(r.err, errBad):
			t.Errorf("failing write returned %v, want its own error", r.err)
		case r.key != badKey && r.err != nil:
			t.Errorf("write %s failed with its neighbour: %v", r.key, r.err)
		}
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucket)
		for i := range good + 1 {
			key := fmt.Sprintf("k%02d", i)
			if present := b.Get([]byte(key)) != nil; present != (key != badKey) {
				t.Errorf("key %s present = %v", key, present)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// One commit for the blocker, one for the whole batch after the bad
	// write was dropped.
	if commits := lastCommittedTx(t, s.db) - before; commits != 2 {
		t.Errorf("%d commits, want 2 (the blocker, then one shared commit)", commits)
	}
}

// storeSnapshot is everything observable about a store, for comparing it
// before and after a reopen or a failure.
type storeSnapshot struct {
	Leases      []*leases.Lease
	ByAgent     map[string][]string
	ByLineage   map[string][]string
	ByState     map[leases.State][]string
	Counts      map[leases.State]int64
	NextExpiry  time.Time
	NextRevoke  time.Time
	Due         []string
	AuditHead   uint64
	AuditHash   string
	AuditRecord int
}

func snapshot(t *testing.T, s *Store) storeSnapshot {
	t.Helper()
	ctx := context.Background()
	ids := func(f leases.Filter) []string {
		f.Limit = 1000
		ls, err := s.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range ls {
			out = append(out, l.ID)
		}
		return out
	}
	all, err := s.List(ctx, leases.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	snap := storeSnapshot{Leases: all, ByAgent: map[string][]string{}, ByLineage: map[string][]string{}, ByState: map[leases.State][]string{}}
	for _, l := range all {
		snap.ByAgent[l.AgentID] = ids(leases.Filter{AgentID: l.AgentID})
		for _, lid := range l.Lineage.IDs() {
			snap.ByLineage[lid] = ids(leases.Filter{Lineage: lid})
		}
		snap.ByState[l.State] = ids(leases.Filter{State: l.State})
	}
	snap.Counts = leasetest.MustCounts(t, s)
	snap.NextExpiry, _, _ = s.NextExpiry()
	snap.NextRevoke, _, _ = s.NextRevocation()
	due, err := s.DueRevocations(t0.Add(1000*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range due {
		snap.Due = append(snap.Due, l.ID)
	}
	res := leasetest.MustVerifyAudit(t, s)
	snap.AuditHead, snap.AuditHash = res.HeadSeq, res.HeadHash
	snap.AuditRecord = int(res.Records)
	return snap
}

// mixedFixture leaves leases in every state.
func mixedFixture(t *testing.T, s *Store) map[leases.State]*leases.Lease {
	t.Helper()
	ctx := context.Background()
	out := map[leases.State]*leases.Lease{}
	p := leasetest.NewPending(t0, "agent-p", time.Hour)
	p.Lineage = leases.Lineage{PodUID: "pod-1"}
	leasetest.MustCreate(t, s, p)
	out[leases.StatePending] = p
	a := leasetest.NewPending(t0.Add(time.Second), "agent-a", 2*time.Hour)
	a.Lineage = leases.Lineage{PodUID: "pod-1", Issuer: "iss", RunID: "42", SPIFFEID: "spiffe://x/y"}
	out[leases.StateActive] = leasetest.MustActivate(t, s, a)
	r := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(2*time.Second), "agent-a", time.Hour))
	out[leases.StateRevoking] = leasetest.MustEnd(t, s, r.ID, leases.StateRevoked, t0.Add(3*time.Second))
	i := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(4*time.Second), "agent-b", time.Hour))
	leasetest.MustEnd(t, s, i.ID, leases.StateReleased, t0.Add(5*time.Second))
	irr, err := s.RevocationFailed(ctx, i.ID, "down", t0.Add(time.Minute), true, t0.Add(6*time.Second), audit.Entry{Kind: audit.KindIrrevocable})
	if err != nil {
		t.Fatal(err)
	}
	out[leases.StateIrrevocable] = irr
	d := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(7*time.Second), "agent-b", time.Hour))
	leasetest.MustEnd(t, s, d.ID, leases.StateReleased, t0.Add(8*time.Second))
	if out[leases.StateReleased], err = s.RevocationDone(ctx, d.ID, leases.StateReleased, t0.Add(9*time.Second), audit.Entry{Kind: audit.KindRevoked}); err != nil {
		t.Fatal(err)
	}
	e := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(10*time.Second), "agent-c", time.Minute))
	expired, err := s.ExpireDue(ctx, t0.Add(2*time.Minute), 10)
	if err != nil || len(expired) != 1 || expired[0].ID != e.ID {
		t.Fatalf("ExpireDue = %v, %v; want lease %s", expired, err, e.ID)
	}
	out[leases.StateExpired] = expired[0]
	return out
}

func TestDurableAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "valet.db")
	s := mustOpenStoreAt(t, path)
	fixture := mixedFixture(t, s)
	before := snapshot(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpenStoreAt(t, path)
	after := snapshot(t, s)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("store changed across reopen:\n before %+v\n after  %+v", before, after)
	}
	for st, l := range fixture {
		if got := leasetest.MustGet(t, s, l.ID); !reflect.DeepEqual(got, l) || got.State != st {
			t.Errorf("%s lease after reopen = %+v, want %+v", st, got, l)
		}
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StatePending: 1, leases.StateActive: 1, leases.StateRevoking: 1, leases.StateIrrevocable: 1, leases.StateReleased: 1, leases.StateExpired: 1})
	// The reopened store keeps writing on the same chain.
	leasetest.MustEnd(t, s, fixture[leases.StateActive].ID, leases.StateRevoked, t0.Add(time.Hour))
	if res := leasetest.MustVerifyAudit(t, s); res.HeadSeq != before.AuditHead+1 {
		t.Errorf("audit head after one more change = %d, want %d", res.HeadSeq, before.AuditHead+1)
	}
}

// TestStoreFailureChangesNothing closes the database under the committer, so
// every commit fails as it would on an I/O error, and checks that each
// operation reports the failure and that the file is unchanged.
func TestStoreFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	now := t0.Add(time.Minute)
	e := audit.Entry{Kind: audit.KindRevoke, Actor: audit.Actor{Type: audit.ActorOperator}}
	cases := []struct {
		name string
		op   func(s *Store, f map[leases.State]*leases.Lease) error
	}{
		{"create pending", func(s *Store, f map[leases.State]*leases.Lease) error {
			return s.CreatePending(ctx, leasetest.NewPending(now, "new", time.Hour))
		}},
		{"activate", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.Activate(ctx, f[leases.StatePending].ID, leases.Activation{Handle: "h"}, now, e)
			return err
		}},
		{"renew", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.Renew(ctx, f[leases.StateActive].ID, now, now.Add(time.Hour), e)
			return err
		}},
		{"end", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.End(ctx, f[leases.StateActive].ID, leases.StateRevoked, now, e)
			return err
		}},
		{"abandon", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.Abandon(ctx, f[leases.StatePending].ID, "h", now, e)
			return err
		}},
		{"revocation done", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.RevocationDone(ctx, f[leases.StateRevoking].ID, leases.StateRevoked, now, e)
			return err
		}},
		{"revocation failed", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.RevocationFailed(ctx, f[leases.StateRevoking].ID, "x", now.Add(time.Minute), true, now, e)
			return err
		}},
		{"expire due", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.ExpireDue(ctx, t0.Add(100*time.Hour), 10)
			return err
		}},
		{"recover pending", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.RecoverPending(ctx, now)
			return err
		}},
		{"prune ended", func(s *Store, f map[leases.State]*leases.Lease) error {
			_, err := s.PruneEnded(ctx, t0.Add(100*time.Hour), 10)
			return err
		}},
		{"audit", func(s *Store, f map[leases.State]*leases.Lease) error {
			return s.Audit(ctx, now, audit.Entry{Kind: audit.KindServerStart})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "valet.db")
			s := mustOpenStoreAt(t, path)
			f := mixedFixture(t, s)
			before := snapshot(t, s)

			if err := s.db.Close(); err != nil {
				t.Fatal(err)
			}
			if err := tc.op(s, f); !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
				t.Errorf("error = %v, want the database failure", err)
			}
			if _, err := s.Get(ctx, f[leases.StateActive].ID); err == nil {
				t.Error("Get on a failed database returned no error")
			}
			s.Close()

			s = mustOpenStoreAt(t, path)
			if after := snapshot(t, s); !reflect.DeepEqual(before, after) {
				t.Errorf("failed %s changed the store:\n before %+v\n after  %+v", tc.name, before, after)
			}
		})
	}
	t.Run("closed store", func(t *testing.T) {
		s := MustOpenStore(t)
		s.Close()
		if err := s.CreatePending(ctx, leasetest.NewPending(now, "a", time.Hour)); !errors.Is(err, errClosed) {
			t.Errorf("CreatePending on a closed store = %v, want %v", err, errClosed)
		}
	})
}

func TestRecoverPending(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	p1 := leasetest.NewPending(t0, "a", time.Hour)
	p2 := leasetest.NewPending(t0.Add(time.Second), "b", time.Hour)
	leasetest.MustCreate(t, s, p1)
	leasetest.MustCreate(t, s, p2)
	active := leasetest.MustActivate(t, s, leasetest.NewPending(t0.Add(2*time.Second), "c", time.Hour))
	recoverAt := t0.Add(time.Minute)

	recovered, err := s.RecoverPending(ctx, recoverAt)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range recovered {
		got = append(got, l.ID)
	}
	if len(got) != 2 || !slices.Contains(got, p1.ID) || !slices.Contains(got, p2.ID) {
		t.Fatalf("recovered %v, want the two pending leases %s and %s", got, p1.ID, p2.ID)
	}
	for _, id := range []string{p1.ID, p2.ID} {
		l := leasetest.MustGet(t, s, id)
		if l.State != leases.StateRevoking || l.EndReason != leases.StateRevoked || !l.EndedAt.Equal(recoverAt) || !l.NextAttempt.Equal(recoverAt) {
			t.Errorf("recovered lease = %s/%s ended %v next %v; want revoking/revoked at %v", l.State, l.EndReason, l.EndedAt, l.NextAttempt, recoverAt)
		}
		if kinds := leasetest.AuditKinds(t, s, id); !slices.Equal(kinds, []string{audit.KindRecover}) {
			t.Errorf("audit kinds = %v, want one recover record", kinds)
		}
	}
	if got := leasetest.MustGet(t, s, active.ID); !reflect.DeepEqual(got, active) {
		t.Errorf("active lease changed by recovery: %+v", got)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateRevoking: 2, leases.StateActive: 1})
	if again, err := s.RecoverPending(ctx, recoverAt); err != nil || len(again) != 0 {
		t.Errorf("second recovery = %v, %v; want nothing left to recover", again, err)
	}

	// The queue revokes them by correlation id: they have no handle.
	clk := clock.NewFake(recoverAt)
	be := leasetest.NewFakeBackend(0)
	be.Clk = clk
	leasetest.StartQueue(t, leasetest.NewQueue(s, be, clk, 3))
	leasetest.Eventually(t, "both recovered leases are revoked", func() bool {
		return leasetest.MustGet(t, s, p1.ID).State == leases.StateRevoked && leasetest.MustGet(t, s, p2.ID).State == leases.StateRevoked
	})
	for _, id := range []string{p1.ID, p2.ID} {
		be.Mu.Lock()
		calls, handle := be.Calls[id], be.Handles[id]
		be.Mu.Unlock()
		if calls != 1 || handle != "" {
			t.Errorf("backend saw %d calls with handle %q for %s, want 1 call by correlation id", calls, handle, id)
		}
	}
	if be.CallsFor(active.ID) != 0 {
		t.Error("the active lease was revoked")
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateRevoked: 2, leases.StateActive: 1})
	leasetest.MustVerifyAudit(t, s)
}

func TestPruneEnded(t *testing.T) {
	ctx := context.Background()
	s := MustOpenStore(t)
	newLease := func(i int, agent string) *leases.Lease {
		l := leasetest.NewPending(t0.Add(time.Duration(i)*time.Second), agent, time.Hour)
		l.Lineage = leases.Lineage{Issuer: "iss", JTI: fmt.Sprint("j", i), PodUID: "pod-1"}
		return leasetest.MustActivate(t, s, l)
	}
	finish := func(l *leases.Lease, reason leases.State, at time.Time) *leases.Lease {
		leasetest.MustEnd(t, s, l.ID, reason, at)
		out, err := s.RevocationDone(ctx, l.ID, reason, at.Add(time.Second), audit.Entry{Kind: audit.KindRevoked})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	released := finish(newLease(0, "a"), leases.StateReleased, t0.Add(time.Minute))
	revokedLate := finish(newLease(1, "a"), leases.StateRevoked, t0.Add(10*time.Minute))
	revoking := newLease(2, "a")
	leasetest.MustEnd(t, s, revoking.ID, leases.StateRevoked, t0.Add(time.Minute)) // ended early but not yet revoked
	active := newLease(3, "a")
	exp := leasetest.NewPending(t0.Add(4*time.Second), "a", time.Minute)
	exp.Lineage = leases.Lineage{PodUID: "pod-1"}
	leasetest.MustActivate(t, s, exp)
	if got, err := s.ExpireDue(ctx, t0.Add(2*time.Minute), 10); err != nil || len(got) != 1 {
		t.Fatalf("ExpireDue = %v, %v", got, err)
	}
	leasetest.WantCounts(t, s, map[leases.State]int64{leases.StateReleased: 1, leases.StateRevoked: 1, leases.StateRevoking: 1, leases.StateActive: 1, leases.StateExpired: 1})

	steps := []struct {
		name       string
		cutoff     time.Time
		limit      int
		wantN      int
		wantGone   []string
		wantCounts map[leases.State]int64
	}{
		{"nothing ended before the cutoff", t0.Add(time.Minute), 10, 0, nil,
			map[leases.State]int64{leases.StateReleased: 1, leases.StateRevoked: 1, leases.StateRevoking: 1, leases.StateActive: 1, leases.StateExpired: 1}},
		{"limit", t0.Add(5 * time.Minute), 1, 1, []string{released.ID},
			map[leases.State]int64{leases.StateRevoked: 1, leases.StateRevoking: 1, leases.StateActive: 1, leases.StateExpired: 1}},
		{"rest before the cutoff", t0.Add(5 * time.Minute), 10, 1, []string{released.ID, exp.ID},
			map[leases.State]int64{leases.StateRevoked: 1, leases.StateRevoking: 1, leases.StateActive: 1}},
		{"everything terminal", t0.Add(100 * time.Hour), 10, 1, []string{released.ID, exp.ID, revokedLate.ID},
			map[leases.State]int64{leases.StateRevoking: 1, leases.StateActive: 1}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			n, err := s.PruneEnded(ctx, st.cutoff, st.limit)
			if err != nil || n != st.wantN {
				t.Fatalf("PruneEnded = %d, %v; want %d", n, err, st.wantN)
			}
			leasetest.WantCounts(t, s, st.wantCounts)
			for _, id := range []string{released.ID, revokedLate.ID, revoking.ID, active.ID, exp.ID} {
				gone := slices.Contains(st.wantGone, id)
				_, err := s.Get(ctx, id)
				if gone != errors.Is(err, leases.ErrNotFound) {
					t.Errorf("lease %s: Get error %v, want gone = %v", id, err, gone)
				}
				for _, f := range []leases.Filter{{AgentID: "a"}, {Lineage: "pod:1"}, {Lineage: "pod:pod-1"}, {}} {
					ls, err := s.List(ctx, f)
					if err != nil {
						t.Fatalf("List(%+v): %v", f, err)
					}
					if listed := slices.ContainsFunc(ls, func(l *leases.Lease) bool { return l.ID == id }); listed && gone {
						t.Errorf("pruned lease %s still listed by %+v", id, f)
					}
				}
				if keys := indexKeysFor(t, s, id); gone && len(keys) > 0 {
					t.Errorf("pruned lease %s left index entries %q", id, keys)
				}
				// Audit records outlive the lease.
				if len(leasetest.AuditKinds(t, s, id)) == 0 {
					t.Errorf("lease %s has no audit records left", id)
				}
			}
			leasetest.MustVerifyAudit(t, s)
		})
	}
}

// indexKeysFor returns every key in the lease buckets that refers to id.
func indexKeysFor(t *testing.T, s *Store, id string) []string {
	t.Helper()
	var out []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketLeases, bucketExpiry, bucketLeaseAgent, bucketLineage, bucketLeaseState, bucketRevoke, bucketEnded, bucketUnindexed} {
			c := tx.Bucket(b).Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				if bytes.HasSuffix(k, []byte(id)) {
					out = append(out, string(b)+":"+strings.ToValidUTF8(string(k), "?"))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUpdateWaitsForAQueuedWrite: a write whose context ends while it
// waits behind another commit still runs, and Update reports its real
// outcome after it ran — never an error for a write that then commits,
// and never a return before fn has written the caller's variables.
func TestUpdateWaitsForAQueuedWrite(t *testing.T) {
	s := MustOpenStore(t)
	busy, release := make(chan struct{}), make(chan struct{})
	go s.update(context.Background(), func(*bbolt.Tx) error {
		close(busy)
		<-release
		return nil
	})
	<-busy
	ctx, cancel := context.WithCancel(context.Background())
	wrote := 0
	done := make(chan error, 1)
	go func() {
		done <- s.update(ctx, func(tx *bbolt.Tx) error {
			wrote++
			return tx.Bucket(bucketLeases).Put([]byte("queued"), []byte("x"))
		})
	}()
	for len(s.c.reqs) == 0 {
		runtime.Gosched() // until the write is queued behind the busy commit
	}
	cancel()
	close(release)
	if err := <-done; err != nil || wrote != 1 {
		t.Fatalf("Update = %v after fn ran %d times, want nil after one run", err, wrote)
	}
	if err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketLeases).Get([]byte("queued")) == nil {
			return errors.New("the queued write is not in the database")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// The expiry backlog counts the active leases whose expiry has passed,
// and no longer counts them once they are expired.
func TestExpiryBacklog(t *testing.T) {
	s := MustOpenStore(t)
	ctx := context.Background()
	var ls []*leases.Lease
	for i := range 5 {
		ls = append(ls, leasetest.NewPending(t0, fmt.Sprintf("agent-%d", i), time.Duration(i+1)*time.Minute))
	}
	leasetest.SeedActive(t, s, ls)
	for _, tc := range []struct {
		at   time.Time
		want int
	}{{t0, 0}, {t0.Add(time.Minute), 1}, {t0.Add(3*time.Minute + time.Second), 3}, {t0.Add(time.Hour), 5}} {
		if n, err := s.ExpiryBacklog(tc.at); err != nil || n != tc.want {
			t.Errorf("ExpiryBacklog at %s = %d, %v; want %d", tc.at.Sub(t0), n, err, tc.want)
		}
	}
	if _, err := s.ExpireDue(ctx, t0.Add(2*time.Minute), 100); err != nil {
		t.Fatal(err)
	}
	if n, err := s.ExpiryBacklog(t0.Add(time.Hour)); err != nil || n != 3 {
		t.Errorf("ExpiryBacklog after two expired = %d, %v; want 3", n, err)
	}
}
