package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/bolt"
	jobdefs "github.com/valet-broker/valet/broker/jobs/builtin"
	"github.com/valet-broker/valet/broker/policy"
	"github.com/valet-broker/valet/leases/audit"
)

type leaseRow struct {
	ID        string    `json:"id"`
	AgentID   string    `json:"agent_id"`
	Role      string    `json:"role"`
	Backend   string    `json:"backend"`
	State     string    `json:"state"`
	ExpiresAt time.Time `json:"expires_at"`
	Handle    string    `json:"handle"`
	LastError string    `json:"last_error"`
}

func newLeasesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "leases", Short: "List, inspect, release and revoke leases"}

	var cf clientFlags
	var agent, role, state, backend string
	var limit int
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List leases, newest first (operator)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"agent_id": agent, "role": role, "state": state, "backend": backend} {
				if v != "" {
					q.Set(k, v)
				}
			}
			q.Set("limit", fmt.Sprint(limit))
			raw, err := cf.operatorCall(cmd.Context(), "GET", "/v1/leases?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var res struct {
				Leases []leaseRow `json:"leases"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "ID", "AGENT", "ROLE", "BACKEND", "STATE", "EXPIRES", "HANDLE")
			for _, l := range res.Leases {
				handle := l.Handle
				if handle == l.ID {
					handle = "" // the jwt backend's handle is the lease id
				}
				t.row(l.ID, l.AgentID, l.Role, l.Backend, l.State, l.ExpiresAt.Local().Format(time.DateTime), handle)
			}
			return t.flush()
		},
	}
	cf.register(list)
	list.Flags().StringVar(&agent, "agent", "", "only this agent id")
	list.Flags().StringVar(&role, "role", "", "only this role")
	list.Flags().StringVar(&state, "state", "", "only this state (active, revoking, irrevocable, ...)")
	list.Flags().StringVar(&backend, "backend", "", "only this backend")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many")
	list.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON")

	get := newShowCmd("get LEASE_ID", "Show one lease (operator with VALET_TOKEN, or its agent)", "/v1/leases/")

	var rf clientFlags
	var reason, revokeAgent string
	revoke := &cobra.Command{
		Use:   "revoke [LEASE_ID] [--agent AGENT_ID]",
		Short: "Revoke a lease, or every live lease of an agent (operator)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (revokeAgent != "") {
				return errors.New("give a LEASE_ID or --agent, not both")
			}
			var raw json.RawMessage
			var err error
			if revokeAgent != "" {
				raw, err = rf.operatorCall(cmd.Context(), "POST", "/v1/leases/revoke", map[string]string{"agent_id": revokeAgent, "reason": reason})
			} else {
				raw, err = rf.operatorCall(cmd.Context(), "DELETE", "/v1/leases/"+url.PathEscape(args[0])+"?reason="+url.QueryEscape(reason), nil)
			}
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	rf.register(revoke)
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	revoke.Flags().StringVar(&revokeAgent, "agent", "", "revoke every live lease of this agent id")

	var af mintFlags
	rel := &cobra.Command{
		Use:   "release LEASE_ID",
		Short: "Give a lease back early (agent)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			tok, err := attestation(af.attestationFile)
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "DELETE", "/v1/leases/"+url.PathEscape(args[0]), tok, nil, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	af.clientFlags.register(rel)
	rel.Flags().StringVar(&af.attestationFile, "attestation-file", "", "file holding the workload attestation")

	var nf mintFlags
	renew := &cobra.Command{
		Use:   "renew LEASE_ID",
		Short: "Extend a lease (agent, or operator with VALET_TOKEN)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := nf.client()
			if err != nil {
				return err
			}
			tok, err := operatorOrAgentFile(nf.attestationFile)
			if err != nil {
				return err
			}
			var body any
			if nf.ttl != "" {
				body = map[string]string{"ttl": nf.ttl}
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "POST", "/v1/leases/"+url.PathEscape(args[0])+"/renew", tok, body, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	nf.clientFlags.register(renew)
	renew.Flags().StringVar(&nf.attestationFile, "attestation-file", "", "file holding the workload attestation")
	renew.Flags().StringVar(&nf.ttl, "ttl", "", "requested time from now (default: the role's ttl)")

	cmd.AddCommand(list, get, revoke, rel, renew)
	return cmd
}

// newShowCmd is a command that prints one object, GET <prefix><ID>, as an
// operator (VALET_TOKEN) or as the agent it belongs to.
func newShowCmd(use, short, prefix string) *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			tok, err := operatorOrAgent()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", prefix+url.PathEscape(args[0]), tok, nil, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	f.register(cmd)
	return cmd
}

// operatorOrAgent prefers the operator token and falls back to the agent's
// attestation.
func operatorOrAgent() (string, error) { return operatorOrAgentFile("") }

func operatorOrAgentFile(file string) (string, error) {
	if file == "" {
		if t := strings.TrimSpace(os.Getenv("VALET_TOKEN")); t != "" {
			return t, nil
		}
	}
	return attestation(file)
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the audit log"}
	var cf clientFlags
	var dataDir, checkpointLoc, keyLoc string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain and its checkpoints; exits 1 if any record was changed, deleted or reordered",
		Long: `Verify the audit log through the running server (operator, VALET_TOKEN), or
offline with --data-dir when the server is stopped (the database is locked
while valet runs).

With --checkpoint FILE|URL the log is also checked against the signed
checkpoints a witness kept (the file witness's file, the stdout witness's
lines, or a URL serving them): a tail cut or records changed and re-chained
since a checkpoint are reported with the first record that can no longer be
trusted. Without it, the checkpoints the log itself holds are checked, which
proves less (see the README). The checkpoint key is --key FILE|URL (a JWK or
JWK set, as ` + "`valet audit key`" + ` prints it); without --key it is read from the
data directory or the server being verified, which a verifier should not
have to trust.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			src := auditSource{dataDir: dataDir, cf: &cf}
			var res audit.VerifyResult
			if dataDir != "" {
				s, err := bolt.Open(filepath.Join(dataDir, "valet.db"), bolt.Options{ReadOnly: true})
				if err != nil {
					return err
				}
				res, err = s.VerifyAudit(ctx)
				s.Close()
				if err != nil {
					return err
				}
			} else {
				raw, err := cf.operatorCall(ctx, "GET", "/v1/audit/verify", nil)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if !res.OK {
				fmt.Fprintf(out, "audit log BROKEN after %d good records: %s\n", res.Records, termSafe(res.Problem))
				return exitError{1}
			}
			fmt.Fprintf(out, "audit log OK: %d records, head %d %s\n", res.Records, res.HeadSeq, termSafe(res.HeadHash))
			key, err := src.trustedKey(ctx, keyLoc, cmd.ErrOrStderr())
			if err != nil {
				if checkpointLoc != "" {
					return err
				}
				return nil // no checkpoint key yet: nothing more to check
			}
			cps, err := src.loadCheckpoints(ctx, checkpointLoc, key)
			if err != nil {
				fmt.Fprintf(out, "checkpoints REFUSED: %s\n", termSafe(err.Error()))
				return exitError{1}
			}
			if len(cps) == 0 {
				return nil
			}
			res, err = src.verifyWithCheckpoints(ctx, cps)
			if err != nil {
				return err
			}
			if !res.OK {
				fmt.Fprintf(out, "audit log BROKEN against its checkpoints: first untrusted record %d: %s\n", res.FirstBad, termSafe(res.Problem))
				return exitError{1}
			}
			fmt.Fprintf(out, "checkpoints OK: the log matches %d signed checkpoints, the last at record %d\n", res.Checkpoints, res.LastCheckpoint)
			return nil
		},
	}
	cf.register(verify)
	verify.Flags().StringVar(&dataDir, "data-dir", "", "verify the database in this data_dir directly (server stopped)")
	verify.Flags().StringVar(&checkpointLoc, "checkpoint", "", "also check against the signed checkpoints a witness kept (a file or an http(s) URL)")
	verify.Flags().StringVar(&keyLoc, "key", "", "the trusted checkpoint public key (a JWK or JWK set file or URL; `valet audit key` prints it)")

	var kf clientFlags
	var keyDataDir string
	key := &cobra.Command{
		Use:   "key",
		Short: "Print the audit checkpoint public key as a JWK set (from the server, or --data-dir)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyDataDir != "" {
				pub, err := jobdefs.ReadCheckpointPublicKey(keyDataDir)
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), map[string]any{"keys": []map[string]any{jobdefs.CheckpointJWK(pub)}})
			}
			c, err := kf.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", "/.well-known/valet-audit-keys.json", "", nil, &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	kf.register(key)
	key.Flags().StringVar(&keyDataDir, "data-dir", "", "read the key from this data_dir (no server, no key-encryption key needed)")

	var lf clientFlags
	var agent, kind string
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "Show the newest audit records (operator)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"newest": {"true"}, "limit": {fmt.Sprint(limit)}}
			if agent != "" {
				q.Set("agent_id", agent)
			}
			if kind != "" {
				q.Set("kind", kind)
			}
			raw, err := lf.operatorCall(cmd.Context(), "GET", "/v1/audit?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			var res struct {
				Records []audit.Record `json:"records"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "SEQ", "TIME", "KIND", "ACTOR", "DECISION", "ROLE", "LEASE", "REASON")
			for _, r := range res.Records {
				t.row(strconv.FormatUint(r.Seq, 10), r.Time.Local().Format(time.DateTime), r.Kind, r.Actor.Type+":"+r.Actor.ID, r.Decision, r.Role, r.LeaseID, r.Reason)
			}
			return t.flush()
		},
	}
	lf.register(list)
	list.Flags().StringVar(&agent, "agent", "", "only this agent id")
	list.Flags().StringVar(&kind, "kind", "", "only this kind (mint, lease.revoke, ...)")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	cmd.AddCommand(verify, list, key)
	return cmd
}

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Work with Cedar policies"}
	var policies, onError string
	test := &cobra.Command{
		Use:   "test DIR",
		Short: "Run the policy test cases (*.test.yaml) in DIR against the policies (*.cedar); exit 1 on a mismatch",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pdir := policies
			if pdir == "" {
				pdir = args[0]
			}
			mode := broker.PolicyOnError(onError)
			if mode != broker.PolicyOnErrorDeny && mode != broker.PolicyOnErrorSkip {
				return fmt.Errorf("--on-error must be deny or skip, not %q", onError)
			}
			_, failed, err := policy.RunTests(pdir, args[0], policy.TestOptions{OnError: mode}, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if failed > 0 {
				return exitError{1}
			}
			return nil
		},
	}
	test.Flags().StringVar(&policies, "policies", "", "directory of *.cedar files (default: DIR)")
	test.Flags().StringVar(&onError, "on-error", string(broker.PolicyOnErrorDeny), "what a policy that fails to evaluate does, as the server's policy.on_error: deny (an erroring forbid denies) or skip")
	cmd.AddCommand(test)
	return cmd
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Make and hash operator tokens and introspection client secrets"}
	hash := &cobra.Command{
		Use:   "hash [TOKEN]",
		Short: "Print the SHA-256 of an operator token or client secret (read from stdin if not given), for operators.tokens[].sha256 or introspection.clients[].client_secret_sha256",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var tok string
			if len(args) == 1 {
				tok = args[0]
			} else {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return err
				}
				tok = strings.TrimSpace(string(b))
			}
			if tok == "" {
				return errors.New("empty token")
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), broker.HashToken(tok))
			return err
		},
	}
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Print a new random operator token (or client secret) and its SHA-256",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := randomHex(24)
			if err != nil {
				return err
			}
			tok := "valet_op_" + h
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "token:  %s\nsha256: %s\n", tok, broker.HashToken(tok))
			return err
		},
	}
	cmd.AddCommand(hash, gen)
	return cmd
}
