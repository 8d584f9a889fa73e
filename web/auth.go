package web

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/leases/audit"
)

// maxTokenBytes bounds what the sign-in form accepts as a token before
// anything hashes or parses it.
const maxTokenBytes = 8 << 10

// loginData is the sign-in page.
type loginData struct {
	TokenLogin bool
	SSO        bool
	Next       string
	Notice     string // why the operator is asked to sign in
	Error      string
	LoginCSRF  string
	SignedInAs string // set when re-authenticating
	// Fresh asks the provider to authenticate again (a fresh sign-in for
	// a decision).
	Fresh bool
}

// loginNotices are the reasons a page sends an operator to sign in,
// keyed by the reason parameter (never shown as given).
var loginNotices = map[string]string{
	"idle":       "Your session ended after a period of inactivity. Sign in again.",
	"expired":    "Your session reached its maximum length. Sign in again.",
	"signed-out": "You have signed out.",
	"required":   "Sign in to use the console.",
}

func (c *Console) handleLoginPage(w http.ResponseWriter, r *http.Request) {
	c.renderLogin(w, r, http.StatusOK, r.URL.Query().Get("reason"), localPath(r.URL.Query().Get("next")), "")
}

// renderLogin shows the sign-in page and sets its double-submit token.
func (c *Console) renderLogin(w http.ResponseWriter, r *http.Request, status int, reason, next, errMsg string) {
	d := loginData{
		TokenLogin: c.cc.TokenLogin == nil || *c.cc.TokenLogin, SSO: c.sso != nil, Next: next, Error: errMsg,
		Notice: loginNotices[reason], Fresh: reason == "fresh",
	}
	if d.Fresh {
		d.Notice = "Approving, denying or reviewing a grant, or running a job, needs a sign-in within the last " + humanDuration(c.cc.FreshLogin.D()) +
			". Sign in again to confirm it is you; then repeat the action."
	}
	if se := c.sessions.peek(r); se != nil {
		d.SignedInAs = se.op.Name
	}
	// Reuse the browser's token, so sign-in forms in several tabs all work.
	if ck, err := r.Cookie(loginCookie); err == nil {
		if _, ok := cookieKey(ck.Value); ok {
			d.LoginCSRF = ck.Value
		}
	}
	if d.LoginCSRF == "" {
		d.LoginCSRF = randomToken()
	}
	setCookie(w, loginCookie, d.LoginCSRF, http.SameSiteStrictMode, 3600)
	c.render(w, r, status, "login.html", &page{Title: "Sign in", Data: d})
}

// handleLogin signs an operator in with an operator token.
func (c *Console) handleLogin(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		c.renderMessage(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	next := localPath(r.PostForm.Get("next"))
	ck, err := r.Cookie(loginCookie)
	if err != nil || !equalTokens(ck.Value, r.PostForm.Get("csrf")) {
		c.renderMessage(w, r, http.StatusForbidden, "Request refused",
			"The sign-in form was not submitted from this console, or it is too old. Reload the sign-in page and try again (cookies must be enabled).")
		return
	}
	if c.cc.TokenLogin != nil && !*c.cc.TokenLogin {
		c.renderLogin(w, r, http.StatusForbidden, "", next, "Sign-in with an operator token is turned off on this server; use single sign-on.")
		return
	}
	// The token is checked before anything else: a valid one signs in even
	// while the address is throttled for the failures of others behind it.
	token := strings.TrimSpace(r.PostForm.Get("token"))
	var op *broker.Operator
	// why is the refusal of an operator ID token that verified as one but
	// names no operator, or could not be checked: its message is the
	// API's (an unverified email, a group the account is not in).
	var why error
	if token != "" && len(token) <= maxTokenBytes {
		o, isOp, err := c.ops.Authenticate(r.Context(), token)
		switch {
		case isOp && err == nil:
			op = o
		case isOp:
			why = err
		}
	}
	if code := broker.ErrorCode(why); code == broker.EFORBIDDEN || code == broker.EUNAVAILABLE {
		// Not a failed credential, as at the API: the account is not an
		// operator, or the issuer's keys could not be fetched.
		status := http.StatusForbidden
		if code == broker.EUNAVAILABLE {
			status = http.StatusServiceUnavailable
		}
		c.log.Warn("console sign-in refused", "method", "token", "remote", clientIP(r), "err", broker.ErrorMessage(why))
		c.renderLogin(w, r, status, "", next, broker.ErrorMessage(why)+".")
		return
	}
	if op == nil {
		ip := clientIP(r)
		c.log.Warn("console sign-in refused", "method", "token", "remote", ip)
		reason, msg := "console sign-in with a token that is not a valid operator token", "That is not a valid operator token."
		if why != nil {
			reason, msg = "console sign-in: "+broker.ErrorMessage(why), "That operator ID token is refused: "+broker.ErrorMessage(why)+"."
		}
		err := c.b.RefuseCredential(r.Context(), broker.Refusal{Credential: broker.CredentialConsoleToken, SourceIP: ip,
			Kind: audit.KindOperatorAuth, RequestID: w.Header().Get("X-Request-Id"), // set by the API server
			Reason: reason})
		var be *broker.Error
		if errors.As(err, &be) && be.Code == broker.ERATELIMIT {
			wait := be.RetryAfterSeconds()
			w.Header().Set("Retry-After", strconv.FormatInt(wait, 10))
			c.renderLogin(w, r, http.StatusTooManyRequests, "", next, "Too many failed sign-ins from your address, and this token is not valid either. "+
				"Check the token and try again in "+humanDuration(time.Duration(wait)*time.Second)+".")
			return
		}
		c.renderLogin(w, r, http.StatusUnauthorized, "", next, msg)
		return
	}
	// Typing a static token is a sign-in now. An operator's ID token
	// pasted here proves only what it says: its auth_time.
	authAt := c.clock.Now()
	if strings.HasPrefix(op.Method, "sso:") {
		authAt = signInTime(op.AuthTime, authAt)
	}
	c.startSession(w, r, broker.Operator{Name: op.Name, Groups: op.Groups, Method: "console"}, authAt)
	clearCookie(w, loginCookie, http.SameSiteStrictMode)
	if next == "" {
		next = "/ui/grants"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// startSession replaces the request's session, if any, with a new one:
// a sign-in never reuses a session id.
func (c *Console) startSession(w http.ResponseWriter, r *http.Request, op broker.Operator, authAt time.Time) {
	c.sessions.end(r)
	id, _ := c.sessions.create(op, authAt)
	setCookie(w, sessionCookie, id, http.SameSiteStrictMode, 0)
	c.log.Info("console sign-in", "operator", op.Name, "method", op.Method, "remote", clientIP(r))
}

// handleLogout ends the session on the server; its cookie no longer
// signs anyone in, even if a copy of it survives.
func (c *Console) handleLogout(w http.ResponseWriter, r *http.Request) {
	se, _ := c.sessions.use(r)
	if se != nil {
		if err := r.ParseForm(); err != nil || !se.validCSRF(r.PostForm.Get("csrf")) {
			c.csrfRefused(w, r)
			return
		}
		c.sessions.endKey(se.key)
		c.log.Info("console sign-out", "operator", se.op.Name)
	}
	clearCookie(w, sessionCookie, http.SameSiteStrictMode)
	http.Redirect(w, r, "/ui/login?reason=signed-out", http.StatusSeeOther)
}

// authedHandler handles a request of a signed-in operator.
type authedHandler func(w http.ResponseWriter, r *http.Request, se *session)

// autoRefresh is the query parameter (refresh=auto) of a page's automatic
// refresh (console.js), which must not keep a session alive.
const autoRefresh = "refresh"

// isAutoRefresh reports whether r is a page's automatic refresh rather
// than an operator action.
func isAutoRefresh(r *http.Request) bool {
	return safeMethod(r.Method) && r.URL.Query().Get(autoRefresh) == "auto"
}

// withoutAutoRefresh returns the request's path and query without the
// automatic refresh's marker.
func withoutAutoRefresh(r *http.Request) string {
	u := *r.URL
	q := u.Query()
	if !q.Has(autoRefresh) {
		return u.RequestURI()
	}
	q.Del(autoRefresh)
	u.RawQuery = q.Encode()
	return u.RequestURI()
}

// authed admits signed-in operators. Pages send everyone else to the
// sign-in page, saying why their session ended. A state-changing request
// must also carry the session's CSRF token. Only operator actions extend
// a session: a page's automatic refresh is checked against the timeouts
// but does not count as activity.
func (c *Console) authed(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		lookup := c.sessions.use
		if isAutoRefresh(r) {
			lookup = c.sessions.observe
		}
		se, why := lookup(r)
		if se == nil {
			if why != endNone {
				clearCookie(w, sessionCookie, http.SameSiteStrictMode)
			}
			reason := string(why)
			if reason == "" {
				reason = "required"
			}
			next := withoutAutoRefresh(r)
			if !safeMethod(r.Method) {
				next = r.PostFormValue("return") // the page the form was on
			}
			q := url.Values{"reason": {reason}}
			if next = localPath(next); next != "" {
				q.Set("next", next)
			}
			http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
			return
		}
		if !safeMethod(r.Method) {
			if err := r.ParseForm(); err != nil {
				c.renderMessage(w, r, http.StatusBadRequest, "Bad request", "The form could not be read (it may be too large).")
				return
			}
			if !se.validCSRF(r.PostForm.Get("csrf")) {
				c.csrfRefused(w, r)
				return
			}
		}
		h(w, r, se)
	}
}

func (c *Console) csrfRefused(w http.ResponseWriter, r *http.Request) {
	c.log.Warn("console refused a request without a valid CSRF token", "method", r.Method, "path", r.URL.Path)
	c.renderMessage(w, r, http.StatusForbidden, "Request refused",
		"The form's security token is missing or does not match your session, so nothing was changed. "+
			"Go back, reload the page and try again.")
}

// equalTokens compares two tokens in constant time; empty never matches.
func equalTokens(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// localPath returns p if it is a path inside the console (so redirecting
// to it cannot leave this origin), else "".
func localPath(p string) string {
	if !strings.HasPrefix(p, "/ui/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t") || len(p) > 2048 {
		return ""
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return ""
	}
	return p
}

// clientIPKey holds a request's client address in its context.
type clientIPKey struct{}

// withClientIP resolves the request's client address once, on arrival.
func (c *Console) withClientIP(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), clientIPKey{}, c.addr.ClientIP(r)))
}

// clientIP is the request's client address: the connection's peer, or the
// address a trusted proxy forwarded (see clientip.Resolver).
func clientIP(r *http.Request) string {
	if ip, ok := r.Context().Value(clientIPKey{}).(string); ok {
		return ip
	}
	return (*clientip.Resolver)(nil).ClientIP(r)
}
