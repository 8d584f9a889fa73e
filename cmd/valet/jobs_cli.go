package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// jobRow is what the CLI reads of GET /v1/jobs.
type jobRow struct {
	Name                string     `json:"name"`
	Type                string     `json:"type"`
	Schedule            string     `json:"schedule"`
	Running             bool       `json:"running"`
	NextRun             *time.Time `json:"next_run"`
	LastEnd             *time.Time `json:"last_end"`
	LastOutcome         string     `json:"last_outcome"`
	LastError           string     `json:"last_error"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
}

// jobRunAnswer is POST /v1/jobs/{name}/run's answer.
type jobRunAnswer struct {
	Job    string `json:"job"`
	Status string `json:"status"`
	Run    struct {
		ID      uint64            `json:"id"`
		Outcome string            `json:"outcome"`
		Error   string            `json:"error"`
		Started time.Time         `json:"started"`
		Ended   time.Time         `json:"ended"`
		Changes map[string]string `json:"changes"`
	} `json:"run"`
}

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Short: "List, inspect and run the scheduled jobs (operator)"}

	var lf clientFlags
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the scheduled jobs with their next and last runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := lf.operatorCall(cmd.Context(), "GET", "/v1/jobs", nil)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Jobs []jobRow `json:"jobs"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "NAME", "SCHEDULE", "NEXT", "LAST", "OUTCOME", "FAILURES", "ERROR")
			for _, j := range res.Jobs {
				outcome := j.LastOutcome
				if j.Running {
					outcome = "running"
				}
				t.row(j.Name, j.Schedule, when(j.NextRun), when(j.LastEnd), outcome, strconv.Itoa(j.ConsecutiveFailures), j.LastError)
			}
			return t.flush()
		},
	}
	lf.register(list)
	list.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")

	show := newShowCmd("show JOB", "Show a job with its recent runs (operator)", "/v1/jobs/")

	var rf clientFlags
	run := &cobra.Command{
		Use:   "run JOB",
		Short: "Run a job now and print its outcome; exits 1 if the run failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := rf.runJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if res.Status == "running" {
				fmt.Fprintf(out, "job %s run %d is still running; `valet jobs show %s` shows its outcome when it ends\n",
					termSafe(res.Job), res.Run.ID, termSafe(res.Job))
				return nil
			}
			fmt.Fprintf(out, "job %s run %d: %s in %s\n", termSafe(res.Job), res.Run.ID, termSafe(res.Run.Outcome),
				res.Run.Ended.Sub(res.Run.Started).Round(time.Millisecond))
			keys := make([]string, 0, len(res.Run.Changes))
			for k := range res.Run.Changes {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(out, "  %s: %s\n", termSafe(k), termSafe(res.Run.Changes[k]))
			}
			if res.Run.Outcome != "ok" {
				fmt.Fprintf(out, "  error: %s\n", termSafe(res.Run.Error))
				return exitError{1}
			}
			return nil
		},
	}
	rf.register(run)
	cmd.AddCommand(list, show, run)
	return cmd
}

// runJob asks the server to run the named job now (POST
// /v1/jobs/{name}/run) and returns its answer.
func (f *clientFlags) runJob(ctx context.Context, name string) (jobRunAnswer, error) {
	var res jobRunAnswer
	raw, err := f.operatorCall(ctx, "POST", "/v1/jobs/"+url.PathEscape(name)+"/run", nil)
	if err != nil {
		return res, err
	}
	return res, json.Unmarshal(raw, &res)
}

// when prints a time in UTC, or "-" for none.
func when(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.DateTime) + "Z"
}
