package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/valet-broker/valet/backends/aws/awstest"
)

// TestWhoami: aws whoami finds the endpoint and the session in the
// standard AWS environment variables, and tells a denied session.
func TestWhoami(t *testing.T) {
	srv := awstest.Start(t, awstest.Config{})
	arn := srv.CreateRole(demoRole, awstest.RoleOptions{})
	root := sts.NewFromConfig(awssdk.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKeyID, srv.SecretAccessKey, "")},
		func(o *sts.Options) { o.BaseEndpoint = awssdk.String(srv.URL) })
	s, err := root.AssumeRole(context.Background(), &sts.AssumeRoleInput{RoleArn: awssdk.String(arn), RoleSessionName: awssdk.String("lease-1"), SourceIdentity: awssdk.String("lease-1")})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetEnv(t)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", *s.Credentials.AccessKeyId)
	t.Setenv("AWS_SECRET_ACCESS_KEY", *s.Credentials.SecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", *s.Credentials.SessionToken)
	var out bytes.Buffer
	if err := whoami(context.Background(), &out); err != nil || !strings.Contains(out.String(), "assumed-role/valet-demo/lease-1") || !strings.Contains(out.String(), "access:  allowed") {
		t.Fatalf("whoami = %v:\n%s", err, out.String())
	}
	srv.PutRolePolicy(demoRole, "deny", `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIdentity":"lease-1"}}}]}`)
	out.Reset()
	if err := whoami(context.Background(), &out); err == nil || !strings.Contains(out.String(), "access:  denied") {
		t.Fatalf("whoami of a denied session = %v:\n%s", err, out.String())
	}
}
