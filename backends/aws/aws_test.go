package aws_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/valet-broker/valet/backends"
	valetaws "github.com/valet-broker/valet/backends/aws"
	"github.com/valet-broker/valet/backends/aws/awstest"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/clock"
)

// fixture is a backend talking to a test server, both on one fake clock.
type fixture struct {
	srv   *awstest.Server
	be    *valetaws.Backend
	clock *clock.Fake
	arn   string
	dir   string
}

func newFixture(t *testing.T, roleOpts awstest.RoleOptions) *fixture {
	t.Helper()
	clk := clock.NewFake(time.Now())
	srv := awstest.Start(t, awstest.Config{Now: clk.Now})
	srv.SetEnv(t)
	f := &fixture{srv: srv, clock: clk, arn: srv.CreateRole("agents", roleOpts), dir: t.TempDir()}
	f.be = f.newBackend(t)
	return f
}

// newBackend builds a backend on the fixture's server and data directory.
func (f *fixture) newBackend(t *testing.T) *valetaws.Backend {
	t.Helper()
	be, err := valetaws.New("aws-test", map[string]any{"endpoint": f.srv.URL, "timeout": "2s"},
		backends.Deps{DataDir: f.dir, Clock: f.clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return be.(*valetaws.Backend)
}

// role checks a role with params on top of role_arn.
func (f *fixture) role(t *testing.T, name string, ttl time.Duration, params map[string]any) backends.RoleSpec {
	t.Helper()
	p := map[string]any{"role_arn": f.arn}
	for k, v := range params {
		p[k] = v
	}
	r := backends.RoleSpec{Name: name, Params: p, TTL: ttl, MaxTTL: time.Hour}
	if err := f.be.CheckRole(r); err != nil {
		t.Fatalf("CheckRole: %v", err)
	}
	return r
}

func (f *fixture) mint(t *testing.T, r backends.RoleSpec, ttl time.Duration, attrs map[string]string) (string, *backends.Credential) {
	t.Helper()
	now := f.clock.Now()
	id := leases.NewID(now)
	cred, err := f.be.Mint(context.Background(), backends.MintRequest{
		CorrelationID: id, AgentID: "test/agent", Role: r, Attributes: attrs, IssuedAt: now, ExpiresAt: now.Add(ttl),
	})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return id, cred
}

// sessionClients are SDK clients signing with a minted credential.
func (f *fixture) sessionClients(cred *backends.Credential) (*sts.Client, *iam.Client) {
	creds := credentials.NewStaticCredentialsProvider(cred.Data["access_key_id"].(string), cred.Data["secret_access_key"].(string), cred.Data["session_token"].(string))
	cfg := awssdk.Config{Region: "us-east-1", Credentials: creds, Retryer: func() awssdk.Retryer { return awssdk.NopRetryer{} }}
	return sts.NewFromConfig(cfg, func(o *sts.Options) { o.BaseEndpoint = awssdk.String(f.srv.URL) }),
		iam.NewFromConfig(cfg, func(o *iam.Options) { o.BaseEndpoint = awssdk.String(f.srv.URL) })
}

// use makes a request with the credential that the role's policies
// govern; it returns the AWS error code, or "" when it was allowed.
func (f *fixture) use(t *testing.T, cred *backends.Credential) string {
	t.Helper()
	_, ic := f.sessionClients(cred)
	_, err := ic.GetRole(context.Background(), &iam.GetRoleInput{RoleName: awssdk.String("agents")})
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		t.Fatalf("use the credential: %v", err)
	}
	return ""
}

func TestMintUseRevoke(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, map[string]any{
		"session_policy": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/{{namespace}}/*"}]}`,
		"session_tags":   map[string]any{"namespace": "{{namespace}}", "agent": "{{agent}}"},
		"policy_arns":    []any{"arn:aws:iam::aws:policy/ReadOnlyAccess"},
	})
	id, cred := f.mint(t, r, 30*time.Minute, map[string]string{"namespace": "team-a"})

	// The session is named after the lease and carries it as its source
	// identity; it lives the lease's TTL (less a second of margin).
	sessions := f.srv.Sessions(id)
	if len(sessions) != 1 || sessions[0].SessionName != id || sessions[0].RoleName != "agents" {
		t.Fatalf("sessions of the lease: %+v", sessions)
	}
	s := sessions[0]
	if d := s.Expires.Sub(s.Issued); d < 30*time.Minute-2*time.Second || d > 30*time.Minute {
		t.Fatalf("session lasts %s, want the lease's 30m", d)
	}
	if s.Tags["namespace"] != "team-a" || s.Tags["agent"] != "test/agent" || !strings.Contains(s.Policy, "data/team-a/*") {
		t.Fatalf("session tags %v, policy %s", s.Tags, s.Policy)
	}
	if cred.Handle != "arn:aws:sts::123456789012:assumed-role/agents/"+id || cred.Details["role_arn"] != f.arn {
		t.Fatalf("handle %q, details %v", cred.Handle, cred.Details)
	}
	if got := cred.ExpiresAt.Sub(f.clock.Now()); got > 30*time.Minute {
		t.Fatalf("credential expires in %s, after the lease", got)
	}
	for _, k := range []string{"access_key_id", "secret_access_key", "session_token", "expiration"} {
		if v, _ := cred.Data[k].(string); v == "" {
			t.Fatalf("credential lacks %s: %v", k, cred.Data)
		}
	}
	for _, v := range cred.Details {
		if v == cred.Data["secret_access_key"] || v == cred.Data["session_token"] {
			t.Fatal("a secret is in the credential's details, which are stored")
		}
	}

	if code := f.use(t, cred); code != "" {
		t.Fatalf("using the fresh credential: %s", code)
	}
	note, err := f.be.RevokeNoted(context.Background(), backends.Ref{Handle: cred.Handle, CorrelationID: id, Role: "ro",
		ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: cred.Details})
	if err != nil || note != "" {
		t.Fatalf("RevokeNoted = %q, %v", note, err)
	}
	if code := f.use(t, cred); code != "AccessDenied" {
		t.Fatalf("using the revoked credential: %q, want AccessDenied", code)
	}
	// As at AWS, GetCallerIdentity is never denied: it is no proof of
	// access.
	sc, _ := f.sessionClients(cred)
	if out, err := sc.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{}); err != nil || !strings.HasSuffix(*out.Arn, "/"+id) {
		t.Fatalf("GetCallerIdentity = %v, %v", out, err)
	}
	// Revoking twice is harmless and writes nothing new.
	puts := f.srv.Calls("PutRolePolicy")
	if err := f.be.Revoke(context.Background(), backends.Ref{Handle: cred.Handle, CorrelationID: id, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: cred.Details}); err != nil {
		t.Fatal(err)
	}
	if f.srv.Calls("PutRolePolicy") != puts {
		t.Fatal("a second revocation of the same lease wrote the policy again")
	}
}

// TestShortLeaseGetsTheMinimumSession: STS's minimum is 900 s; a shorter
// lease gets that, and the credential says so (its expiry is the
// session's, which the broker records as outliving the lease).
func TestShortLeaseGetsTheMinimumSession(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "short", time.Minute, nil)
	id, cred := f.mint(t, r, time.Minute, nil)
	s := f.srv.Sessions(id)[0]
	if d := s.Expires.Sub(s.Issued); d <= 899*time.Second || d > 900*time.Second {
		t.Fatalf("session lasts %s, want STS's minimum 900s", d)
	}
	if d := cred.ExpiresAt.Sub(f.clock.Now()); d != 900*time.Second || cred.Details["duration_seconds"] != "900" {
		t.Fatalf("credential expires in %s (details %v); want the session's 900s", d, cred.Details)
	}
	if got := f.be.CredentialLifetime(backends.RoleSpec{}, time.Minute); got != 900*time.Second {
		t.Fatalf("CredentialLifetime(1m) = %s, want 900s", got)
	}
	if got := f.be.CredentialLifetime(backends.RoleSpec{}, time.Hour); got != time.Hour {
		t.Fatalf("CredentialLifetime(1h) = %s, want 1h", got)
	}
}

// TestInterruptedMintIsRevokedByItsLeaseID: a lease whose mint may have
// created a session (no handle recorded) is revoked by the same deny
// statement, since the session's SourceIdentity is the lease id.
func TestInterruptedMintIsRevokedByItsLeaseID(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	id, cred := f.mint(t, r, 30*time.Minute, nil)
	// A restarted valet: a new backend, no handle, no details.
	be := f.newBackend(t)
	if err := be.CheckRole(r); err != nil {
		t.Fatal(err)
	}
	if err := be.Revoke(context.Background(), backends.Ref{CorrelationID: id, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute),
		ValidUntil: f.clock.Now().Add(31 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if code := f.use(t, cred); code != "AccessDenied" {
		t.Fatalf("the interrupted mint's session still works (%q)", code)
	}
}

// TestRefusedMintNeedsNoRevocation: a mint refused before or by STS
// created nothing, so ending its lease writes nothing to IAM.
func TestRefusedMintNeedsNoRevocation(t *testing.T) {
	cases := []struct {
		name    string
		attrs   map[string]string
		setup   func(f *fixture)
		kind    error
		message string
	}{
		{"missing attribute", map[string]string{}, nil, backends.ErrForbidden, `needs the agent attribute "namespace"`},
		{"wildcard in an attribute", map[string]string{"namespace": "*"}, nil, backends.ErrForbidden, `takes attribute "namespace" only as letters`},
		{"STS refuses", map[string]string{"namespace": "a"}, func(f *fixture) { f.srv.Fail("AssumeRole", 403, "AccessDenied") }, backends.ErrBadResponse, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, awstest.RoleOptions{})
			r := f.role(t, "ro", 30*time.Minute, map[string]any{"session_tags": map[string]any{"ns": "{{namespace}}"}})
			if c.setup != nil {
				c.setup(f)
			}
			now := f.clock.Now()
			id := leases.NewID(now)
			_, err := f.be.Mint(context.Background(), backends.MintRequest{CorrelationID: id, AgentID: "test/a", Role: r, Attributes: c.attrs, IssuedAt: now, ExpiresAt: now.Add(30 * time.Minute)})
			if err == nil || c.kind != backends.ErrBadResponse && (!errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.message)) {
				t.Fatalf("Mint error %v; want %v saying %q", err, c.kind, c.message)
			}
			if err := f.be.Revoke(context.Background(), backends.Ref{CorrelationID: id, Role: "ro", ExpiresAt: now.Add(30 * time.Minute)}); err != nil {
				t.Fatal(err)
			}
			if n := f.srv.Calls("PutRolePolicy"); n != 0 {
				t.Fatalf("%d IAM writes for a mint that created nothing", n)
			}
		})
	}
}

// TestOutageFailsFastAndRevocationWaits: with STS and IAM unreachable a
// mint fails at once with ErrUnavailable, and so does a revocation; once
// they are back the revocation succeeds.
func TestOutageFailsFastAndRevocationWaits(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	id, cred := f.mint(t, r, 30*time.Minute, nil)
	f.srv.Stop()
	now := f.clock.Now()
	start := time.Now()
	_, err := f.be.Mint(context.Background(), backends.MintRequest{CorrelationID: leases.NewID(now), AgentID: "test/a", Role: r, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if !errors.Is(err, backends.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("Mint during the outage: %v after %s; want ErrUnavailable at once", err, time.Since(start))
	}
	ref := backends.Ref{Handle: cred.Handle, CorrelationID: id, Role: "ro", ExpiresAt: now.Add(30 * time.Minute), Details: cred.Details}
	if err := f.be.Revoke(context.Background(), ref); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Revoke during the outage: %v; want ErrUnavailable", err)
	}
	if err := f.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := f.be.Revoke(context.Background(), ref); err != nil {
		t.Fatalf("Revoke after the outage: %v", err)
	}
	if code := f.use(t, cred); code != "AccessDenied" {
		t.Fatalf("revoked after the outage, the credential still works (%q)", code)
	}
}

// TestConcurrentRevocationsShareWrites: revocations arriving together are
// written in few PutRolePolicy calls, and every one of them is denied.
func TestConcurrentRevocationsShareWrites(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	const n = 40
	ids := make([]string, n)
	creds := make([]*backends.Credential, n)
	for i := range ids {
		ids[i], creds[i] = f.mint(t, r, 30*time.Minute, nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f.be.Revoke(context.Background(), backends.Ref{Handle: creds[i].Handle, CorrelationID: ids[i], Role: "ro",
				ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: creds[i].Details})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if puts := f.srv.Calls("PutRolePolicy"); puts >= n/2 {
		t.Fatalf("%d revocations took %d PutRolePolicy calls; they should share writes", n, puts)
	}
	for i, c := range creds {
		if code := f.use(t, c); code != "AccessDenied" {
			t.Fatalf("credential %d still works (%q)", i, code)
		}
	}
	// The ids are packed into one statement.
	doc := f.srv.RolePolicy("agents", "valet-revoked-sessions")
	if strings.Count(doc, `"Effect":"Deny"`) != 1 {
		t.Fatalf("policy %s; want one statement for sessions ending in one window", doc)
	}
}

// TestEndedSessionsArePruned: a statement is dropped once every session it
// names has ended.
func TestEndedSessionsArePruned(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	first, c1 := f.mint(t, r, 30*time.Minute, nil)
	if err := f.be.Revoke(context.Background(), backends.Ref{Handle: c1.Handle, CorrelationID: first, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: c1.Details}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	second, c2 := f.mint(t, r, 30*time.Minute, nil)
	if err := f.be.Revoke(context.Background(), backends.Ref{Handle: c2.Handle, CorrelationID: second, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: c2.Details}); err != nil {
		t.Fatal(err)
	}
	doc := f.srv.RolePolicy("agents", "valet-revoked-sessions")
	if strings.Contains(doc, first) || !strings.Contains(doc, second) {
		t.Fatalf("policy %s; want only the session that has not ended", doc)
	}
}

// TestFullPolicyFallsBackToRevokingOlderSessions: when the role's inline
// policies leave no room for another id, valet denies every session of the
// role issued before now instead, and says so.
func TestFullPolicyFallsBackToRevokingOlderSessions(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	// Someone's own inline policy takes most of the role's budget.
	big := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::` + strings.Repeat("x", 9700) + `"}]}`
	f.srv.PutRolePolicy("agents", "own", big)
	_, bystander := f.mint(t, r, 30*time.Minute, nil)
	var note, last string
	var lastCred *backends.Credential
	for i := 0; i < 30 && note == ""; i++ {
		id, c := f.mint(t, r, 30*time.Minute, nil)
		f.clock.Advance(2 * time.Second)
		var err error
		note, err = f.be.RevokeNoted(context.Background(), backends.Ref{Handle: c.Handle, CorrelationID: id, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: c.Details})
		if err != nil {
			t.Fatal(err)
		}
		if note == "" && !strings.Contains(f.srv.RolePolicy("agents", "valet-revoked-sessions"), id) {
			t.Fatalf("revocation %d: the id is not in the policy", i)
		}
		last, lastCred = id, c
	}
	if !strings.Contains(note, "every session of the role issued before") || !strings.Contains(note, "other live leases") {
		t.Fatalf("note %q; want it to say that older sessions were revoked", note)
	}
	if code := f.use(t, lastCred); code != "AccessDenied" {
		t.Fatalf("the revoked session %s still works (%q)", last, code)
	}
	if code := f.use(t, bystander); code != "AccessDenied" {
		t.Fatalf("an older session of the role still works (%q); the fallback denies it too", code)
	}
	// A session issued afterwards works.
	f.clock.Advance(2 * time.Second)
	_, fresh := f.mint(t, r, 30*time.Minute, nil)
	if code := f.use(t, fresh); code != "" {
		t.Fatalf("a new session is denied (%q)", code)
	}
	if doc := f.srv.RolePolicy("agents", "valet-revoked-sessions"); !strings.Contains(doc, "aws:TokenIssueTime") || strings.Contains(doc, last) {
		t.Fatalf("policy %s; want the aws:TokenIssueTime statement instead of ids", doc)
	}
}

// TestRestartKeepsDeniedIDs: a restarted valet reads the policy it last
// wrote from its data directory, so its next write keeps earlier ids even
// if IAM answers a read with an older document.
func TestRestartKeepsDeniedIDs(t *testing.T) {
	f := newFixture(t, awstest.RoleOptions{})
	r := f.role(t, "ro", 30*time.Minute, nil)
	first, c1 := f.mint(t, r, 30*time.Minute, nil)
	if err := f.be.Revoke(context.Background(), backends.Ref{Handle: c1.Handle, CorrelationID: first, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: c1.Details}); err != nil {
		t.Fatal(err)
	}
	// IAM loses the write, as a stale read would show it.
	f.srv.PutRolePolicy("agents", "valet-revoked-sessions", `{"Version":"2012-10-17","Statement":[]}`)
	be := f.newBackend(t)
	if err := be.CheckRole(r); err != nil {
		t.Fatal(err)
	}
	second, c2 := f.mint(t, r, 30*time.Minute, nil)
	if err := be.Revoke(context.Background(), backends.Ref{Handle: c2.Handle, CorrelationID: second, Role: "ro", ExpiresAt: f.clock.Now().Add(30 * time.Minute), Details: c2.Details}); err != nil {
		t.Fatal(err)
	}
	if code := f.use(t, c1); code != "AccessDenied" {
		t.Fatalf("after a restart the first revoked session works again (%q)", code)
	}
}

func TestCheckRole(t *testing.T) {
	cases := []struct {
		name   string
		params map[string]any
		maxTTL time.Duration
		want   string // in the error; "" for none
	}{
		{"plain", nil, time.Hour, ""},
		{"no role_arn", map[string]any{"role_arn": ""}, time.Hour, "params.role_arn is required"},
		{"not a role ARN", map[string]any{"role_arn": "arn:aws:iam::123456789012:user/bob"}, time.Hour, "is not an IAM role ARN"},
		{"another account", map[string]any{"role_arn": "arn:aws:iam::999999999999:role/agents"}, time.Hour, "in account 999999999999"},
		{"unknown role", map[string]any{"role_arn": "arn:aws:iam::123456789012:role/nobody"}, time.Hour, "IAM has no role nobody"},
		{"max_ttl over MaxSessionDuration", nil, 2 * time.Hour, "MaxSessionDuration 1h0m0s"},
		{"max_ttl over STS's maximum", nil, 13 * time.Hour, "longer than STS's longest session"},
		{"policy that can grow too large", map[string]any{"session_policy": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"` + strings.Repeat("{{a}}", 16) + `"}]}`},
			time.Hour, "can expand to"},
		{"placeholder outside a string", map[string]any{"session_policy": `{"Version":"2012-10-17","Statement":{{x}}}`}, time.Hour, "is not JSON"},
		{"policy without statements", map[string]any{"session_policy": `{"Version":"2012-10-17"}`}, time.Hour, "no Statement"},
		{"eleven policy ARNs", map[string]any{"policy_arns": eleven()}, time.Hour, "at most 10"},
		{"tag keys differing in case", map[string]any{"session_tags": map[string]any{"Team": "a", "team": "b"}}, time.Hour, "differ only in case"},
		{"reserved tag key", map[string]any{"session_tags": map[string]any{"aws:x": "a"}}, time.Hour, "reserved"},
		{"transitive key not a tag", map[string]any{"session_tags": map[string]any{"a": "b"}, "transitive_tag_keys": []any{"c"}}, time.Hour, "transitive_tag_keys[0]"},
		{"tag that can grow too long", map[string]any{"session_tags": map[string]any{"a": "{{x}}{{y}}{{z}}"}}, time.Hour, "can expand to 384"},
		{"max_attribute_length 0", map[string]any{"max_attribute_length": 0}, time.Hour, "max_attribute_length must be between 1 and 256"},
		{"unknown key", map[string]any{"rolearn": "x"}, time.Hour, "rolearn"},
		{"bad external id", map[string]any{"external_id": "a b"}, time.Hour, "params.external_id"},
	}
	f := newFixture(t, awstest.RoleOptions{})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := map[string]any{"role_arn": f.arn}
			for k, v := range c.params {
				p[k] = v
			}
			err := f.be.CheckRole(backends.RoleSpec{Name: "r", Params: p, TTL: 15 * time.Minute, MaxTTL: c.maxTTL})
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("CheckRole = %v; want %q", err, c.want)
			}
		})
	}
}

func eleven() []any {
	var out []any
	for i := 0; i < 11; i++ {
		out = append(out, "arn:aws:iam::aws:policy/P"+string(rune('A'+i)))
	}
	return out
}

func TestNewRefusesBadOptions(t *testing.T) {
	srv := awstest.Start(t, awstest.Config{})
	srv.SetEnv(t)
	cases := []struct {
		name string
		opts map[string]any
		want string
	}{
		{"timeout 0", map[string]any{"timeout": 0}, "timeout must be positive"},
		{"bad policy name", map[string]any{"revocation_policy": "a b"}, "revocation_policy"},
		{"endpoint not a URL", map[string]any{"endpoint": "localhost:1"}, "endpoint"},
		{"unknown key", map[string]any{"regoin": "x"}, "regoin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := valetaws.New("a", c.opts, backends.Deps{DataDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New = %v; want %q", err, c.want)
			}
		})
	}
	t.Run("no region", func(t *testing.T) {
		t.Setenv("AWS_REGION", "")
		t.Setenv("AWS_DEFAULT_REGION", "")
		_, err := valetaws.New("a", nil, backends.Deps{DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "region is required") {
			t.Fatalf("New = %v; want region is required", err)
		}
	})
}
