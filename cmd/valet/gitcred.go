package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// git's credential helper protocol (gitcredentials(7), git-credential(1)):
// git runs the helper with an action (get, store or erase) and writes
// key=value attributes to its stdin, ending with a blank line; for get,
// the helper prints the credential as key=value lines.

// gitCredentialAction reads the action git gave `valet creds ROLE -o
// git-credential` and consumes git's attributes. It reports whether valet
// should mint (get, or no action when run by hand); store and erase do
// nothing: valet keeps no credential for git to store or erase.
func gitCredentialAction(args []string, stdin io.Reader) (get bool, err error) {
	if len(args) < 2 {
		return true, nil
	}
	switch args[1] {
	case "get", "store", "erase":
	default:
		return false, fmt.Errorf("git credential helper action %q must be get, store or erase", args[1])
	}
	// git waits for the helper to read what it writes.
	sc := bufio.NewScanner(io.LimitReader(stdin, 64<<10))
	for sc.Scan() && sc.Text() != "" {
	}
	return args[1] == "get", nil
}

// printGitCredential prints a GitHub token as git's credential: user
// x-access-token (what GitHub expects with an installation token), the
// token as password, and its expiry (git 2.41 and later forget it then).
func printGitCredential(w io.Writer, res *mintResponse) error {
	tok, ok := res.Credential["token"].(string)
	if !ok || tok == "" || strings.ContainsAny(tok, "\n\x00") {
		return errors.New("this credential has no token for git; -o git-credential is for GitHub roles")
	}
	exp := res.ExpiresAt
	if s, ok := res.Credential["expires_at"].(string); ok {
		if t, err := time.Parse(time.RFC3339, s); err == nil && t.Before(exp) {
			exp = t
		}
	}
	_, err := fmt.Fprintf(w, "username=x-access-token\npassword=%s\npassword_expiry_utc=%d\n", tok, exp.Unix())
	return err
}
