package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// mintFlags are shared by creds and exec.
type mintFlags struct {
	clientFlags
	attestationFile string
	ttl             string
	reason          string
	scopes          []string
	wait            bool
	timeout         time.Duration
	breakGlass      bool
	// progress receives "waiting for approval" messages (stderr).
	progress io.Writer
}

func (f *mintFlags) register(cmd *cobra.Command) {
	f.clientFlags.register(cmd)
	cmd.Flags().StringVar(&f.attestationFile, "attestation-file", "", "file holding the workload attestation (default $VALET_ATTESTATION, then the Kubernetes token path)")
	cmd.Flags().StringVar(&f.ttl, "ttl", "", "requested lease TTL, e.g. 90s or 15m (default: the role's)")
	cmd.Flags().StringVar(&f.reason, "reason", "", "why the credential is needed (recorded in the audit log)")
	cmd.Flags().StringSliceVar(&f.scopes, "scope", nil, "narrow the credential to these scopes of the role")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "if the role needs approval, wait for it, then redeem the grant")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Minute, "with --wait, give up after this long")
	cmd.Flags().BoolVar(&f.breakGlass, "break-glass", false, "emergency access without approval (roles that allow it; needs --reason; operators review it)")
	f.progress = cmd.ErrOrStderr()
}

// grantStatus is the part of a grant the CLI follows.
type grantStatus struct {
	ID                string `json:"id"`
	State             string `json:"state"`
	ApprovalsRequired int    `json:"approvals_required"`
	Approvals         []struct {
		Operator string `json:"operator"`
		Comment  string `json:"comment"`
	} `json:"approvals"`
	Denial *struct {
		Operator string `json:"operator"`
		Comment  string `json:"comment"`
	} `json:"denial"`
}

// waitAndRedeem follows a pending grant until it is decided, then redeems
// it with a fresh read of the attestation.
func (f *mintFlags) waitAndRedeem(ctx context.Context, c *client, grantID string) (*mintResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	fmt.Fprintf(f.progress, "valet: waiting for operator approval of grant %s\n", termSafe(grantID))
	seen := -1
	for {
		tok, err := attestation(f.attestationFile)
		if err != nil {
			return nil, err
		}
		var g grantStatus
		if err := c.do(ctx, "GET", "/v1/grants/"+url.PathEscape(grantID)+"?wait=30s", tok, nil, &g); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("gave up waiting for approval of grant %s after %s", grantID, f.timeout)
			}
			return nil, err
		}
		if len(g.Approvals) != seen {
			seen = len(g.Approvals)
			if seen > 0 {
				fmt.Fprintf(f.progress, "valet: %d of %d approvals\n", seen, g.ApprovalsRequired)
			}
		}
		switch g.State {
		case "pending":
			continue
		case "approved":
			var res mintResponse
			if err := c.do(ctx, "POST", "/v1/grants/"+url.PathEscape(grantID)+"/redeem", tok, nil, &res); err != nil {
				return nil, err
			}
			return &res, nil
		case "denied":
			why := ""
			if g.Denial != nil {
				why = fmt.Sprintf(" by %s: %s", g.Denial.Operator, g.Denial.Comment)
			}
			return nil, fmt.Errorf("grant %s was denied%s", grantID, why)
		default:
			return nil, fmt.Errorf("grant %s is %s", grantID, g.State)
		}
	}
}

// mintResponse is the 201 answer of POST /v1/credentials.
type mintResponse struct {
	LeaseID    string         `json:"lease_id"`
	Role       string         `json:"role"`
	AgentID    string         `json:"agent_id"`
	ExpiresAt  time.Time      `json:"expires_at"`
	Renewable  bool           `json:"renewable"`
	Credential map[string]any `json:"credential"`
	GrantID    string         `json:"grant_id,omitempty"`
	// PendingGrant is the grant of a 202 answer (approval needed).
	PendingGrant string `json:"-"`
}

// UnmarshalJSON reads both a 201 credential and a 202 pending grant.
func (m *mintResponse) UnmarshalJSON(b []byte) error {
	type plain mintResponse
	var p struct {
		plain
		Status string `json:"status"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*m = mintResponse(p.plain)
	if p.Status == "pending" {
		m.PendingGrant = m.GrantID
	}
	return nil
}

func (f *mintFlags) mint(ctx context.Context, role string) (*client, *mintResponse, error) {
	c, err := f.client()
	if err != nil {
		return nil, nil, err
	}
	tok, err := attestation(f.attestationFile)
	if err != nil {
		return nil, nil, err
	}
	body := map[string]any{"role": role}
	if f.ttl != "" {
		body["ttl"] = f.ttl
	}
	if f.reason != "" {
		body["reason"] = f.reason
	}
	if len(f.scopes) > 0 {
		body["scope"] = map[string]any{"scopes": f.scopes}
	}
	if f.breakGlass {
		body["break_glass"] = true
	}
	var res mintResponse
	if err := c.do(ctx, "POST", "/v1/credentials", tok, body, &res); err != nil {
		return nil, nil, err
	}
	if res.LeaseID == "" && res.PendingGrant != "" {
		if !f.wait {
			return nil, nil, fmt.Errorf("role %s needs operator approval: grant %s is pending; run again with --wait to wait for it, or redeem it later (POST /v1/grants/%s/redeem)", role, res.PendingGrant, res.PendingGrant)
		}
		r, err := f.waitAndRedeem(ctx, c, res.PendingGrant)
		if err != nil {
			return nil, nil, err
		}
		return c, r, nil
	}
	return c, &res, nil
}

func newCredsCmd() *cobra.Command {
	var f mintFlags
	var format string
	cmd := &cobra.Command{
		Use:   "creds ROLE",
		Short: "Mint a credential for ROLE and print it",
		Long: `Mint a credential for ROLE with the agent's attestation and print it:
as JSON (default), as shell exports (--format env; an AWS session also sets
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN), only the
access token (--format token), or for an AWS session the JSON of the AWS
CLI's and SDKs' credential_process (--format aws-credential-process). The
lease ends on its own at its expiry; release it early with:
valet leases release LEASE_ID.`,
		Example: `  valet creds demo
  eval "$(valet creds demo --format env)"
  curl -H "Authorization: Bearer $(valet creds demo --format token)" https://api.example.com/
  # ~/.aws/config:  [profile agent]
  #                 credential_process = valet creds aws-readonly -o aws-credential-process
  git config credential.https://github.com.helper '!valet creds gh-repo -o git-credential'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "json", "env", "token", "aws-credential-process":
				if len(args) > 1 {
					return fmt.Errorf("valet creds takes one role; %q is extra", args[1])
				}
			case "git-credential":
				if get, err := gitCredentialAction(args, cmd.InOrStdin()); err != nil || !get {
					return err
				}
			default:
				return fmt.Errorf("--format must be json, env, token, aws-credential-process or git-credential")
			}
			_, res, err := f.mint(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printCredential(cmd.OutOrStdout(), res, format)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVarP(&format, "format", "o", "json", "output: json, env, token, aws-credential-process or git-credential (a git credential helper: git config credential.https://github.com.helper '!valet creds ROLE -o git-credential')")
	return cmd
}

func printCredential(w io.Writer, res *mintResponse, format string) error {
	switch format {
	case "token":
		tok, ok := res.Credential["access_token"].(string)
		if !ok {
			return errors.New("this credential has no access_token; use --format json")
		}
		_, err := fmt.Fprintln(w, tok)
		return err
	case "aws-credential-process":
		return writeCredentialProcess(w, res)
	case "git-credential":
		return printGitCredential(w, res)
	case "env":
		for _, kv := range append(credentialEnv(res, "VALET_"), standardEnv(res)...) {
			k, v, _ := strings.Cut(kv, "=")
			fmt.Fprintf(w, "export %s=%s\n", k, shellQuote(v))
		}
		return nil
	default:
		return writeJSON(w, res)
	}
}

// credentialEnv turns a credential into environment variables: the lease
// facts plus one variable per credential field, PREFIX + the field name in
// upper case with anything but letters and digits as '_'.
func credentialEnv(res *mintResponse, prefix string) []string {
	env := []string{
		prefix + "LEASE_ID=" + res.LeaseID,
		prefix + "LEASE_EXPIRES_AT=" + res.ExpiresAt.UTC().Format(time.RFC3339),
	}
	keys := make([]string, 0, len(res.Credential))
	for k := range res.Credential {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var v string
		switch x := res.Credential[k].(type) {
		case string:
			v = x
		default:
			b, _ := json.Marshal(x)
			v = string(b)
		}
		env = append(env, prefix+envName(k)+"="+v)
	}
	return env
}

func envName(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func newExecCmd() *cobra.Command {
	var f mintFlags
	var prefix string
	cmd := &cobra.Command{
		Use:   "exec ROLE -- COMMAND [ARGS...]",
		Short: "Run COMMAND with a fresh credential for ROLE in its environment; release it when COMMAND exits",
		Long: `Mint a credential for ROLE, run COMMAND with it in COMMAND's environment only
(VALET_LEASE_ID, VALET_LEASE_EXPIRES_AT and VALET_<FIELD> for each credential
field, e.g. VALET_ACCESS_TOKEN; for an AWS session also the standard
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
AWS_CREDENTIAL_EXPIRATION, for a GitHub token GH_TOKEN and GITHUB_TOKEN, for
a Google access token CLOUDSDK_AUTH_ACCESS_TOKEN and GOOGLE_OAUTH_ACCESS_TOKEN),
forward signals to it, release the lease when it exits, and exit with its
exit code.`,
		Example: `  valet exec demo -- sh -c 'curl -H "Authorization: Bearer $VALET_ACCESS_TOKEN" https://api.example.com/'`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return errors.New("usage: valet exec ROLE -- COMMAND [ARGS...]")
			}
			return runExec(cmd.Context(), &f, prefix, args[0], args[1:], cmd.ErrOrStderr())
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&prefix, "env-prefix", "VALET_", "prefix of the variables given to COMMAND")
	return cmd
}

func runExec(ctx context.Context, f *mintFlags, prefix, role string, argv []string, stderr io.Writer) error {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	c, res, err := f.mint(ctx, role)
	if err != nil {
		return err
	}
	// Catch signals before starting the child so none is lost; they are
	// forwarded, and valet itself waits for the child to exit.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)

	child := exec.Command(path, argv[1:]...)
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
	child.Env = append(append(os.Environ(), credentialEnv(res, prefix)...), standardEnv(res)...)
	code := 0
	if err := child.Start(); err != nil {
		release(c, f, res.LeaseID, stderr)
		return err
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = child.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = child.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	default:
		code = 1
		fmt.Fprintln(stderr, "valet:", termSafe(err.Error()))
	}
	release(c, f, res.LeaseID, stderr)
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// release gives the lease back, with a fresh read of the attestation (it
// may have been rotated while the command ran). A failure is reported but
// harmless: the lease expires on its own.
func release(c *client, f *mintFlags, leaseID string, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	tok, err := attestation(f.attestationFile)
	var ended struct {
		Unrevocable         bool      `json:"unrevocable"`
		ExpiresAt           time.Time `json:"expires_at"`
		CredentialExpiresAt time.Time `json:"credential_expires_at"`
	}
	if err == nil {
		err = c.do(ctx, "DELETE", "/v1/leases/"+url.PathEscape(leaseID), tok, nil, &ended)
	}
	if err != nil {
		fmt.Fprintf(stderr, "valet: could not release lease %s (it still expires on its own): %s\n", termSafe(leaseID), termSafe(err.Error()))
		return
	}
	if ended.Unrevocable {
		until := ended.ExpiresAt
		if ended.CredentialExpiresAt.After(until) {
			until = ended.CredentialExpiresAt
		}
		fmt.Fprintf(stderr, "valet: released lease %s, but its backend cannot revoke the credential: it stays valid until %s\n",
			termSafe(leaseID), until.UTC().Format(time.RFC3339))
	}
}
