package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valet-broker/valet/backends/vault/vaulttest"
)

// TestDevBannerCommandsWorkInANewShell starts `valet dev` the way `make
// run-vault` does (a dev Vault with the database engine, the vault binary
// on valet's PATH) and pastes every command of its banner into a new,
// empty POSIX shell (Debian's sh is dash), as a user in a second terminal
// would: no vault on PATH, no VAULT_ADDR, no GODEBUG.
func TestDevBannerCommandsWorkInANewShell(t *testing.T) {
	v := vaulttest.StartDev(t)
	pg := vaulttest.StartPostgres(t)
	v.Mount("database", "database")
	v.Write("database/config/valet-demo", map[string]any{
		"plugin_name": "postgresql-database-plugin", "allowed_roles": "valet-demo",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable", pg.Port),
		"username":       pg.User, "password": pg.Password,
	})
	v.Write("database/roles/valet-demo", map[string]any{"db_name": "valet-demo", "default_ttl": "5m", "max_ttl": "1h",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT pg_read_all_data TO "{{name}}";`})

	work := t.TempDir() // the directory `valet dev` is started in
	dataDir := filepath.Join(work, "my-dev-data")
	banner := startDev(t, work, []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.Token, "GODEBUG=x509negativeserial=1",
		fmt.Sprintf("VALET_DEV_PGPORT=%d", pg.Port), "PATH=" + filepath.Dir(vaulttest.Binary(t)) + ":" + os.Getenv("PATH")},
		func(l string) bool { return strings.Contains(l, "exec demo-db") },
		"--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))

	var exports, introspect []string
	run := map[string]string{} // what a command is for -> the command
	for _, l := range banner {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "export "):
			exports = append(exports, l)
		case strings.HasPrefix(l, "TOKEN=$("+valetBinary(t)+" "), strings.HasPrefix(l, "curl "):
			introspect = append(introspect, l)
		case strings.HasPrefix(l, valetBinary(t)+" "):
			for _, what := range []string{"creds demo-elevated", "creds demo ", "leases list", "exec demo-vault", "exec demo-db"} {
				if strings.Contains(l, what) {
					run[what] = l
					break
				}
			}
		}
	}
	if len(exports) != 2 || len(run) != 5 || len(introspect) != 2 {
		t.Fatalf("banner: want 2 exports, 5 commands and 2 introspection lines, got %d, %d and %d:\n%s", len(exports), len(run), len(introspect), strings.Join(banner, "\n"))
	}
	run["introspect"] = strings.Join(introspect, "\n")

	home := t.TempDir()
	paste := func(command, stdin string) (string, error) {
		t.Helper()
		sh := exec.Command("/bin/sh", "-c", strings.Join(append(append([]string{"set -e"}, exports...), command), "\n"))
		sh.Dir = work
		sh.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home}
		sh.Stdin = strings.NewReader(stdin)
		out, err := sh.CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct {
		what, stdin, want string
	}{
		{"creds demo ", "", `"access_token"`},
		{"leases list", "", "demo"},
		{"exec demo-vault", "", "hello from Vault, through valet"},
		{"exec demo-db", "select current_user;\n", "v-token-"},
		{"introspect", "", `"active":true`},
	} {
		out, err := paste(run[c.what], c.stdin)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("pasted %q: %v; want output containing %q, got:\n%s", run[c.what], err, c.want, out)
		}
	}
}

// startDev starts `valet dev args...` in work with env added to the
// environment, reads its output up to the line for which last holds, and
// returns the lines read; valet dev runs (its output drained) until the
// test ends.
func startDev(t *testing.T, work string, env []string, last func(line string) bool, args ...string) []string {
	t.Helper()
	cmd := exec.Command(valetBinary(t), append([]string{"dev"}, args...)...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), env...)
	return readDevBanner(t, cmd, last)
}

// TestDevAttestNeedsTheDevIssuer: an attestation signed by a key made on
// the spot would be refused by every server, so `valet dev attest` refuses
// to make one and says where it looked.
func TestDevAttestNeedsTheDevIssuer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nothing-here")
	out, errOut, code := runCLI(t, nil, "dev", "attest", "--data-dir", dir)
	if code == 0 || out != "" || !strings.Contains(errOut, "no dev issuer key in "+dir) {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the data dir was created: %v", err)
	}
	if _, _, err := prepareDev(dir, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCLI(t, nil, "dev", "attest", "--data-dir", dir, "--sub", "a")
	if code != 0 || strings.Count(strings.TrimSpace(out), ".") != 2 {
		t.Fatalf("after valet dev: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestDevSignalQuarantinesAndReleases is the containment of the banner in
// a new shell: the agent mints, `valet signal … --severity high` revokes
// its lease and quarantines it (its mints then get 403 quarantined, and
// `valet agents list` shows it), and `valet agents release` restores it.
func TestDevSignalQuarantinesAndReleases(t *testing.T) {
	work := t.TempDir()
	banner := startDev(t, work, []string{"VAULT_ADDR=", "VAULT_TOKEN="}, func(l string) bool { return strings.Contains(l, "agents release") },
		"--data-dir", filepath.Join(work, "d"), "--listen", fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t)))
	var exports []string
	run := map[string]string{}
	for _, l := range banner {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "export "):
			exports = append(exports, l)
		case strings.HasPrefix(l, valetBinary(t)+" "):
			for _, what := range []string{"signal ", "agents list", "agents release", "creds demo "} {
				if strings.Contains(l, what) {
					run[what] = strings.TrimSpace(strings.SplitN(l, "#", 2)[0])
				}
			}
		}
	}
	if len(run) != 4 {
		t.Fatalf("banner commands %v:\n%s", run, strings.Join(banner, "\n"))
	}
	paste := func(command string) (string, error) {
		t.Helper()
		sh := exec.Command("/bin/sh", "-c", strings.Join(append(append([]string{"set -e"}, exports...), command), "\n"))
		sh.Dir = work
		sh.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + work}
		out, err := sh.CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct {
		what, want string
		fails      bool
	}{
		{"creds demo ", `"access_token"`, false},
		{"signal ", "action quarantine; 1 live leases ended; quarantined dev/my-agent", false},
		{"creds demo ", "403 Agent quarantined", true},
		{"agents list", "yes: high signal from operator:dev-operator: test", false},
		{"agents release", `"quarantined": false`, false},
		{"creds demo ", `"access_token"`, false},
	} {
		out, err := paste(run[c.what])
		if (err != nil) != c.fails || !strings.Contains(out, c.want) {
			t.Fatalf("pasted %q: %v; want output containing %q, got:\n%s", run[c.what], err, c.want, out)
		}
	}
}
