package bolt

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// Redeem recomputes the binding from the stored grant as decoded, which is
// also what it mints from: stored bytes that decode to other values (a
// duplicated key whose last value differs) do not match the binding.
func TestRedeemRefusesStoredBytesThatDecodeToAnotherRequest(t *testing.T) {
	s := newGrantStore(t)
	ctx := context.Background()
	now := time.Now()
	r := grants.Request{AgentID: "a", Role: "r", TTL: time.Minute}
	g := &grants.Grant{ID: leases.NewID(now), Kind: grants.KindApproval, AgentID: "a", Role: "r", TTL: time.Minute, Binding: grants.Binding(r),
		State: grants.StateApproved, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), RedeemBy: now.Add(time.Hour)}
	if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
		t.Fatal(err)
	}
	err := s.s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketGrants)
		v := bytes.Replace(b.Get([]byte(g.ID)), []byte(`"role":"r"`), []byte(`"role":"r","role":"admin"`), 1)
		return b.Put([]byte(g.ID), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := s.Get(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	binding := grants.Binding(grants.Request{AgentID: stored.AgentID, Role: stored.Role, TTL: stored.TTL, Scope: stored.Scope, Reason: stored.Reason, Lineage: stored.Lineage})
	if _, err := s.Redeem(ctx, g.ID, "a", binding, now, audit.Entry{}); !errors.Is(err, grants.ErrTampered) {
		t.Fatalf("Redeem of a grant whose stored role decodes as %q: %v, want ErrTampered", stored.Role, err)
	}
}

func newGrantStore(t *testing.T) *Grants {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "v.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db.Grants()
}

func TestRedeemIsCompareAndSwap(t *testing.T) {
	s := newGrantStore(t)
	now := time.Now()
	r := grants.Request{AgentID: "a", Role: "r", TTL: time.Minute}
	g := &grants.Grant{ID: leases.NewID(now), Kind: grants.KindApproval, AgentID: "a", Role: "r", TTL: time.Minute, Binding: grants.Binding(r),
		State: grants.StatePending, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), Requester: []string{"a"}}
	ctx := context.Background()
	if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Approve(ctx, g.ID, grants.Decision{Operator: "a", At: now}, time.Minute, audit.Entry{}); !errors.Is(err, grants.ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := s.Approve(ctx, g.ID, grants.Decision{Operator: "op", At: now}, time.Minute, audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Redeem(ctx, g.ID, "a", g.Binding, now, audit.Entry{})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, grants.ErrState) {
				t.Errorf("losing redeem: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d redeems won, want exactly 1", wins)
	}
	if _, err := s.Unredeem(ctx, g.ID, now, audit.Entry{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Redeem(ctx, g.ID, "a", "other binding", now, audit.Entry{}); !errors.Is(err, grants.ErrTampered) {
		t.Fatalf("redeem with another binding: %v", err)
	}
	if _, err := s.Redeem(ctx, g.ID, "b", g.Binding, now, audit.Entry{}); !errors.Is(err, grants.ErrNotFound) {
		t.Fatalf("redeem by another agent: %v", err)
	}
}

func TestDecisionsCompareIdentities(t *testing.T) {
	s := newGrantStore(t)
	now := time.Now()
	ctx := context.Background()
	newGrant := func(kind string, required int) *grants.Grant {
		g := &grants.Grant{ID: leases.NewID(now), Kind: kind, AgentID: "k8s/a", Role: "r", TTL: time.Minute, State: grants.StatePending, Required: required,
			CreatedAt: now, ExpiresAt: now.Add(time.Hour), Requester: []string{"k8s/a", "Owner@Example.com"}}
		if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
			t.Fatal(err)
		}
		return g
	}
	g := newGrant(grants.KindApproval, 2)
	steps := []struct {
		operator string
		want     error
	}{
		{"OWNER@example.com", grants.ErrSelfApproval},
		{" owner@example.com", grants.ErrSelfApproval},
		{"alice@example.com", nil},
		{"ALICE@example.com", grants.ErrState},
		{"Alice@Example.COM ", grants.ErrState},
	}
	for _, st := range steps {
		_, err := s.Approve(ctx, g.ID, grants.Decision{Operator: st.operator, At: now}, time.Minute, audit.Entry{})
		if st.want == nil && err != nil || st.want != nil && !errors.Is(err, st.want) {
			t.Fatalf("approval by %q: %v, want %v", st.operator, err, st.want)
		}
	}
	if got, _ := s.Get(ctx, g.ID); got.State != grants.StatePending || len(got.Approvals) != 1 {
		t.Fatalf("one person's approvals in several spellings made the grant %s with %v", got.State, got.Approvers())
	}

	bg := newGrant(grants.KindBreakGlass, 0)
	if _, err := s.Review(ctx, bg.ID, grants.Decision{Operator: "owner@EXAMPLE.com", At: now, Comment: "fine"}, audit.Entry{}); !errors.Is(err, grants.ErrSelfApproval) {
		t.Fatalf("review by the requester: %v", err)
	}
	if got, _ := s.Get(ctx, bg.ID); got.Review != nil {
		t.Fatalf("the requester's review was recorded: %+v", got.Review)
	}
	if got, err := s.Review(ctx, bg.ID, grants.Decision{Operator: "bob", At: now, Comment: "fine"}, audit.Entry{}); err != nil || got.Review.Operator != "bob" {
		t.Fatalf("review: %+v %v", got, err)
	}
}
