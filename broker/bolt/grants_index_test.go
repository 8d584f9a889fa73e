package bolt

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
)

// newGrant is a pending approval grant of agent created at now.
func newGrant(agent string, now time.Time) *grants.Grant {
	r := grants.Request{AgentID: agent, Role: "r", TTL: time.Minute}
	return &grants.Grant{ID: leases.NewID(now), Kind: grants.KindApproval, AgentID: agent, Role: "r", TTL: time.Minute, Binding: grants.Binding(r),
		State: grants.StatePending, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour), Requester: []string{agent}}
}

// TestIndexKeysSurviveHostileAgentIDs lists grants by agent when one
// agent id extends another with the bytes the index once split at.
func TestIndexKeysSurviveHostileAgentIDs(t *testing.T) {
	s := newGrantStore(t)
	ctx := context.Background()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	agents := []string{"test/a", "test/a\x00zz", "test/a\x00", "\x06test/a"}
	mine := map[string][]string{}
	for i, a := range agents {
		for j := range 2 {
			g := newGrant(a, now.Add(time.Duration(i*2+j)*time.Second))
			if err := s.Create(ctx, g, now, audit.Entry{Kind: audit.KindGrantRequest}); err != nil {
				t.Fatal(err)
			}
			mine[a] = append(mine[a], g.ID)
		}
	}
	for _, a := range agents {
		for _, f := range []grants.Filter{{AgentID: a}, {AgentID: a, State: grants.StatePending}} {
			gs, err := s.List(ctx, f)
			if err != nil {
				t.Fatalf("List(%#v): %v", f, err)
			}
			var got []string
			for _, g := range gs {
				got = append(got, g.ID)
			}
			slices.Sort(got)
			if want := slices.Sorted(slices.Values(mine[a])); !slices.Equal(got, want) {
				t.Errorf("List(%#v) = %v, want %v", f, got, want)
			}
		}
	}
	// The expiry sweep reads the state index.
	expired, err := s.ExpireDue(ctx, now.Add(2*time.Hour))
	if err != nil || len(expired) != 2*len(agents) {
		t.Fatalf("ExpireDue = %d grants, %v; want %d", len(expired), err, 2*len(agents))
	}
}

// TestOpenMigratesOldGrantIndexLayout opens grants written with the first
// index layout (value 0x00 id) and lists them by agent and state.
func TestOpenMigratesOldGrantIndexLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.db")
	raw, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	g := newGrant("test/a", now)
	old := func(v, id string) []byte { return append(append([]byte(v), 0), id...) }
	err = raw.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketGrants, bucketGrantState, bucketGrantAgent, bucketGrantReview} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		v, err := g.MarshalJSON()
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketGrants).Put([]byte(g.ID), v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketGrantState).Put(old(string(g.State), g.ID), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketGrantAgent).Put(old(g.AgentID, g.ID), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := db.Grants()
	for _, f := range []grants.Filter{{AgentID: "test/a"}, {State: grants.StatePending}} {
		gs, err := s.List(context.Background(), f)
		if err != nil || len(gs) != 1 || gs[0].ID != g.ID {
			t.Fatalf("List(%#v) after migration = %v, %v; want grant %s", f, gs, err, g.ID)
		}
	}
}
