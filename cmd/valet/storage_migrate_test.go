package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/etcd/etcdtest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/migrate"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
	"github.com/valet-broker/valet/leases/leasetest"
)

// TestStorageMigrate: a valet on bbolt serves leases, grants and a
// quarantine; stopped, its store is copied by `valet storage migrate` into
// a real etcd cluster; a valet started on that prefix serves the same
// leases, grants and quarantine, and `valet audit verify` passes against
// it with the head the bbolt file had. The refusals leave the prefix and
// the file as they were.
func TestStorageMigrate(t *testing.T) {
	e := newTestEnv(t).Start()
	tok := e.Attest("migrated", nil)
	active := e.Mint(tok, "demo")["lease_id"].(string)
	released := e.Mint(tok, "demo")["lease_id"].(string)
	if r := e.Do("DELETE", "/v1/leases/"+released, tok, nil); r.Status != http.StatusOK && r.Status != http.StatusNoContent {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	pending := requestGrant(t, e, tok, "elevated", "rotate the certificate")
	approved := requestGrant(t, e, e.Attest("approved", nil), "elevated", "renew the cache")
	if r := e.Do("POST", "/v1/grants/"+approved+"/approve", testOperatorToken, map[string]any{"comment": "ok"}); r.Status != http.StatusOK {
		t.Fatalf("approve: %d %s", r.Status, r.Body)
	}
	if r := e.Do("POST", agentPath("test/suspect")+"/quarantine", testOperatorToken, map[string]any{"reason": "investigating"}); r.Status != http.StatusOK {
		t.Fatalf("quarantine: %d %s", r.Status, r.Body)
	}
	e.Server.Close()

	// The source's head, as the offline verifier reads it.
	out := mustCLI(t, nil, "audit", "verify", "--data-dir", e.Dir)
	head := regexp.MustCompile(`audit log OK: (\d+) records, head (\d+) ([0-9a-f]{64})`).FindStringSubmatch(out)
	if head == nil {
		t.Fatalf("audit verify of the source: %s", out)
	}
	records, headHash := head[1], head[3]

	c := etcdtest.StartT(t)
	endpoints := strings.Join(c.Endpoints(), ",")
	migrateArgs := func(prefix string, extra ...string) []string {
		return append([]string{"storage", "migrate", "--from", "bbolt:" + e.Dir, "--to", "etcd", "--etcd-endpoints", endpoints, "--etcd-prefix", prefix}, extra...)
	}
	out = mustCLI(t, nil, migrateArgs("/migrated/")...)
	t.Logf("valet storage migrate:\n%s", out)
	for _, want := range []string{
		`(?m)^copied bbolt \S+/valet.db \(opened read-only, unchanged\) into etcd prefix /migrated/ at ` + regexp.QuoteMeta(endpoints) + `$`,
		`(?m)^KIND\s+SOURCE\s+COPIED\s+TARGET\s+CHECK$`,
		`(?m)^leases\s+2\s+2\s+2\s+ok$`,
		`(?m)^  revocation queue\s+\d+\s+\d+\s+\d+\s+ok$`,
		`(?m)^grants\s+2\s+2\s+2\s+ok$`,
		`(?m)^agents\s+\d+\s+\d+\s+\d+\s+ok$`,
		`(?m)^  quarantined\s+1\s+1\s+1\s+ok$`,
		`(?m)^job states\s+[1-9]\d*\s+[1-9]\d*\s+[1-9]\d*\s+ok$`,
		`(?m)^audit records\s+` + records + `\s+` + records + `\s+` + records + `\s+ok$`,
		`(?m)^  checkpoints\s+[1-9]\d*\s+[1-9]\d*\s+[1-9]\d*\s+ok$`,
		`(?m)^audit head on the source: record ` + records + `, hash ` + headHash + `$`,
		`(?m)^audit head on the target: record ` + records + `, hash ` + headHash + `$`,
		`(?m)^audit chain on the target: OK, ` + records + ` records, head ` + records + ` ` + headHash + `$`,
		`(?m)^migration verified\. Next:$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("the migration's output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "MISMATCH") {
		t.Fatalf("a kind differs:\n%s", out)
	}

	// The refusals: each exits 1, says why, and changes nothing.
	for _, r := range []struct {
		name string
		args []string
		want string
	}{
		{"the prefix is not empty", migrateArgs("/migrated/"),
			"etcd prefix /migrated/ at " + endpoints + ": the target is not empty: it holds"},
		{"the prefix is not empty, and how to clear it", migrateArgs("/migrated/"),
			"clear it with `etcdctl --endpoints=" + endpoints + " del --prefix /migrated/` and run the migration again"},
		{"a bad --to", []string{"storage", "migrate", "--from", "bbolt:" + e.Dir, "--to", "bbolt:/tmp/x"},
			`--to must be etcd (valet storage migrate copies a bbolt store into etcd); it is "bbolt:/tmp/x"`},
		{"a bad --from", []string{"storage", "migrate", "--from", e.Dir, "--to", "etcd", "--etcd-endpoints", endpoints},
			"--from must be bbolt:PATH"},
		{"no etcd settings", []string{"storage", "migrate", "--from", "bbolt:" + e.Dir, "--to", "etcd"},
			"--to etcd needs --config FILE or --etcd-endpoints (the members' client URLs, comma-separated)"},
		{"a configuration of one bbolt process", []string{"storage", "migrate", "--from", "bbolt:" + e.Dir, "--to", "etcd", "--config", e.Dir + "/config.yaml"},
			"storage.engine is bbolt; give the configuration the replicas will run with (storage.engine: etcd)"},
		{"a bad prefix", migrateArgs("nope"), "storage.etcd (the --etcd-* flags).prefix must start and end with /"},
	} {
		t.Run(r.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, nil, r.args...)
			if code != 1 || !strings.Contains(errOut, r.want) || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, r.want)
			}
		})
	}

	// A valet on the prefix serves what the bbolt valet had.
	cfg := *e.Config
	cfg.Storage.Engine = engineEtcd
	cfg.Storage.Etcd.Endpoints = c.Endpoints()
	cfg.Storage.Etcd.Prefix = "/migrated/"
	cfg.Storage.Etcd.LeaderTTL = config.Duration(time.Second)
	r := (&testEnv{t: t, Dir: e.Dir, Issuer: e.Issuer, Config: &cfg}).Start()
	if got := leaseState(t, r, active); got != "active" {
		t.Errorf("the active lease on etcd: %s", got)
	}
	if got := leaseState(t, r, released); got != "released" && got != "revoking" {
		t.Errorf("the released lease on etcd: %s", got)
	}
	for id, want := range map[string]string{pending: "pending", approved: "approved"} {
		g := r.Do("GET", "/v1/grants/"+id, testOperatorToken, nil)
		if g.Status != http.StatusOK || g.JSON(t)["state"] != want {
			t.Errorf("grant %s on etcd: %d %s, want %s", id, g.Status, g.Body, want)
		}
	}
	if m := r.Do("POST", "/v1/credentials", r.Attest("suspect", nil), map[string]any{"role": "demo"}); m.Status != http.StatusForbidden ||
		!strings.Contains(string(m.Body), "quarantined") {
		t.Errorf("a mint of the quarantined agent on etcd: %d %s", m.Status, m.Body)
	}
	r.Mint(tok, "demo")
	out = mustCLI(t, []string{"VALET_ADDR=" + r.URL, "VALET_TOKEN=" + testOperatorToken}, "audit", "verify")
	if !regexp.MustCompile(`^audit log OK: \d+ records`).MatchString(out) {
		t.Fatalf("audit verify against the valet on etcd: %s", out)
	}
	// The copied records are the first of the chain the etcd valet goes on.
	recs := apiJSON[struct {
		Records []struct {
			Seq  uint64 `json:"seq"`
			Hash string `json:"hash"`
		} `json:"records"`
	}](t, r, "/v1/audit?"+url.Values{"after": {"0"}, "limit": {"1000"}}.Encode())
	found := false
	for _, rec := range recs.Records {
		if fmt.Sprint(rec.Seq) == records {
			found = rec.Hash == headHash
		}
	}
	if !found {
		t.Errorf("record %s on etcd does not have the bbolt head's hash %s", records, headHash)
	}

	// The file is in use while a valet holds it: the migration refuses.
	e.Start()
	_, errOut, code := runCLI(t, nil, migrateArgs("/other/")...)
	if code != 1 || !strings.Contains(errOut, "a valet process holds the file; stop it first") {
		t.Fatalf("a migration of a file in use: exit %d, %s", code, errOut)
	}
}

// TestStorageMigrateStopsOnABadRecord: a record of the source that cannot
// be read stops the migration, naming it; what was copied before stays,
// and the command says how to clear the prefix.
func TestStorageMigrateStopsOnABadRecord(t *testing.T) {
	dir := t.TempDir()
	s, err := bolt.Open(filepath.Join(dir, "valet.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ls []*leases.Lease
	for i := range migrate.BatchSize + 10 {
		ls = append(ls, leasetest.NewPending(leasetest.T0.Add(time.Duration(i)*time.Millisecond), "agent-1", time.Hour))
	}
	leasetest.SeedActive(t, s, ls)
	g := &grants.Grant{ID: leases.NewID(leasetest.T0), AgentID: "agent-1", Role: "elevated", State: grants.StatePending, CreatedAt: leasetest.T0}
	if err := s.Grants().Create(context.Background(), g, leasetest.T0, audit.Entry{Kind: audit.KindGrantRequest, Actor: audit.SystemActor}); err != nil {
		t.Fatal(err)
	}
	if err := s.Tamper("grants", []byte(g.ID), func([]byte) []byte { return []byte("{not json") }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	c := etcdtest.StartT(t)
	endpoints := strings.Join(c.Endpoints(), ",")
	out, errOut, code := runCLI(t, nil, "storage", "migrate", "--from", "bbolt:"+dir, "--to", "etcd", "--etcd-endpoints", endpoints)
	for _, want := range []string{
		fmt.Sprintf("grant %q cannot be read", g.ID),
		"etcd prefix /valet/ at " + endpoints + " now holds a partial copy",
		"clear it with `etcdctl --endpoints=" + endpoints + " del --prefix /valet/` and run the migration again",
	} {
		if code != 1 || out != "" || !strings.Contains(errOut, want) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, want)
		}
	}
}
