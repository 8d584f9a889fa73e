package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
)

func newKEKCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "kek", Short: "Finish a switch of key-encryption key (operator)"}
	var f clientFlags
	var job string
	finish := &cobra.Command{
		Use:   "finish",
		Short: "Seal every key valet keeps under the current KEK now, and say whether the previous KEK can be removed; exits 1 while it cannot",
		Long: `finish runs the kek-rotation job now: it seals again under the current
key-encryption key (VALET_KEK or kek_file) every value that only the
previous one (VALET_KEK_PREVIOUS or kek_previous_file) opens. When the run
succeeds, nothing is sealed under the previous key any more: remove it
from valet's environment or configuration and restart valet. It exits 1
while the previous key is still needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := f.runJob(cmd.Context(), job)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			ch := res.Run.Changes
			if res.Status == "running" {
				fmt.Fprintf(out, "job %s run %d is still running: run `valet kek finish` again once `valet jobs show %s` shows it ended\n",
					termSafe(job), res.Run.ID, termSafe(job))
				return exitError{1}
			}
			if res.Run.Outcome != "ok" {
				fmt.Fprintf(out, "job %s run %d: %s: %s\nthe previous key-encryption key is still needed: keep it set, fix the cause and run `valet kek finish` again\n",
					termSafe(job), res.Run.ID, termSafe(res.Run.Outcome), termSafe(res.Run.Error))
				return exitError{1}
			}
			current := termSafe(ch[jobdefs.KEKChangeID])
			if prev := ch[jobdefs.KEKChangePreviousID]; prev == "none" || prev == "" {
				fmt.Fprintf(out, "valet holds no previous key-encryption key: nothing to finish; %s values are sealed under the key-encryption key %s\n",
					termSafe(ch[jobdefs.KEKChangeCurrent]), current)
			} else {
				fmt.Fprintf(out, "every value valet keeps sealed is under the key-encryption key %s (%s sealed again by this run, %s already)\n"+
					"the previous key-encryption key %s is no longer needed: remove VALET_KEK_PREVIOUS (or kek_previous_file) and restart valet, then destroy that key\n",
					current, termSafe(ch[jobdefs.KEKChangeRewrapped]), termSafe(ch[jobdefs.KEKChangeCurrent]), termSafe(prev))
			}
			if n, _ := strconv.Atoi(ch[jobdefs.KEKChangeUnreadable]); n > 0 {
				fmt.Fprintf(out, "warning: %d sealed values open under neither key (damaged, or sealed under another key); they are kept as they are and are not used (`valet jobs show %s` names their owners)\n",
					n, termSafe(job))
			}
			return nil
		},
	}
	f.register(finish)
	finish.Flags().StringVar(&job, "job", jobdefs.KEKRotation, "the name of the kek-rotation job in the jobs section")
	cmd.AddCommand(finish)
	return cmd
}
