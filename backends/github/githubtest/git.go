package githubtest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// initRepositories creates a bare repository with one commit (README.md)
// for every repository of every installation, under gitRoot/owner/name.git.
func (s *Server) initRepositories() error {
	if _, err := exec.LookPath("git"); err != nil {
		return fmt.Errorf("githubtest: serving repositories needs git (Debian package git): %w", err)
	}
	for _, full := range s.Repositories() {
		owner, name, _ := strings.Cut(full, "/")
		dir := filepath.Join(s.gitRoot, owner, name+".git")
		if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
			continue
		}
		git := func(stdin string, args ...string) (string, error) {
			cmd := exec.Command("git", append([]string{"--git-dir", dir}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=githubtest", "GIT_AUTHOR_EMAIL=githubtest@example.com",
				"GIT_COMMITTER_NAME=githubtest", "GIT_COMMITTER_EMAIL=githubtest@example.com")
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, errb.String())
			}
			return strings.TrimSpace(out.String()), nil
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := exec.Command("git", "init", "--quiet", "--bare", dir).Run(); err != nil {
			return fmt.Errorf("git init %s: %w", dir, err)
		}
		blob, err := git(readme(owner, name), "hash-object", "-w", "--stdin")
		if err != nil {
			return err
		}
		tree, err := git("100644 blob "+blob+"\tREADME.md\n", "mktree")
		if err != nil {
			return err
		}
		commit, err := git("", "commit-tree", tree, "-m", "Initial commit")
		if err != nil {
			return err
		}
		for _, args := range [][]string{
			{"update-ref", "refs/heads/main", commit},
			{"symbolic-ref", "HEAD", "refs/heads/main"},
			{"config", "http.receivepack", "true"},
		} {
			if _, err := git("", args...); err != nil {
				return err
			}
		}
	}
	return nil
}

// serveGit serves git's smart HTTP protocol for /{owner}/{repo}.git/...
// through `git http-backend`, for requests whose Basic password is a live
// token that covers the repository: contents read to fetch, write to push.
// Without credentials it asks for them (401 with WWW-Authenticate), as
// GitHub does, so git runs its credential helper.
func (s *Server) serveGit(w http.ResponseWriter, r *http.Request, path string) {
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 3)
	if len(parts) < 2 || !strings.HasSuffix(parts[1], ".git") {
		s.fail404(w)
		return
	}
	owner, repo := parts[0], strings.TrimSuffix(parts[1], ".git")
	t := s.liveToken(basicToken(r))
	if t == nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="GitHub"`)
		http.Error(w, "Invalid username or token.", http.StatusUnauthorized)
		return
	}
	push := r.URL.Query().Get("service") == "git-receive-pack" || strings.HasSuffix(path, "/git-receive-pack")
	need := 1
	if push {
		need = 2
	}
	if !s.reachable(t, owner, repo) || levels[t.permissions["contents"]] < need {
		http.Error(w, "Repository not found.", http.StatusNotFound)
		return
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		http.Error(w, "git is not installed", http.StatusInternalServerError)
		return
	}
	repoPath := "/" + s.account(t) + "/" + canonical(t.repositories, repo) + ".git"
	if len(parts) == 3 {
		repoPath += "/" + parts[2]
	}
	h := &cgi.Handler{
		Path: gitPath, Args: []string{"http-backend"},
		Env: []string{"GIT_PROJECT_ROOT=" + s.gitRoot, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=x-access-token"},
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = repoPath
	r2.Header.Del("Authorization")
	h.ServeHTTP(w, r2)
}
