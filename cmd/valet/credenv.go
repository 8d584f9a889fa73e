package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// standardEnv returns the environment variables that a credential's
// provider's own tools read, for the credential shapes valet knows: an AWS
// session (access_key_id, secret_access_key, session_token) sets the AWS
// SDKs' and CLI's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN and AWS_CREDENTIAL_EXPIRATION; a GitHub installation
// token (token with permissions) sets GH_TOKEN and GITHUB_TOKEN, which gh,
// git tooling and Actions scripts read; a Google service-account access
// token (access_token with service_account) sets CLOUDSDK_AUTH_ACCESS_TOKEN
// (gcloud) and GOOGLE_OAUTH_ACCESS_TOKEN (Terraform's google provider).
func standardEnv(res *mintResponse) []string {
	cred := res.Credential
	str := func(k string) string { s, _ := cred[k].(string); return s }
	var env []string
	if tok := str("access_token"); tok != "" && str("service_account") != "" {
		env = append(env, "CLOUDSDK_AUTH_ACCESS_TOKEN="+tok, "GOOGLE_OAUTH_ACCESS_TOKEN="+tok)
	}
	if tok := str("token"); tok != "" {
		if _, gh := cred["permissions"].(map[string]any); gh {
			// A GitHub installation token, for gh and for actions tooling.
			env = append(env, "GH_TOKEN="+tok, "GITHUB_TOKEN="+tok)
		}
	}
	if ak, sk, st := str("access_key_id"), str("secret_access_key"), str("session_token"); ak != "" && sk != "" && st != "" {
		env = append(env, "AWS_ACCESS_KEY_ID="+ak, "AWS_SECRET_ACCESS_KEY="+sk, "AWS_SESSION_TOKEN="+st)
		if exp := str("expiration"); exp != "" {
			env = append(env, "AWS_CREDENTIAL_EXPIRATION="+exp)
		}
	}
	return env
}

// writeCredentialProcess prints an AWS session in the JSON the AWS CLI and
// SDKs read from a credential_process command (Version 1). Expiration is
// the lease's expiry when that comes first, so the SDK asks again before
// valet revokes a session that outlives its lease.
func writeCredentialProcess(w io.Writer, res *mintResponse) error {
	str := func(k string) string { s, _ := res.Credential[k].(string); return s }
	ak, sk, st := str("access_key_id"), str("secret_access_key"), str("session_token")
	if ak == "" || sk == "" || st == "" {
		return errors.New("this credential is not an AWS session; use --format json")
	}
	exp := res.ExpiresAt.UTC()
	if t, err := time.Parse(time.RFC3339, str("expiration")); err == nil && t.Before(exp) {
		exp = t.UTC()
	}
	b, err := json.Marshal(struct {
		Version         int    `json:"Version"`
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string `json:"SecretAccessKey"`
		SessionToken    string `json:"SessionToken"`
		Expiration      string `json:"Expiration"`
	}{1, ak, sk, st, exp.Format(time.RFC3339)})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
