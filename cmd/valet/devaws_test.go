package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/backends/aws/awstest"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
)

// TestDevAWSDemoWorksInANewShell starts `valet dev` the way `make
// run-cloud` does (beside the STS/IAM test server, its keys in the AWS
// environment variables) and pastes the banner's aws-demo command into a
// new, empty shell: valet exec gives the command an STS session, which the
// demo client uses; after exec the session is refused.
func TestDevAWSDemoWorksInANewShell(t *testing.T) {
	srv := awstest.Start(t, awstest.Config{})
	roleARN := srv.CreateRole("valet-demo", awstest.RoleOptions{})
	work := t.TempDir()
	cloudtest := filepath.Join(work, "bin", "valet-cloudtest")
	if out, err := exec.Command("go", "build", "-o", cloudtest, "../valet-cloudtest").CombinedOutput(); err != nil {
		t.Fatalf("build valet-cloudtest: %v\n%s", err, out)
	}
	cmd := exec.Command(valetBinary(t), "dev", "--data-dir", filepath.Join(work, "data"), "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))
	cmd.Dir = work
	cmd.Env = append(append(os.Environ(), srv.Env()...), "VAULT_ADDR=", "VAULT_TOKEN=",
		"VALET_DEV_AWS_ENDPOINT="+srv.URL, "VALET_DEV_AWS_ROLE_ARN="+roleARN)
	banner := readDevBanner(t, cmd, func(l string) bool { return strings.Contains(l, "aws-credential-process") })
	var exports []string
	demo := ""
	for _, l := range banner {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "export ") {
			exports = append(exports, l)
		}
		if strings.Contains(l, "exec aws-demo") {
			demo = l
		}
	}
	sh := exec.Command("/bin/sh", "-c", strings.Join(append(append([]string{"set -e"}, exports...), demo), "\n"))
	sh.Dir = work
	sh.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	out, err := sh.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "assumed-role/valet-demo/") || !strings.Contains(string(out), "access:  allowed") {
		t.Fatalf("pasted %q: %v\n%s", demo, err, out)
	}
}

// readDevBanner starts `valet dev` (cmd) and returns its banner up to and
// including the line for which last is true, within 60 s; stdout is drained
// afterwards and the process killed when the test ends.
func readDevBanner(t *testing.T, cmd *exec.Cmd, last func(line string) bool) []string {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var banner []string
	deadline := time.After(60 * time.Second)
	for len(banner) == 0 || !last(banner[len(banner)-1]) {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("valet dev exited before its banner was complete:\n%s\n%s", strings.Join(banner, "\n"), stderr.String())
			}
			banner = append(banner, l)
		case <-deadline:
			t.Fatalf("no complete banner after 60s:\n%s\n%s", strings.Join(banner, "\n"), stderr.String())
		}
	}
	go func() {
		for range lines { // keep valet dev's stdout drained
		}
	}()
	return banner
}
