package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/valet-broker/valet/leases/clock"
)

// TestConsoleQuarantineInBrowser: in headless Chromium, a quarantined
// agent shows on the agents page with the signal that moved it; releasing
// it needs a fresh sign-in; a form from another origin cannot release it.
func TestConsoleQuarantineInBrowser(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startConsoleWith(t, func(e *testEnv) {
		e.Clock = clk
		withSignalSource(e, nil)
	})
	ctx := newChromium(t)
	shots := newScreenshots(t)
	const agent = "test/exfil-bot"
	e.Mint(e.Attest("exfil-bot", nil), "demo")
	e.Mint(e.Attest("quiet-bot", nil), "demo")
	if r := e.Do("POST", "/v1/signals", siemToken, map[string]any{"agent_id": agent, "severity": "high", "reason": "uploads to an unknown host"}); r.Status != http.StatusCreated {
		t.Fatalf("signal: %d %s", r.Status, r.Body)
	}
	if r := e.Do("POST", "/v1/signals", siemToken, map[string]any{"agent_id": "test/quiet-bot", "severity": "low", "reason": "ran at 3am"}); r.Status != http.StatusCreated {
		t.Fatalf("signal: %d %s", r.Status, r.Body)
	}
	quarantined := func() bool {
		return e.Do("GET", agentPath(agent), testOperatorToken, nil).JSON(t)["quarantined"] == true
	}

	step(t, ctx, "sign in", chromedp.Navigate(e.URL+"/ui/login"), chromedp.SendKeys(chromedp.CSS("#token"), testOperatorToken))
	submit(t, ctx, "sign in", `form[action="/ui/login"] button[type=submit]`)
	step(t, ctx, "agents", chromedp.Navigate(e.URL+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#quarantined-h")))
	row := read(t, ctx, "quarantined row", chromedp.Text(chromedp.CSS(`table.quarantined tbody tr`)))
	for _, want := range []string{agent, "60", "high signal from source:siem: uploads to an unknown host", "detector: source:siem"} {
		if !strings.Contains(row, want) {
			t.Fatalf("quarantined row lacks %q: %q", want, row)
		}
	}
	if page := bodyText(t, ctx); !strings.Contains(page, "test/quiet-bot") || !strings.Contains(page, "ran at 3am") {
		t.Fatalf("agents page lacks the other agent's signal:\n%s", page)
	}
	shots.take(ctx, "agents-quarantine")

	// Eleven minutes later the sign-in is no longer fresh: the release
	// sends the operator to sign in again and changes nothing.
	clk.Advance(11 * time.Minute)
	page := e.URL + "/ui/agents/" + url.PathEscape(agent)
	step(t, ctx, "agent page", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#quarantined")))
	shots.take(ctx, "agent")
	step(t, ctx, "reason", chromedp.SendKeys(chromedp.CSS(`form.release input[name=reason]`), "rotated its key; the host is our backup"))
	res := submit(t, ctx, "release", `form.release button[type=submit]`)
	if !strings.HasPrefix(res.URL, e.URL+"/ui/login?") || !strings.Contains(res.URL, "reason=fresh") {
		t.Fatalf("release with a stale sign-in lands on %s", res.URL)
	}
	if !quarantined() {
		t.Fatal("released without a fresh sign-in")
	}
	step(t, ctx, "sign in again", chromedp.SendKeys(chromedp.CSS("#token"), testOperatorToken))
	res = submit(t, ctx, "sign in again", `form[action^="/ui/login"] button[type=submit]`)
	if res.URL != page {
		t.Fatalf("after signing in again: %s, want back at %s", res.URL, page)
	}
	step(t, ctx, "reason", chromedp.SendKeys(chromedp.CSS(`form.release input[name=reason]`), "rotated its key; the host is our backup"))
	submit(t, ctx, "release", `form.release button[type=submit]`)
	if text := bodyText(t, ctx); !strings.Contains(text, "Released "+agent) {
		t.Fatalf("after releasing:\n%s", text)
	}
	if quarantined() {
		t.Fatal("the release did not take")
	}

	// Quarantined again (by an operator, through the API), a form posted
	// from another origin, even with a valid CSRF token, releases nothing.
	if r := e.Do("POST", agentPath(agent)+"/quarantine", testOperatorToken, map[string]any{"reason": "again"}); r.Status != http.StatusOK {
		t.Fatalf("quarantine: %d %s", r.Status, r.Body)
	}
	csrf := read(t, ctx, "csrf token", chromedp.Evaluate[string](`document.querySelector('input[name=csrf]').value`))
	target := e.URL + "/ui/agents/" + url.PathEscape(agent) + "/release"
	for _, host := range []string{"127.0.0.1", "localhost"} {
		evil := evilServer(t, host, target, csrf)
		status, text := crossSitePost(t, ctx, evil, target)
		if status != http.StatusForbidden || !strings.Contains(text, "Request refused") {
			t.Fatalf("release form from %s: status %d\n%s", evil, status, text)
		}
		if !quarantined() {
			t.Fatalf("a cross-origin form from %s released the agent", evil)
		}
	}
}
