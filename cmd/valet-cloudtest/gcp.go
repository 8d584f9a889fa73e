package main

import (
	"flag"
	"fmt"

	"github.com/valet-broker/valet/backends/gcp/gcptest"
)

// runGCP starts the Google IAM Service Account Credentials test server
// (backends/gcp/gcptest) with the service account valet-demo, and prints
// where valet's own key file is (for Application Default Credentials),
// where the server is and the account.
func runGCP(args []string) (func(), error) {
	fs := flag.NewFlagSet("gcp", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8792", "address to listen on")
	dir := fs.String("dir", "", "directory for valet's service account key file (default: a temporary one)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s, err := gcptest.New(gcptest.Config{Dir: *dir})
	if err != nil {
		return nil, err
	}
	if err := s.Listen(*listen); err != nil {
		s.Close()
		return nil, err
	}
	account := s.CreateServiceAccount("valet-demo", gcptest.ServiceAccountOptions{})
	fmt.Printf("GOOGLE_APPLICATION_CREDENTIALS=%s\nVALET_DEV_GCP_ENDPOINT=%s/\nVALET_DEV_GCP_SERVICE_ACCOUNT=%s\n", s.KeyFile, s.URL, account)
	fmt.Printf("# Google IAM Credentials test server at %s: valet is %s, a token creator on %s\n", s.URL, s.CallerEmail, account)
	return s.Close, nil
}
