// Command valet is a just-in-time credential broker for AI agents. This
// package is wiring only: flags, config loading and subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "valet:", termSafe(err.Error()))
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "valet",
		Short: "Just-in-time credentials for AI agents",
		Long: `valet verifies a workload attestation, checks policy, and mints a scoped,
short-lived credential that it tracks as a lease and revokes on expiry.

Client environment: VALET_ADDR (default http://127.0.0.1:8750),
VALET_ATTESTATION or --attestation-file (agents), VALET_TOKEN (operators).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.AddCommand(
		newServeCmd(),
		newDevCmd(),
		newCredsCmd(),
		newExecCmd(),
		newLeasesCmd(),
		newGrantsCmd(),
		newAuditCmd(),
		newPolicyCmd(),
		newTokenCmd(),
	)
	return root
}
