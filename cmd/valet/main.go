// Command valet is a just-in-time credential broker for AI agents. This
// package is wiring only: flags, config loading and subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
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
		// A configuration file may hold several mistakes: one line
		// each. Any other message is the server's or the network's and
		// stays on one line, its newlines escaped.
		lines := []string{err.Error()}
		if errors.As(err, new(configError)) {
			lines = strings.Split(err.Error(), "\n")
		}
		for _, l := range lines {
			fmt.Fprintln(os.Stderr, "valet:", termSafe(l))
		}
		os.Exit(1)
	}
}

// configError is an error in the operator's own configuration file,
// which lists each mistake on a line of its own.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "valet",
		Short: "Just-in-time credentials for AI agents",
		Long: `valet verifies a workload attestation, checks policy, and mints a scoped,
short-lived credential that it tracks as a lease and revokes on expiry.

Client environment: VALET_ADDR (default http://127.0.0.1:8750),
VALET_ATTESTATION or --attestation-file (agents), VALET_TOKEN (operators),
VALET_SIGNAL_TOKEN (signal sources).`,
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
		newAgentsCmd(),
		newSignalCmd(),
		newAuditCmd(),
		newJobsCmd(),
		newPolicyCmd(),
		newTokenCmd(),
		newKEKCmd(),
		newStorageCmd(),
	)
	return root
}
