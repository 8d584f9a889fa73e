package web

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/leases"
)

// signal raises a signal about agent as an operator.
func (f *fixture) signal(agent string, sev agents.Severity, reason string) *broker.SignalResult {
	f.t.Helper()
	res, err := f.b.RaiseSignal(context.Background(), broker.OperatorSource(&broker.Operator{Name: "siem-bot"}),
		broker.SignalRequest{Subject: agents.Subject{Kind: agents.SubjectAgent, ID: agent}, Severity: sev, Reason: reason})
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// TestConsoleAgentsShowRiskQuarantineAndSignals: the agents page lists a
// quarantined agent first, with its risk and the signals that moved it;
// its page shows its signals and its timeline.
func TestConsoleAgentsShowRiskQuarantineAndSignals(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	f.mint("agent-1", "demo", nil)
	f.mint("agent-2", "demo", nil)
	f.signal("test/agent-1", agents.SeverityHigh, "exfiltration <script>alert(1)</script>")
	f.signal("test/agent-2", agents.SeverityLow, "odd hour")

	page := b.get("/ui/agents").Body
	mustContain(t, page, `id="quarantined-h"`, `id="quarantined-test/agent-1"`, `<span class="risk risk-medium">60</span>`,
		"exfiltration &lt;script&gt;", "high signal from operator:siem-bot", `action="/ui/agents/test%2Fagent-1/release"`,
		`<span class="sev sev-low">low</span> alert`)
	if strings.Contains(page, "<script>alert") {
		t.Fatal("a signal's reason reached the page unescaped")
	}
	if strings.Contains(page, `id="quarantined-test/agent-2"`) {
		t.Fatal("an agent that was only alerted about is listed as quarantined")
	}

	page = b.get("/ui/agents/" + url.PathEscape("test/agent-1")).Body
	mustContain(t, page, `<span class="tag tag-alert" id="quarantined">quarantined</span>`, `id="risk">60</span>`,
		`<h2 id="signals-h">Signals</h2>`, "operator: siem-bot", "+60", "agent.quarantine", "lease.revoke", "signal</span>",
		`action="/ui/agents/test%2Fagent-1/release"`)
	// Every page of an agent needs its id.
	if r := b.get("/ui/agents/not-an-agent"); r.Status != http.StatusBadRequest {
		t.Fatalf("an id of no agent: %d", r.Status)
	}
	if r := b.get("/ui/agents/" + url.PathEscape("test/nobody")); r.Status != http.StatusNotFound {
		t.Fatalf("an agent valet never saw: %d", r.Status)
	}
}

// TestConsoleReleaseNeedsAFreshSignIn: releasing (and quarantining) an
// agent is a decision: with a stale sign-in the console asks for a new
// one and changes nothing; a reason is required.
func TestConsoleReleaseNeedsAFreshSignIn(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	f.mint("agent-1", "demo", nil)
	f.signal("test/agent-1", agents.SeverityCritical, "credential compromise")
	path := "/ui/agents/" + url.PathEscape("test/agent-1")
	f.clock.Advance(11 * time.Minute) // past fresh_login (10m), within session_idle (15m)

	page := b.get(path)
	mustContain(t, page.Body, "releasing asks you to sign in again first")
	csrf := csrfField.FindStringSubmatch(page.Body)[1]
	r := b.post(path+"/release", url.Values{"csrf": {csrf}, "reason": {"checked"}, "return": {path}})
	loc, _ := url.Parse(r.Location())
	if r.Status != http.StatusSeeOther || loc.Path != "/ui/login" || loc.Query().Get("reason") != "fresh" || loc.Query().Get("next") != path {
		t.Fatalf("release with a stale sign-in: %d %q", r.Status, r.Location())
	}
	if g := f.store.Gate("test/agent-1"); !g.Quarantine.ActiveAt(f.clock.Now()) {
		t.Fatal("the agent was released without a fresh sign-in")
	}

	b.login("alice", path)
	csrf = b.csrf(path)
	r = b.post(path+"/release", url.Values{"csrf": {csrf}, "reason": {" "}, "return": {path}})
	mustContain(t, b.get(r.Location()).Body, "Give one reason")
	if g := f.store.Gate("test/agent-1"); g.Quarantine == nil {
		t.Fatal("released without a reason")
	}
	r = b.post(path+"/release", url.Values{"csrf": {csrf}, "reason": {"false positive"}, "return": {path}})
	mustContain(t, b.get(r.Location()).Body, "Released test/agent-1.")
	if g := f.store.Gate("test/agent-1"); g.Quarantine != nil {
		t.Fatal("the release did not take")
	}
	a, _ := f.store.GetAgent(context.Background(), "test/agent-1")
	if a.LastRelease == nil || a.LastRelease.By.ID != "alice" || a.LastRelease.Reason != "false positive" {
		t.Fatalf("release record %+v", a.LastRelease)
	}

	// An operator quarantines from the console too, and its leases end.
	l := f.mint("agent-1", "demo", nil)
	r = b.post(path+"/quarantine", url.Values{"csrf": {csrf}, "reason": {"investigating"}, "return": {path}})
	mustContain(t, b.get(r.Location()).Body, "Quarantined test/agent-1 and ended 1 live lease")
	if st := f.lease(l.Lease.ID).State; st == leases.StateActive {
		t.Fatalf("the quarantined agent's lease is %s", st)
	}
	// Without the CSRF token nothing happens.
	r = b.post(path+"/release", url.Values{"reason": {"no token"}})
	if r.Status != http.StatusForbidden || f.store.Gate("test/agent-1").Quarantine == nil {
		t.Fatalf("release without the CSRF token: %d", r.Status)
	}
}
