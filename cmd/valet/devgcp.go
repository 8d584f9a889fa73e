package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// Dev mode's Google Cloud demo: with VALET_DEV_GCP_ENDPOINT and
// VALET_DEV_GCP_SERVICE_ACCOUNT in the environment (make run-cloud sets
// them, with GOOGLE_APPLICATION_CREDENTIALS naming the test server's key
// file for valet's own identity), `valet dev` adds a gcp backend on that
// endpoint and the role gcp-demo: an access token of the service account.

const devGCPBackend = "gcp"

// devGCP is what the banner shows of the Google Cloud demo.
type devGCP struct {
	endpoint, account string
}

// addDevGCP extends cfg with the Google Cloud demo. It returns nil when
// the environment names no IAM Credentials endpoint.
func addDevGCP(cfg *Config) (*devGCP, error) {
	endpoint, account := os.Getenv("VALET_DEV_GCP_ENDPOINT"), os.Getenv("VALET_DEV_GCP_SERVICE_ACCOUNT")
	if endpoint == "" {
		return nil, nil
	}
	if account == "" {
		return nil, fmt.Errorf("the Google Cloud demo needs VALET_DEV_GCP_SERVICE_ACCOUNT beside VALET_DEV_GCP_ENDPOINT")
	}
	cfg.Backends = append(cfg.Backends, backends.Config{Name: devGCPBackend, Type: "gcp", Options: map[string]any{"endpoint": endpoint}})
	notRenewable := false
	cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
		r.Name, r.Description, r.Backend = "gcp-demo", "A Google access token of "+account+" (Google cannot revoke it: it lives its lease's TTL).", devGCPBackend
		// Google cannot revoke its tokens: the lease is the token's whole
		// life, so it is kept short.
		r.TTL, r.MaxTTL, r.Renewable = config.Duration(5*time.Minute), config.Duration(15*time.Minute), &notRenewable
		r.Labels = map[string]string{"env": "dev", "demo": "cloud"}
		r.Params = map[string]any{"service_account": account}
	}))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &devGCP{endpoint: endpoint, account: account}, nil
}

// printDevGCP prints the Google Cloud demo's commands, complete for a new
// terminal (with the exports the banner printed first).
func printDevGCP(w io.Writer, g *devGCP, self string) {
	if g == nil {
		return
	}
	// valet exec sets GOOGLE_OAUTH_ACCESS_TOKEN and
	// CLOUDSDK_AUTH_ACCESS_TOKEN; the test server answers Google's
	// tokeninfo beside the IAM Credentials API.
	fmt.Fprintf(w, `Google Cloud role: gcp-demo (an access token of %s) at %s

  %s exec gcp-demo -- sh -c 'curl -s -d "access_token=$GOOGLE_OAUTH_ACCESS_TOKEN" %s/tokeninfo'

`, g.account, g.endpoint, self, strings.TrimSuffix(g.endpoint, "/"))
}
