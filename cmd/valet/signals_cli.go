package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// signalCall sends a request as a signal source (VALET_SIGNAL_TOKEN) or,
// without one, as an operator (VALET_TOKEN).
func (f *clientFlags) signalCall(ctx context.Context, method, path string, body any) (json.RawMessage, error) {
	tok := strings.TrimSpace(os.Getenv("VALET_SIGNAL_TOKEN"))
	if tok == "" {
		return f.operatorCall(ctx, method, path, body)
	}
	return f.call(ctx, method, path, tok, body)
}

// signalRow is the part of a signal that valet signal list shows.
type signalRow struct {
	ID         string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
	Severity   string    `json:"severity"`
	Action     string    `json:"action"`
	Reason     string    `json:"reason"`
	Subject    struct {
		Kind string `json:"kind"`
		ID   string `json:"id"`
	} `json:"subject"`
	Source struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"source"`
}

func newSignalCmd() *cobra.Command {
	var f clientFlags
	var agent, lease, role, lineage, severity, reason, action, eventTime string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "signal (--agent ID | --lease ID | --role NAME | --lineage ID) --severity S --reason TEXT",
		Short: "Send an anomaly signal about an agent, a lease, a role or a lineage (signal source or operator)",
		Long: `Send a signal to valet, as a signal source (VALET_SIGNAL_TOKEN, a token of
signals.sources) or, without one, as an operator (VALET_TOKEN). The signal
raises the risk of the agents it concerns and, by its action (asked for
with --action, else the source's or signals.actions' for the severity),
alerts, revokes the subject's live leases, or revokes and quarantines.`,
		Example: `  valet signal --agent dev/my-agent --severity high --reason "token seen in a public paste"
  valet signal --lineage 'jti:https://token.actions.githubusercontent.com#abc' --severity medium --reason leaked --action revoke
  valet signal list --agent dev/my-agent`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]string{"severity": severity, "reason": reason}
			n := 0
			for k, v := range map[string]string{"agent_id": agent, "lease_id": lease, "role": role, "lineage": lineage} {
				if v != "" {
					body[k] = v
					n++
				}
			}
			if n != 1 {
				return errors.New("name one subject: --agent, --lease, --role or --lineage")
			}
			if action != "" {
				body["action"] = action
			}
			if eventTime != "" {
				body["event_time"] = eventTime
			}
			raw, err := f.signalCall(cmd.Context(), "POST", "/v1/signals", body)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Signal      signalRow `json:"signal"`
				Quarantined []string  `json:"quarantined"`
				LeasesEnded int       `json:"leases_ended"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			out := fmt.Sprintf("signal %s: %s, action %s; %d live leases ended", res.Signal.ID, res.Signal.Severity, res.Signal.Action, res.LeasesEnded)
			if len(res.Quarantined) > 0 {
				out += "; quarantined " + strings.Join(res.Quarantined, ", ")
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), termSafe(out))
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&agent, "agent", "", "the agent id the signal is about")
	cmd.Flags().StringVar(&lease, "lease", "", "the lease id the signal is about")
	cmd.Flags().StringVar(&role, "role", "", "the role the signal is about (revokes every live lease of it)")
	cmd.Flags().StringVar(&lineage, "lineage", "", "the attestation lineage the signal is about (jti:<iss>#<jti>, pod:<uid>, run:<iss>#<run_id>, spiffe:<id>)")
	cmd.Flags().StringVar(&severity, "severity", "", "info, low, medium, high or critical")
	cmd.Flags().StringVar(&reason, "reason", "", "what was seen (recorded in the audit log)")
	cmd.Flags().StringVar(&action, "action", "", "alert, revoke or quarantine (default: by severity)")
	cmd.Flags().StringVar(&eventTime, "event-time", "", "when it happened (RFC 3339)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")

	var lf clientFlags
	var lAgent, lSource string
	var limit int
	var lJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List signals, newest first (operator)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if lAgent != "" {
				q.Set("agent_id", lAgent)
			}
			if lSource != "" {
				q.Set("source", lSource)
			}
			raw, err := lf.operatorCall(cmd.Context(), "GET", "/v1/signals?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			if lJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Signals []signalRow `json:"signals"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "ID", "RECEIVED", "SOURCE", "SUBJECT", "SEVERITY", "ACTION", "REASON")
			for _, s := range res.Signals {
				t.row(s.ID, s.ReceivedAt.Local().Format(time.DateTime), s.Source.Kind+":"+s.Source.Name, s.Subject.Kind+":"+s.Subject.ID,
					s.Severity, s.Action, s.Reason)
			}
			return t.flush()
		},
	}
	lf.register(list)
	list.Flags().StringVar(&lAgent, "agent", "", "only the signals about this agent id")
	list.Flags().StringVar(&lSource, "source", "", "only this source (<kind>:<name>, e.g. source:siem)")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	list.Flags().BoolVar(&lJSON, "json", false, "print the raw JSON")
	cmd.AddCommand(list)
	return cmd
}

// agentRow is the part of an agent (GET /v1/agents) that agents list
// shows.
type agentRow struct {
	ID          string    `json:"id"`
	LastSeen    time.Time `json:"last_seen"`
	Roles       []string  `json:"roles"`
	Risk        int       `json:"risk"`
	Quarantined bool      `json:"quarantined"`
	Quarantine  *struct {
		Reason string `json:"reason"`
	} `json:"quarantine"`
}

func newAgentsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agents", Short: "List agents, see their risk and signals, quarantine and release them (operator)"}

	var lf clientFlags
	var quarantined, asJSON bool
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List agents, most recently seen first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if quarantined {
				q.Set("quarantined", "true")
			}
			raw, err := lf.operatorCall(cmd.Context(), "GET", "/v1/agents?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Agents []agentRow `json:"agents"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "AGENT", "RISK", "QUARANTINED", "LAST-SEEN", "ROLES")
			for _, a := range res.Agents {
				q := "no"
				if a.Quarantined && a.Quarantine != nil {
					q = "yes: " + a.Quarantine.Reason
				}
				seen := "never"
				if !a.LastSeen.IsZero() {
					seen = a.LastSeen.Local().Format(time.DateTime)
				}
				t.row(a.ID, strconv.Itoa(a.Risk), q, seen, strings.Join(a.Roles, ","))
			}
			return t.flush()
		},
	}
	lf.register(list)
	list.Flags().BoolVar(&quarantined, "quarantined", false, "only quarantined agents")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many")
	list.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")

	var sf clientFlags
	show := &cobra.Command{
		Use:   "show AGENT_ID",
		Short: "Show an agent: risk, quarantine, its signals and live leases",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := sf.operatorCall(cmd.Context(), "GET", "/v1/agents/"+url.PathEscape(args[0]), nil)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	sf.register(show)

	decision := func(verb, short, method string) *cobra.Command {
		var f clientFlags
		var reason string
		c := &cobra.Command{
			Use:   verb + " AGENT_ID --reason TEXT",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if strings.TrimSpace(reason) == "" {
					return errors.New("give --reason: it is recorded in the audit log")
				}
				path := "/v1/agents/" + url.PathEscape(args[0]) + "/quarantine"
				var body any
				if method == "POST" {
					body = map[string]string{"reason": reason}
				} else {
					path += "?" + url.Values{"reason": {reason}}.Encode()
				}
				raw, err := f.operatorCall(cmd.Context(), method, path, body)
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), raw)
			},
		}
		f.register(c)
		c.Flags().StringVarP(&reason, "reason", "m", "", "why (required; recorded in the audit log)")
		return c
	}
	cmd.AddCommand(list, show,
		decision("quarantine", "Quarantine an agent: revoke its live leases and refuse its mints, renewals and redeems until it is released", "POST"),
		decision("release", "Release a quarantined agent", "DELETE"),
	)
	return cmd
}
