package github

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	gh "github.com/google/go-github/v93/github"

	"github.com/valet-broker/valet/backends"
)

// RoleParams are a role's github-specific parameters.
type RoleParams struct {
	// App names one of the backend's apps; it may be left out when the
	// backend has exactly one.
	App string `yaml:"app"`
	// Installation is the installation's numeric id. Give it or Owner.
	Installation int64 `yaml:"installation"`
	// Owner is the account (organization or user) the app is installed
	// on; valet looks its installation up. It may be a template, e.g.
	// "{{repository_owner}}".
	Owner string `yaml:"owner"`
	// Repositories the token may access (1 to 500): names of the
	// installation's repositories, or owner/name where owner must be the
	// installation's account. "{{attribute}}" is replaced by the agent's
	// attribute, e.g. "{{repository}}" (a GitHub Actions attestation's
	// owner/name: the workflow's own repository).
	Repositories []string `yaml:"repositories"`
	// Permissions of the token, e.g. {contents: read, pull_requests:
	// write}: GitHub's permission names and levels read, write or admin.
	// None may exceed what the installation was granted.
	Permissions map[string]string `yaml:"permissions"`
}

// roleParams are a role's checked parameters.
type roleParams struct {
	RoleParams
	app *app
}

var (
	// loginPattern is a GitHub account login.
	loginPattern = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$`)
	// repoPattern is a repository name, optionally owner/ first.
	repoPattern = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/)?[A-Za-z0-9._-]{1,100}$`)
	placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}`)
)

// levels orders GitHub's permission levels.
var levels = map[string]int{"read": 1, "write": 2, "admin": 3}

// maxRepositories is GitHub's limit on the repositories of one token.
const maxRepositories = 500

// CheckRole validates a role's params at start-up: the app, the
// installation (id or owner), repositories and permissions, and that its
// leases cannot outlive GitHub's one-hour tokens. When GitHub answers, it
// also checks that the installation grants the role's permissions; when
// GitHub cannot be reached it warns and starts anyway (mints check again).
func (b *Backend) CheckRole(r backends.RoleSpec) error {
	var p RoleParams
	if err := decodeOptions(r.Params, &p); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	if r.TTL > TokenLifetime || r.MaxTTL > TokenLifetime {
		return fmt.Errorf("ttl %s and max_ttl %s must be at most 1h: GitHub installation tokens live one hour, and a lease must not outlive its token's revocability", r.TTL, r.MaxTTL)
	}
	rp := &roleParams{RoleParams: p}
	switch {
	case p.App == "" && len(b.order) == 1:
		rp.App = b.order[0]
	case p.App == "":
		return fmt.Errorf("params.app is required: backend %s has apps %s", b.name, strings.Join(b.order, ", "))
	case b.apps[p.App] == nil:
		return fmt.Errorf("params.app %q is not an app of backend %s (%s)", p.App, b.name, strings.Join(b.order, ", "))
	}
	rp.app = b.apps[rp.App]
	switch {
	case p.Installation < 0:
		return fmt.Errorf("params.installation must be a positive installation id; it is %d", p.Installation)
	case (p.Installation == 0) == (p.Owner == ""):
		return errors.New("params: give exactly one of installation (the installation id) and owner (the account the app is installed on)")
	case p.Owner != "":
		if err := checkTemplate(p.Owner, loginPattern); err != nil {
			return fmt.Errorf("params.owner: %w", err)
		}
	}
	if len(p.Repositories) == 0 {
		return errors.New("params.repositories must name at least one repository (a token for all of an installation's repositories is not offered)")
	}
	if len(p.Repositories) > maxRepositories {
		return fmt.Errorf("params.repositories names %d repositories; GitHub allows at most %d per token", len(p.Repositories), maxRepositories)
	}
	for i, repo := range p.Repositories {
		if err := checkTemplate(repo, repoPattern); err != nil {
			return fmt.Errorf("params.repositories[%d]: %w", i, err)
		}
	}
	if len(p.Permissions) == 0 {
		return errors.New("params.permissions must name at least one permission, e.g. {contents: read} (a token with all of the app's permissions is not offered)")
	}
	for _, name := range sortedKeys(p.Permissions) {
		if err := checkPermission(name, p.Permissions[name]); err != nil {
			return fmt.Errorf("params.permissions.%s: %w", name, err)
		}
	}
	if p.Installation > 0 {
		b.checkInstallation(rp, r.Name)
	}
	b.roles.Store(r.Name, rp)
	return nil
}

// checkInstallation reads a role's installation at start-up and logs what
// is wrong with it. A mismatch is not fatal here, since an installation's
// owner can grant more later, but every mint checks it again and refuses.
func (b *Backend) checkInstallation(rp *roleParams, role string) {
	ctx, cancel := b.newContext()
	defer cancel()
	inst, err := b.installation(ctx, rp.app, rp.Installation, "")
	if err != nil {
		b.log.Warn("cannot check the GitHub App installation of a role now; mints will", "role", role, "app", rp.App, "installation", rp.Installation, "err", err)
		return
	}
	if missing := exceeding(rp.Permissions, inst.permissions); len(missing) > 0 {
		b.log.Warn("the role asks for permissions the installation does not grant; its mints are refused until the installation grants them",
			"role", role, "installation", rp.Installation, "missing", strings.Join(missing, ", "))
	}
}

// checkTemplate checks a value that may hold {{attribute}} placeholders:
// with each replaced by a sample name, it must match pattern.
func checkTemplate(v string, pattern *regexp.Regexp) error {
	sample := placeholder.ReplaceAllString(v, "x")
	if strings.Contains(sample, "{{") || strings.Contains(sample, "}}") {
		return fmt.Errorf("%q has a malformed placeholder; write {{attribute}}", v)
	}
	if !pattern.MatchString(sample) {
		return fmt.Errorf("%q is not a valid name", v)
	}
	return nil
}

// checkPermission checks one permission: a name GitHub knows (as
// go-github's InstallationPermissions lists them) and a level.
func checkPermission(name, level string) error {
	if levels[level] == 0 {
		return fmt.Errorf("level %q must be read, write or admin", level)
	}
	b, _ := json.Marshal(map[string]string{name: level})
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p gh.InstallationPermissions
	if err := d.Decode(&p); err != nil {
		return fmt.Errorf("%q is not a GitHub App permission (for example contents, issues, pull_requests, metadata, actions, checks, workflows)", name)
	}
	return nil
}

// expand fills the {{attribute}} placeholders of v from attrs. A missing
// attribute refuses the mint for this agent.
func expand(v string, attrs map[string]string, what string) (string, error) {
	var missing string
	out := placeholder.ReplaceAllStringFunc(v, func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		a, ok := attrs[name]
		if !ok && missing == "" {
			missing = name
		}
		return a
	})
	if missing != "" {
		return "", refuse(kindForbidden, "the role's %s %q needs the agent attribute %q, which this agent's attestation does not carry", what, v, missing)
	}
	return out, nil
}

// request is what a mint asks GitHub for.
type request struct {
	installation int64
	owner        string // the account to look the installation up by, if no id
	// repositories as configured after expansion: name or owner/name.
	repositories []string
	permissions  map[string]string
	templated    bool // some repository came from the agent's attributes
}

// narrow computes what a mint of role p asks for: the repositories
// (templates expanded with attrs) and permissions, narrowed by the
// client's scope ({"repositories": [...], "permissions": {...}}, each a
// subset of the role's).
func narrow(p *roleParams, attrs map[string]string, scope map[string]any) (*request, error) {
	req := &request{installation: p.Installation, permissions: p.Permissions}
	if p.Owner != "" {
		owner, err := expand(p.Owner, attrs, "owner")
		if err != nil {
			return nil, err
		}
		if !loginPattern.MatchString(owner) {
			return nil, refuse(kindForbidden, "the role's owner %q expands to %q for this agent, which is not a GitHub account name", p.Owner, owner)
		}
		req.owner = owner
	}
	for _, tmpl := range p.Repositories {
		r, err := expand(tmpl, attrs, "repository")
		if err != nil {
			return nil, err
		}
		if !repoPattern.MatchString(r) {
			return nil, refuse(kindForbidden, "the role's repository %q expands to %q for this agent, which is not a repository name", tmpl, r)
		}
		req.templated = req.templated || placeholder.MatchString(tmpl)
		if !slices.ContainsFunc(req.repositories, func(x string) bool { return strings.EqualFold(x, r) }) {
			req.repositories = append(req.repositories, r)
		}
	}
	for _, k := range sortedKeys(scope) {
		switch k {
		case "repositories":
			list, ok := backends.ScopeStrings(scope[k])
			if !ok || len(list) == 0 {
				return nil, refuse(kindInvalid, "scope.repositories must be a non-empty list of repository names")
			}
			for _, r := range list {
				if !slices.ContainsFunc(req.repositories, func(x string) bool { return strings.EqualFold(x, r) }) {
					return nil, refuse(kindInvalid, "scope.repositories: %q is not one of the role's repositories (%s)", r, strings.Join(req.repositories, ", "))
				}
			}
			req.repositories = list
		case "permissions":
			m, ok := scope[k].(map[string]any)
			if !ok || len(m) == 0 {
				return nil, refuse(kindInvalid, "scope.permissions must be a non-empty object of permission: level")
			}
			perms := map[string]string{}
			for name, v := range m {
				level, _ := v.(string)
				have, granted := p.Permissions[name]
				switch {
				case !granted:
					return nil, refuse(kindInvalid, "scope.permissions.%s is not granted by the role (it grants %s)", name, permissionList(p.Permissions))
				case levels[level] == 0:
					return nil, refuse(kindInvalid, "scope.permissions.%s must be read, write or admin", name)
				case levels[level] > levels[have]:
					return nil, refuse(kindInvalid, "scope.permissions.%s: %s is more than the role's %s", name, level, have)
				}
				perms[name] = level
			}
			req.permissions = perms
		default:
			return nil, refuse(kindInvalid, "scope.%s is not understood by the github backend (use repositories or permissions)", k)
		}
	}
	return req, nil
}

// CheckScope reports, with the error Mint would return, whether scope is
// an acceptable narrowing of role. A scope.repositories entry must be one
// of the role's repositories as configured; with templated repositories
// the entry is checked again at mint, against their expansion.
func (b *Backend) CheckScope(role backends.RoleSpec, scope map[string]any) error {
	p, err := b.params(role.Name)
	if err != nil {
		return err
	}
	q := *p
	if slices.ContainsFunc(p.Repositories, placeholder.MatchString) {
		// Without the agent's attributes, a templated entry accepts any
		// well-formed name here.
		if list, ok := backends.ScopeStrings(scope["repositories"]); ok {
			q.Repositories = append(slices.Clone(p.Repositories), list...)
		}
	}
	q.Owner = ""
	_, err = narrow(&q, templateSamples(p.RoleParams), scope)
	return err
}

// templateSamples gives every attribute a role's templates use a sample
// value, so their checks need no agent.
func templateSamples(p RoleParams) map[string]string {
	out := map[string]string{}
	for _, v := range append([]string{p.Owner}, p.Repositories...) {
		for _, m := range placeholder.FindAllStringSubmatch(v, -1) {
			out[m[1]] = "x"
		}
	}
	return out
}

func (b *Backend) params(role string) (*roleParams, error) {
	p, ok := b.roles.Load(role)
	if !ok {
		return nil, fmt.Errorf("role %s was not checked by backend %s", role, b.name)
	}
	return p.(*roleParams), nil
}

// exceeding lists the permissions of want that have does not grant at
// their level, as "name: level (the installation has: X)".
func exceeding(want, have map[string]string) []string {
	var out []string
	for _, name := range sortedKeys(want) {
		if levels[have[name]] < levels[want[name]] {
			h := have[name]
			if h == "" {
				h = "none"
			}
			out = append(out, fmt.Sprintf("%s: %s (the installation has %s)", name, want[name], h))
		}
	}
	return out
}

func permissionList(m map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+": "+m[k])
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
