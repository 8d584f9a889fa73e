package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/valet-broker/valet/backends/aws/awstest"
)

// demoRole is the IAM role runAWS creates for valet dev's aws-demo role.
const demoRole = "valet-demo"

// runAWS starts the AWS STS and IAM test server (backends/aws/awstest)
// with the IAM role valet-demo, and prints valet's AWS keys (the test
// server's IAM user, read by valet through the standard AWS chain) and
// where the server and role are.
func runAWS(args []string) (func(), error) {
	fs := flag.NewFlagSet("aws", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8790", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s := awstest.New(awstest.Config{})
	if err := s.Listen(*listen); err != nil {
		return nil, err
	}
	roleARN := s.CreateRole(demoRole, awstest.RoleOptions{MaxSessionDuration: time.Hour})
	fmt.Printf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_REGION=us-east-1\nAWS_EC2_METADATA_DISABLED=true\nVALET_DEV_AWS_ENDPOINT=%s\nVALET_DEV_AWS_ROLE_ARN=%s\n",
		s.AccessKeyID, s.SecretAccessKey, s.URL, roleARN)
	fmt.Printf("# AWS STS and IAM test server at %s: account %s, role %s\n", s.URL, s.AccountID, roleARN)
	return s.Stop, nil
}

// awsWhoami prints who the AWS credentials in the environment are (the
// standard variables valet exec sets; AWS_ENDPOINT_URL for the test
// server) and whether the role's policies let them act.
func awsWhoami() error { return whoami(context.Background(), os.Stdout) }

// whoami prints the identity of the AWS credentials in the environment and
// whether they may act as their role (an iam:GetRole of it, which the
// role's deny statements govern; GetCallerIdentity is never denied).
func whoami(ctx context.Context, out io.Writer) error {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRetryer(func() awssdk.Retryer { return awssdk.NopRetryer{} }))
	if err != nil {
		return err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	id, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return fmt.Errorf("sts get-caller-identity: %w", err)
	}
	fmt.Fprintf(out, "arn:     %s\naccount: %s\n", awssdk.ToString(id.Arn), awssdk.ToString(id.Account))
	a, err := arn.Parse(awssdk.ToString(id.Arn))
	parts := strings.Split(a.Resource, "/")
	if err != nil || len(parts) != 3 || parts[0] != "assumed-role" {
		return nil // not a role session: nothing more to show
	}
	_, err = iam.NewFromConfig(cfg).GetRole(ctx, &iam.GetRoleInput{RoleName: awssdk.String(parts[1])})
	var ae smithy.APIError
	switch {
	case err == nil:
		fmt.Fprintf(out, "access:  allowed (iam:GetRole on role %s)\n", parts[1])
	case errors.As(err, &ae) && ae.ErrorCode() == "AccessDenied":
		fmt.Fprintf(out, "access:  denied (%s)\n", ae.ErrorMessage())
		return errors.New("the session is denied")
	default:
		return err
	}
	return nil
}
