package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"

	"github.com/valet-broker/valet/backends"
	valetaws "github.com/valet-broker/valet/backends/aws"
	"github.com/valet-broker/valet/backends/aws/awstest"
	"github.com/valet-broker/valet/leases"
)

// awsPolicy permits the aws roles to agents of the test issuer.
const awsPolicy = `
@id("aws-roles")
permit(principal in Issuer::"test", action == Action::"mint", resource)
when { resource.backend == "aws-main" };
`

// awsRoles are the test's aws roles: a 20-minute session, and a lease of
// 3 s that gets STS's minimum 900 s session.
const awsRoles = `  - name: aws-ro
    backend: aws-main
    ttl: 20m
    max_ttl: 1h
    renewable: false
    params:
      role_arn: %[1]s
      session_tags: {agent: "{{agent}}"}
  - name: aws-short
    backend: aws-main
    ttl: 3s
    max_ttl: 1h
    renewable: false
    params: {role_arn: %[1]s}
`

// newAWSEnv starts an STS/IAM test server with the role "agents" and
// returns a test env whose config adds an aws backend on it. The server's
// keys reach valet through the standard AWS environment variables: set in
// this process for Start, passed with awsServe to `valet serve`.
func newAWSEnv(t *testing.T) (*testEnv, *awstest.Server) {
	t.Helper()
	srv := awstest.Start(t, awstest.Config{})
	srv.SetEnv(t)
	arn := srv.CreateRole("agents", awstest.RoleOptions{})
	e := newTestEnvYAML(t, func(cfg string) string {
		cfg = strings.Replace(cfg, "backends:\n", fmt.Sprintf("backends:\n  - name: aws-main\n    type: aws\n    endpoint: %s\n    timeout: 2s\n", srv.URL), 1)
		cfg = strings.Replace(cfg, "roles:\n", "roles:\n"+fmt.Sprintf(awsRoles, arn), 1)
		return cfg + "leases:\n  revoke_backoff: 300ms\n  revoke_max_backoff: 1s\n  revoke_attempts: 3\n"
	})
	if err := os.WriteFile(filepath.Join(e.Dir, "policies", "aws.cedar"), []byte(awsPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.Config, err = LoadConfig(filepath.Join(e.Dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	return e, srv
}

// awsUse makes a request with an issued AWS session that the role's
// policies govern; it returns the AWS error code, or "" when allowed.
func awsUse(t *testing.T, srv *awstest.Server, cred map[string]any) string {
	t.Helper()
	cfg := awssdk.Config{Region: "us-east-1", Retryer: func() awssdk.Retryer { return awssdk.NopRetryer{} },
		Credentials: credentials.NewStaticCredentialsProvider(cred["access_key_id"].(string), cred["secret_access_key"].(string), cred["session_token"].(string))}
	c := iam.NewFromConfig(cfg, func(o *iam.Options) { o.BaseEndpoint = awssdk.String(srv.URL) })
	_, err := c.GetRole(context.Background(), &iam.GetRoleInput{RoleName: awssdk.String("agents")})
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		t.Fatalf("use the AWS session: %v", err)
	}
	return ""
}

// TestAWSMintUseRelease mints an STS session, uses it, releases the lease,
// and checks that the session is then refused; nothing valet wrote (log,
// audit log, database, revocation policy) holds its secret.
func TestAWSMintUseRelease(t *testing.T) {
	e, srv := newAWSEnv(t)
	logs := &syncBuffer{}
	e.Log = logs
	e.Start()
	res := e.Mint(e.Attest("aws-agent", nil), "aws-ro")
	id := res["lease_id"].(string)
	cred := res["credential"].(map[string]any)
	if code := awsUse(t, srv, cred); code != "" {
		t.Fatalf("the fresh session is refused: %s", code)
	}
	s := srv.Sessions(id)
	if len(s) != 1 || s[0].SessionName != id || s[0].Tags["agent"] != "test/aws-agent" {
		t.Fatalf("sessions of the lease: %+v", s)
	}
	// Operators see the session's ARN and facts, never its secret.
	r := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil)
	l := r.JSON(t)
	if l["handle"] != "arn:aws:sts::123456789012:assumed-role/agents/"+id || l["details"].(map[string]any)["duration_seconds"] == nil {
		t.Fatalf("operator view: %s", r.Body)
	}
	r = e.Do("DELETE", "/v1/leases/"+id, e.Attest("aws-agent", nil), nil)
	if r.Status != http.StatusOK || r.JSON(t)["state"] != "released" {
		t.Fatalf("release: %d %s", r.Status, r.Body)
	}
	if code := awsUse(t, srv, cred); code != "AccessDenied" {
		t.Fatalf("the released session still works (%q)", code)
	}
	e.Server.Close()
	assertNoSecrets(t, e, logs.String(), cred["secret_access_key"].(string), cred["session_token"].(string))
}

// assertNoSecrets scans the log, the audit log, the database file and the
// backend's files for the secrets.
func assertNoSecrets(t *testing.T, e *testEnv, logs string, secrets ...string) {
	t.Helper()
	var files []string
	filepath.Walk(e.Dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 || logs == "" {
		t.Fatal("nothing to scan: the test proves nothing")
	}
	for _, sec := range secrets {
		if strings.Contains(logs, sec) {
			t.Errorf("the log holds a secret")
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if bytes.Contains(b, []byte(sec)) {
				t.Errorf("%s holds a secret in clear", f)
			}
		}
	}
}

// TestAWSShortLeaseIsRevokedAtItsExpiry: a 3 s lease gets a 900 s STS
// session. The lease says the session outlives it, reads revoking (not
// expired) once its TTL has elapsed, and ends expired only after the deny
// statement was written; then the session is refused.
func TestAWSShortLeaseIsRevokedAtItsExpiry(t *testing.T) {
	e, srv := newAWSEnv(t)
	e.Start()
	res := e.Mint(e.Attest("short-agent", nil), "aws-short")
	id := res["lease_id"].(string)
	cred := res["credential"].(map[string]any)
	l := e.Do("GET", "/v1/leases/"+id, testOperatorToken, nil).JSON(t)
	expires, _ := time.Parse(time.RFC3339, l["expires_at"].(string))
	credExpires, _ := time.Parse(time.RFC3339, fmt.Sprint(l["credential_expires_at"]))
	if d := credExpires.Sub(expires); d < 14*time.Minute {
		t.Fatalf("lease %v; want credential_expires_at about 15 minutes out, after the lease's expiry", l)
	}
	if code := awsUse(t, srv, cred); code != "" {
		t.Fatalf("the fresh session is refused: %s", code)
	}
	eventually(t, 20*time.Second, "the lease ends expired", func() bool {
		return leaseState(t, e, id) == "expired"
	})
	if code := awsUse(t, srv, cred); code != "AccessDenied" {
		t.Fatalf("the lease expired but its 900 s session still works (%q)", code)
	}
	r := e.Do("GET", "/v1/audit?lease_id="+id, testOperatorToken, nil)
	if !strings.Contains(string(r.Body), "ttl elapsed; revoking at the backend") {
		t.Fatalf("audit of the lease: %s", r.Body)
	}
}

// TestAWSCrashBetweenMintAndCommit kills valet after STS issued a session
// and before the lease was recorded active. After a restart the pending
// lease is revoked by its lease id, which is the session's SourceIdentity.
func TestAWSCrashBetweenMintAndCommit(t *testing.T) {
	e, srv := newAWSEnv(t)
	p := startServe(t, e, append(srv.Env(), "VALET_FAILPOINTS=mint.after-backend")...)
	e.URL = p.url
	req, _ := http.NewRequest("POST", p.url+"/v1/credentials", strings.NewReader(`{"role":"aws-ro"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.Attest("crash-agent", nil))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the mint answered %d; the failpoint should have killed valet", resp.StatusCode)
	}
	<-p.done
	p = startServe(t, e, srv.Env()...)
	e.URL = p.url
	ls := listLeases(t, e, "test/crash-agent")
	if len(ls) != 1 {
		t.Fatalf("leases after restart: %v", ls)
	}
	id := ls[0]["id"].(string)
	sessions := srv.Sessions(id)
	if len(sessions) != 1 {
		t.Fatalf("STS issued %d sessions for the interrupted mint; the test proves nothing", len(sessions))
	}
	eventually(t, 30*time.Second, "the interrupted mint's lease is revoked", func() bool {
		return listLeases(t, e, "test/crash-agent")[0]["state"] == "revoked"
	})
	if doc := srv.RolePolicy("agents", "valet-revoked-sessions"); !strings.Contains(doc, id) {
		t.Fatalf("the revocation policy does not deny the orphaned session: %s", doc)
	}
	p.stop(t)
}

// TestAWSOutageQueuesRevocations: with STS and IAM unreachable, mints fail
// fast with 503 and releases are queued; once AWS is back every release is
// confirmed and every session refused.
func TestAWSOutageQueuesRevocations(t *testing.T) {
	e, srv := newAWSEnv(t)
	e.Start()
	const n, failedMints = 10, 4
	var ids []string
	var creds []map[string]any
	for i := 0; i < n; i++ {
		res := e.Mint(e.Attest("outage-agent", nil), "aws-ro")
		ids = append(ids, res["lease_id"].(string))
		creds = append(creds, res["credential"].(map[string]any))
	}
	srv.Stop()
	for i := 0; i < failedMints; i++ {
		start := time.Now()
		r := e.Do("POST", "/v1/credentials", e.Attest("outage-agent", nil), map[string]any{"role": "aws-ro"})
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.JSON(t)["detail"].(string), "unavailable") {
			t.Fatalf("mint with AWS down: %d %s", r.Status, r.Body)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the mint took %s to fail", d)
		}
	}
	for _, id := range ids {
		r := e.Do("DELETE", "/v1/leases/"+id, e.Attest("outage-agent", nil), nil)
		if r.Status != http.StatusOK || r.JSON(t)["state"] != "revoking" {
			t.Fatalf("release with AWS down: %d %s", r.Status, r.Body)
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every queued revocation completes", func() bool {
		for _, l := range listLeases(t, e, "test/outage-agent") {
			if l["state"] != "released" && l["state"] != "revoked" {
				return false
			}
		}
		return true
	})
	for i, c := range creds {
		if code := awsUse(t, srv, c); code != "AccessDenied" {
			t.Fatalf("session %d released during the outage still works (%q)", i, code)
		}
	}
}

// TestAWSCredentialsForTools: `valet creds -o aws-credential-process`
// prints what the AWS CLI and SDKs read from a credential_process, and
// `valet exec` gives the command the standard AWS_* variables.
func TestAWSCredentialsForTools(t *testing.T) {
	e, srv := newAWSEnv(t)
	p := startServe(t, e, srv.Env()...)
	e.URL = p.url
	env := []string{"VALET_ADDR=" + p.url, "VALET_ATTESTATION=" + e.Attest("tool-agent", nil), "VALET_TOKEN="}
	out, errOut, code := runCLI(t, env, "creds", "aws-short", "-o", "aws-credential-process")
	if code != 0 {
		t.Fatalf("valet creds: exit %d: %s", code, errOut)
	}
	var cp struct {
		Version                                   int
		AccessKeyID                               string `json:"AccessKeyId"`
		SecretAccessKey, SessionToken, Expiration string
	}
	if err := json.Unmarshal([]byte(out), &cp); err != nil || cp.Version != 1 || cp.AccessKeyID == "" || cp.SessionToken == "" {
		t.Fatalf("credential_process output %q: %v", out, err)
	}
	// The lease (3 s) ends before its 900 s session: the SDK must ask
	// again by then.
	if exp, err := time.Parse(time.RFC3339, cp.Expiration); err != nil || time.Until(exp) > 10*time.Second {
		t.Fatalf("Expiration %q; want the lease's expiry, seconds away", cp.Expiration)
	}
	if c := awsUse(t, srv, map[string]any{"access_key_id": cp.AccessKeyID, "secret_access_key": cp.SecretAccessKey, "session_token": cp.SessionToken}); c != "" {
		t.Fatalf("the credential_process session is refused: %s", c)
	}
	out, errOut, code = runCLI(t, env, "exec", "aws-ro", "--", "sh", "-c",
		`echo "$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $AWS_SESSION_TOKEN $AWS_CREDENTIAL_EXPIRATION $VALET_LEASE_ID"`)
	if code != 0 {
		t.Fatalf("valet exec: exit %d: %s", code, errOut)
	}
	f := strings.Fields(out)
	if len(f) != 5 || !strings.HasPrefix(f[0], "ASIA") {
		t.Fatalf("valet exec environment: %q", out)
	}
	// The command has exited: the lease is released and the session
	// refused.
	eventually(t, 10*time.Second, "the exec lease is released", func() bool { return leaseState(t, e, f[4]) == "released" })
	if c := awsUse(t, srv, map[string]any{"access_key_id": f[0], "secret_access_key": f[1], "session_token": f[2]}); c != "AccessDenied" {
		t.Fatalf("after exec the session still works (%q)", c)
	}
	p.stop(t)
}

// TestExampleAWSConfig: the example AWS configuration loads, its roles pass
// the backend's checks against IAM roles of the same names, and STS accepts
// a session of each, with the session policy and tags filled for an agent.
func TestExampleAWSConfig(t *testing.T) {
	srv := awstest.Start(t, awstest.Config{})
	srv.SetEnv(t)
	srv.CreateRole("valet-s3-team-read", awstest.RoleOptions{})
	srv.CreateRole("valet-ci-deploy", awstest.RoleOptions{ExternalID: "acme-valet"})
	cfg, err := LoadConfig(filepath.Join("..", "..", "deploy", "examples", "aws.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var opts map[string]any
	for _, b := range cfg.Backends {
		if b.Type == "aws" {
			opts = b.Options
		}
	}
	opts["endpoint"] = srv.URL
	be, err := valetaws.New("aws", opts, backends.Deps{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string]string{"namespace": "agents", "service_account": "indexer", "repository": "acme/app", "run_id": "42"}
	checked := 0
	for _, r := range cfg.Roles {
		if r.Backend != "aws" {
			continue
		}
		spec := backends.RoleSpec{Name: r.Name, Params: r.Params, TTL: r.TTL.D(), MaxTTL: r.MaxTTL.D()}
		if err := be.(backends.RoleChecker).CheckRole(spec); err != nil {
			t.Fatalf("role %s: %v", r.Name, err)
		}
		now := time.Now()
		id := leases.NewID(now)
		if _, err := be.Mint(context.Background(), backends.MintRequest{CorrelationID: id, AgentID: "k8s-prod/x", Role: spec, Attributes: attrs,
			IssuedAt: now, ExpiresAt: now.Add(r.TTL.D())}); err != nil {
			t.Fatalf("role %s: mint: %v", r.Name, err)
		}
		checked++
	}
	if checked != 2 {
		t.Fatalf("checked %d aws roles of the example, want 2", checked)
	}
}
