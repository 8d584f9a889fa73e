package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	gh "github.com/google/go-github/v93/github"

	"github.com/valet-broker/valet/backends"
)

// installationInfo is what valet reads of an installation.
type installationInfo struct {
	id          int64
	account     string
	permissions map[string]string
	suspended   bool
}

type cachedInstallation struct {
	info *installationInfo
	at   time.Time
}

// installation reads an installation of app a, by id or by the account it
// is installed on (an organization, else a user), reusing an answer
// younger than installation_cache.
func (b *Backend) installation(ctx context.Context, a *app, id int64, owner string) (*installationInfo, error) {
	key := a.name + "/id/" + strconv.FormatInt(id, 10)
	if id == 0 {
		key = a.name + "/owner/" + strings.ToLower(owner)
	}
	ttl := b.opts.InstallationCache.D()
	b.cacheMu.Lock()
	c, ok := b.cache[key]
	b.cacheMu.Unlock()
	if ok && b.clock.Now().Sub(c.at) < ttl {
		return c.info, nil
	}
	var inst *gh.Installation
	var err error
	if id > 0 {
		inst, _, err = a.client.Apps.GetInstallation(ctx, id)
	} else {
		inst, _, err = a.client.Apps.GetOrganizationInstallation(ctx, owner)
		if status(err) == http.StatusNotFound {
			inst, _, err = a.client.Apps.GetUserInstallation(ctx, owner)
		}
	}
	if err != nil {
		what := fmt.Sprintf("read installation %d of app %s", id, a.name)
		if id == 0 {
			what = fmt.Sprintf("find the installation of app %s on account %s", a.name, owner)
		}
		if status(err) == http.StatusNotFound {
			return nil, refuse(kindBadGateway, "GitHub has no %s (404): is the app installed there?", strings.TrimPrefix(strings.TrimPrefix(what, "read "), "find the "))
		}
		return nil, b.githubError(err, what)
	}
	info := &installationInfo{id: inst.GetID(), account: inst.GetAccount().GetLogin(), suspended: inst.SuspendedAt != nil,
		permissions: permissionMap(inst.Permissions)}
	if ttl > 0 {
		b.cacheMu.Lock()
		b.cache[key] = cachedInstallation{info: info, at: b.clock.Now()}
		b.cacheMu.Unlock()
	}
	return info, nil
}

// Credential detail keys (stored in the lease, shown to operators).
const (
	detailApp          = "app"
	detailInstallation = "installation"
	detailRepositories = "repositories"
	detailPermissions  = "permissions"
	detailExpiresAt    = "token_expires_at"
)

// Mint creates an installation access token for req: the role's
// repositories and permissions (narrowed by req.Scope), checked against
// the installation, at GitHub; then seals a copy for revocation. The
// credential is {"token", "expires_at", "permissions", "repositories"}
// (owner/name); its handle is the lease id. Errors: EFORBIDDEN when the
// agent lacks an attribute the role's templates need or its repository is
// not in the installation's account; EINVALID for a refused scope;
// EBADGATEWAY when the installation does not grant the role's permissions
// (naming them) or GitHub refuses the request; ErrUnavailable when GitHub
// cannot be reached.
func (b *Backend) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	cred, maybeCreated, err := b.mint(ctx, req)
	if err != nil && !maybeCreated {
		// Nothing exists at GitHub: the abandoned lease's revocation has
		// nothing to look for.
		b.pendingMu.Lock()
		b.settled[req.CorrelationID] = b.clock.Now()
		b.pendingMu.Unlock()
	}
	return cred, err
}

// mint does Mint's work; maybeCreated says whether, on error, a token may
// exist at GitHub that valet does not hold.
func (b *Backend) mint(ctx context.Context, req backends.MintRequest) (cred *backends.Credential, maybeCreated bool, err error) {
	p, err := b.params(req.Role.Name)
	if err != nil {
		return nil, false, err
	}
	rq, err := narrow(p, req.Attributes, req.Scope)
	if err != nil {
		return nil, false, err
	}
	inst, err := b.installation(ctx, p.app, rq.installation, rq.owner)
	if err != nil {
		return nil, false, err
	}
	if inst.suspended {
		return nil, false, refuse(kindBadGateway, "GitHub App installation %d (%s) of app %s is suspended", inst.id, inst.account, p.App)
	}
	if missing := exceeding(rq.permissions, inst.permissions); len(missing) > 0 {
		return nil, false, refuse(kindBadGateway, "role %s asks for permissions that GitHub App installation %d (%s) of app %s does not grant: %s; grant them in the installation's settings, or lower the role's permissions",
			req.Role.Name, inst.id, inst.account, p.App, strings.Join(missing, "; "))
	}
	names := make([]string, 0, len(rq.repositories))
	for _, r := range rq.repositories {
		owner, name, hasOwner := strings.Cut(r, "/")
		if !hasOwner {
			name = r
		} else if !strings.EqualFold(owner, inst.account) {
			k := kindBadGateway
			if rq.templated {
				k = kindForbidden
			}
			return nil, false, refuse(k, "repository %s is not in account %s, where installation %d of app %s is installed", r, inst.account, inst.id, p.App)
		}
		names = append(names, name)
	}
	perms, err := githubPermissions(rq.permissions)
	if err != nil {
		return nil, false, err
	}
	tok, _, err := p.app.client.Apps.CreateInstallationToken(ctx, inst.id, &gh.InstallationTokenOptions{Repositories: names, Permissions: perms})
	if err != nil {
		if status(err) == http.StatusUnprocessableEntity && rq.templated {
			return nil, false, refuse(kindForbidden, "GitHub refused a token for repositories %s of installation %d (%s): %s", strings.Join(rq.repositories, ", "), inst.id, inst.account, errorMessage(err))
		}
		return nil, !definite(err), b.githubError(err, fmt.Sprintf("create an installation token for installation %d (%s) of app %s", inst.id, inst.account, p.App))
	}
	received := b.clock.Now()
	secret := tok.GetToken()
	if secret == "" {
		return nil, true, fmt.Errorf("github answered the token creation for installation %d without a token", inst.id)
	}
	// The token lives GitHub's hour from its creation, which was before
	// valet received it: that is its latest expiry by valet's clock.
	expires := received.Add(TokenLifetime)
	// Records and details carry whole seconds, rounded up, so that what
	// reads them never takes a live token for dead.
	expiresCeil := expires.Add(time.Second - 1).Truncate(time.Second)
	gotPerms := permissionMap(tok.Permissions)
	var gotRepos []string
	for _, r := range tok.Repositories {
		gotRepos = append(gotRepos, r.GetFullName())
	}
	if wider := widening(rq.permissions, gotPerms, names, tok.Repositories); wider != "" {
		// Never hand out more than the role allows.
		if rerr := b.revokeToken(context.WithoutCancel(ctx), secret); rerr != nil {
			b.keepUnsealed(req.CorrelationID, secret, expires)
			return nil, true, refuse(kindBadGateway, "GitHub issued a token wider than asked (%s); valet will revoke it", wider)
		}
		return nil, false, refuse(kindBadGateway, "GitHub issued a token wider than asked (%s); it was revoked", wider)
	}
	// Invariant 6's exception: the sealed copy is on disk before the token
	// is handed out, so that it can be revoked whatever happens next.
	if err := b.tokens.put(req.CorrelationID, p.App, inst.id, secret, expiresCeil); err != nil {
		if rerr := b.revokeToken(context.WithoutCancel(ctx), secret); rerr != nil {
			b.keepUnsealed(req.CorrelationID, secret, expires)
			return nil, true, fmt.Errorf("seal the token for revocation: %w (revoking it at once failed too: %v; the revocation queue retries)", err, rerr)
		}
		return nil, false, fmt.Errorf("seal the token for revocation: %w (the token was revoked)", err)
	}
	gotPermsAny := make(map[string]any, len(gotPerms))
	for k, v := range gotPerms {
		gotPermsAny[k] = v
	}
	reposAny := make([]any, len(gotRepos))
	for i, r := range gotRepos {
		reposAny[i] = r
	}
	ghExpires := expires
	if t := tok.GetExpiresAt(); !t.IsZero() {
		ghExpires = t.Time
	}
	return &backends.Credential{
		Handle:    req.CorrelationID,
		ExpiresAt: expires,
		Data: map[string]any{
			"token":        secret,
			"expires_at":   ghExpires.UTC().Format(time.RFC3339),
			"permissions":  gotPermsAny,
			"repositories": reposAny,
		},
		Details: map[string]string{
			detailApp: p.App, detailInstallation: strconv.FormatInt(inst.id, 10),
			detailRepositories: strings.Join(gotRepos, ","), detailPermissions: permissionList(gotPerms),
			detailExpiresAt: expiresCeil.UTC().Format(time.RFC3339),
		},
	}, false, nil
}

// widening says how a token GitHub issued is wider than what was asked
// (permissions above the asked level, repositories not asked for), or "".
func widening(asked, got map[string]string, names []string, repos []*gh.Repository) string {
	for _, name := range sortedKeys(got) {
		if name == "metadata" && got[name] == "read" {
			continue // GitHub adds metadata: read to every token
		}
		if levels[got[name]] > levels[asked[name]] {
			return fmt.Sprintf("permission %s: %s", name, got[name])
		}
	}
	if len(repos) == 0 {
		return "all of the installation's repositories"
	}
	for _, r := range repos {
		found := false
		for _, n := range names {
			found = found || strings.EqualFold(n, r.GetName())
		}
		if !found {
			return "repository " + r.GetFullName()
		}
	}
	return ""
}

func (b *Backend) keepUnsealed(leaseID, token string, expires time.Time) {
	b.pendingMu.Lock()
	b.unsealed[leaseID] = unsealedToken{token: token, expires: expires}
	b.pendingMu.Unlock()
}

// githubPermissions turns checked permissions into go-github's type.
func githubPermissions(m map[string]string) (*gh.InstallationPermissions, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var p gh.InstallationPermissions
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// permissionMap turns go-github's permissions into name -> level.
func permissionMap(p *gh.InstallationPermissions) map[string]string {
	out := map[string]string{}
	if p == nil {
		return out
	}
	b, err := json.Marshal(p)
	if err == nil {
		json.Unmarshal(b, &out)
	}
	return out
}

// status is the HTTP status of a GitHub error answer, or 0.
func status(err error) int {
	var ge *gh.ErrorResponse
	if errors.As(err, &ge) && ge.Response != nil {
		return ge.Response.StatusCode
	}
	return 0
}

func errorMessage(err error) string {
	var ge *gh.ErrorResponse
	if errors.As(err, &ge) {
		return ge.Message
	}
	return err.Error()
}

// definite reports whether a failed request certainly created nothing at
// GitHub: GitHub refused it (4xx), or it never left (the connection was
// refused). After a timeout, a reset or a 5xx it cannot be known.
func definite(err error) bool {
	if s := status(err); s >= 400 && s < 500 {
		return true
	}
	var rl *gh.RateLimitError
	var ab *gh.AbuseRateLimitError
	if errors.As(err, &rl) || errors.As(err, &ab) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Error kinds the backend reports to clients (see refuse).
type kind int

const (
	kindInvalid    kind = iota // the request cannot be served as asked (400)
	kindForbidden              // not for this agent (403)
	kindBadGateway             // GitHub or its installation does not allow it (502)
)

// refuse returns an error the client is shown, of kind k. It is the
// backend's one use of the broker's error type.
func refuse(k kind, format string, args ...any) error {
	e := map[kind]error{kindInvalid: backends.ErrInvalid, kindForbidden: backends.ErrForbidden, kindBadGateway: backends.ErrBadResponse}[k]
	return backends.Errorf(e, format, args...)
}

// githubError classifies a failed call to GitHub (doing what): GitHub
// unreachable, overloaded or rate limiting is backends.ErrUnavailable (503
// to the client, details in the log); a refusal is shown to the client
// with GitHub's message (502), never with a token.
func (b *Backend) githubError(err error, what string) error {
	var rl *gh.RateLimitError
	var ab *gh.AbuseRateLimitError
	var ge *gh.ErrorResponse
	switch {
	case errors.As(err, &rl), errors.As(err, &ab):
		return fmt.Errorf("github %s: %w (rate limited: %v)", what, backends.ErrUnavailable, err)
	case errors.As(err, &ge):
		s := status(err)
		switch {
		case s == http.StatusTooManyRequests || s >= 500:
			return fmt.Errorf("github %s: %w (%d %s)", what, backends.ErrUnavailable, s, ge.Message)
		case s == http.StatusUnauthorized:
			return refuse(kindBadGateway, "GitHub refused valet's app JWT when asked to %s (401 %s); check the app's app_id, client_id and private key", what, ge.Message)
		default:
			return refuse(kindBadGateway, "GitHub refused to %s: %d %s", what, s, ge.Message)
		}
	}
	// Anything else is a transport failure or a timeout.
	return fmt.Errorf("github %s: %w: %v", what, backends.ErrUnavailable, err)
}
