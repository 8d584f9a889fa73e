package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// Dev mode's AWS demo: with VALET_DEV_AWS_ENDPOINT and
// VALET_DEV_AWS_ROLE_ARN in the environment (make run-cloud sets them,
// with the test server's keys in the standard AWS variables), `valet dev`
// adds an aws backend on that endpoint and the role aws-demo: an STS
// session of the role, tagged with the agent id.

const devAWSBackend = "aws"

// addDevAWS extends cfg with the AWS demo. It returns the endpoint for the
// banner, or "" when no AWS test server is configured.
func addDevAWS(cfg *Config) (string, error) {
	endpoint, roleARN := os.Getenv("VALET_DEV_AWS_ENDPOINT"), os.Getenv("VALET_DEV_AWS_ROLE_ARN")
	if endpoint == "" || roleARN == "" {
		return "", nil
	}
	opts := map[string]any{"endpoint": endpoint}
	if os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
		opts["region"] = "us-east-1"
	}
	cfg.Backends = append(cfg.Backends, backends.Config{Name: devAWSBackend, Type: "aws", Options: opts})
	notRenewable := false
	cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
		r.Name, r.Description, r.Backend = "aws-demo", "An AWS STS session of "+roleARN+", tagged with the agent id.", devAWSBackend
		r.TTL, r.MaxTTL, r.Renewable = config.Duration(15*time.Minute), config.Duration(time.Hour), &notRenewable
		r.Labels = map[string]string{"env": "dev", "demo": "cloud"}
		r.Params = map[string]any{"role_arn": roleARN, "session_tags": map[string]any{"agent": "{{agent}}"}}
	}))
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	return endpoint, nil
}

// printDevAWS prints the AWS demo's part of the banner.
func printDevAWS(w io.Writer, endpoint, self string) {
	if endpoint == "" {
		return
	}
	// valet exec sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
	// AWS_SESSION_TOKEN; the endpoint is the test server's.
	fmt.Fprintf(w, `AWS role:          aws-demo (an STS session) at %s

  AWS_ENDPOINT_URL=%s %s exec aws-demo -- bin/valet-cloudtest aws-whoami
  %s creds aws-demo -o aws-credential-process

`, endpoint, endpoint, self, self)
}
