package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/grants"
)

// jsonPayload is the body of a json-format webhook: the event with the
// delivery id and the webhook name in front of its fields.
type jsonPayload struct {
	ID      string `json:"id"`
	Webhook string `json:"webhook"`
	broker.Event
}

// errNoSET: the event has no SET, so a set receiver is not sent it.
var errNoSET = errors.New("no SET for this event")

// body is what w is sent about e: valet's JSON, a Slack message or, for a
// set receiver, the SET signed for its audience (errNoSET when the event
// has none).
func (d *Dispatcher) body(w *webhook, e broker.Event, id string) ([]byte, error) {
	switch w.format {
	case "slack":
		return json.Marshal(slackMessage(e))
	case "set":
		set, ok, err := d.sets.Sign(e, w.audience)
		if err == nil && !ok {
			err = errNoSET
		}
		return set, err
	}
	return json.Marshal(jsonPayload{ID: id, Webhook: w.name, Event: e})
}

// Slack incoming-webhook message (https://api.slack.com/messaging/webhooks)
// with Block Kit blocks; Text is the one-line fallback shown in
// notifications.
type slackPayload struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type     string      `json:"type"` // section or context
	Text     *slackText  `json:"text,omitempty"`
	Fields   []slackText `json:"fields,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackText struct {
	Type string `json:"type"` // always mrkdwn
	Text string `json:"text"`
}

func mrkdwn(s string) slackText { return slackText{Type: "mrkdwn", Text: s} }

// Limits on user-controlled strings, well inside Slack's (3000 characters
// for a section's text, 2000 for a field).
const (
	slackMaxName   = 200
	slackMaxReason = 500
	slackMaxField  = 1900
)

// agentSummary is the one-line message of an agent event, e.g.
//
//	:rotating_light: Quarantined: agent k8s/prod/deployer (risk 60) — "high signal from source:siem: exfiltration"
func agentSummary(e broker.Event) string {
	a := e.Agent
	who := fmt.Sprintf("agent %s (risk %d)", name(a.ID), a.Risk)
	switch e.Type {
	case broker.EventAgentQuarantined:
		return fmt.Sprintf(":rotating_light: Quarantined: %s — %s", who, quoted(a.Reason))
	case broker.EventAgentReleased:
		return fmt.Sprintf(":unlock: Released: %s by %s — %s", who, name(a.By.ID), quoted(a.Reason))
	case broker.EventLeasesRevoked:
		return fmt.Sprintf(":scissors: Revoked %d live leases of %s — %s", a.Revoked, who, quoted(a.Reason))
	}
	return fmt.Sprintf("valet event %s: %s", name(e.Type), who)
}

func slackMessage(e broker.Event) slackPayload {
	summary := slackSummary(e)
	blocks := []slackBlock{{Type: "section", Text: &slackText{Type: "mrkdwn", Text: summary}}}
	severity := e.Severity
	if severity == "" && e.Type == broker.EventBreakGlass {
		severity = broker.SeverityHigh
	}
	if g := e.Grant; g != nil {
		fields := []slackText{
			mrkdwn("*Agent*\n" + field(g.AgentID, slackMaxField)),
			mrkdwn("*Role*\n" + field(g.Role, slackMaxField)),
			mrkdwn("*TTL*\n" + duration(g.TTL)),
			mrkdwn("*State*\n" + field(string(g.State), slackMaxName)),
		}
		if g.Kind != grants.KindBreakGlass {
			a := fmt.Sprintf("%d of %d", len(g.Approvals), g.Required)
			if len(g.Approvals) > 0 {
				a += " (" + strings.Join(g.Approvers(), ", ") + ")"
			}
			fields = append(fields, mrkdwn("*Approvals*\n"+field(a, slackMaxField)))
		}
		fields = append(fields, mrkdwn("*Grant*\n"+field(g.ID, slackMaxName)))
		blocks = append(blocks,
			slackBlock{Type: "section", Fields: fields},
			slackBlock{Type: "section", Text: &slackText{Type: "mrkdwn", Text: "*Reason*\n" + field(g.Reason, slackMaxField)}},
		)
	}
	ctx := "severity: *" + escape(severity) + "*  ·  " + escape(e.Type)
	if !e.Time.IsZero() {
		ctx += "  ·  " + e.Time.UTC().Format(time.RFC3339)
	}
	blocks = append(blocks, slackBlock{Type: "context", Elements: []slackText{mrkdwn(ctx)}})
	return slackPayload{Text: summary, Blocks: blocks}
}

// slackSummary is the one-line message, e.g.
//
//	:warning: BREAK-GLASS: agent k8s/prod/deployer minted role prod-admin — reason "db down" (review required)
func slackSummary(e broker.Event) string {
	g := e.Grant
	var s string
	switch {
	case e.Agent != nil:
		s = agentSummary(e)
	case e.Signal != nil:
		sg := e.Signal
		s = fmt.Sprintf("Signal: %s from %s about %s — %s; action %s", name(string(sg.Severity)), name(sg.Source.String()),
			name(sg.Subject.String()), quoted(sg.Reason), name(string(sg.Action)))
	case e.Job != nil:
		s = fmt.Sprintf(":rotating_light: Job %s failed %d runs in a row (%s): %s", name(e.Job.Name), e.Job.Failures,
			name(e.Job.Outcome), quoted(e.Job.Error))
	case g == nil:
		s = "valet event " + name(e.Type)
	default:
		agent, role, ttl := name(g.AgentID), name(g.Role), duration(g.TTL)
		switch e.Type {
		case broker.EventGrantRequested:
			s = fmt.Sprintf("Approval needed: agent %s asks for role %s for %s — %s (%d of %d approvals)",
				agent, role, ttl, quoted(g.Reason), len(g.Approvals), g.Required)
		case broker.EventGrantApproved:
			s = fmt.Sprintf(":white_check_mark: Approved: agent %s may redeem role %s for %s — approved by %s",
				agent, role, ttl, name(strings.Join(g.Approvers(), ", ")))
		case broker.EventGrantDenied:
			s = fmt.Sprintf(":no_entry: Denied: agent %s asked for role %s", agent, role)
			if d := g.Denial; d != nil {
				s += " — denied by " + name(d.Operator)
				if d.Comment != "" {
					s += ": " + quoted(d.Comment)
				}
			}
		case broker.EventGrantExpired:
			if g.ApprovedAt.IsZero() {
				s = fmt.Sprintf(":hourglass: Expired: agent %s's request for role %s was not approved in time", agent, role)
			} else {
				s = fmt.Sprintf(":hourglass: Expired: agent %s's approved grant of role %s was not redeemed in time", agent, role)
			}
		case broker.EventGrantRedeemed:
			s = fmt.Sprintf(":key: Redeemed: agent %s minted role %s for %s", agent, role, ttl)
		case broker.EventBreakGlass:
			s = fmt.Sprintf(":warning: BREAK-GLASS: agent %s minted role %s — reason %s (review required)",
				agent, role, quoted(g.Reason))
		case broker.EventBreakGlassReviewed:
			s = fmt.Sprintf(":eyes: Break-glass reviewed: agent %s's use of role %s", agent, role)
			if r := g.Review; r != nil {
				s += " — reviewed by " + name(r.Operator)
				if r.Comment != "" {
					s += ": " + quoted(r.Comment)
				}
			}
		default:
			s = fmt.Sprintf("valet event %s: agent %s, role %s", name(e.Type), agent, role)
		}
	}
	if e.Severity == broker.SeverityHigh && !strings.HasPrefix(s, ":") { // no emoji of its own
		s = ":warning: " + s
	}
	if e.URL != "" {
		// In <url|label> a '|' or '>' in the URL would end it early.
		u := strings.NewReplacer("|", "%7C", ">", "%3E", "<", "%3C").Replace(oneLine(e.URL))
		s += " <" + strings.ReplaceAll(u, "&", "&amp;") + "|open in console>"
	}
	return s
}

// escape makes s literal text in Slack mrkdwn: Slack reads &, < and > as
// control characters (<!channel>, <@U123>, <url|label>), so a hostile
// reason could otherwise ping a whole channel or forge a link.
var escape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace

// name is a user-controlled string for the one-line summary.
func name(s string) string { return escape(truncate(oneLine(s), slackMaxName)) }

// quoted is a user-controlled free text (a reason, a comment) for the
// summary, in double quotes.
func quoted(s string) string { return `"` + escape(truncate(oneLine(s), slackMaxReason)) + `"` }

// field is a user-controlled string for a block field, where line breaks
// may stay.
func field(s string, n int) string {
	if s == "" {
		return "—"
	}
	return escape(truncate(s, n))
}

// oneLine replaces line breaks and tabs by spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '\n', '\r', '\t', '\v', '\f', '\u2028', '\u2029':
			return ' '
		}
		return r
	}, s)
}

// truncate shortens s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// duration prints 15m rather than 15m0s.
func duration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
