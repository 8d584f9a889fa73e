package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/valet-broker/valet/backends"
	"github.com/valet-broker/valet/backends/backendtest"
	"github.com/valet-broker/valet/backends/builtin"
	"github.com/valet-broker/valet/backends/vault/vaulttest"
	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/config"
)

// stubbornType is a backend whose revocations always fail, so a lease of
// it becomes irrevocable.
const stubbornType = "test-stubborn"

type stubborn struct{}

func newStubborn(string, map[string]any, backends.Deps) (backends.Backend, error) {
	return stubborn{}, nil
}

func (stubborn) Mint(ctx context.Context, req backends.MintRequest) (*backends.Credential, error) {
	return &backends.Credential{Handle: "stub-" + req.CorrelationID[:10], ExpiresAt: req.ExpiresAt, Data: map[string]any{"password": "stubborn-" + req.CorrelationID}}, nil
}

func (stubborn) Revoke(context.Context, backends.Ref) error {
	return errors.New("dial tcp 10.20.0.9:5432: connect: connection refused")
}

// startConsole starts a test server with the console on. The console
// refuses a plain-http public URL that is not loopback, so the server
// gets a loopback listen address chosen in advance as its public URL. A
// role "flaky" on the stubborn backend yields irrevocable leases.
func startConsole(t *testing.T) *testEnv {
	t.Helper()
	return startConsoleWith(t, nil)
}

// startConsoleWith is startConsole with edit applied to the env (its
// clock, its configuration) before the server starts.
func startConsoleWith(t *testing.T, edit func(*testEnv)) *testEnv {
	t.Helper()
	e := newTestEnv(t)
	addr := fmt.Sprintf("127.0.0.1:%d", vaulttest.FreePort(t))
	e.Config.Listen, e.Config.PublicURL = addr, "http://"+addr
	e.Config.Console.Disabled = false
	e.Config.Backends = append(e.Config.Backends, backends.Config{Name: "stubborn", Type: stubbornType})
	e.Config.Roles = append(e.Config.Roles, config.Defaulted(func(r *broker.Role) {
		r.Name, r.Backend, r.TTL = "flaky", "stubborn", config.Duration(10*time.Minute)
	}))
	e.Config.Leases.RevokeAttempts = 1
	if edit != nil {
		edit(e)
	}
	if err := e.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := builtin.Registry()
	reg[backendtest.LedgerType] = backendtest.NewLedger
	reg[stubbornType] = newStubborn
	e.Registry = reg
	return e.Start()
}

func TestConsoleWiring(t *testing.T) {
	t.Run("served at /ui by the server", func(t *testing.T) {
		e := startConsole(t)
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		res, err := c.Get(e.URL + "/ui/")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/login" {
			t.Fatalf("/ui/: %d %q", res.StatusCode, res.Header.Get("Location"))
		}
		for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "X-Request-Id"} {
			if res.Header.Get(h) == "" {
				t.Errorf("/ui/ lacks %s", h)
			}
		}
		// The API is unaffected.
		if r := e.Do("GET", "/v1/grants", testOperatorToken, nil); r.Status != 200 {
			t.Fatalf("API beside the console: %d", r.Status)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		e := newTestEnv(t).Start() // the harness turns the console off
		if r := e.Do("GET", "/ui/login", "", nil); r.Status != http.StatusNotFound {
			t.Fatalf("/ui/login with the console disabled: %d", r.Status)
		}
	})
	t.Run("refuses plain http to a network host", func(t *testing.T) {
		e := newTestEnv(t)
		e.Config.Console.Disabled = false // public_url is http://valet.test
		reg := builtin.Registry()
		reg[backendtest.LedgerType] = backendtest.NewLedger
		s := &Server{Config: e.Config, KEK: make([]byte, 32), Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		err := s.Open(context.Background())
		if err == nil {
			s.Close()
			t.Fatal("the server started a console on a plain-http public URL")
		}
		if !strings.Contains(err.Error(), "http://valet.test is plain http") || !strings.Contains(err.Error(), "console.disabled: true") {
			t.Fatalf("error %q does not say what is wrong and how to fix it", err)
		}
	})
}

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// newChromium starts headless Chromium with a fresh profile for the test.
// A missing browser fails the test: the console's browser tests are not
// optional.
func newChromium(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath
	if p := os.Getenv("VALET_CHROMIUM"); p != "" {
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the console's browser tests need Chromium at %s (or $VALET_CHROMIUM): install it with `apt-get install -y chromium`: %v", path, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.Headless, chromedp.DisableGPU, chromedp.NoSandbox,
		chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("hide-scrollbars", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // start the browser, with no deadline
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	return ctx
}

// screenshots collects a PNG of each console page into a directory that
// outlives the test, and into docs/screenshots when
// VALET_UPDATE_SCREENSHOTS=1.
type screenshots struct {
	t   *testing.T
	dir string
}

func newScreenshots(t *testing.T) *screenshots {
	dir, err := os.MkdirTemp("", "valet-console-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("console screenshots: %s", dir)
	return &screenshots{t: t, dir: dir}
}

func (s *screenshots) take(ctx context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		s.t.Fatalf("screenshot %s is not a PNG", name)
	}
	if err := os.WriteFile(filepath.Join(s.dir, name+".png"), png, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if os.Getenv("VALET_UPDATE_SCREENSHOTS") == "1" {
		docs := filepath.Join("..", "..", "docs", "screenshots")
		if err := os.MkdirAll(docs, 0o755); err != nil {
			s.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(docs, name+".png"), png, 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
}

// step runs browser steps with a deadline.
func step(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// submit clicks a button that submits a form and returns the response of
// the page the browser lands on.
func submit(t *testing.T, ctx context.Context, what, sel string) *network.Response {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := chromedp.RunResponse(sctx, chromedp.Click(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return res
}

// read runs one browser action that returns a value, with a deadline.
func read[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

func bodyText(t *testing.T, ctx context.Context) string {
	t.Helper()
	return read(t, ctx, "read the page", chromedp.Text(chromedp.CSS("body")))
}

func TestConsoleInBrowser(t *testing.T) {
	e := startConsole(t)
	ctx := newChromium(t)
	shots := newScreenshots(t)

	// Something to look at: leases, a denial, requests waiting for
	// approval, break-glass access awaiting review, an irrevocable lease.
	e.Mint(e.Attest("ci-runner", nil), "demo")
	e.Mint(e.Attest("ci-runner", nil), "demo")
	e.Mint(e.Attest("nightly-report", nil), "other")
	if r := e.Do("POST", "/v1/credentials", e.Attest("nightly-report", map[string]any{"blocked": true}), map[string]any{"role": "demo"}); r.Status != http.StatusForbidden {
		t.Fatalf("blocked agent: %d", r.Status)
	}
	requestGrant(t, e, e.Attest("db-migrator", nil), "two-keys", "drop and recreate the staging schema")
	if r := e.Do("POST", "/v1/credentials", e.Attest("oncall-bot", nil), map[string]any{"role": "glass", "reason": "checkout is down: restart the payment workers", "break_glass": true}); r.Status != http.StatusCreated {
		t.Fatalf("break-glass: %d %s", r.Status, r.Body)
	}
	stuck := e.Mint(e.Attest("backup-agent", nil), "flaky")["lease_id"].(string)
	if r := e.Do("DELETE", "/v1/leases/"+stuck, testOperatorToken, nil); r.Status != 200 {
		t.Fatalf("revoke the flaky lease: %d %s", r.Status, r.Body)
	}
	agent := e.Attest("deploy-bot", nil)
	grantID := requestGrant(t, e, agent, "elevated", "rotate the TLS certificate of prod-web")

	// Signed out, the console sends the browser to sign in.
	step(t, ctx, "open the console", chromedp.Navigate(e.URL+"/ui/"))
	if loc := read(t, ctx, "location", chromedp.Location()); loc != e.URL+"/ui/login" {
		t.Fatalf("signed out, /ui/ lands on %s", loc)
	}
	shots.take(ctx, "login")

	// Sign in with the operator token.
	step(t, ctx, "type the token", chromedp.SendKeys(chromedp.CSS("#token"), testOperatorToken))
	res := submit(t, ctx, "sign in", `form[action="/ui/login"] button[type=submit]`)
	if res.Status != 200 || res.URL != e.URL+"/ui/grants" {
		t.Fatalf("after sign-in: %d %s", res.Status, res.URL)
	}
	// The security headers, as the browser received them.
	for k, want := range map[string]string{
		"content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
		"x-content-type-options":  "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY", "cache-control": "no-store",
	} {
		if got := header(res, k); got != want {
			t.Errorf("browser saw %s: %q, want %q", k, got, want)
		}
	}
	// Chromium kept the Secure __Host- cookie on http://127.0.0.1, as it
	// does for loopback origins, with its attributes.
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{e.URL + "/ui/grants"}})
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == "__Host-valet-session" {
			session = c
		}
	}
	if session == nil || !session.Secure || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || session.Path != "/" || !session.Session {
		t.Fatalf("session cookie in the browser: %+v (all: %d)", session, len(cookies.Cookies))
	}
	page := bodyText(t, ctx)
	for _, want := range []string{"Signed in as alice", "Pending approvals", "test/deploy-bot → elevated", "rotate the TLS certificate of prod-web",
		"0/1 approvals", "test/db-migrator → two-keys", "Break-glass access awaiting review", "test/oncall-bot → glass", "Activity, last 24 hours"} {
		if !strings.Contains(page, want) {
			t.Fatalf("grants page lacks %q:\n%s", want, page)
		}
	}
	shots.take(ctx, "grants")

	// Approve in the browser, with a comment, from the grant's page (the
	// URL notifications carry).
	step(t, ctx, "open the grant", chromedp.Navigate(e.URL+"/ui/grants/"+grantID), chromedp.WaitVisible(chromedp.CSS("#comment-"+grantID)))
	shots.take(ctx, "grant")
	step(t, ctx, "comment", chromedp.SendKeys(chromedp.CSS("#comment-"+grantID), "CHG-4711 approved; rotate and report back"))
	res = submit(t, ctx, "approve", `form[action="/ui/grants/`+grantID+`/approve"] button.button-primary`)
	if res.Status != 200 || res.URL != e.URL+"/ui/grants/"+grantID {
		t.Fatalf("after approving: %d %s", res.Status, res.URL)
	}
	if page := bodyText(t, ctx); !strings.Contains(page, "Approved test/deploy-bot → elevated") || !strings.Contains(page, "CHG-4711 approved") {
		t.Fatalf("grant page after approving:\n%s", page)
	}
	g := e.Do("GET", "/v1/grants/"+grantID, testOperatorToken, nil).JSON(t)
	approvals, _ := g["approvals"].([]any)
	if g["state"] != "approved" || len(approvals) != 1 {
		t.Fatalf("grant after the browser approved it: %v", g)
	}
	if a := approvals[0].(map[string]any); a["operator"] != "alice" || a["method"] != "console" || a["comment"] != "CHG-4711 approved; rotate and report back" {
		t.Fatalf("approval %v", a)
	}

	// The agent redeems it through the API and gets its credential.
	r := e.Do("POST", "/v1/grants/"+grantID+"/redeem", e.Attest("deploy-bot", nil), nil)
	if r.Status != http.StatusCreated {
		t.Fatalf("redeem: %d %s", r.Status, r.Body)
	}
	cred := r.JSON(t)
	leaseID := cred["lease_id"].(string)
	token, _ := cred["credential"].(map[string]any)["access_token"].(string)
	if token == "" {
		t.Fatalf("redeemed credential %v", cred)
	}

	// Find the lease in the browser and revoke it there.
	step(t, ctx, "open the leases", chromedp.Navigate(e.URL+"/ui/leases"), chromedp.WaitVisible(chromedp.CSS("#lease-"+leaseID)))
	if row := read(t, ctx, "lease row", chromedp.Text(chromedp.CSS("#lease-"+leaseID))); !strings.Contains(row, "test/deploy-bot") || !strings.Contains(row, "elevated") || !strings.Contains(row, "active") {
		t.Fatalf("lease row: %q", row)
	}
	shots.take(ctx, "leases")
	html := read(t, ctx, "page HTML", chromedp.OuterHTML(chromedp.CSS("html")))
	if strings.Contains(html, token) || strings.Contains(html, testOperatorToken) {
		t.Fatal("the leases page shows a credential or a token")
	}
	res = submit(t, ctx, "revoke", "#lease-"+leaseID+" button")
	if res.Status != 200 || !strings.Contains(bodyText(t, ctx), "Revoked lease "+leaseID) {
		t.Fatalf("after revoking: %d\n%s", res.Status, bodyText(t, ctx))
	}
	if l := e.Do("GET", "/v1/leases/"+leaseID, testOperatorToken, nil).JSON(t); l["state"] != "revoked" {
		t.Fatalf("lease after the browser revoked it: %v", l)
	}

	// The other pages.
	step(t, ctx, "irrevocable", chromedp.Navigate(e.URL+"/ui/leases/irrevocable"), chromedp.WaitVisible(chromedp.CSS("table.irrevocable")))
	if page := bodyText(t, ctx); !strings.Contains(page, "test/backup-agent") || !strings.Contains(page, "connection refused") {
		t.Fatalf("irrevocable page:\n%s", page)
	}
	shots.take(ctx, "irrevocable")
	step(t, ctx, "agents", chromedp.Navigate(e.URL+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("table.agents")))
	if page := bodyText(t, ctx); !strings.Contains(page, "test/ci-runner") || !strings.Contains(page, "test/nightly-report") {
		t.Fatalf("agents page:\n%s", page)
	}
	shots.take(ctx, "agents")
	step(t, ctx, "audit", chromedp.Navigate(e.URL+"/ui/audit"), chromedp.WaitVisible(chromedp.CSS("table.audit")))
	if page := bodyText(t, ctx); !strings.Contains(page, "Chain verified") || !strings.Contains(page, "grant.approve") {
		t.Fatalf("audit page:\n%s", page)
	}
	shots.take(ctx, "audit")

	// A page on another origin that posts a form to the console is
	// refused, even carrying a valid CSRF token (as if it had leaked):
	// from the same site (another port, so the SameSite=Strict cookie is
	// sent and only the origin check stands) and from another site.
	csrf := read(t, ctx, "csrf token", chromedp.Evaluate[string](`document.querySelector('input[name=csrf]').value`))
	for _, host := range []string{"127.0.0.1", "localhost"} {
		victim := e.Mint(e.Attest("victim-agent", nil), "demo")["lease_id"].(string)
		target := e.URL + "/ui/leases/" + victim + "/revoke"
		evil := evilServer(t, host, target, csrf)
		status, text := crossSitePost(t, ctx, evil, target)
		if status != http.StatusForbidden || !strings.Contains(text, "Request refused") || !strings.Contains(text, "nothing was changed") {
			t.Fatalf("form from %s: status %d\n%s", evil, status, text)
		}
		if l := e.Do("GET", "/v1/leases/"+victim, testOperatorToken, nil).JSON(t); l["state"] != "active" {
			t.Fatalf("a cross-origin form from %s changed the lease: %v", evil, l)
		}
	}

	// Signing out ends the session: the console asks to sign in again.
	step(t, ctx, "back to the console", chromedp.Navigate(e.URL+"/ui/grants"), chromedp.WaitVisible(chromedp.CSS("#pending-h")))
	res = submit(t, ctx, "sign out", `form[action="/ui/logout"] button`)
	if !strings.HasPrefix(res.URL, e.URL+"/ui/login") || !strings.Contains(bodyText(t, ctx), "You have signed out.") {
		t.Fatalf("after signing out: %s", res.URL)
	}
	step(t, ctx, "grants after sign-out", chromedp.Navigate(e.URL+"/ui/grants"))
	if loc := read(t, ctx, "location", chromedp.Location()); !strings.HasPrefix(loc, e.URL+"/ui/login") {
		t.Fatalf("after sign-out /ui/grants lands on %s", loc)
	}
}

// header reads a response header the browser received.
func header(res *network.Response, name string) string {
	for k, v := range res.Headers {
		if strings.EqualFold(k, name) {
			return fmt.Sprint(v)
		}
	}
	return ""
}

// evilServer serves, on host, a page that submits a form to target at
// once, and returns its URL.
func evilServer(t *testing.T, host, target, csrf string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>You won a prize</title>
<form id="f" method="post" action="%s"><input type="hidden" name="csrf" value="%s"></form>
<script>document.getElementById("f").submit();</script>`, target, url.QueryEscape(csrf))
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// crossSitePost opens the evil page and returns the status and text of
// the console's answer to the form it submits.
func crossSitePost(t *testing.T, ctx context.Context, evil, target string) (int, string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	responses := chromedp.Events(sctx, network.ResponseReceived)
	if err := chromedp.Do(sctx, chromedp.Navigate(evil)); err != nil {
		t.Fatalf("open %s: %v", evil, err)
	}
	status := 0
	for ev, err := range responses {
		if err != nil {
			t.Fatalf("waiting for the console's answer to the form from %s: %v", evil, err)
		}
		if ev.Type == network.ResourceTypeDocument && ev.Response.URL == target {
			status = int(ev.Response.Status)
			break
		}
	}
	var text string
	for {
		loc, err := chromedp.Run(sctx, chromedp.Location())
		if err != nil {
			t.Fatal(err)
		}
		if loc == target {
			if text, err = chromedp.Run(sctx, chromedp.Text(chromedp.CSS("main"))); err == nil {
				break
			}
		}
		select {
		case <-sctx.Done():
			t.Fatalf("the browser did not show the console's answer (at %s)", loc)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return status, text
}
