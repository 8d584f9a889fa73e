package vaulttest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
)

// Postgres is a throwaway PostgreSQL cluster on a free loopback port.
type Postgres struct {
	Port     int
	User     string // superuser
	Password string
	bin, dir string
	runAs    *user.User // set when the tests run as root
}

// DSN returns a connection string for user and password to database
// postgres.
func (p *Postgres) DSN(user, password string) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", user, password, p.Port)
}

// SuperDSN is the DSN of the superuser.
func (p *Postgres) SuperDSN() string { return p.DSN(p.User, p.Password) }

// pgBin finds the PostgreSQL server binaries: $VALET_PG_BIN or Debian's
// /usr/lib/postgresql/<version>/bin.
func pgBin(tb TB) string {
	tb.Helper()
	if p := os.Getenv("VALET_PG_BIN"); p != "" {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		tb.Fatal("PostgreSQL is missing: install Debian's postgresql package (`apt-get install -y postgresql`; .ci/run does) or set VALET_PG_BIN to its bin directory")
	}
	return filepath.Dir(matches[len(matches)-1])
}

// StartPostgres creates a cluster with initdb in a temp dir and starts it
// with pg_ctl. As root (CI), initdb refuses to run, so the cluster belongs to
// the postgres user and its commands run through runuser.
func StartPostgres(tb TB) *Postgres {
	tb.Helper()
	p := &Postgres{bin: pgBin(tb), User: "postgres", Password: randomHex(12), Port: FreePort(tb)}
	dir, err := os.MkdirTemp("", "valet-pg-")
	if err != nil {
		tb.Fatal(err)
	}
	p.dir = dir
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			tb.Fatal("running as root, PostgreSQL must run as the postgres user, which does not exist: install Debian's postgresql package")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			tb.Fatal(err)
		}
		p.runAs = u
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte(p.Password+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	if p.runAs != nil {
		uid, _ := strconv.Atoi(p.runAs.Uid)
		gid, _ := strconv.Atoi(p.runAs.Gid)
		os.Chown(pw, uid, gid)
	}
	p.run(tb, "initdb", "-D", filepath.Join(dir, "data"), "-U", p.User, "--auth=scram-sha-256", "--pwfile="+pw, "-E", "UTF8", "--no-sync")
	p.run(tb, "pg_ctl", "-D", filepath.Join(dir, "data"), "-l", filepath.Join(dir, "log"), "-w", "-t", "60",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", p.Port, dir), "start")
	tb.Cleanup(func() { p.Stop(tb) })
	return p
}

// Stop shuts the cluster down at once.
func (p *Postgres) Stop(tb TB) {
	cmd := p.command("pg_ctl", "-D", filepath.Join(p.dir, "data"), "-m", "immediate", "-w", "stop")
	_ = cmd.Run()
}

func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, name)
	if p.runAs != nil {
		return exec.Command("runuser", append([]string{"-u", p.runAs.Username, "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

func (p *Postgres) run(tb TB, name string, args ...string) {
	tb.Helper()
	out, err := p.command(name, args...).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "log"))
		tb.Fatalf("%s: %v\n%s\n%s", name, err, out, log)
	}
}
