package web

import (
	"context"
	"html"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/attest"
	"github.com/valet-broker/valet/broker/grants"
	"github.com/valet-broker/valet/broker/identity"
	"github.com/valet-broker/valet/leases"
	"github.com/valet-broker/valet/leases/audit"
	"github.com/valet-broker/valet/leases/config"
)

func TestConsoleTokenLogin(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()

	// Not signed in: every page sends the operator to sign in.
	if r := b.get("/ui/"); r.Status != http.StatusSeeOther || r.Location() != "/ui/login" {
		t.Fatalf("/ui/ signed out: %d %q", r.Status, r.Location())
	}
	if r := b.get("/ui/leases"); r.Status != http.StatusSeeOther || !strings.HasPrefix(r.Location(), "/ui/login?") {
		t.Fatalf("/ui/leases signed out: %d %q", r.Status, r.Location())
	}

	// A wrong token is refused, is not echoed, and starts no session.
	wrong := "valet_op_not_a_real_token_42"
	r := b.post("/ui/login", url.Values{"token": {wrong}, "csrf": {b.csrf("/ui/login")}})
	if r.Status != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", r.Status)
	}
	mustContain(t, r.Body, "That is not a valid operator token.")
	if strings.Contains(r.Body, wrong) {
		t.Fatal("the sign-in page echoes the token it refused")
	}
	if b.cookie(sessionCookie) != nil {
		t.Fatal("a wrong token got a session cookie")
	}
	if r := b.get("/ui/grants"); r.Status != http.StatusSeeOther {
		t.Fatalf("after a wrong token /ui/grants answers %d", r.Status)
	}

	// The sign-in form needs its double-submit token.
	if r := b.post("/ui/login", url.Values{"token": {testTokens["alice"]}}); r.Status != http.StatusForbidden || b.cookie(sessionCookie) != nil {
		t.Fatalf("sign-in without the form token: %d", r.Status)
	}
	if r := b.post("/ui/login", url.Values{"token": {testTokens["alice"]}, "csrf": {"x" + b.csrf("/ui/login")}}); r.Status != http.StatusForbidden {
		t.Fatalf("sign-in with a wrong form token: %d", r.Status)
	}

	// The right token signs in, with a session cookie that is Secure,
	// HttpOnly, SameSite=Strict, host-only and Path=/.
	r = b.login("alice")
	var ck *http.Cookie
	for _, c := range r.Cookies {
		if c.Name == sessionCookie {
			ck = c
		}
	}
	if ck == nil {
		t.Fatalf("no %s cookie; Set-Cookie: %v", sessionCookie, r.Header["Set-Cookie"])
	}
	raw := ""
	for _, h := range r.Header["Set-Cookie"] {
		if strings.HasPrefix(h, sessionCookie+"=") {
			raw = h
		}
	}
	if !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Domain != "" ||
		strings.Contains(strings.ToLower(raw), "domain=") {
		t.Fatalf("session cookie attributes: %q", raw)
	}
	if len(ck.Value) != 43 {
		t.Fatalf("session id %q is not 256 bits in base64url", ck.Value)
	}
	// Only the hash of the id is kept.
	f.console.sessions.mu.Lock()
	for k := range f.console.sessions.m {
		if strings.Contains(string(k[:]), ck.Value) {
			t.Error("the session store holds the raw id")
		}
	}
	f.console.sessions.mu.Unlock()

	r = b.get("/ui/grants")
	if r.Status != 200 {
		t.Fatalf("grants after sign-in: %d", r.Status)
	}
	mustContain(t, r.Body, "Signed in as <strong>alice</strong>", "(console; approvers)")
	if r := b.get("/ui/"); r.Location() != "/ui/grants" {
		t.Fatalf("/ui/ signed in goes to %q", r.Location())
	}
}

// TestConsoleLoginThrottlesGuessing: after 10 failed sign-ins from an
// address its further failures are refused with 429, while a valid token
// from the same address (an operator behind the same proxy) still signs
// in; the failures are audited one by one only within the budget.
func TestConsoleLoginThrottlesGuessing(t *testing.T) {
	f := newFixture(t, nil)
	guesser, operator := f.browser(), f.browser()
	guess := func() *resp {
		return guesser.post("/ui/login", url.Values{"token": {"guess"}, "csrf": {guesser.csrf("/ui/login")}})
	}
	for i := 0; i < 10; i++ {
		if r := guess(); r.Status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i+1, r.Status)
		}
	}
	for i := 0; i < 3; i++ {
		r := guess()
		if r.Status != http.StatusTooManyRequests || guesser.cookie(sessionCookie) != nil {
			t.Fatalf("guess %d over the budget: %d", 11+i, r.Status)
		}
		if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("Retry-After = %q, want 1 to 60 seconds", r.Header.Get("Retry-After"))
		}
		mustContain(t, r.Body, "Too many failed sign-ins")
	}
	operator.login("alice")
	guesser.login("bob")

	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindOperatorAuth, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 10 {
		t.Errorf("%d failed sign-ins recorded one by one, want the 10 within the budget", len(recs))
	}
	for _, rec := range recs {
		if rec.Decision != audit.Deny || rec.Actor.Type != audit.ActorAnonymous || rec.Details["source_ip"] != "127.0.0.1" ||
			rec.Details["credential"] != "console_token" {
			t.Errorf("sign-in refusal recorded as %+v", rec)
		}
	}

	// The budget refills with time.
	f.clock.Advance(time.Minute)
	if r := guess(); r.Status != http.StatusUnauthorized {
		t.Errorf("a guess a minute later: %d, want 401", r.Status)
	}
}

func TestConsoleSessionTimeouts(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		f := newFixture(t, nil)
		b := f.browser()
		b.login("alice")
		// Activity keeps the session: 3 × 10 minutes is past the idle
		// timeout of 15m, but no gap is.
		for i := 0; i < 3; i++ {
			f.clock.Advance(10 * time.Minute)
			if r := b.get("/ui/leases"); r.Status != 200 {
				t.Fatalf("active after %d×10m: %d %q", i+1, r.Status, r.Location())
			}
		}
		saved := *b.cookie(sessionCookie)
		f.clock.Advance(15 * time.Minute)
		r := b.get("/ui/leases")
		if r.Status != http.StatusSeeOther || !strings.Contains(r.Location(), "reason=idle") {
			t.Fatalf("after 15m idle: %d %q", r.Status, r.Location())
		}
		mustContain(t, b.get(r.Location()).Body, "inactivity")
		// The session is gone on the server: the old cookie stays dead.
		b.cookies[hostOf(f.URL)][sessionCookie] = &saved
		if r := b.get("/ui/leases"); r.Status != http.StatusSeeOther {
			t.Fatalf("old cookie after idle timeout: %d", r.Status)
		}
	})
	t.Run("absolute", func(t *testing.T) {
		f := newFixture(t, nil)
		b := f.browser()
		b.login("alice")
		for i := 0; i < 8*6-1; i++ { // every 10 minutes for 7h50m
			f.clock.Advance(10 * time.Minute)
			if r := b.get("/ui/agents"); r.Status != 200 {
				t.Fatalf("after %s: %d %q", time.Duration(i+1)*10*time.Minute, r.Status, r.Location())
			}
		}
		f.clock.Advance(10 * time.Minute) // 8h: console.session_max
		r := b.get("/ui/agents")
		if r.Status != http.StatusSeeOther || !strings.Contains(r.Location(), "reason=expired") {
			t.Fatalf("after 8h: %d %q", r.Status, r.Location())
		}
	})
}

func hostOf(u string) string {
	p, _ := url.Parse(u)
	return p.Host
}

func TestConsoleLogoutEndsSessionOnServer(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	saved := *b.cookie(sessionCookie)
	csrf := b.csrf("/ui/grants")
	// Logout is a POST with the CSRF token.
	if r := b.post("/ui/logout", url.Values{}); r.Status != http.StatusForbidden {
		t.Fatalf("logout without token: %d", r.Status)
	}
	r := b.post("/ui/logout", url.Values{"csrf": {csrf}})
	if r.Status != http.StatusSeeOther || r.Location() != "/ui/login?reason=signed-out" {
		t.Fatalf("logout: %d %q", r.Status, r.Location())
	}
	if b.cookie(sessionCookie) != nil {
		t.Fatal("logout did not clear the cookie")
	}
	// A copy of the cookie does not work any more.
	b.cookies[hostOf(f.URL)][sessionCookie] = &saved
	if r := b.get("/ui/grants"); r.Status != http.StatusSeeOther || !strings.HasPrefix(r.Location(), "/ui/login") {
		t.Fatalf("old cookie after logout: %d %q", r.Status, r.Location())
	}
	if r := b.get("/ui/"); r.Location() != "/ui/login" {
		t.Fatalf("/ui/ with an ended session: %q", r.Location())
	}
	// Signing in again gets a different session id.
	b.login("alice")
	if b.cookie(sessionCookie).Value == saved.Value {
		t.Fatal("a new sign-in reused the session id")
	}
}

func TestConsoleCSRF(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	csrf := b.csrf("/ui/leases")
	other := "http://127.0.0.1:1" // same site, another origin
	cases := []struct {
		name         string
		form         url.Values
		origin, site string
		want         int
	}{
		{"missing token", url.Values{}, f.URL, "same-origin", http.StatusForbidden},
		{"wrong token", url.Values{"csrf": {strings.Repeat("A", 43)}}, f.URL, "same-origin", http.StatusForbidden},
		{"token of another session", url.Values{"csrf": {f.browserCSRF(t)}}, f.URL, "same-origin", http.StatusForbidden},
		{"cross-site origin", url.Values{"csrf": {csrf}}, "https://evil.example", "", http.StatusForbidden},
		{"cross-site fetch", url.Values{"csrf": {csrf}}, "", "cross-site", http.StatusForbidden},
		{"cross-site origin and fetch", url.Values{"csrf": {csrf}}, "https://evil.example", "cross-site", http.StatusForbidden},
		{"same-site other origin", url.Values{"csrf": {csrf}}, other, "same-site", http.StatusForbidden},
		{"opaque origin without fetch metadata", url.Values{"csrf": {csrf}}, "null", "", http.StatusForbidden},
		{"no origin, no fetch metadata", url.Values{"csrf": {csrf}}, "", "", http.StatusForbidden},
		{"same-origin fetch with a foreign origin", url.Values{"csrf": {csrf}}, "https://evil.example", "same-origin", http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := f.mint("csrf-target", "demo", nil).Lease.ID
			b.Origin, b.Site = c.origin, c.site
			defer func() { b.Origin, b.Site = f.URL, "same-origin" }()
			r := b.post("/ui/leases/"+id+"/revoke", c.form)
			if r.Status != c.want {
				t.Fatalf("status %d, want %d\n%s", r.Status, c.want, r.Body)
			}
			mustContain(t, r.Body, "nothing was changed")
			if st := f.lease(id).State; st != leases.StateActive {
				t.Fatalf("lease is %s after a refused request", st)
			}
		})
	}
	t.Run("same-origin form under no-referrer (Origin: null)", func(t *testing.T) {
		id := f.mint("csrf-target", "demo", nil).Lease.ID
		b.Origin = "null"
		defer func() { b.Origin = f.URL }()
		if r := b.post("/ui/leases/"+id+"/revoke", url.Values{"csrf": {csrf}}); r.Status != http.StatusSeeOther {
			t.Fatalf("status %d\n%s", r.Status, r.Body)
		}
		if st := f.lease(id).State; st != leases.StateRevoked {
			t.Fatalf("lease is %s", st)
		}
	})
	t.Run("revoke only by POST", func(t *testing.T) {
		id := f.mint("csrf-target", "demo", nil).Lease.ID
		for _, p := range []string{"/ui/leases/" + id + "/revoke", "/ui/grants/" + id + "/approve", "/ui/agents/revoke?agent=test/csrf-target"} {
			if r := b.get(p); r.Status < 400 {
				t.Fatalf("GET %s: %d", p, r.Status)
			}
		}
		if st := f.lease(id).State; st != leases.StateActive {
			t.Fatalf("lease is %s after GETs", st)
		}
	})
}

// browserCSRF signs another operator in and returns their CSRF token.
func (f *fixture) browserCSRF(t *testing.T) string {
	t.Helper()
	o := f.browser()
	o.login("bob")
	return o.csrf("/ui/leases")
}

// consolePages lists every page with its path, for the tests that check
// all of them.
func consolePages(f *fixture, grantID string) []string {
	return []string{"/ui/grants", "/ui/grants/" + grantID, "/ui/leases", "/ui/leases?state=&agent=test/agent-1",
		"/ui/leases/irrevocable", "/ui/agents", "/ui/audit", "/ui/audit?kind=mint"}
}

func TestConsoleSecurityHeaders(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	id := f.request("agent-1", "elevated", "headers", nil)
	f.mint("agent-1", "demo", nil)
	check := func(t *testing.T, what string, r *resp, page bool) {
		t.Helper()
		want := map[string]string{
			"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"X-Frame-Options":         "DENY",
		}
		if page {
			want["Cache-Control"] = "no-store"
		}
		for k, v := range want {
			if got := r.Header.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", what, k, got, v)
			}
		}
		if page && r.Status == 200 {
			// No inline script, style or event handler: the CSP would
			// block them, so the page must not need them.
			for _, bad := range []*regexp.Regexp{regexp.MustCompile(`<script(?:\s[^>]*)?>[^<]`), regexp.MustCompile(`<script>`),
				regexp.MustCompile(`\sstyle=`), regexp.MustCompile(`<style`), regexp.MustCompile(`\son[a-z]+=`)} {
				if bad.MatchString(r.Body) {
					t.Errorf("%s has inline code matching %s", what, bad)
				}
			}
		}
	}
	check(t, "login", b.get("/ui/login"), true)
	check(t, "redirect", b.get("/ui/grants"), true)
	check(t, "not found", b.get("/ui/nothing-here"), true)
	check(t, "css", b.get("/ui/static/console.css"), false)
	check(t, "js", b.get("/ui/static/console.js"), false)
	check(t, "refused POST", b.post("/ui/login", url.Values{}), true)
	b.login("alice")
	for _, p := range consolePages(f, id) {
		r := b.get(p)
		if r.Status != 200 {
			t.Fatalf("%s: %d", p, r.Status)
		}
		if ct := r.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", p, ct)
		}
		check(t, p, r, true)
	}
	if ct := b.get("/ui/static/console.css").Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/css") {
		t.Errorf("css Content-Type %q", ct)
	}
}

func TestConsoleFreshLoginForDecisions(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	id := f.request("agent-1", "elevated", "deploy hotfix", nil)
	f.clock.Advance(11 * time.Minute) // past fresh_login (10m), within session_idle (15m)

	page := b.get("/ui/grants/" + id)
	mustContain(t, page.Body, "deciding asks you to sign in again first")
	csrf := csrfField.FindStringSubmatch(page.Body)[1]
	for _, act := range []string{"approve", "deny"} {
		r := b.post("/ui/grants/"+id+"/"+act, url.Values{"csrf": {csrf}, "comment": {"ok"}})
		if r.Status != http.StatusSeeOther || !strings.HasPrefix(r.Location(), "/ui/login?") {
			t.Fatalf("%s with a stale sign-in: %d %q", act, r.Status, r.Location())
		}
		loc, _ := url.Parse(r.Location())
		if loc.Query().Get("reason") != "fresh" || loc.Query().Get("next") != "/ui/grants/"+id {
			t.Fatalf("%s redirects to %q", act, r.Location())
		}
		if g := f.grant(id); g.State != grants.StatePending || len(g.Approvals) != 0 {
			t.Fatalf("%s went through without a fresh sign-in: %s", act, g.State)
		}
	}
	// The sign-in page says why.
	mustContain(t, b.get("/ui/login?reason=fresh&next=/ui/grants/"+id).Body, "needs a sign-in within the last 10m", "You are signed in as <strong>alice</strong>")

	old := b.cookie(sessionCookie).Value
	b.login("alice", "/ui/grants/"+id)
	if b.cookie(sessionCookie).Value == old {
		t.Fatal("re-authentication kept the session id")
	}
	csrf = b.csrf("/ui/grants/" + id)
	r := b.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {csrf}, "comment": {"checked the change ticket"}, "return": {"/ui/grants/" + id}})
	if r.Status != http.StatusSeeOther || r.Location() != "/ui/grants/"+id {
		t.Fatalf("approve after re-authentication: %d %q", r.Status, r.Location())
	}
	mustContain(t, b.get(r.Location()).Body, "Approved test/agent-1 → elevated")
	g := f.grant(id)
	if g.State != grants.StateApproved || len(g.Approvals) != 1 {
		t.Fatalf("grant %s with %d approvals", g.State, len(g.Approvals))
	}
	if a := g.Approvals[0]; a.Operator != "alice" || a.Method != "console" || a.Comment != "checked the change ticket" {
		t.Fatalf("approval recorded as %+v", a)
	}
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindGrantApprove, Newest: true, Limit: 1})
	if err != nil || len(recs) != 1 || recs[0].Actor.ID != "alice" || recs[0].Actor.Type != audit.ActorOperator || recs[0].Decision != audit.Allow {
		t.Fatalf("audit record of the approval: %+v %v", recs, err)
	}
	if recs[0].RequestID == "" {
		t.Error("the approval's audit record has no request id")
	}
}

func TestConsoleDecisionsFollowBrokerRules(t *testing.T) {
	f := newFixture(t, nil)
	owner, bob, carol := f.browser(), f.browser(), f.browser()
	owner.login("owner@example.com")
	bob.login("bob")
	carol.login("carol")

	// The agent's attestation names owner@example.com as its owner.
	id := f.request("owned-agent", "elevated", "my own agent", map[string]any{"email": "owner@example.com"})
	r := owner.post("/ui/grants/"+id+"/approve", url.Values{"csrf": {owner.csrf("/ui/grants")}, "comment": {"mine"}})
	if r.Status != http.StatusSeeOther {
		t.Fatalf("self-approval: %d", r.Status)
	}
	page := owner.get(r.Location()).Body
	mustContain(t, page, "Could not approve grant "+id, "self-approval refused", "owner@example.com asked for this access and cannot approve it")
	if g := f.grant(id); g.State != grants.StatePending || len(g.Approvals) != 0 {
		t.Fatalf("self-approval changed the grant: %s %v", g.State, g.Approvers())
	}
	recs, _ := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindGrantApprove, Newest: true, Limit: 1})
	if len(recs) != 1 || recs[0].Decision != audit.Deny || recs[0].Actor.ID != "owner@example.com" {
		t.Fatalf("self-approval audit: %+v", recs)
	}

	// carol is not in the approvers group of two-keys.
	two := f.request("agent-2", "two-keys", "drop staging", nil)
	r = carol.post("/ui/grants/"+two+"/approve", url.Values{"csrf": {carol.csrf("/ui/grants")}})
	mustContain(t, carol.get(r.Location()).Body, "carol is not among the approvers of role two-keys")

	// Two distinct approvers are needed; the console says so.
	r = bob.post("/ui/grants/"+two+"/approve", url.Values{"csrf": {bob.csrf("/ui/grants")}, "comment": {"one"}})
	mustContain(t, bob.get(r.Location()).Body, "(1 of 2)")
	r = owner.post("/ui/grants/"+two+"/approve", url.Values{"csrf": {owner.csrf("/ui/grants")}, "comment": {"two"}})
	mustContain(t, owner.get(r.Location()).Body, "Approved test/agent-2 → two-keys")
	if g := f.grant(two); g.State != grants.StateApproved || strings.Join(g.Approvers(), ",") != "bob,owner@example.com" {
		t.Fatalf("two-keys: %s %v", g.State, g.Approvers())
	}

	// Deny with a comment.
	third := f.request("agent-3", "elevated", "curious", nil)
	r = bob.post("/ui/grants/"+third+"/deny", url.Values{"csrf": {bob.csrf("/ui/grants")}, "comment": {"no ticket"}})
	mustContain(t, bob.get(r.Location()).Body, "Denied test/agent-3 → elevated")
	if g := f.grant(third); g.State != grants.StateDenied || g.Denial.Operator != "bob" || g.Denial.Comment != "no ticket" || g.Denial.Method != "console" {
		t.Fatalf("deny: %s %+v", g.State, g.Denial)
	}
}

func TestConsoleGrantsPage(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	// The agent's history: a lease, and a denial.
	f.mint("agent-1", "demo", nil)
	if _, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest("agent-1", map[string]any{"blocked": true}), Role: "demo"}); err == nil {
		t.Fatal("blocked agent minted")
	}
	f.clock.Advance(time.Minute)
	id := f.request("agent-1", "elevated", "rotate <the> cert", nil)
	glass, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest("agent-9", nil), Role: "glass", Reason: "prod is down", BreakGlass: true})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(30 * time.Second)

	page := b.get("/ui/grants").Body
	mustContain(t, page,
		"Pending approvals", "test/agent-1 → elevated", "rotate &lt;the&gt; cert", "1m30s", "0/1 approvals", "30s ago",
		`action="/ui/grants/`+id+`/approve"`, `formaction="/ui/grants/`+id+`/deny"`, `name="comment"`,
		"Recent history of this agent", "demo", "1 denial", "Break-glass access awaiting review", "test/agent-9 → glass", "prod is down",
		`action="/ui/grants/`+glass.Grant.ID+`/review"`, "Activity, last 24 hours", "<svg", "Grant history")
	// The pending request's expiry is shown: 1h (the default request_ttl)
	// from its creation.
	mustContain(t, page, "in 59m30s")

	// A review needs a comment; with one it is recorded.
	csrf := b.csrf("/ui/grants")
	r := b.post("/ui/grants/"+glass.Grant.ID+"/review", url.Values{"csrf": {csrf}, "comment": {""}})
	mustContain(t, b.get(r.Location()).Body, "a review needs a comment")
	r = b.post("/ui/grants/"+glass.Grant.ID+"/review", url.Values{"csrf": {csrf}, "comment": {"checked the session log"}, "return": {"/ui/grants"}})
	if r.Location() != "/ui/grants" {
		t.Fatalf("review returns to %q", r.Location())
	}
	page = b.get("/ui/grants").Body
	mustContain(t, page, "Recorded your review")
	if strings.Contains(page, "Break-glass access awaiting review") {
		t.Fatal("reviewed break-glass access is still flagged")
	}
	if g := f.grant(glass.Grant.ID); g.Review == nil || g.Review.Operator != "alice" {
		t.Fatalf("review: %+v", g.Review)
	}

	// History filters.
	if r := b.post("/ui/grants/"+id+"/deny", url.Values{"csrf": {csrf}, "comment": {"no"}}); r.Status != http.StatusSeeOther {
		t.Fatalf("deny: %d", r.Status)
	}
	hist := b.get("/ui/grants?state=denied&agent=test/agent-1").Body
	mustContain(t, hist, "alice (denied)")
	if h := b.get("/ui/grants?state=redeemed&role=elevated").Body; strings.Contains(h, "alice (denied)") {
		t.Fatal("filter by state shows a denied grant among redeemed ones")
	}

	// The detail page is what notifications link to.
	detail := b.get("/ui/grants/" + id)
	mustContain(t, detail.Body, "test/agent-1 → elevated", "denied", "by <strong>alice</strong>", "no", "Recent history of this agent")
	if r := b.get("/ui/grants/01NOTAGRANT"); r.Status != http.StatusNotFound {
		t.Fatalf("unknown grant: %d", r.Status)
	}
}

func TestConsoleLeases(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	l1 := f.mint("agent-1", "demo", nil)
	l2 := f.mint("agent-1", "demo", nil)
	other := f.mint("agent-2", "demo", nil)
	stuck := f.mint("agent-3", "stubborn", nil)

	page := b.get("/ui/leases").Body
	mustContain(t, page, l1.Lease.ID, other.Lease.ID, "test/agent-2", "h-"+l1.Lease.ID[:8], `action="/ui/leases/`+l1.Lease.ID+`/revoke"`)
	csrf := csrfField.FindStringSubmatch(page)[1]

	// Revoke one lease.
	r := b.post("/ui/leases/"+l1.Lease.ID+"/revoke", url.Values{"csrf": {csrf}})
	mustContain(t, b.get(r.Location()).Body, "Revoked lease "+l1.Lease.ID)
	if st := f.lease(l1.Lease.ID).State; st != leases.StateRevoked {
		t.Fatalf("revoked lease is %s", st)
	}
	recs, _ := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindRevoke, LeaseID: l1.Lease.ID})
	if len(recs) != 1 || recs[0].Actor.ID != "alice" {
		t.Fatalf("revoke audit: %+v", recs)
	}

	// A revocation returns to the filtered list it was made from.
	page = b.get("/ui/leases?agent=test/agent-2").Body
	mustContain(t, page, `name="return" value="/ui/leases?agent=test/agent-2"`)

	// Filters: by agent, with "Revoke all of this agent".
	page = b.get("/ui/leases?agent=test/agent-1").Body
	mustContain(t, page, "has 1 live lease", "Revoke all of this agent", l2.Lease.ID)
	if strings.Contains(page, other.Lease.ID) {
		t.Fatal("agent filter shows another agent's lease")
	}
	if p := b.get("/ui/leases?state=revoked").Body; !strings.Contains(p, l1.Lease.ID) || strings.Contains(p, l2.Lease.ID) {
		t.Fatal("state filter")
	}
	if p := b.get("/ui/leases?backend=stubborn").Body; !strings.Contains(p, stuck.Lease.ID) || strings.Contains(p, l2.Lease.ID) {
		t.Fatal("backend filter")
	}
	r = b.post("/ui/agents/revoke", url.Values{"csrf": {csrf}, "agent": {"test/agent-1"}})
	mustContain(t, b.get(r.Location()).Body, "Revoked 1 lease of test/agent-1.")
	if st := f.lease(l2.Lease.ID).State; st != leases.StateRevoked {
		t.Fatalf("agent's lease is %s", st)
	}
	if st := f.lease(other.Lease.ID).State; st != leases.StateActive {
		t.Fatalf("another agent's lease is %s", st)
	}

	// A revocation that fails makes the lease irrevocable (one attempt in
	// this fixture): it shows in its own tab, with the error and retry.
	r = b.post("/ui/leases/"+stuck.Lease.ID+"/revoke", url.Values{"csrf": {csrf}})
	mustContain(t, b.get(r.Location()).Body, "its backend has not confirmed the revocation yet")
	irr := b.get("/ui/leases/irrevocable").Body
	mustContain(t, irr, "Irrevocable leases", stuck.Lease.ID[:12], "unexpected EOF", "test/agent-3", `<span class="badge badge-alert">1</span>`)
	if strings.Contains(irr, other.Lease.ID[:12]) {
		t.Fatal("irrevocable tab shows an active lease")
	}
}

func TestConsoleAgentsAndAudit(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	f.mint("agent-1", "demo", nil)
	f.mint("agent-1", "demo", nil)
	f.mint("agent-2", "stubborn", nil)
	f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest("agent-2", map[string]any{"blocked": true}), Role: "demo"})

	page := b.get("/ui/agents").Body
	// Columns: risk, quarantine, active leases, mints, denials.
	cols := `</th>\s*<td><span class="risk[^"]*"[^>]*>(\d+)</span></td>\s*<td>.*?</td>\s*<td>(\d+)</td>\s*<td>(\d+)</td>\s*<td>(?:<span class="warn"[^>]*>)?(\d+)`
	row := regexp.MustCompile(`(?s)<th scope="row"><a href="/ui/agents/test%2Fagent-1">test/agent-1</a>` + cols).FindStringSubmatch(page)
	if row == nil || row[1] != "0" || row[2] != "2" || row[3] != "2" || row[4] != "0" {
		t.Fatalf("agent-1 row (risk, active, mints, denials): %v\n%s", row, page)
	}
	row = regexp.MustCompile(`(?s)<th scope="row"><a href="/ui/agents/test%2Fagent-2">test/agent-2</a>` + cols).FindStringSubmatch(page)
	if row == nil || row[2] != "1" || row[3] != "1" || row[4] != "1" {
		t.Fatalf("agent-2 row (risk, active, mints, denials): %v\n%s", row, page)
	}
	mustContain(t, page, `href="/ui/leases?state=&amp;agent=test%2fagent-1"`, "Revoke all")

	// The audit browser: verified chain first, newest records, filters.
	f.clock.Advance(time.Minute)
	page = b.get("/ui/audit").Body
	mustContain(t, page, "Chain verified", "records, every hash matches", "verify-ok", "mint", "deny")
	if p := b.get("/ui/audit?kind=mint&agent=test/agent-2").Body; !strings.Contains(p, "test/agent-2") || strings.Contains(p, ">test/agent-1<") {
		t.Fatal("audit filter")
	}

	// Tampering with a record shows in red, once the cached verification
	// is older than 30s.
	if err := tamper(f, 2); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(31 * time.Second)
	page = b.get("/ui/audit").Body
	mustContain(t, page, "verify-bad", "The audit chain is broken", "record 2")
}

func TestConsoleNeverShowsSecrets(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	res := f.mint("agent-1", "demo", nil)
	id := f.request("agent-1", "elevated", "secret-free", nil)
	secret := res.Credential["secret"].(string)
	for _, p := range consolePages(f, id) {
		body := b.get(p).Body
		for _, s := range append([]string{secret}, testTokens["alice"], b.cookie(sessionCookie).Value) {
			if strings.Contains(body, s) {
				t.Fatalf("%s shows a secret (%s…)", p, s[:6])
			}
		}
	}
	if strings.Contains(f.log.String(), testTokens["alice"]) {
		t.Fatal("the log holds an operator token")
	}
}

func TestConsoleRefusesToStart(t *testing.T) {
	f := newFixture(t, nil)
	base := Config{Broker: f.b, Operators: broker.NewOperators(nil, nil, nil), Audit: f.store, Console: f.console.cc}
	off := false
	cases := []struct {
		name, url string
		edit      func(*Config)
		want      string
	}{
		{"plain http to a network host", "http://valet.example.com", nil, "plain http to a host that is not loopback"},
		{"plain http to a private address", "http://10.0.0.5:8750", nil, "set console.disabled: true"},
		{"no sign-in method", "https://valet.example.com", func(c *Config) { c.Console.TokenLogin = &off }, "nobody could sign in"},
		{"unreachable SSO provider", "https://valet.example.com", func(c *Config) {
			c.Console.OIDC = &ConsoleOIDCConfig{Issuer: "http://127.0.0.1:1/idp", ClientID: "valet"}
		}, "cannot discover the OpenID provider http://127.0.0.1:1/idp"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.PublicURL = c.url
			if c.edit != nil {
				c.edit(&cfg)
			}
			_, err := New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
	for u, origin := range map[string]string{
		"https://valet.example.com": "https://valet.example.com", "https://Valet.Example.com:443/x": "https://valet.example.com",
		"https://valet.example.com:8443": "https://valet.example.com:8443", "http://127.0.0.1:8750": "http://127.0.0.1:8750",
		"http://localhost:8750": "http://localhost:8750", "http://[::1]:8750": "http://[::1]:8750", "http://[::1]:80": "http://[::1]",
	} {
		cfg := base
		cfg.PublicURL = u
		c, err := New(context.Background(), cfg)
		if err != nil {
			t.Errorf("%s: %v", u, err)
			continue
		}
		if c.origin != origin {
			t.Errorf("%s: origin %s, want %s", u, c.origin, origin)
		}
	}
}

func TestConsolePaging(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	var ids []string
	for i := 0; i < 120; i++ {
		f.clock.Advance(time.Second) // ids are ordered by time
		ids = append(ids, f.mint("pager", "demo", nil).Lease.ID)
	}
	older := regexp.MustCompile(`<a href="([^"]+)">Older (?:leases|records) →</a>`)

	// Leases: 100 a page, newest first; the next page holds the rest.
	page := b.get("/ui/leases").Body
	if !strings.Contains(page, ids[119]) || !strings.Contains(page, ids[20]) || strings.Contains(page, ids[19]) {
		t.Fatal("first lease page does not hold the newest 100")
	}
	m := older.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no link to older leases")
	}
	page = b.get(strings.ReplaceAll(m[1], "&amp;", "&")).Body
	row := func(id string) string { return "<code>" + id + "</code>" }
	if !strings.Contains(page, row(ids[19])) || !strings.Contains(page, row(ids[0])) || strings.Contains(page, row(ids[20])) {
		t.Fatal("second lease page does not hold the oldest 20")
	}

	// Audit: 50 a page, filter kept across pages.
	page = b.get("/ui/audit?kind=mint").Body
	m = older.FindStringSubmatch(page)
	if m == nil || !strings.Contains(m[1], "kind=mint") {
		t.Fatalf("older-records link %v", m)
	}
	seqs := regexp.MustCompile(`<td class="num">(\d+)</td>`)
	first := seqs.FindAllStringSubmatch(page, -1)
	page = b.get(strings.ReplaceAll(m[1], "&amp;", "&")).Body
	second := seqs.FindAllStringSubmatch(page, -1)
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	if len(first) != 50 || len(second) != 50 || atoi(first[49][1]) <= atoi(second[0][1]) {
		t.Fatalf("audit pages: %d then %d records (last %v, next %v)", len(first), len(second), first[len(first)-1], second[0])
	}
	mustContain(t, page, "← Newest")
}

func TestConsoleReviewFollowsDecisionRules(t *testing.T) {
	f := newFixture(t, func(cfg *fixtureConfig, _ *Config) {
		cfg.Roles = append(cfg.Roles, config.Defaulted(func(r *broker.Role) {
			r.Name, r.Backend, r.TTL = "guarded-glass", "mem", config.Duration(5*time.Minute)
			r.Approval.Required, r.Approval.Approvers = 1, broker.ApproversConfig{Groups: []string{"approvers"}}
			r.Approval.BreakGlass.Allowed = true
		}))
	})
	// The agent's attestation names owner@example.com (an approver) as
	// the person behind it.
	glass, err := f.b.Mint(context.Background(), broker.MintRequest{Attestation: f.attest("owned-agent", map[string]any{"email": "owner@example.com"}),
		Role: "guarded-glass", Reason: "prod is down", BreakGlass: true})
	if err != nil {
		t.Fatal(err)
	}
	id := glass.Grant.ID
	cases := []struct {
		name, op, want string
	}{
		{"an operator outside the approvers", "carol", "carol is not among the approvers of role guarded-glass"},
		{"the person who took the access", "owner@example.com", "owner@example.com asked for this access and cannot review it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := f.browser()
			b.login(c.op)
			r := b.post("/ui/grants/"+id+"/review", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"fine by me"}})
			if r.Status != http.StatusSeeOther {
				t.Fatalf("review: %d", r.Status)
			}
			mustContain(t, b.get(r.Location()).Body, "Could not review grant "+id, c.want)
			if g := f.grant(id); g.Review != nil {
				t.Fatalf("a refused review was recorded: %+v", g.Review)
			}
		})
	}
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Kind: audit.KindGrantReview})
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, rec := range recs {
		if rec.Decision == audit.Deny {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("%d refused reviews audited, want 2: %+v", denied, recs)
	}
	b := f.browser()
	b.login("bob")
	r := b.post("/ui/grants/"+id+"/review", url.Values{"csrf": {b.csrf("/ui/grants")}, "comment": {"checked the session log"}})
	mustContain(t, b.get(r.Location()).Body, "Recorded your review")
	if g := f.grant(id); g.Review == nil || g.Review.Operator != "bob" {
		t.Fatalf("review by an approver: %+v", g.Review)
	}
}

func TestConsoleAutoRefreshDoesNotKeepSessionAlive(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	// The grants page's script reloads with the marker of an automatic
	// refresh.
	mustContain(t, b.get("/ui/static/console.js").Body, `"refresh", "auto"`)
	// An open tab reloads every 30 seconds: the page keeps showing, but
	// the session still ends after console.session_idle (15m) without an
	// operator action.
	for i := 1; ; i++ {
		f.clock.Advance(30 * time.Second)
		r := b.get("/ui/grants?refresh=auto")
		if time.Duration(i)*30*time.Second < 15*time.Minute {
			if r.Status != http.StatusOK {
				t.Fatalf("automatic refresh after %s: %d %q", time.Duration(i)*30*time.Second, r.Status, r.Location())
			}
			continue
		}
		if r.Status != http.StatusSeeOther || !strings.Contains(r.Location(), "reason=idle") {
			t.Fatalf("automatic refresh after 15m without an action: %d %q", r.Status, r.Location())
		}
		// After signing in again the operator lands on the page, not on
		// the marker of an automatic refresh.
		loc, _ := url.Parse(r.Location())
		if next := loc.Query().Get("next"); next != "/ui/grants" {
			t.Fatalf("next after an idle timeout: %q", next)
		}
		break
	}
	// An operator action extends the session; refreshes after it do not
	// take that away.
	b.login("alice")
	f.clock.Advance(10 * time.Minute)
	if r := b.get("/ui/grants"); r.Status != http.StatusOK {
		t.Fatalf("operator action: %d", r.Status)
	}
	f.clock.Advance(10 * time.Minute)
	if r := b.get("/ui/grants?refresh=auto"); r.Status != http.StatusOK {
		t.Fatalf("refresh 10m after an action: %d %q", r.Status, r.Location())
	}
}

// count returns how many sessions op has.
func (s *sessionStore) count(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, se := range s.m {
		if se.who == identity.Key(op) {
			n++
		}
	}
	return n
}

func TestConsoleSessionsBoundedPerOperator(t *testing.T) {
	f := newFixture(t, nil)
	alice := f.browser()
	alice.login("alice")
	// carol signs in 10,000 times (straight into the store: the sign-in
	// form would throttle nothing here, as every sign-in succeeds).
	for i := 0; i < 10000; i++ {
		f.console.sessions.create(broker.Operator{Name: "carol", Method: "console"}, f.clock.Now())
	}
	if n := f.console.sessions.count("carol"); n != maxSessionsPerOperator {
		t.Fatalf("carol holds %d sessions, want %d", n, maxSessionsPerOperator)
	}
	// Signing in again in another spelling is the same operator.
	f.console.sessions.create(broker.Operator{Name: "CAROL", Method: "console"}, f.clock.Now())
	if n := f.console.sessions.count("carol"); n != maxSessionsPerOperator {
		t.Fatalf("carol holds %d sessions, want %d", n, maxSessionsPerOperator)
	}
	if r := alice.get("/ui/grants"); r.Status != http.StatusOK {
		t.Fatalf("alice was signed out by carol's sign-ins: %d %q", r.Status, r.Location())
	}

	// When all operators together reach the bound, the operator holding
	// the most sessions loses the oldest.
	f.console.sessions.limit = maxSessionsPerOperator + 3
	for _, op := range []string{"bob", "dave"} {
		f.console.sessions.create(broker.Operator{Name: op, Method: "console"}, f.clock.Now())
	}
	f.console.sessions.create(broker.Operator{Name: "erin", Method: "console"}, f.clock.Now())
	if n := f.console.sessions.count("carol"); n != maxSessionsPerOperator-1 {
		t.Fatalf("carol holds %d sessions, want %d", n, maxSessionsPerOperator-1)
	}
	for _, op := range []string{"alice", "bob", "dave", "erin"} {
		if n := f.console.sessions.count(op); n != 1 {
			t.Fatalf("%s holds %d sessions, want 1", op, n)
		}
	}
}

func TestConsoleIDTokenSignInIsFreshOnlyByItsAuthTime(t *testing.T) {
	sso, err := attest.NewDevIssuer("https://sso.test")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(cfg *fixtureConfig, w *Config) {
		sso.SetClock(w.Clock)
		jwks := filepath.Join(t.TempDir(), "sso-jwks.json")
		if err := sso.WriteJWKS(jwks); err != nil {
			t.Fatal(err)
		}
		cfg.Operators.Issuers = []attest.OperatorIssuerConfig{config.Defaulted(func(ic *attest.OperatorIssuerConfig) {
			ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "sso", "https://sso.test", []string{"valet-console"}, jwks, []string{"ES256"}
			ic.AllowAll = true
		})}
	})
	id := f.request("agent-1", "elevated", "pasted token", nil)
	cases := []struct {
		name     string
		authTime any // nil: no auth_time claim
		fresh    bool
	}{
		{"no auth_time", nil, false},
		{"an hour-old sign-in", f.clock.Now().Add(-time.Hour).Unix(), false},
		{"a sign-in just now", f.clock.Now().Unix(), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims := map[string]any{"sub": "u-1", "aud": "valet-console", "email": "dana@example.com", "email_verified": true}
			if c.authTime != nil {
				claims["auth_time"] = c.authTime
			}
			tok, err := sso.Sign(claims)
			if err != nil {
				t.Fatal(err)
			}
			b := f.browser()
			r := b.post("/ui/login", url.Values{"token": {tok}, "csrf": {b.csrf("/ui/login")}})
			if r.Status != http.StatusSeeOther || r.Location() != "/ui/grants" {
				t.Fatalf("sign-in with an ID token: %d %q\n%s", r.Status, r.Location(), r.Body)
			}
			page := b.get("/ui/grants/" + id).Body
			if got := !strings.Contains(page, "deciding asks you to sign in again first"); got != c.fresh {
				t.Fatalf("fresh = %v, want %v", got, c.fresh)
			}
		})
	}
}

// TestConsoleIDTokenSignInSaysWhyItIsRefused: an operator ID token pasted
// into the sign-in form that verifies but names no operator is refused
// with the reason the API gives (the unverified email, the missing group),
// not as if it were no token at all.
func TestConsoleIDTokenSignInSaysWhyItIsRefused(t *testing.T) {
	sso, err := attest.NewDevIssuer("https://sso.test")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(cfg *fixtureConfig, w *Config) {
		sso.SetClock(w.Clock)
		jwks := filepath.Join(t.TempDir(), "sso-jwks.json")
		if err := sso.WriteJWKS(jwks); err != nil {
			t.Fatal(err)
		}
		cfg.Operators.Issuers = []attest.OperatorIssuerConfig{config.Defaulted(func(ic *attest.OperatorIssuerConfig) {
			ic.Name, ic.Issuer, ic.Audiences, ic.JWKSFile, ic.Algorithms = "sso", "https://sso.test", []string{"valet-console"}, jwks, []string{"ES256"}
			ic.AllowedGroups = []string{"sre"}
		})}
	})
	cases := []struct {
		name   string
		claims map[string]any
		status int
		want   string
	}{
		{"an unverified email", map[string]any{"email": "carol@example.com", "email_verified": false, "groups": "sre"}, http.StatusUnauthorized,
			"the email address carol@example.com is not verified by the identity provider (email_verified is false)"},
		{"outside the allowed groups", map[string]any{"email": "eve@example.com", "email_verified": true, "groups": []any{"staff"}}, http.StatusForbidden,
			"eve@example.com is not a member of a group allowed to act as an operator (sre)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims := map[string]any{"sub": "u-1", "aud": "valet-console"}
			maps.Copy(claims, c.claims)
			tok, err := sso.Sign(claims)
			if err != nil {
				t.Fatal(err)
			}
			b := f.browser()
			r := b.post("/ui/login", url.Values{"token": {tok}, "csrf": {b.csrf("/ui/login")}})
			if r.Status != c.status {
				t.Fatalf("sign-in: %d, want %d\n%s", r.Status, c.status, r.Body)
			}
			mustContain(t, html.UnescapeString(r.Body), c.want)
			if r := b.get("/ui/grants"); r.Status != http.StatusSeeOther {
				t.Fatalf("a refused sign-in opened a session: %d", r.Status)
			}
		})
	}
}

// Filters whose values can match nothing, or that are given twice, are
// dropped with a message, never applied in silence under a form showing
// "any"; a role of the right syntax that is not configured is kept and
// shown in the form.
func TestConsoleFiltersSayWhatTheyIgnore(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	l1 := f.mint("agent-1", "demo", nil)
	l2 := f.mint("agent-2", "demo", nil)
	cases := []struct {
		path string
		want []string
	}{
		{"/ui/leases?role=Demo", []string{"The role filter &#34;Demo&#34; is not a role name", l1.Lease.ID, l2.Lease.ID}},
		{"/ui/leases?role=" + url.QueryEscape("x\n2026 FAKE"), []string{`The role filter &#34;x\n2026 FAKE&#34; is not a role name`, l1.Lease.ID}},
		{"/ui/leases?agent=test/agent-1&agent=test/agent-2", []string{"The agent filter is given 2 times; it is ignored.", l1.Lease.ID, l2.Lease.ID}},
		{"/ui/leases?agent=" + url.QueryEscape("test/agent-1\x00zz"), []string{`The agent filter &#34;test/agent-1\x00zz&#34; is not an agent id`, l2.Lease.ID}},
		{"/ui/leases?state=Active", []string{"The state filter &#34;Active&#34; is not one of active, pending"}},
		{"/ui/leases?before=nope", []string{"The page filter cursor &#34;nope&#34; is not an id", l1.Lease.ID}},
		{"/ui/leases?role=retired-role", []string{`<option selected>retired-role</option>`}},
		{"/ui/grants?state=Approved", []string{"The state filter &#34;Approved&#34; is not one of approved, denied"}},
		{"/ui/grants?role=R%C3", []string{"The role filter is not valid UTF-8; it is ignored."}},
		{"/ui/audit?kind=MINT", []string{"The kind filter &#34;MINT&#34; is not one of mint,"}},
		{"/ui/audit?agent=nobody", []string{"The agent filter &#34;nobody&#34; is not an agent id"}},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			r := b.get(tc.path)
			if r.Status != http.StatusOK {
				t.Fatalf("GET %s: %d", tc.path, r.Status)
			}
			mustContain(t, r.Body, tc.want...)
		})
	}
	if p := b.get("/ui/leases?role=retired-role").Body; strings.Contains(p, "flash-error") || strings.Contains(p, l1.Lease.ID) {
		t.Error("a configured-syntax role filter was refused, or did not filter")
	}
	// Revoking "all of an agent" needs one agent id.
	csrf := csrfField.FindStringSubmatch(b.get("/ui/leases").Body)[1]
	for _, agents := range [][]string{{"test/agent-1\x00zz"}, {"test/agent-1", "test/agent-2"}} {
		r := b.post("/ui/agents/revoke", url.Values{"csrf": {csrf}, "agent": agents})
		mustContain(t, b.get(r.Location()).Body, "is not one agent id", "nothing was revoked")
	}
	if f.lease(l1.Lease.ID).State != leases.StateActive || f.lease(l2.Lease.ID).State != leases.StateActive {
		t.Error("a refused revocation revoked leases")
	}
}
