package notify_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases/audit"
)

// TestAgentEventMessages: quarantine, release, mass revocation and
// signals reach Slack as one escaped line each, and JSON receivers as the
// event with its agent or signal.
func TestAgentEventMessages(t *testing.T) {
	hostile := "<!channel> exfil & more\nline two"
	url := "https://valet.example.com/ui/agents/k8s%2Fa"
	agent := func(typ string) broker.Event {
		return broker.Event{Type: typ, Severity: broker.SeverityHigh, Time: time.Unix(1700000000, 0), URL: url,
			Agent: &broker.AgentEvent{ID: "k8s/a", Reason: hostile, By: audit.Actor{Type: audit.ActorOperator, ID: "alice"}, Risk: 60, Revoked: 7}}
	}
	cases := []struct {
		name  string
		event broker.Event
		text  string
	}{
		{"quarantined", agent(broker.EventAgentQuarantined),
			`:rotating_light: Quarantined: agent k8s/a (risk 60) — "&lt;!channel&gt; exfil &amp; more line two"`},
		{"released", agent(broker.EventAgentReleased),
			`:unlock: Released: agent k8s/a (risk 60) by alice — "&lt;!channel&gt; exfil &amp; more line two"`},
		{"mass revocation", agent(broker.EventLeasesRevoked),
			`:scissors: Revoked 7 live leases of agent k8s/a (risk 60) — "&lt;!channel&gt; exfil &amp; more line two"`},
		{"signal", broker.Event{Type: broker.EventSignal, Severity: "high", URL: url, Signal: &agents.Signal{ID: "S1", Severity: agents.SeverityHigh,
			Source: agents.Source{Kind: agents.SourceREST, Name: "siem"}, Subject: agents.Subject{Kind: agents.SubjectAgent, ID: "k8s/a"},
			Reason: hostile, Action: agents.ActionQuarantine}},
			`:warning: Signal: high from source:siem about agent:k8s/a — "&lt;!channel&gt; exfil &amp; more line two"; action quarantine`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			slack, plain := newReceiver(t, statuses(http.StatusOK)), newReceiver(t, statuses(http.StatusOK))
			d := mustRun(t, notify.Options{Webhooks: []notify.WebhookConfig{
				webhook("slack", slack.url, func(w *notify.WebhookConfig) { w.Format = "slack" }),
				webhook("json", plain.url, nil),
			}, Clock: newTimerClock()})
			d.Notify(c.event)
			var m slackMessage
			if err := json.Unmarshal(slack.next(t).body, &m); err != nil {
				t.Fatal(err)
			}
			want := c.text + " <https://valet.example.com/ui/agents/k8s%2Fa|open in console>"
			if m.Text != want {
				t.Errorf("text:\n got %s\nwant %s", m.Text, want)
			}
			body := plain.next(t).body
			var j map[string]any
			if err := json.Unmarshal(body, &j); err != nil {
				t.Fatal(err)
			}
			if j["type"] != c.event.Type || (j["agent"] == nil) == (c.event.Agent != nil) || (j["signal"] == nil) == (c.event.Signal != nil) || j["grant"] != nil {
				t.Errorf("json body %s", body)
			}
			if !strings.Contains(string(body), `"k8s/a"`) {
				t.Errorf("json body without the agent: %s", body)
			}
		})
	}
}
