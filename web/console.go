package web

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/api"
	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/clock"
)

// Config are the console's dependencies.
type Config struct {
	Broker *broker.Broker
	// Operators authenticates the operator tokens of the sign-in form.
	Operators *broker.Operators
	// Audit reads the audit log.
	Audit audit.Reader
	// Console is the console's configuration, defaulted and validated.
	Console ConsoleConfig
	// PublicURL is valet's external URL. The console accepts
	// state-changing requests only from its origin, and refuses to start
	// when it is plain http to anything but a loopback host.
	PublicURL string
	Clock     clock.Clock
	Logger    *slog.Logger
	// HTTPClient makes the OpenID Connect discovery, key and token
	// requests (default: a client with a 10s timeout that trusts
	// console.oidc.ca_file when set).
	HTTPClient *http.Client
	// ClientIP finds each request's client address (nil: the connection's
	// peer; no proxy is trusted).
	ClientIP *clientip.Resolver
	// Jobs is the scheduler (nil: the jobs page lists none).
	Jobs *jobs.Scheduler
}

// Console is the operator web console. It serves every path under /ui and
// is mounted there by the API server.
type Console struct {
	b        *broker.Broker
	ops      *broker.Operators
	audit    audit.Reader
	cc       ConsoleConfig
	clock    clock.Clock
	log      *slog.Logger
	origin   string // scheme://host[:port] of the public URL
	https    bool
	sessions *sessionStore
	addr     *clientip.Resolver
	sso      *sso // nil without console.oidc
	pages    *pages
	activity activityCache
	verify   verifyCache
	mux      *http.ServeMux
	jobs     *jobs.Scheduler
}

// New builds the console. It refuses to start when the public URL would
// carry the session cookie in clear text, when no sign-in method is
// enabled, and, with console.oidc set, when the provider cannot be
// discovered or the client secret cannot be read.
func New(ctx context.Context, cfg Config) (*Console, error) {
	if cfg.Broker == nil || cfg.Operators == nil || cfg.Audit == nil {
		return nil, errors.New("console: Broker, Operators and Audit are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cc := cfg.Console
	if cc.SessionIdle <= 0 || cc.SessionMax < cc.SessionIdle || cc.FreshLogin <= 0 {
		return nil, fmt.Errorf("console: console.session_idle (%s) and console.fresh_login (%s) must be positive and console.session_max (%s) not less than session_idle",
			cc.SessionIdle, cc.FreshLogin, cc.SessionMax)
	}
	if !cc.TokenLoginAllowed() && cc.OIDC == nil {
		return nil, errors.New("console: console.token_login is off and console.oidc is not set, so nobody could sign in; enable one, or set console.disabled: true")
	}
	origin, https, err := consoleOrigin(cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	pg, err := parsePages()
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c := &Console{
		b: cfg.Broker, ops: cfg.Operators, audit: cfg.Audit, cc: cc, clock: cfg.Clock, log: cfg.Logger,
		origin: origin, https: https, pages: pg,
		sessions: newSessionStore(cfg.Clock, cc.SessionIdle.D(), cc.SessionMax.D()),
		addr:     cfg.ClientIP,
		jobs:     cfg.Jobs,
	}
	if cc.OIDC != nil {
		if c.sso, err = newSSO(ctx, cc.OIDC, cfg.HTTPClient, cfg.Clock); err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
	}
	c.routes()
	return c, nil
}

// consoleOrigin returns the origin of the public URL and whether it is
// https. Plain http is accepted only to a loopback host, where browsers
// keep Secure cookies and nothing crosses a network.
func consoleOrigin(publicURL string) (string, bool, error) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", false, fmt.Errorf("console: public_url %q must be an absolute http(s) URL", publicURL)
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		return "", false, fmt.Errorf("console: public_url %s is plain http to a host that is not loopback; the console's session cookie "+
			"must not cross a network in clear text. Serve valet over https (the tls section, or a TLS-terminating proxy) and "+
			"set public_url to its https URL, or set console.disabled: true", publicURL)
	}
	// Browsers serialize an origin in lower case, without a default port.
	host := strings.ToLower(u.Host)
	if port := u.Port(); (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		host = strings.ToLower(u.Hostname())
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
	}
	return u.Scheme + "://" + host, u.Scheme == "https", nil
}

func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (c *Console) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /ui", c.handleHome)
	m.HandleFunc("GET /ui/{$}", c.handleHome)
	m.HandleFunc("GET /ui/static/{file}", serveStatic)
	m.HandleFunc("GET /ui/login", c.handleLoginPage)
	m.HandleFunc("POST /ui/login", c.handleLogin)
	m.HandleFunc("POST /ui/logout", c.handleLogout)
	m.HandleFunc("GET /ui/auth/sso", c.handleSSOStart)
	m.HandleFunc("GET /ui/auth/callback", c.handleSSOCallback)

	m.HandleFunc("GET /ui/grants", c.authed(c.handleGrants))
	m.HandleFunc("GET /ui/grants/{id}", c.authed(c.handleGrant))
	m.HandleFunc("POST /ui/grants/{id}/approve", c.authed(c.decision(actApprove)))
	m.HandleFunc("POST /ui/grants/{id}/deny", c.authed(c.decision(actDeny)))
	m.HandleFunc("POST /ui/grants/{id}/review", c.authed(c.decision(actReview)))
	m.HandleFunc("GET /ui/leases", c.authed(c.handleLeases))
	m.HandleFunc("GET /ui/leases/irrevocable", c.authed(c.handleIrrevocable))
	m.HandleFunc("POST /ui/leases/{id}/revoke", c.authed(c.handleRevoke))
	m.HandleFunc("POST /ui/agents/revoke", c.authed(c.handleRevokeAgent))
	m.HandleFunc("GET /ui/agents", c.authed(c.handleAgents))
	m.HandleFunc("GET /ui/agents/{id}", c.authed(c.handleAgent))
	m.HandleFunc("POST /ui/agents/{id}/release", c.authed(c.agentDecide(actRelease)))
	m.HandleFunc("POST /ui/agents/{id}/quarantine", c.authed(c.agentDecide(actQuarantine)))
	m.HandleFunc("GET /ui/audit", c.authed(c.handleAudit))
	m.HandleFunc("GET /ui/jobs", c.authed(c.handleJobs))
	m.HandleFunc("POST /ui/jobs/{name}/run", c.authed(c.handleJobRun))
	m.HandleFunc("/ui/", c.handleNotFound)
	c.mux = m
}

// ServeHTTP serves the console. Every response carries the security
// headers; every state-changing request must come from the console's own
// origin before anything else looks at it.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r = c.withClientIP(r)
	c.setSecurityHeaders(w, r)
	if !safeMethod(r.Method) {
		if reason := c.crossOrigin(r); reason != "" {
			c.log.Warn("console refused a cross-origin request", "method", r.Method, "path", r.URL.Path, "reason", reason,
				"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
			c.renderMessage(w, r, http.StatusForbidden, "Request refused",
				"This request did not come from a page of this console ("+reason+"), so it was refused and nothing was changed. "+
					"If you clicked a button here, open the console at "+c.origin+"/ui/ and try again.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	c.mux.ServeHTTP(w, r)
}

// consoleRunWait is how long the run-now button waits for the run to end
// before showing it as running.
const consoleRunWait = 20 * time.Second

// maxFormBytes bounds a console form.
const maxFormBytes = 16 << 10

func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// setSecurityHeaders sets the headers every console response carries.
// Static files may be cached; everything else holds operator data and is
// never stored.
func (c *Console) setSecurityHeaders(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
	if c.https {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
		h.Set("Cache-Control", "no-store")
	}
}

// crossOrigin says why a state-changing request is not from the console's
// own origin, or "" when it is. Browsers send Sec-Fetch-Site and Origin on
// every POST; under Referrer-Policy no-referrer a same-origin form sends
// "Origin: null", so Sec-Fetch-Site decides then. A request with neither
// header is refused: the console is for browsers.
func (c *Console) crossOrigin(r *http.Request) string {
	site := r.Header.Get("Sec-Fetch-Site")
	origin := r.Header.Get("Origin")
	if site != "" && site != "same-origin" {
		return "Sec-Fetch-Site is " + site
	}
	switch {
	case origin != "" && origin != "null" && origin != c.origin:
		return "its Origin is " + origin + ", not " + c.origin
	case site == "" && (origin == "" || origin == "null"):
		return "it carries neither an Origin nor a Sec-Fetch-Site header"
	}
	return ""
}

func (c *Console) handleHome(w http.ResponseWriter, r *http.Request) {
	if s := c.sessions.peek(r); s != nil {
		http.Redirect(w, r, "/ui/grants", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func (c *Console) handleNotFound(w http.ResponseWriter, r *http.Request) {
	if !safeMethod(r.Method) {
		w.Header().Set("Allow", "GET, HEAD")
		c.renderMessage(w, r, http.StatusMethodNotAllowed, "Method not allowed", r.Method+" is not allowed here.")
		return
	}
	c.renderMessage(w, r, http.StatusNotFound, "Not found", "There is no console page at "+r.URL.Path+".")
}

// requestID is the API's request id for this request (set by its
// middleware), so audit records of console actions can be correlated
// with the server log.
func requestID(w http.ResponseWriter) string { return w.Header().Get("X-Request-Id") }

// serverError logs an unexpected failure and shows a generic page.
func (c *Console) serverError(w http.ResponseWriter, r *http.Request, err error) {
	c.log.Error("console", "path", r.URL.Path, "request_id", requestID(w), "err", err)
	c.renderMessage(w, r, http.StatusInternalServerError, "Something went wrong",
		"The console could not complete this request. The server log has details under request id "+requestID(w)+".")
}

// brokerError shows a broker error with its client-safe message and the
// status the API gives it (api.StatusOf: valet's one error table), with
// Retry-After when rate-limited. Server errors are logged with their
// cause; internal errors show only a generic page.
func (c *Console) brokerError(w http.ResponseWriter, r *http.Request, se *session, err error) {
	status := api.StatusOf(err)
	if status == http.StatusInternalServerError {
		c.serverError(w, r, err)
		return
	}
	if status >= 500 {
		c.log.Error("console", "path", r.URL.Path, "request_id", requestID(w), "err", err)
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", api.RetryAfter(err))
	}
	c.renderMessage(w, r, status, api.Title(broker.ErrorCode(err)), broker.ErrorMessage(err))
}

// flashError queues a broker error for the next page. Server errors are
// logged with their cause (the flash shows only the client-safe message).
func (c *Console) flashError(se *session, what string, err error) {
	if api.StatusOf(err) >= 500 {
		c.log.Error("console", "action", what, "err", err)
	}
	c.sessions.addFlash(se.key, flash{"error", what + ": " + broker.ErrorMessage(err)})
}

// roleNames lists the configured roles.
func (c *Console) roleNames() []string {
	var out []string
	for _, r := range c.b.Roles() {
		out = append(out, r.Name)
	}
	return out
}

// backendNames lists the backends the roles use.
func (c *Console) backendNames() []string {
	var out []string
	for _, r := range c.b.Roles() {
		if !slices.Contains(out, r.Backend) {
			out = append(out, r.Backend)
		}
	}
	slices.Sort(out)
	return out
}

// navCounts counts what needs an operator: pending requests, break-glass
// access awaiting review, irrevocable leases (each up to 1000).
func (c *Console) navCounts(r *http.Request) navCounts {
	var n navCounts
	ctx := r.Context()
	if gs, err := c.b.ListGrants(ctx, grants.Filter{State: grants.StatePending, Limit: 1000}); err == nil {
		for _, g := range gs {
			if g.State == grants.StatePending {
				n.Pending++
			}
		}
	}
	if gs, err := c.b.ListGrants(ctx, grants.Filter{ReviewPending: true, Limit: 1000}); err == nil {
		n.Review = len(gs)
	}
	if ls, err := c.b.ListLeases(ctx, leases.Filter{State: leases.StateIrrevocable, Limit: 1000}); err == nil {
		n.Irrevocable = len(ls)
	}
	return n
}
