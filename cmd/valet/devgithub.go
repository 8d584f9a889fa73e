package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// Dev mode's GitHub demo: with VALET_DEV_GITHUB_URL, VALET_DEV_GITHUB_APP_ID
// and VALET_DEV_GITHUB_KEY_FILE in the environment (`make run-cloud` sets
// them for the GitHub test server), `valet dev` adds a github backend and
// the role gh-demo: an installation token that reads one repository
// (VALET_DEV_GITHUB_INSTALLATION, default 42; VALET_DEV_GITHUB_REPOSITORY,
// default acme/widgets).

const devGitHubBackend = "github"

// devGitHubPolicy permits the dev GitHub roles; it goes to its own file so
// that a dev policy written by an older valet is kept as it is.
const devGitHubPolicy = `// The GitHub demo roles (present when valet dev runs beside a GitHub,
// e.g. the test server of make run-cloud).
@id("demo-github-mint")
permit(principal in Issuer::"dev", action == Action::"mint", resource)
when { resource.backend == "github" && resource.labels has "env" && resource.labels.env == "dev" };
`

// devGitHub is what the banner shows of the GitHub demo.
type devGitHub struct {
	base, owner, repo string
}

// addDevGitHub extends cfg with the GitHub demo. It returns nil when the
// environment names no GitHub.
func addDevGitHub(cfg *Config, dir string) (*devGitHub, error) {
	base, appID, keyFile := os.Getenv("VALET_DEV_GITHUB_URL"), os.Getenv("VALET_DEV_GITHUB_APP_ID"), os.Getenv("VALET_DEV_GITHUB_KEY_FILE")
	if base == "" {
		return nil, nil
	}
	id, err := strconv.ParseInt(appID, 10, 64)
	if err != nil || id <= 0 || keyFile == "" {
		return nil, fmt.Errorf("the GitHub demo needs VALET_DEV_GITHUB_APP_ID (a number) and VALET_DEV_GITHUB_KEY_FILE beside VALET_DEV_GITHUB_URL")
	}
	inst, err := strconv.ParseInt(envOr("VALET_DEV_GITHUB_INSTALLATION", "42"), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("VALET_DEV_GITHUB_INSTALLATION: %w", err)
	}
	owner, repo, ok := strings.Cut(envOr("VALET_DEV_GITHUB_REPOSITORY", "acme/widgets"), "/")
	if !ok {
		return nil, fmt.Errorf("VALET_DEV_GITHUB_REPOSITORY must be owner/name")
	}
	if keyFile, err = filepath.Abs(keyFile); err != nil {
		return nil, err
	}
	if _, err := readOrCreate(filepath.Join(dir, "policies", "dev-github.cedar"), func() (string, error) { return devGitHubPolicy, nil }); err != nil {
		return nil, err
	}
	cfg.Backends = append(cfg.Backends, backends.Config{Name: devGitHubBackend, Type: "github", Options: map[string]any{
		"base_url": base,
		"apps":     []any{map[string]any{"name": "dev", "app_id": id, "private_key_file": keyFile}},
	}})
	notRenewable := false
	cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
		r.Name, r.Description, r.Backend = "gh-demo", "A GitHub installation token that reads "+owner+"/"+repo+".", devGitHubBackend
		r.TTL, r.MaxTTL, r.Renewable = config.Duration(5*time.Minute), config.Duration(time.Hour), &notRenewable
		r.Labels = map[string]string{"env": "dev"}
		r.Params = map[string]any{"installation": inst, "repositories": []any{owner + "/" + repo}, "permissions": map[string]any{"contents": "read"}}
	}))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &devGitHub{base: base, owner: owner, repo: repo}, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// printDevGitHub prints the GitHub demo's commands, each complete for a
// new terminal (with the exports the banner printed first).
func printDevGitHub(w io.Writer, g *devGitHub) {
	if g == nil {
		return
	}
	self := os.Args[0]
	if !strings.Contains(self, "/") {
		self = "valet"
	}
	// git runs its helper from the repository's directory: a relative
	// path would not be found there.
	helper := self
	if abs, err := filepath.Abs(self); err == nil && strings.Contains(self, "/") {
		helper = abs
	}
	api, web := gitHubURLs(g.base)
	fmt.Fprintf(w, `GitHub roles:      gh-demo (an installation token that reads %s/%s) at %s

  %s exec gh-demo -- sh -c 'curl -s -H "Authorization: Bearer $GH_TOKEN" %srepos/%s/%s/contents/README.md'
  git -c credential.helper='!%s creds gh-demo --ttl 1m -o git-credential' clone %s%s/%s.git

`, g.owner, g.repo, g.base, self, api, g.owner, g.repo, helper, web, g.owner, g.repo)
}

// gitHubURLs returns the REST API root and the web (git) root of a
// base_url, as go-github reads it: a host that is not api.* serves the
// API under api/v3/ (GitHub Enterprise Server, the test server).
func gitHubURLs(base string) (api, web string) {
	u, err := url.Parse(base)
	if err != nil {
		return base, base
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	switch {
	case u.Host == "api.github.com":
		return u.String(), "https://github.com/"
	case strings.HasSuffix(u.Path, "/api/v3/"):
		api = u.String()
		u.Path = strings.TrimSuffix(u.Path, "api/v3/")
		return api, u.String()
	}
	web = u.String()
	u.Path += "api/v3/"
	return u.String(), web
}
