package notify_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/notify"
)

// slackMessage is what Slack reads from an incoming-webhook body.
type slackMessage struct {
	Text   string `json:"text"`
	Blocks []struct {
		Type     string      `json:"type"`
		Text     *slackText  `json:"text"`
		Fields   []slackText `json:"fields"`
		Elements []slackText `json:"elements"`
	} `json:"blocks"`
}

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// texts returns every mrkdwn text in the message, failing on other types.
func (m slackMessage) texts(t *testing.T) []string {
	t.Helper()
	out := []string{m.Text}
	add := func(x slackText) {
		if x.Type != "mrkdwn" {
			t.Errorf("text object of type %q, want mrkdwn", x.Type)
		}
		out = append(out, x.Text)
	}
	for _, b := range m.Blocks {
		if b.Text != nil {
			add(*b.Text)
		}
		for _, f := range b.Fields {
			add(f)
		}
		for _, e := range b.Elements {
			add(e)
		}
	}
	return out
}

func TestSlackMessage(t *testing.T) {
	const link = " <https://valet.example.com/ui/grants/01JNQ8GRANT|open in console>"
	hostile := "<!channel> pwned & <https://evil.example|click here> > done\n<@U123> second line"
	for _, tc := range []struct {
		name     string
		event    func() broker.Event
		text     string   // the exact summary
		contains []string // in some block
		severity string
	}{
		{
			name:     "approval request",
			event:    func() broker.Event { return testEvent(broker.EventGrantRequested) },
			text:     `Approval needed: agent k8s/prod/deployer asks for role prod-admin for 15m — "rotate the db password" (1 of 2 approvals)` + link,
			contains: []string{"*Agent*\nk8s/prod/deployer", "*Role*\nprod-admin", "*TTL*\n15m", "*Approvals*\n1 of 2 (alice)", "*Reason*\nrotate the db password"},
			severity: "info",
		},
		{
			name:     "break-glass is high severity",
			event:    func() broker.Event { return testEvent(broker.EventBreakGlass) },
			text:     `:warning: BREAK-GLASS: agent k8s/prod/deployer minted role prod-admin — reason "db down" (review required)` + link,
			contains: []string{"*Reason*\ndb down", "*State*\nredeemed"},
			severity: "high",
		},
		{
			name: "denial with a comment",
			event: func() broker.Event {
				e := testEvent(broker.EventGrantDenied)
				e.Grant.State = grants.StateDenied
				e.Grant.Denial = &grants.Decision{Operator: "bob", Comment: "use the staging role"}
				return e
			},
			text:     `:no_entry: Denied: agent k8s/prod/deployer asked for role prod-admin — denied by bob: "use the staging role"` + link,
			severity: "info",
		},
		{
			name: "hostile reason is escaped",
			event: func() broker.Event {
				e := testEvent(broker.EventBreakGlass)
				e.Grant.Reason = hostile
				e.Grant.AgentID = "k8s/<!here>"
				return e
			},
			text: `:warning: BREAK-GLASS: agent k8s/&lt;!here&gt; minted role prod-admin — reason ` +
				`"&lt;!channel&gt; pwned &amp; &lt;https://evil.example|click here&gt; &gt; done &lt;@U123&gt; second line" (review required)` + link,
			contains: []string{
				"*Reason*\n&lt;!channel&gt; pwned &amp; &lt;https://evil.example|click here&gt; &gt; done\n&lt;@U123&gt; second line",
				"*Agent*\nk8s/&lt;!here&gt;",
			},
			severity: "high",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, statuses(http.StatusOK))
			d := mustRun(t, notify.Options{
				Webhooks: []notify.WebhookConfig{webhook("slack", rc.url, func(w *notify.WebhookConfig) { w.Format = "slack" })},
				Clock:    newTimerClock(),
			})
			e := tc.event()
			d.Notify(e)
			req := rc.next(t)
			if got := req.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type %q", got)
			}
			var m slackMessage
			if err := json.Unmarshal(req.body, &m); err != nil {
				t.Fatalf("body: %v\n%s", err, req.body)
			}
			if m.Text != tc.text {
				t.Errorf("text:\n got %s\nwant %s", m.Text, tc.text)
			}
			if len(m.Blocks) < 2 || m.Blocks[0].Type != "section" || m.Blocks[0].Text == nil || m.Blocks[0].Text.Text != m.Text {
				t.Fatalf("the first block must be a section with the summary: %s", req.body)
			}
			last := m.Blocks[len(m.Blocks)-1]
			if last.Type != "context" || len(last.Elements) != 1 ||
				!strings.HasPrefix(last.Elements[0].Text, "severity: *"+tc.severity+"*") ||
				!strings.Contains(last.Elements[0].Text, e.Type) {
				t.Errorf("the last block must be a context with severity %s and the event type: %+v", tc.severity, last)
			}
			texts := m.texts(t)
			all := strings.Join(texts, "\n")
			for _, want := range tc.contains {
				if !strings.Contains(all, want) {
					t.Errorf("no block contains %q:\n%s", want, all)
				}
			}
			// The only Slack control sequence is valet's own console link.
			for _, s := range texts {
				if n := strings.Count(s, "<"); n > 1 || (n == 1 && !strings.HasSuffix(s, link)) {
					t.Errorf("unescaped '<' in %q", s)
				}
				if strings.Contains(s, "&amp;lt;") {
					t.Errorf("double-escaped text %q", s)
				}
			}
			if strings.ContainsAny(m.Text, "\n\r") {
				t.Errorf("summary is not one line: %q", m.Text)
			}
		})
	}
}
