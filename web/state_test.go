package web

import (
	"context"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
)

// stateOf returns the state a page's lease table shows for id ("" if the
// page does not list it).
func stateOf(page, id string) string {
	i := strings.Index(page, id)
	if i < 0 {
		return ""
	}
	m := regexp.MustCompile(`<span class="state state-(\w+)">`).FindStringSubmatch(page[i:])
	if m == nil {
		return ""
	}
	return m[1]
}

// The console's lists filtered by state list what they show in that state,
// at the same moment: a lease past its expiry, or a grant past its
// deadline, is expired before the sweepers record it.
func TestConsoleStateFiltersMatchShownState(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")

	old := f.mint("agent-1", "demo", nil).Lease.ID // 5m
	oldGrant := f.request("agent-2", "elevated", "rotate the certificate", nil)
	f.clock.Advance(2 * time.Minute)
	young := f.mint("agent-1", "demo", nil).Lease.ID
	f.clock.Advance(4 * time.Minute)

	active := b.get("/ui/leases").Body // state=active by default
	if strings.Contains(active, old) || stateOf(active, young) != "active" {
		t.Errorf("active leases: %s shown %q, %s shown %q; want only %s, active", old, stateOf(active, old), young, stateOf(active, young), young)
	}
	expired := b.get("/ui/leases?state=expired").Body
	if stateOf(expired, old) != "expired" || strings.Contains(expired, young) {
		t.Errorf("expired leases: %s shown %q, %s listed: %v; want only %s, expired", old, stateOf(expired, old), young, strings.Contains(expired, young), old)
	}

	f.clock.Advance(time.Hour) // past the grant's request_ttl
	fresh := f.request("agent-3", "elevated", "read the logs", nil)
	b.login("alice") // the session idled out
	// The page lists pending requests first, then the history below its
	// filter form.
	page := b.get("/ui/grants?state=expired").Body
	split := strings.Index(page, `id="f-state"`)
	if split < 0 {
		t.Fatalf("no history filter on the grants page:\n%s", page)
	}
	pending, hist := page[:split], page[split:]
	if !strings.Contains(hist, oldGrant) || strings.Contains(hist, fresh) {
		t.Errorf("expired history lists %s: %v, %s: %v; want only the first", oldGrant, strings.Contains(hist, oldGrant), fresh, strings.Contains(hist, fresh))
	}
	if strings.Contains(pending, oldGrant) || !strings.Contains(pending, fresh) {
		t.Errorf("pending requests list %s: %v, %s: %v; want only the second", oldGrant, strings.Contains(pending, oldGrant), fresh, strings.Contains(pending, fresh))
	}
}

// Revoking a lease that had already ended says so instead of claiming a
// revocation or a pending one.
func TestConsoleRevokeOfAnEndedLeaseSaysSo(t *testing.T) {
	f := newFixture(t, nil)
	b := f.browser()
	b.login("alice")
	res := f.mint("agent-1", "demo", nil)
	p, err := f.b.AuthenticateAgent(context.Background(), f.attest("agent-1", nil), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.EndLease(context.Background(), broker.Caller{Agent: p}, res.Lease.ID, "", ""); err != nil {
		t.Fatal(err)
	}
	csrf := b.csrf("/ui/leases?state=")
	r := b.post("/ui/leases/"+res.Lease.ID+"/revoke", url.Values{"csrf": {csrf}})
	page := b.get(r.Location()).Body
	mustContain(t, page, "had already ended (released); nothing was revoked")
	if strings.Contains(page, "Revoked lease") || strings.Contains(page, "has not confirmed the revocation") {
		t.Errorf("the console claims a revocation of a released lease:\n%s", page)
	}
}
