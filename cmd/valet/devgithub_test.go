package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	banner := startDev(t, work, []string{"VAULT_ADDR=", "VAULT_TOKEN=", "VALET_DEV_GITHUB_URL=" + srv.URL,
		fmt.Sprintf("VALET_DEV_GITHUB_APP_ID=%d", srv.AppID), "VALET_DEV_GITHUB_KEY_FILE=" + srv.KeyFile},
		func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), "git -c credential.helper=") },
		"--data-dir", filepath.Join(work, "dev"), "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))
	var exports, demo []string
	for _, l := range banner {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "export "):
			exports = append(exports, l)
		case strings.Contains(l, "exec gh-demo"), strings.HasPrefix(l, "git -c credential.helper="):
			demo = append(demo, l)
		}
	}
	if len(exports) != 2 || len(demo) != 2 {
		t.Fatalf("banner: want 2 exports and 2 GitHub commands:\n%s", strings.Join(banner, "\n"))
	}
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
