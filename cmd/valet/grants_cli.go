package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

// grantRow is the part of a grant (GET /v1/grants) that grants list shows.
type grantRow struct {
	ID                string            `json:"id"`
	Kind              string            `json:"kind"`
	AgentID           string            `json:"agent_id"`
	Role              string            `json:"role"`
	TTL               string            `json:"ttl"`
	Reason            string            `json:"reason"`
	State             string            `json:"state"`
	ApprovalsRequired int               `json:"approvals_required"`
	Approvals         []json.RawMessage `json:"approvals"`
	ExpiresAt         time.Time         `json:"expires_at"`
	ReviewPending     bool              `json:"review_pending"`
}

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
				Grants []grantRow `json:"grants"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "ID", "KIND", "AGENT", "ROLE", "TTL", "STATE", "APPROVALS", "EXPIRES", "REASON")
			for _, g := range res.Grants {
				st := g.State
				if g.ReviewPending {
					st += " (review pending)"
				}
				t.row(g.ID, g.Kind, g.AgentID, g.Role, g.TTL, st, fmt.Sprintf("%d/%d", len(g.Approvals), g.ApprovalsRequired),
					g.ExpiresAt.Local().Format(time.DateTime), g.Reason)
			}
			return t.flush()
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
