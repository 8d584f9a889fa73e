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

	"github.com/valet-broker/valet/backends/github/githubtest"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
)

// TestDevGitHubDemoWorksInANewShell starts `valet dev` beside the GitHub
// test server as `make run-cloud` does and pastes the GitHub commands of
// its banner into a new, empty POSIX shell: valet exec reads a file with
// GH_TOKEN, and git clones through valet's credential helper.
func TestDevGitHubDemoWorksInANewShell(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed (Debian package git): apt-get install -y git")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (Debian package curl): apt-get install -y curl")
	}
	srv := startGitHub(t, githubtest.Options{Git: true})
	work := t.TempDir()
	cmd := exec.Command(valetBinary(t), "dev", "--data-dir", filepath.Join(work, "dev"), "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "VAULT_ADDR=", "VAULT_TOKEN=", "VALET_DEV_GITHUB_URL="+srv.URL,
		fmt.Sprintf("VALET_DEV_GITHUB_APP_ID=%d", srv.AppID), "VALET_DEV_GITHUB_KEY_FILE="+srv.KeyFile)
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
	var exports, demo []string
	deadline := time.After(60 * time.Second)
	for len(demo) < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("valet dev exited before the GitHub demo lines:\n%s", stderr.String())
			}
			l = strings.TrimSpace(l)
			switch {
			case strings.HasPrefix(l, "export "):
				exports = append(exports, l)
			case strings.Contains(l, "exec gh-demo"), strings.HasPrefix(l, "git -c credential.helper="):
				demo = append(demo, l)
			}
		case <-deadline:
			t.Fatalf("no GitHub demo lines after 60s:\n%s", stderr.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	home := t.TempDir()
	for i, want := range []string{`"content":`, ""} {
		sh := exec.Command("/bin/sh", "-c", strings.Join(append(append([]string{"set -e"}, exports...), demo[i]), "\n"))
		sh.Dir = work
		sh.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home, "GIT_TERMINAL_PROMPT=0"}
		out, err := sh.CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("pasted %q: %v; want output containing %q, got:\n%s", demo[i], err, want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(work, "widgets", "README.md")); err != nil || !strings.Contains(string(b), "acme/widgets") {
		t.Errorf("the pasted git clone left no widgets/README.md: %v", err)
	}
	if s := srv.Stats(); s.Created != 2 {
		t.Errorf("GitHub created %d tokens, want one for each command", s.Created)
	}
}
