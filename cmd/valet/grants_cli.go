package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newGrantsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "grants", Short: "List, approve, deny and review elevated-access grants (operator)"}

	var lf clientFlags
	var state, agent, role string
	var review, asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List grants, newest first (default: pending ones)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if review {
				q.Set("review", "pending")
			} else if state != "all" {
				q.Set("state", state)
			}
			if agent != "" {
				q.Set("agent_id", agent)
			}
			if role != "" {
				q.Set("role", role)
			}
			raw, err := lf.operatorCall(cmd.Context(), "GET", "/v1/grants?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Grants []struct {
					ID, Kind, AgentID, Role, TTL, Reason, State string
					ApprovalsRequired                           int
					Approvals                                   []any
					ExpiresAt                                   time.Time
					ReviewPending                               bool
				} `json:"grants"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tAGENT\tROLE\tTTL\tSTATE\tAPPROVALS\tEXPIRES\tREASON")
			for _, g := range res.Grants {
				st := g.State
				if g.ReviewPending {
					st += " (review pending)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", g.ID, g.Kind, g.AgentID, g.Role, g.TTL, st,
					len(g.Approvals), g.ApprovalsRequired, g.ExpiresAt.Local().Format(time.DateTime), g.Reason)
			}
			return tw.Flush()
		},
	}
	lf.register(list)
	list.Flags().StringVar(&state, "state", "pending", "pending, approved, denied, expired, redeemed or all")
	list.Flags().StringVar(&agent, "agent", "", "only this agent id")
	list.Flags().StringVar(&role, "role", "", "only this role")
	list.Flags().BoolVar(&review, "review-pending", false, "break-glass grants awaiting review")
	list.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")

	get := newShowCmd("get GRANT_ID", "Show one grant (operator, or the agent that asked)", "/v1/grants/")

	decision := func(verb, short string) *cobra.Command {
		var f clientFlags
		var comment string
		c := &cobra.Command{
			Use:   verb + " GRANT_ID",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				raw, err := f.operatorCall(cmd.Context(), "POST", "/v1/grants/"+url.PathEscape(args[0])+"/"+verb, map[string]string{"comment": comment})
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), raw)
			},
		}
		f.register(c)
		c.Flags().StringVarP(&comment, "comment", "m", "", "why (recorded in the audit log)")
		return c
	}
	cmd.AddCommand(list, get,
		decision("approve", "Approve a pending grant"),
		decision("deny", "Deny a grant; the request ends"),
		decision("review", "Record the review of a break-glass grant"),
	)
	return cmd
}
