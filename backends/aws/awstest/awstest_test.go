package awstest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/valet-broker/valet/backends/aws/awstest"
	"github.com/valet-broker/valet/leases/clock"
)

func clients(s *awstest.Server, akid, secret, token string, opts ...func(*sts.Options)) (*sts.Client, *iam.Client) {
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider(akid, secret, token),
		Retryer: func() aws.Retryer { return aws.NopRetryer{} }}
	sc := sts.NewFromConfig(cfg, append([]func(*sts.Options){func(o *sts.Options) { o.BaseEndpoint = aws.String(s.URL) }}, opts...)...)
	ic := iam.NewFromConfig(cfg, func(o *iam.Options) { o.BaseEndpoint = aws.String(s.URL) })
	return sc, ic
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return ""
}

// TestSignatureIsVerified: only requests signed (SigV4) with the right
// secret, within 15 minutes, for the right service and with every
// credential header signed get through.
func TestSignatureIsVerified(t *testing.T) {
	s := awstest.Start(t, awstest.Config{})
	cases := []struct {
		name   string
		client func() *sts.Client
		want   string
	}{
		{"right keys", func() *sts.Client { c, _ := clients(s, s.AccessKeyID, s.SecretAccessKey, ""); return c }, ""},
		{"wrong secret", func() *sts.Client { c, _ := clients(s, s.AccessKeyID, "wrong"+s.SecretAccessKey[5:], ""); return c }, "SignatureDoesNotMatch"},
		{"unknown key", func() *sts.Client { c, _ := clients(s, "AKIAUNKNOWN000000000", s.SecretAccessKey, ""); return c }, "InvalidClientTokenId"},
		{"token with long-term keys", func() *sts.Client { c, _ := clients(s, s.AccessKeyID, s.SecretAccessKey, "x"); return c }, "InvalidClientTokenId"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.client().GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
			if got := code(err); got != c.want {
				t.Fatalf("GetCallerIdentity: %q (%v), want %q", got, err, c.want)
			}
		})
	}
	t.Run("clock skew over 15 minutes", func(t *testing.T) {
		for _, skew := range []time.Duration{16 * time.Minute, -16 * time.Minute} {
			srv := awstest.Start(t, awstest.Config{SignatureNow: func() time.Time { return time.Now().Add(skew) }})
			c, _ := clients(srv, srv.AccessKeyID, srv.SecretAccessKey, "")
			_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
			if code(err) != "SignatureDoesNotMatch" || !strings.Contains(err.Error(), "Signature expired") {
				t.Fatalf("skew %s: %v", skew, err)
			}
		}
		srv := awstest.Start(t, awstest.Config{SignatureNow: func() time.Time { return time.Now().Add(14 * time.Minute) }})
		c, _ := clients(srv, srv.AccessKeyID, srv.SecretAccessKey, "")
		if _, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{}); err != nil {
			t.Fatalf("skew 14m: %v", err)
		}
	})
	t.Run("body changed after signing", func(t *testing.T) {
		c, _ := clients(s, s.AccessKeyID, s.SecretAccessKey, "", func(o *sts.Options) {
			o.HTTPClient = tamper{}
		})
		_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
		if code(err) != "SignatureDoesNotMatch" {
			t.Fatalf("tampered request: %v", err)
		}
	})
	t.Run("unsigned request", func(t *testing.T) {
		resp, err := http.Post(s.URL, "application/x-www-form-urlencoded", strings.NewReader("Action=GetCallerIdentity&Version=2011-06-15"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !bytes.Contains(body, []byte("<Code>MissingAuthenticationToken</Code>")) || !bytes.Contains(body, []byte("<ErrorResponse")) {
			t.Fatalf("unsigned: %d %s", resp.StatusCode, body)
		}
	})
}

// randomHex returns n random bytes in hex: text that does not compress.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// tamper sends a request with a changed body after it was signed.
type tamper struct{}

func (tamper) Do(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	body := "Action=GetCallerIdentity&Version=2011-06-15&X=1"
	r2.Body = io.NopCloser(strings.NewReader(body))
	r2.ContentLength = int64(len(body))
	return http.DefaultClient.Do(r2)
}

var _ smithyhttp.ClientDo = tamper{}

// TestAssumeRoleLimits: STS's documented limits, with its error codes.
func TestAssumeRoleLimits(t *testing.T) {
	s := awstest.Start(t, awstest.Config{})
	arn := s.CreateRole("r", awstest.RoleOptions{MaxSessionDuration: 2 * time.Hour})
	c, _ := clients(s, s.AccessKeyID, s.SecretAccessKey, "")
	base := func() *sts.AssumeRoleInput {
		return &sts.AssumeRoleInput{RoleArn: aws.String(arn), RoleSessionName: aws.String("s1"), DurationSeconds: aws.Int32(900)}
	}
	var tags []ststypes.Tag
	for i := 0; i < 51; i++ {
		tags = append(tags, ststypes.Tag{Key: aws.String(fmt.Sprintf("k%d", i)), Value: aws.String("v")})
	}
	cases := []struct {
		name string
		edit func(in *sts.AssumeRoleInput)
		want string
		msg  string
	}{
		{"valid", func(in *sts.AssumeRoleInput) {}, "", ""},
		{"duration under 900", func(in *sts.AssumeRoleInput) { in.DurationSeconds = aws.Int32(899) }, "ValidationError", "greater than or equal to 900"},
		{"duration over 43200", func(in *sts.AssumeRoleInput) { in.DurationSeconds = aws.Int32(43201) }, "ValidationError", "less than or equal to 43200"},
		{"duration over the role's maximum", func(in *sts.AssumeRoleInput) { in.DurationSeconds = aws.Int32(7201) }, "ValidationError", "MaxSessionDuration"},
		{"session name with a space", func(in *sts.AssumeRoleInput) { in.RoleSessionName = aws.String("a b") }, "ValidationError", "roleSessionName"},
		{"session name too long", func(in *sts.AssumeRoleInput) { in.RoleSessionName = aws.String(strings.Repeat("a", 65)) }, "ValidationError", "roleSessionName"},
		{"source identity aws:", func(in *sts.AssumeRoleInput) { in.SourceIdentity = aws.String("aws:x") }, "ValidationError", ""},
		{"policy over 2048", func(in *sts.AssumeRoleInput) {
			in.Policy = aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"` + strings.Repeat("a", 2048) + `"}]}`)
		}, "ValidationError", "2048"},
		{"51 tags", func(in *sts.AssumeRoleInput) { in.Tags = tags }, "ValidationError", "tags"},
		{"tag keys differing in case", func(in *sts.AssumeRoleInput) {
			in.Tags = []ststypes.Tag{{Key: aws.String("A"), Value: aws.String("1")}, {Key: aws.String("a"), Value: aws.String("2")}}
		}, "ValidationError", "case insensitive"},
		{"packed too large", func(in *sts.AssumeRoleInput) {
			var big []ststypes.Tag
			for i := 0; i < 50; i++ {
				big = append(big, ststypes.Tag{Key: aws.String(fmt.Sprintf("key%d", i)), Value: aws.String(randomHex(100))})
			}
			in.Tags = big
		}, "PackedPolicyTooLarge", ""},
		{"unknown role", func(in *sts.AssumeRoleInput) { in.RoleArn = aws.String("arn:aws:iam::123456789012:role/none") }, "AccessDenied", "not authorized to perform: sts:AssumeRole"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			tc.edit(in)
			out, err := c.AssumeRole(context.Background(), in)
			if got := code(err); got != tc.want || tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("AssumeRole: %v; want %s saying %q", err, tc.want, tc.msg)
			}
			if tc.want == "" && (out.Credentials == nil || *out.AssumedRoleUser.Arn != "arn:aws:sts::123456789012:assumed-role/r/s1") {
				t.Fatalf("AssumeRole answered %+v", out)
			}
		})
	}
}

// TestDenyStatementsApplyToSessions: a Deny on the session's
// aws:SourceIdentity or on tokens issued before a time refuses the
// session's later requests, and only those sessions'.
func TestDenyStatementsApplyToSessions(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := awstest.Start(t, awstest.Config{Now: clk.Now})
	arn := s.CreateRole("r", awstest.RoleOptions{})
	c, admin := clients(s, s.AccessKeyID, s.SecretAccessKey, "")
	session := func(id string) *iam.Client {
		out, err := c.AssumeRole(context.Background(), &sts.AssumeRoleInput{RoleArn: aws.String(arn), RoleSessionName: aws.String(id), SourceIdentity: aws.String(id)})
		if err != nil {
			t.Fatal(err)
		}
		_, ic := clients(s, *out.Credentials.AccessKeyId, *out.Credentials.SecretAccessKey, *out.Credentials.SessionToken)
		return ic
	}
	use := func(ic *iam.Client) string {
		_, err := ic.GetRole(context.Background(), &iam.GetRoleInput{RoleName: aws.String("r")})
		return code(err)
	}
	a, b := session("lease-a"), session("lease-b")
	if use(a) != "" || use(b) != "" {
		t.Fatal("fresh sessions are refused")
	}
	put := func(doc string) {
		if _, err := admin.PutRolePolicy(context.Background(), &iam.PutRolePolicyInput{RoleName: aws.String("r"), PolicyName: aws.String("deny"), PolicyDocument: aws.String(doc)}); err != nil {
			t.Fatal(err)
		}
	}
	put(`{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIdentity":["lease-a"]}}}]}`)
	if use(a) != "AccessDenied" || use(b) != "" {
		t.Fatalf("after denying lease-a: a %q, b %q", use(a), use(b))
	}
	// IAM returns the document URL-encoded.
	out, err := admin.GetRolePolicy(context.Background(), &iam.GetRolePolicyInput{RoleName: aws.String("r"), PolicyName: aws.String("deny")})
	if err != nil || !strings.HasPrefix(*out.PolicyDocument, "%7B") {
		t.Fatalf("GetRolePolicy = %v, %v; want a URL-encoded document", out, err)
	}
	if dec, _ := url.QueryUnescape(*out.PolicyDocument); !strings.Contains(dec, "lease-a") {
		t.Fatalf("decoded document %s", dec)
	}
	clk.Advance(time.Second)
	put(`{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"DateLessThan":{"aws:TokenIssueTime":"` + clk.Now().UTC().Format(time.RFC3339) + `"}}}}`)
	clk.Advance(time.Second)
	later := session("lease-c")
	if use(b) != "AccessDenied" || use(later) != "" {
		t.Fatalf("after denying older sessions: b %q, c %q", use(b), use(later))
	}
	// Malformed documents and the role's budget are refused as IAM does.
	_, err = admin.PutRolePolicy(context.Background(), &iam.PutRolePolicyInput{RoleName: aws.String("r"), PolicyName: aws.String("bad"), PolicyDocument: aws.String(`{"Statement":[]}`)})
	if code(err) != "MalformedPolicyDocument" {
		t.Fatalf("malformed policy: %v", err)
	}
	big := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"` + strings.Repeat("x", 10240) + `"}]}`
	_, err = admin.PutRolePolicy(context.Background(), &iam.PutRolePolicyInput{RoleName: aws.String("r"), PolicyName: aws.String("big"), PolicyDocument: aws.String(big)})
	if code(err) != "LimitExceeded" {
		t.Fatalf("policy over the budget: %v", err)
	}
	// Sessions may not write IAM.
	_, err = later.PutRolePolicy(context.Background(), &iam.PutRolePolicyInput{RoleName: aws.String("r"), PolicyName: aws.String("deny"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[]}`)})
	if code(err) != "AccessDenied" {
		t.Fatalf("a session removed the deny policy: %v", err)
	}
}
