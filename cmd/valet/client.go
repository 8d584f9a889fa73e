package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// k8sTokenPath is where Kubernetes projects a pod's service-account token.
const k8sTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// client talks to a valet server for the CLI.
type client struct {
	addr string
	http *http.Client
}

// clientFlags are the connection flags shared by client commands.
type clientFlags struct {
	addr   string
	caFile string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "addr", "", "valet address (default $VALET_ADDR or http://127.0.0.1:8750)")
	cmd.Flags().StringVar(&f.caFile, "ca-file", "", "CA certificate to verify an https valet (default $VALET_CACERT)")
}

func (f *clientFlags) client() (*client, error) {
	addr := f.addr
	if addr == "" {
		addr = os.Getenv("VALET_ADDR")
	}
	if addr == "" {
		addr = "http://127.0.0.1:8750"
	}
	ca := f.caFile
	if ca == "" {
		ca = os.Getenv("VALET_CACERT")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &client{addr: strings.TrimRight(addr, "/"), http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}, nil
}

// apiError is a problem+json answer.
type apiError struct {
	Status    int    `json:"status"`
	Title     string `json:"title"`
	Detail    string `json:"detail"`
	Code      string `json:"code"`
	RequestID string `json:"request_id"`
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%d %s: %s", e.Status, e.Title, e.Detail)
	if e.RequestID != "" {
		msg += " (request id " + e.RequestID + ")"
	}
	return msg
}

// do sends a request with a bearer token and decodes a JSON answer into
// out (if non-nil). Non-2xx answers become *apiError.
func (c *client) do(ctx context.Context, method, path, bearer string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.addr+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach valet at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{Status: resp.StatusCode, Title: resp.Status}
		if json.Unmarshal(b, e) != nil || e.Detail == "" {
			e.Detail = strings.TrimSpace(string(b))
		}
		return e
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// attestation finds the agent's attestation: --attestation-file, then
// $VALET_ATTESTATION_FILE, then $VALET_ATTESTATION, then the Kubernetes
// service-account token. It is read fresh each time because platforms
// rotate these files.
func attestation(file string) (string, error) {
	if file == "" {
		file = os.Getenv("VALET_ATTESTATION_FILE")
	}
	if file != "" {
		return readTokenFile(file)
	}
	if v := strings.TrimSpace(os.Getenv("VALET_ATTESTATION")); v != "" {
		return v, nil
	}
	if _, err := os.Stat(k8sTokenPath); err == nil {
		return readTokenFile(k8sTokenPath)
	}
	return "", errors.New("no attestation: set VALET_ATTESTATION, VALET_ATTESTATION_FILE or --attestation-file (in Kubernetes, " + k8sTokenPath + " is used when present)")
}

func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("attestation file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// operatorCall sends a request with the operator token and returns the raw
// JSON answer.
func (f *clientFlags) operatorCall(ctx context.Context, method, path string, body any) (json.RawMessage, error) {
	tok, err := operatorToken()
	if err != nil {
		return nil, err
	}
	return f.call(ctx, method, path, tok, body)
}

// call sends a request with the bearer token tok and returns the raw JSON
// answer.
func (f *clientFlags) call(ctx context.Context, method, path, tok string, body any) (json.RawMessage, error) {
	c, err := f.client()
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := c.do(ctx, method, path, tok, body, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// operatorToken returns $VALET_TOKEN.
func operatorToken() (string, error) {
	t := strings.TrimSpace(os.Getenv("VALET_TOKEN"))
	if t == "" {
		return "", errors.New("operator commands need VALET_TOKEN (the operator token, printed by valet dev)")
	}
	return t, nil
}
