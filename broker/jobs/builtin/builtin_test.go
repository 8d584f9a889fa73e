package builtin_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends/kek"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

var testKEK = bytes.Repeat([]byte{7}, 32)

// Every job valet knows resolves with its defaults: a schedule that
// parses, a positive timeout, settings that decode from nothing.
func TestDefaultJobs(t *testing.T) {
	resolved, err := builtin.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range resolved {
		names = append(names, r.Name)
		if r.Parsed == nil || r.Timeout <= 0 {
			t.Errorf("%s: schedule %q parsed %v, timeout %s", r.Name, r.Schedule, r.Parsed, r.Timeout)
		}
		if _, err := builtin.Settings(r); err != nil {
			t.Errorf("%s: default settings: %v", r.Name, err)
		}
	}
	if got := strings.Join(names, ","); got != "signing-key-rotation,audit-checkpoint,grant-expiry,housekeeping,audit-archive,quarantine-release,kek-rotation,vault-secret-id-rotation,vault-token-health" {
		t.Errorf("default jobs %s", got)
	}
}

func TestJobSettingsRefused(t *testing.T) {
	cases := []struct {
		name     string
		settings map[string]any
		job      string
		want     string
	}{
		{"prepublish under the JWKS max-age", map[string]any{"prepublish": "1m"}, "signing-key-rotation", "jobs[0].prepublish must be at least 5m0s"},
		{"unknown setting", map[string]any{"prepublsh": "1h"}, "signing-key-rotation", "prepublsh"},
		{"witness type", map[string]any{"witnesses": []any{map[string]any{"type": "ftp"}}}, "audit-checkpoint", `jobs[0].witnesses[0].type "ftp" must be file, webhook or stdout`},
		{"relative witness file", map[string]any{"witnesses": []any{map[string]any{"type": "file", "path": "cps.jsonl"}}}, "audit-checkpoint", "jobs[0].witnesses[0].path must be an absolute file path"},
		{"witness URL", map[string]any{"witnesses": []any{map[string]any{"type": "webhook", "url": "ftp://x"}}}, "audit-checkpoint", "jobs[0].witnesses[0].url must be an absolute http(s) URL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := builtin.Resolve([]jobs.Spec{{Name: tc.job, Settings: tc.settings}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// recorder is a webhook witness that keeps what it receives, or fails.
type recorder struct {
	mu     sync.Mutex
	bodies [][]byte
	status int
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bodies = append(r.bodies, b)
	w.WriteHeader(r.status)
}

// The checkpoint job signs the head as committed, hands the checkpoint to
// every witness (a failing one fails the run, the others still get it),
// and returns it as an audit.checkpoint record; its key persists, sealed
// under the KEK.
func TestCheckpointJob(t *testing.T) {
	dir := t.TempDir()
	store, err := bolt.Open(filepath.Join(dir, "valet.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if err := store.Audit(context.Background(), now, audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor, Reason: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	good, bad := &recorder{status: 204}, &recorder{status: 503}
	goodSrv, badSrv := httptest.NewServer(good), httptest.NewServer(bad)
	defer goodSrv.Close()
	defer badSrv.Close()
	witnessFile := filepath.Join(dir, "w", "cps.jsonl")
	var stdout bytes.Buffer
	resolved, err := builtin.Resolve([]jobs.Spec{{Name: "audit-checkpoint", Settings: map[string]any{"witnesses": []any{
		map[string]any{"type": "file", "path": witnessFile},
		map[string]any{"type": "webhook", "url": badSrv.URL},
		map[string]any{"type": "webhook", "url": goodSrv.URL},
		map[string]any{"type": "stdout"},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	var cpEntry jobs.Resolved
	for _, r := range resolved {
		if r.Name == "audit-checkpoint" {
			cpEntry = r
		}
	}
	entries, err := builtin.Build([]jobs.Resolved{cpEntry}, builtin.Deps{Audit: store, DataDir: dir, KEK: testKEK,
		PublicURL: "https://valet.example.com", Stdout: &stdout, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := entries[0].Job.Run(context.Background(), now)
	if err == nil || !strings.Contains(err.Error(), "witness webhook "+badSrv.URL+": answered 503") {
		t.Fatalf("Run error %v, want the failing witness named", err)
	}
	pub, err := builtin.ReadCheckpointPublicKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	var fromFile audit.Checkpoint
	b, err := os.ReadFile(witnessFile)
	if err != nil || json.Unmarshal(bytes.TrimSpace(b), &fromFile) != nil {
		t.Fatalf("witness file: %v %s", err, b)
	}
	if err := fromFile.Verify(pub); err != nil || fromFile.Seq != 3 || fromFile.Origin != "https://valet.example.com" {
		t.Fatalf("checkpoint %+v: %v", fromFile, err)
	}
	var fromHook audit.Checkpoint
	if len(good.bodies) != 1 || json.Unmarshal(good.bodies[0], &fromHook) != nil || fromHook != fromFile {
		t.Errorf("webhook witness got %q", good.bodies)
	}
	var line struct {
		CP audit.Checkpoint `json:"valet_audit_checkpoint"`
	}
	if json.Unmarshal(stdout.Bytes(), &line) != nil || line.CP != fromFile {
		t.Errorf("stdout witness wrote %q", stdout.String())
	}
	if len(res.Records) != 1 || res.Records[0].Kind != audit.KindCheckpoint || res.Changes["seq"] != "3" {
		t.Fatalf("result %+v", res)
	}
	if cp, err := builtin.CheckpointFromRecord(audit.Record{Entry: res.Records[0]}); err != nil || cp != fromFile {
		t.Errorf("the record holds %+v, %v", cp, err)
	}

	// The key persists and opens only under its KEK.
	again, err := builtin.LoadCheckpointKey(dir, kek.Ring{Current: testKEK}, now)
	if err != nil || !again.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatalf("reloaded key: %v", err)
	}
	if _, err := builtin.LoadCheckpointKey(dir, kek.Ring{Current: bytes.Repeat([]byte{8}, 32)}, now); err == nil || !strings.Contains(err.Error(), "cannot be unsealed") {
		t.Errorf("wrong KEK: %v", err)
	}
}

// audit-archive moves the records older than its hot window out of the
// database, and the log still verifies whole; a checkpoint signed before
// matches it after.
func TestAuditArchiveJob(t *testing.T) {
	dir := t.TempDir()
	store, err := bolt.Open(filepath.Join(dir, "valet.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 10 {
		at := now.Add(time.Duration(i-10) * time.Hour) // 10h ago to 1h ago
		if err := store.Audit(ctx, at, audit.Entry{Kind: audit.KindServerStart, Actor: audit.SystemActor, Reason: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	head, err := store.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	cp := audit.SignCheckpoint(key, "https://valet.example.com", head, now)
	resolved, err := builtin.Resolve([]jobs.Spec{{Name: "audit-archive", Settings: map[string]any{"hot_window": "4h"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resolved {
		if r.Name != "audit-archive" {
			continue
		}
		if _, err := builtin.Build([]jobs.Resolved{r}, builtin.Deps{Clock: clock.NewFake(now)}); err == nil || !strings.Contains(err.Error(), "needs the audit archive") {
			t.Errorf("Build without the archive: %v", err)
		}
		entries, err := builtin.Build([]jobs.Resolved{r}, builtin.Deps{Archive: store, Clock: clock.NewFake(now)})
		if err != nil {
			t.Fatal(err)
		}
		res, err := entries[0].Job.Run(ctx, now)
		// Records 10h..5h ago are older than the 4h window; 4h ago is not.
		want := map[string]string{"records_archived": "6", "segments": "1", "archived_through": "6"}
		if err != nil || !maps.Equal(res.Changes, want) {
			t.Errorf("Run = %v, %v; want %v", res.Changes, err, want)
		}
	}
	recs, err := store.ListAudit(ctx, audit.Filter{})
	if err != nil || len(recs) != 10 {
		t.Errorf("ListAudit after archiving = %d records, %v; want all 10", len(recs), err)
	}
	if res, err := store.VerifyAuditCheckpoints(ctx, []audit.Checkpoint{cp}); err != nil || !res.OK || res.Checkpoints != 1 {
		t.Errorf("VerifyAuditCheckpoints = %+v, %v", res, err)
	}
	if ents, err := os.ReadDir(audit.ArchiveDir(dir)); err != nil || len(ents) != 1 {
		t.Errorf("archive: %v, %v; want one segment", ents, err)
	}
}
