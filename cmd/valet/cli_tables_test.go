package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/valet-broker/valet/leases/audit"
)

// This file runs every CLI command that prints a table or an object
// against a real server holding real data, and checks what it printed
// against the API's JSON answer for the same objects, column by column.

// parseTable reads a text/tabwriter table: the header's words name the
// columns, and each column runs from its header's first character to the
// next header's (the last to the end of the line).
func parseTable(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	header := []rune(lines[0])
	type col struct {
		name  string
		start int
	}
	var cols []col
	for i := 0; i < len(header); i++ {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			end := i
			for end < len(header) && header[end] != ' ' {
				end++
			}
			cols = append(cols, col{string(header[i:end]), i})
		}
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		r := []rune(line)
		row := map[string]string{}
		for j, c := range cols {
			end := len(r)
			if j+1 < len(cols) {
				end = min(cols[j+1].start, len(r))
			}
			if c.start > len(r) {
				row[c.name] = ""
				continue
			}
			row[c.name] = strings.TrimRight(string(r[c.start:end]), " ")
		}
		rows = append(rows, row)
	}
	return rows
}

// cliEnv is the environment of CLI runs against e: the operator token, and
// UTC so printed times can be compared.
func cliEnv(e *testEnv, extra ...string) []string {
	return append([]string{"VALET_ADDR=" + e.URL, "VALET_TOKEN=" + testOperatorToken, "TZ=UTC", "VALET_ATTESTATION="}, extra...)
}

// mustCLI runs the CLI and fails the test unless it exits 0.
func mustCLI(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, errOut, code := runCLI(t, env, args...)
	if code != 0 {
		t.Fatalf("valet %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// apiJSON GETs path as the operator and decodes the answer.
func apiJSON[T any](t *testing.T, e *testEnv, path string) T {
	t.Helper()
	r := e.Do("GET", path, testOperatorToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, r.Status, r.Body)
	}
	return decode[T](t, r)
}

// shownTime is how the CLI prints an API time (in UTC, see cliEnv).
func shownTime(t *testing.T, v any) string {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil {
		t.Fatal(err)
	}
	return tm.UTC().Format(time.DateTime)
}

// checkRows compares table rows with the API's objects, in order: want
// maps each object to the row the CLI must print for it.
func checkRows(t *testing.T, rows []map[string]string, objs []map[string]any, want func(o map[string]any) map[string]string) {
	t.Helper()
	if len(rows) != len(objs) || len(objs) == 0 {
		t.Fatalf("%d rows for %d objects of the API (want the same, non-zero)", len(rows), len(objs))
	}
	for i, o := range objs {
		if w := want(o); !reflect.DeepEqual(rows[i], w) {
			t.Errorf("row %d = %q, want %q (from %v)", i, rows[i], w, o)
		}
	}
}

// sameJSON checks that a printed JSON object is the API's answer.
func sameJSON(t *testing.T, printed string, api map[string]any) {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal([]byte(printed), &got); err != nil {
		t.Fatalf("printed output is not a JSON object: %v\n%s", err, printed)
	}
	if !reflect.DeepEqual(got, api) {
		t.Errorf("printed %v\nwant the API's %v", got, api)
	}
}

func text(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func TestCLITablesMatchTheAPI(t *testing.T) {
	e := newTestEnv(t).Start()
	op := cliEnv(e)
	// Leases of several agents, roles, backends and states.
	a := e.Attest("tables-a", nil)
	leaseA := e.Mint(a, "demo")["lease_id"].(string)
	ledger := e.Mint(a, "ledger")["lease_id"].(string) // a handle that is not the lease id
	b := e.Attest("tables-b", nil)
	released := e.Mint(b, "other")["lease_id"].(string)
	if r := e.Do("DELETE", "/v1/leases/"+released, b, nil); r.Status != http.StatusOK {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	// Grants: pending, partly approved, denied, break-glass awaiting review.
	pending := requestGrant(t, e, a, "elevated", "rotate the certificate")
	twoKeys := requestGrant(t, e, b, "two-keys", "needs two approvals")
	decide(t, e, testOperatorToken, twoKeys, "approve", http.StatusOK)
	denied := requestGrant(t, e, e.Attest("tables-c", nil), "elevated", "will be denied")
	decide(t, e, testOperatorToken, denied, "deny", http.StatusOK)
	if r := e.Do("POST", "/v1/credentials", a, map[string]any{"role": "glass", "reason": "production is down", "break_glass": true}); r.Status != http.StatusCreated {
		t.Fatalf("break glass: %d %s", r.Status, r.Body)
	}

	t.Run("leases list", func(t *testing.T) {
		rows := parseTable(t, mustCLI(t, op, "leases", "list"))
		api := apiJSON[struct{ Leases []map[string]any }](t, e, "/v1/leases?limit=100").Leases
		checkRows(t, rows, api, func(l map[string]any) map[string]string {
			handle := text(l["handle"])
			if handle == l["id"] {
				handle = ""
			}
			return map[string]string{"ID": text(l["id"]), "AGENT": text(l["agent_id"]), "ROLE": text(l["role"]), "BACKEND": text(l["backend"]),
				"STATE": text(l["state"]), "EXPIRES": shownTime(t, l["expires_at"]), "HANDLE": handle}
		})
		// A filter is passed on as the API's.
		rows = parseTable(t, mustCLI(t, op, "leases", "list", "--agent", "test/tables-b", "--state", "released"))
		if len(rows) != 1 || rows[0]["ID"] != released {
			t.Errorf("filtered list %v, want only %s", rows, released)
		}
	})
	t.Run("leases list --json", func(t *testing.T) {
		sameJSON(t, mustCLI(t, op, "leases", "list", "--json"), apiJSON[map[string]any](t, e, "/v1/leases?limit=100"))
	})
	t.Run("leases get", func(t *testing.T) {
		sameJSON(t, mustCLI(t, op, "leases", "get", leaseA), apiJSON[map[string]any](t, e, "/v1/leases/"+leaseA))
	})
	t.Run("grants list", func(t *testing.T) {
		want := func(g map[string]any) map[string]string {
			st := text(g["state"])
			if g["review_pending"] == true {
				st += " (review pending)"
			}
			return map[string]string{"ID": text(g["id"]), "KIND": text(g["kind"]), "AGENT": text(g["agent_id"]), "ROLE": text(g["role"]),
				"TTL": text(g["ttl"]), "STATE": st, "APPROVALS": fmt.Sprintf("%d/%v", len(g["approvals"].([]any)), g["approvals_required"]),
				"EXPIRES": shownTime(t, g["expires_at"]), "REASON": text(g["reason"])}
		}
		for _, tc := range []struct {
			args  []string
			query string
		}{
			{nil, "state=pending"},
			{[]string{"--state", "all"}, ""},
			{[]string{"--state", "denied"}, "state=denied"},
			{[]string{"--review-pending"}, "review=pending"},
		} {
			rows := parseTable(t, mustCLI(t, op, append([]string{"grants", "list"}, tc.args...)...))
			checkRows(t, rows, apiJSON[struct{ Grants []map[string]any }](t, e, "/v1/grants?"+tc.query).Grants, want)
		}
		// The values the old decoding lost are there.
		rows := parseTable(t, mustCLI(t, op, "grants", "list"))
		for _, r := range rows {
			if r["ID"] == twoKeys && (r["AGENT"] != "test/tables-b" || r["APPROVALS"] != "1/2" || !strings.HasPrefix(r["EXPIRES"], "20")) {
				t.Errorf("two-keys grant row %q, want agent test/tables-b, approvals 1/2 and an expiry", r)
			}
		}
	})
	t.Run("grants get", func(t *testing.T) {
		for _, id := range []string{pending, twoKeys, denied} {
			sameJSON(t, mustCLI(t, op, "grants", "get", id), apiJSON[map[string]any](t, e, "/v1/grants/"+id))
		}
	})
	t.Run("audit list", func(t *testing.T) {
		rows := parseTable(t, mustCLI(t, op, "audit", "list", "--limit", "1000"))
		api := apiJSON[struct{ Records []map[string]any }](t, e, "/v1/audit?newest=true&limit=1000").Records
		checkRows(t, rows, api, func(r map[string]any) map[string]string {
			actor := r["actor"].(map[string]any)
			return map[string]string{"SEQ": fmt.Sprint(r["seq"]), "TIME": shownTime(t, r["time"]), "KIND": text(r["kind"]),
				"ACTOR": text(actor["type"]) + ":" + text(actor["id"]), "DECISION": text(r["decision"]), "ROLE": text(r["role"]),
				"LEASE": text(r["lease_id"]), "REASON": text(r["reason"])}
		})
	})
	t.Run("audit verify", func(t *testing.T) {
		v := apiJSON[audit.VerifyResult](t, e, "/v1/audit/verify")
		want := fmt.Sprintf("audit log OK: %d records, head %d %s\n", v.Records, v.HeadSeq, v.HeadHash)
		if out := mustCLI(t, op, "audit", "verify"); out != want {
			t.Errorf("audit verify printed %q, want %q", out, want)
		}
	})
	t.Run("objects printed by changes", func(t *testing.T) {
		// The agent sees its lease without the operator's fields.
		agent := cliEnv(e, "VALET_TOKEN=", "VALET_ATTESTATION="+a)
		sameJSON(t, mustCLI(t, agent, "leases", "release", ledger), agentView(t, apiJSON[map[string]any](t, e, "/v1/leases/"+ledger)))
		sameJSON(t, mustCLI(t, op, "grants", "approve", pending, "-m", "ok"), apiJSON[map[string]any](t, e, "/v1/grants/"+pending))
		sameJSON(t, mustCLI(t, op, "leases", "revoke", leaseA, "--reason", "done"), apiJSON[map[string]any](t, e, "/v1/leases/"+leaseA))
	})
}

// agentView is a lease as its agent sees it: without the backend handle
// and details, which only operators see.
func agentView(t *testing.T, l map[string]any) map[string]any {
	t.Helper()
	delete(l, "handle")
	delete(l, "details")
	return l
}

// hostile values a server may hold: written by an older valet, or allowed
// because they are not control characters (a bidi override in a subject).
const (
	hostileAuditRole   = "x\n2026-11-29 FAKE mint allow\x1b[2J"
	hostileAuditReason = "ok\x1b]0;pwned\x07\u009b2J\r"
	hostileSubject     = "evil\u202etxt.exe"
)

func TestCLIEscapesWhatTheServerSends(t *testing.T) {
	e := newTestEnv(t).Start()
	op := cliEnv(e)
	// An audit record as a valet before role names were checked wrote it.
	if err := e.Server.store.Audit(context.Background(), time.Now(), audit.Entry{
		Kind: audit.KindMint, Actor: audit.Actor{Type: audit.ActorAnonymous}, Decision: audit.Deny,
		Role: hostileAuditRole, Reason: hostileAuditReason,
	}); err != nil {
		t.Fatal(err)
	}
	tok := e.Attest(hostileSubject, nil)
	lease := e.Mint(tok, "demo")["lease_id"].(string)
	grant := requestGrant(t, e, tok, "elevated", "because \u202eof reasons\u2066")

	records := len(apiJSON[struct{ Records []map[string]any }](t, e, "/v1/audit?limit=1000").Records)
	for _, tc := range []struct {
		args []string
		rows int    // table rows, or -1 for JSON
		want string // an escape the output must show
	}{
		{[]string{"audit", "list"}, records, `x\n2026-11-29 FAKE mint allow\x1b[2J`},
		{[]string{"audit", "list"}, records, `ok\x1b]0;pwned\x07\u009b2J\r`},
		{[]string{"leases", "list"}, 1, `test/evil\u202etxt.exe`},
		{[]string{"grants", "list"}, 1, `because \u202eof reasons\u2066`},
		{[]string{"leases", "get", lease}, -1, `"agent_id": "test/evil\u202etxt.exe"`},
		{[]string{"grants", "get", grant}, -1, `"reason": "because \u202eof reasons\u2066"`},
		{[]string{"leases", "list", "--json"}, -1, `test/evil\u202etxt.exe`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out := mustCLI(t, op, tc.args...)
			if i := strings.IndexFunc(out, func(r rune) bool { return r != '\n' && !unicode.IsGraphic(r) }); i >= 0 {
				t.Errorf("output holds %U at byte %d:\n%q", []rune(out[i:])[0], i, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output does not show %s:\n%s", tc.want, out)
			}
			if tc.rows >= 0 {
				if n := strings.Count(out, "\n"); n != tc.rows+1 {
					t.Errorf("output has %d lines, want a header and %d rows:\n%s", n, tc.rows, out)
				}
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		// The policy's refusal names the agent; the CLI prints it escaped.
		blocked := e.Attest("blocked\u202e", map[string]any{"blocked": true})
		_, errOut, code := runCLI(t, cliEnv(e, "VALET_TOKEN=", "VALET_ATTESTATION="+blocked), "creds", "demo")
		if code != 1 || strings.ContainsRune(errOut, '\u202e') || !strings.Contains(errOut, `agent test/blocked\u202e may not mint`) {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})
}
