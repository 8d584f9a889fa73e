package grants

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

func TestBindingCoversEveryField(t *testing.T) {
	base := Request{AgentID: "k8s/a", Role: "r", TTL: time.Minute, Scope: map[string]any{"scopes": []any{"x"}}, Reason: "why",
		Lineage: leases.Lineage{Issuer: "i", JTI: "j"}}
	h := Binding(base)
	if Binding(base) != h {
		t.Fatal("binding is not deterministic")
	}
	changes := map[string]func(r *Request){
		"agent": func(r *Request) { r.AgentID = "k8s/b" },
		"role":  func(r *Request) { r.Role = "r2" },
		"ttl":   func(r *Request) { r.TTL = 2 * time.Minute },
		// Redeem mints for the exact TTL, so the binding covers it.
		"ttl below a millisecond": func(r *Request) { r.TTL += 500 * time.Microsecond },
		"scope":                   func(r *Request) { r.Scope = map[string]any{"scopes": []any{"y"}} },
		"reason":                  func(r *Request) { r.Reason = "other" },
		"lineage":                 func(r *Request) { r.Lineage.JTI = "k" },
	}
	for name, change := range changes {
		r := base
		change(&r)
		if Binding(r) == h {
			t.Errorf("changing the %s does not change the binding", name)
		}
	}
}

// Grants stored before the binding covered TTLs below a millisecond keep
// their bindings: a whole-millisecond TTL hashes as it always did.
func TestBindingOfWholeMillisecondTTLIsUnchanged(t *testing.T) {
	r := Request{AgentID: "k8s/a", Role: "r", TTL: time.Minute, Scope: map[string]any{"scopes": []any{"x"}}, Reason: "why",
		Lineage: leases.Lineage{Issuer: "i", JTI: "j"}}
	if got, want := Binding(r), "c540d6488a25f97c25bf63c94d7039aac8cbf8d12e8a7bce607a0558f19a38ae"; got != want {
		t.Errorf("Binding = %s, want %s as before", got, want)
	}
}

// Redeem recomputes the binding from the stored grant as decoded, which is
// also what it mints from: stored bytes that decode to other values (a
// duplicated key whose last value differs) do not match the binding.
func TestRedeemRefusesStoredBytesThatDecodeToAnotherRequest(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	now := time.Now()
	r := Request{AgentID: "a", Role: "r", TTL: time.Minute}
	g := &Grant{ID: leases.NewID(now), Kind: KindApproval, AgentID: "a", Role: "r", TTL: time.Minute, Binding: Binding(r),
		State: StateApproved, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), RedeemBy: now.Add(time.Hour)}
	if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
		t.Fatal(err)
	}
	err := s.db.DB().Update(func(tx *bbolt.Tx) error {
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
	binding := Binding(Request{AgentID: stored.AgentID, Role: stored.Role, TTL: stored.TTL, Scope: stored.Scope, Reason: stored.Reason, Lineage: stored.Lineage})
	if _, err := s.Redeem(ctx, g.ID, "a", binding, now, audit.Entry{}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Redeem of a grant whose stored role decodes as %q: %v, want ErrTampered", stored.Role, err)
	}
}

func TestStateAt(t *testing.T) {
	now := time.Now()
	g := Grant{State: StatePending, ExpiresAt: now.Add(time.Minute)}
	if g.StateAt(now) != StatePending || g.StateAt(now.Add(time.Minute)) != StateExpired {
		t.Fatal("pending grant expiry")
	}
	g = Grant{State: StateApproved, RedeemBy: now.Add(time.Minute)}
	if g.StateAt(now) != StateApproved || g.StateAt(now.Add(2*time.Minute)) != StateExpired {
		t.Fatal("approved grant expiry")
	}
}

func newStore(t *testing.T) *Store {
	t.Helper()
	db, err := leases.OpenBolt(filepath.Join(t.TempDir(), "v.db"), leases.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewStore(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRedeemIsCompareAndSwap(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	r := Request{AgentID: "a", Role: "r", TTL: time.Minute}
	g := &Grant{ID: leases.NewID(now), Kind: KindApproval, AgentID: "a", Role: "r", TTL: time.Minute, Binding: Binding(r),
		State: StatePending, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), Requester: []string{"a"}}
	ctx := context.Background()
	if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Approve(ctx, g.ID, Decision{Operator: "a", At: now}, time.Minute, audit.Entry{}); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := s.Approve(ctx, g.ID, Decision{Operator: "op", At: now}, time.Minute, audit.Entry{}); err != nil {
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
			} else if !errors.Is(err, ErrState) {
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
	if _, err := s.Redeem(ctx, g.ID, "a", "other binding", now, audit.Entry{}); !errors.Is(err, ErrTampered) {
		t.Fatalf("redeem with another binding: %v", err)
	}
	if _, err := s.Redeem(ctx, g.ID, "b", g.Binding, now, audit.Entry{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("redeem by another agent: %v", err)
	}
}

func TestDecisionsCompareIdentities(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	ctx := context.Background()
	newGrant := func(kind string, required int) *Grant {
		g := &Grant{ID: leases.NewID(now), Kind: kind, AgentID: "k8s/a", Role: "r", TTL: time.Minute, State: StatePending, Required: required,
			CreatedAt: now, ExpiresAt: now.Add(time.Hour), Requester: []string{"k8s/a", "Owner@Example.com"}}
		if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
			t.Fatal(err)
		}
		return g
	}
	g := newGrant(KindApproval, 2)
	steps := []struct {
		operator string
		want     error
	}{
		{"OWNER@example.com", ErrSelfApproval},
		{" owner@example.com", ErrSelfApproval},
		{"alice@example.com", nil},
		{"ALICE@example.com", ErrState},
		{"Alice@Example.COM ", ErrState},
	}
	for _, st := range steps {
		_, err := s.Approve(ctx, g.ID, Decision{Operator: st.operator, At: now}, time.Minute, audit.Entry{})
		if st.want == nil && err != nil || st.want != nil && !errors.Is(err, st.want) {
			t.Fatalf("approval by %q: %v, want %v", st.operator, err, st.want)
		}
	}
	if got, _ := s.Get(ctx, g.ID); got.State != StatePending || len(got.Approvals) != 1 {
		t.Fatalf("one person's approvals in several spellings made the grant %s with %v", got.State, got.Approvers())
	}

	bg := newGrant(KindBreakGlass, 0)
	if _, err := s.Review(ctx, bg.ID, Decision{Operator: "owner@EXAMPLE.com", At: now, Comment: "fine"}, audit.Entry{}); !errors.Is(err, ErrSelfApproval) {
		t.Fatalf("review by the requester: %v", err)
	}
	if got, _ := s.Get(ctx, bg.ID); got.Review != nil {
		t.Fatalf("the requester's review was recorded: %+v", got.Review)
	}
	if got, err := s.Review(ctx, bg.ID, Decision{Operator: "bob", At: now, Comment: "fine"}, audit.Entry{}); err != nil || got.Review.Operator != "bob" {
		t.Fatalf("review: %+v %v", got, err)
	}
}
