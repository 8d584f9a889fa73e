package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestAgentsAndSignalCLI: valet signal sends signals as a source or an
// operator, valet agents list, show, quarantine and release print what the
// API answers, and together they contain and restore an agent.
func TestAgentsAndSignalCLI(t *testing.T) {
	e := newTestEnv(t)
	withSignalSource(e, nil)
	e.Start()
	op := cliEnv(e)
	asSource := cliEnv(e, "VALET_SIGNAL_TOKEN="+siemToken)
	e.Mint(e.Attest("cli-a", nil), "demo")
	e.Mint(e.Attest("cli-b", nil), "other")

	out := mustCLI(t, asSource, "signal", "--agent", "test/cli-a", "--severity", "high", "--reason", "token in a paste")
	if !strings.Contains(out, "high, action quarantine; 1 live leases ended; quarantined test/cli-a") {
		t.Fatalf("valet signal printed %q", out)
	}
	out = mustCLI(t, op, "signal", "--agent", "test/cli-b", "--severity", "low", "--reason", "odd hour")
	if !strings.Contains(out, "low, action alert; 0 live leases ended") || strings.Contains(out, "quarantined") {
		t.Fatalf("valet signal as an operator printed %q", out)
	}

	t.Run("agents list", func(t *testing.T) {
		for _, q := range []struct {
			args  []string
			query string
		}{{nil, ""}, {[]string{"--quarantined"}, "quarantined=true"}} {
			rows := parseTable(t, mustCLI(t, op, append([]string{"agents", "list"}, q.args...)...))
			api := apiJSON[struct{ Agents []map[string]any }](t, e, "/v1/agents?"+q.query).Agents
			checkRows(t, rows, api, func(a map[string]any) map[string]string {
				qd := "no"
				if a["quarantined"] == true {
					qd = "yes: " + text(a["quarantine"].(map[string]any)["reason"])
				}
				var roles []string
				for _, r := range a["roles"].([]any) {
					roles = append(roles, r.(string))
				}
				return map[string]string{"AGENT": text(a["id"]), "RISK": text(a["risk"]), "QUARANTINED": qd,
					"LAST-SEEN": shownTime(t, a["last_seen"]), "ROLES": strings.Join(roles, ",")}
			})
		}
	})
	t.Run("signal list", func(t *testing.T) {
		rows := parseTable(t, mustCLI(t, op, "signal", "list"))
		api := apiJSON[struct{ Signals []map[string]any }](t, e, "/v1/signals?limit=50").Signals
		checkRows(t, rows, api, func(s map[string]any) map[string]string {
			src, sub := s["source"].(map[string]any), s["subject"].(map[string]any)
			return map[string]string{"ID": text(s["id"]), "RECEIVED": shownTime(t, s["received_at"]),
				"SOURCE": text(src["kind"]) + ":" + text(src["name"]), "SUBJECT": text(sub["kind"]) + ":" + text(sub["id"]),
				"SEVERITY": text(s["severity"]), "ACTION": text(s["action"]), "REASON": text(s["reason"])}
		})
	})
	t.Run("agents show", func(t *testing.T) {
		sameJSON(t, mustCLI(t, op, "agents", "show", "test/cli-a"), apiJSON[map[string]any](t, e, "/v1/agents/"+url.PathEscape("test/cli-a")))
	})

	if r := e.Do("POST", "/v1/credentials", e.Attest("cli-a", nil), map[string]any{"role": "demo"}); r.Status != http.StatusForbidden {
		t.Fatalf("mint while quarantined: %d %s", r.Status, r.Body)
	}
	mustCLI(t, op, "agents", "release", "test/cli-a", "--reason", "paste was a test")
	e.Mint(e.Attest("cli-a", nil), "demo")
	mustCLI(t, op, "agents", "quarantine", "test/cli-b", "--reason", "investigating")
	if r := e.Do("POST", "/v1/credentials", e.Attest("cli-b", nil), map[string]any{"role": "other"}); r.Status != http.StatusForbidden {
		t.Fatalf("mint after valet agents quarantine: %d %s", r.Status, r.Body)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"signal", "--severity", "high", "--reason", "x"}, "name one subject"},
		{[]string{"signal", "--agent", "test/cli-a", "--role", "demo", "--severity", "high", "--reason", "x"}, "name one subject"},
		{[]string{"signal", "--agent", "test/nobody", "--severity", "high", "--reason", "x"}, "404"},
		{[]string{"agents", "release", "test/cli-a"}, "give --reason"},
		{[]string{"agents", "release", "test/cli-a", "--reason", "again"}, "409"},
	} {
		_, errOut, code := runCLI(t, op, c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("valet %s: exit %d, %q; want 1 and %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}

}
