package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/bolt"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases/clock"
	"github.com/valet-broker/valet/leases/config"
)

// requestGrant asks for role and expects a 202 with a pending grant.
func requestGrant(t *testing.T, e *testEnv, tok, role, reason string) string {
	t.Helper()
	r := e.Do("POST", "/v1/credentials", tok, map[string]any{"role": role, "reason": reason, "ttl": "90s"})
	if r.Status != http.StatusAccepted {
		t.Fatalf("request %s: %d %s", role, r.Status, r.Body)
	}
	body := r.JSON(t)
	if body["status"] != "pending" || r.Header.Get("Location") != "/v1/grants/"+body["grant_id"].(string) {
		t.Fatalf("202 body %v, Location %q", body, r.Header.Get("Location"))
	}
	return body["grant_id"].(string)
}

func decide(t *testing.T, e *testEnv, op, id, what string, want int) map[string]any {
	t.Helper()
	r := e.Do("POST", "/v1/grants/"+id+"/"+what, op, map[string]any{"comment": what + " by test"})
	if r.Status != want {
		t.Fatalf("%s %s: %d %s, want %d", what, id, r.Status, r.Body, want)
	}
	return r.JSON(t)
}

func TestGrantOneApproval(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("needs-admin", nil)
	id := requestGrant(t, e, agent, "elevated", "rotate the prod certificate")
	if got := e.LeaseCounts(); len(got) != 0 {
		t.Fatalf("a pending request minted something: %v", got)
	}
	// The agent can poll its grant; another agent cannot see it.
	if r := e.Do("GET", "/v1/grants/"+id, agent, nil); r.Status != 200 || r.JSON(t)["state"] != "pending" {
		t.Fatalf("poll: %d %s", r.Status, r.Body)
	}
	if r := e.Do("GET", "/v1/grants/"+id, e.Attest("someone-else", nil), nil); r.Status != 404 {
		t.Fatalf("another agent polling: %d", r.Status)
	}
	// Redeem before approval is refused.
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil); r.Status != http.StatusConflict {
		t.Fatalf("redeem of a pending grant: %d %s", r.Status, r.Body)
	}
	g := decide(t, e, testOperatorToken, id, "approve", 200)
	if g["state"] != "approved" || len(g["approvals"].([]any)) != 1 {
		t.Fatalf("after approval: %v", g)
	}
	r := e.Do("POST", "/v1/grants/"+id+"/redeem", e.Attest("needs-admin", nil), nil)
	if r.Status != http.StatusCreated {
		t.Fatalf("redeem: %d %s", r.Status, r.Body)
	}
	cred := r.JSON(t)
	if cred["grant_id"] != id || cred["credential"].(map[string]any)["access_token"] == nil {
		t.Fatalf("redeemed credential %v", cred)
	}
	// The lease records the grant and its approvers.
	l := e.Do("GET", "/v1/leases/"+cred["lease_id"].(string), testOperatorToken, nil).JSON(t)
	if l["grant_id"] != id || len(l["approvers"].([]any)) != 1 || l["approvers"].([]any)[0] != "alice" {
		t.Fatalf("lease %v", l)
	}
	if d := time.Until(mustTime(t, l["expires_at"])); d > 90*time.Second || d < 80*time.Second {
		t.Fatalf("lease TTL %s, want the requested 90s", d)
	}
	// Exactly once.
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", e.Attest("needs-admin", nil), nil); r.Status != http.StatusConflict {
		t.Fatalf("second redeem: %d %s", r.Status, r.Body)
	}
	if got := e.Events.Types(); strings.Join(got, ",") != "grant.requested,grant.approved,grant.redeemed" {
		t.Fatalf("events %v", got)
	}
	kinds := auditKinds(t, e)
	for _, k := range []string{"grant.request", "grant.approve", "grant.redeem", "mint"} {
		if kinds[k] == 0 {
			t.Fatalf("no %s audit record: %v", k, kinds)
		}
	}
}

func mustTime(t *testing.T, v any) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func auditKinds(t *testing.T, e *testEnv) map[string]int {
	t.Helper()
	r := e.Do("GET", "/v1/audit?limit=1000", testOperatorToken, nil)
	kinds := map[string]int{}
	for _, rec := range r.JSON(t)["records"].([]any) {
		kinds[rec.(map[string]any)["kind"].(string)]++
	}
	return kinds
}

func TestGrantNOfMDistinctApprovers(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("two-keys-agent", nil)
	id := requestGrant(t, e, agent, "two-keys", "drop the staging database")
	if g := decide(t, e, testOperatorToken, id, "approve", 200); g["state"] != "pending" {
		t.Fatalf("one of two approvals: %v", g)
	}
	// The same operator again does not count twice.
	decide(t, e, testOperatorToken, id, "approve", http.StatusConflict)
	// carol is not in the approvers group.
	decide(t, e, opToken("carol"), id, "approve", http.StatusForbidden)
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil); r.Status != http.StatusConflict {
		t.Fatalf("redeem with one of two approvals: %d", r.Status)
	}
	g := decide(t, e, opToken("bob"), id, "approve", 200)
	if g["state"] != "approved" {
		t.Fatalf("two approvals: %v", g)
	}
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil); r.Status != http.StatusCreated {
		t.Fatalf("redeem: %d %s", r.Status, r.Body)
	}
}

func TestGrantSelfApprovalRefused(t *testing.T) {
	e := newTestEnv(t).Start()
	// The agent's attestation says its owner is owner@example.com, who is
	// also an operator.
	agent := e.Attest("owned-agent", map[string]any{"email": "owner@example.com"})
	id := requestGrant(t, e, agent, "elevated", "ship the hotfix")
	decide(t, e, opToken("owner@example.com"), id, "approve", http.StatusForbidden)
	r := e.Do("GET", "/v1/grants/"+id, testOperatorToken, nil)
	if g := r.JSON(t); g["state"] != "pending" || len(g["approvals"].([]any)) != 0 {
		t.Fatalf("after a self-approval attempt: %v", g)
	}
	if auditKindsDecision(t, e, "grant.approve", "deny") != 1 {
		t.Fatal("the refused self-approval was not audited")
	}
}

func auditKindsDecision(t *testing.T, e *testEnv, kind, decision string) int {
	t.Helper()
	r := e.Do("GET", "/v1/audit?kind="+kind+"&limit=1000", testOperatorToken, nil)
	n := 0
	for _, rec := range r.JSON(t)["records"].([]any) {
		if rec.(map[string]any)["decision"] == decision {
			n++
		}
	}
	return n
}

func TestGrantDenialEndsIt(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("denied-agent", nil)
	id := requestGrant(t, e, agent, "two-keys", "just because")
	decide(t, e, testOperatorToken, id, "approve", 200)
	if g := decide(t, e, opToken("bob"), id, "deny", 200); g["state"] != "denied" || g["denial"].(map[string]any)["operator"] != "bob" {
		t.Fatalf("after deny: %v", g)
	}
	decide(t, e, opToken("owner@example.com"), id, "approve", http.StatusConflict)
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil); r.Status != http.StatusConflict {
		t.Fatalf("redeem of a denied grant: %d", r.Status)
	}
}

func TestGrantExpiry(t *testing.T) {
	e := newTestEnv(t)
	fake := clock.NewFake(time.Now())
	e.Clock = fake
	e.Issuer.SetClock(fake)
	e.Start()
	agent := e.Attest("slow-agent", nil)
	pending := requestGrant(t, e, agent, "two-keys", "wait forever")
	approved := requestGrant(t, e, agent, "elevated", "approved, never used")
	decide(t, e, testOperatorToken, approved, "approve", 200)
	lease := e.Mint(agent, "other")["lease_id"].(string) // ttl 1m
	// elevated: redeem within 15m (default); two-keys: request_ttl 10m.
	fake.Advance(16 * time.Minute)
	for _, id := range []string{pending, approved} {
		if g := e.Do("GET", "/v1/grants/"+id, testOperatorToken, nil).JSON(t); g["state"] != "expired" {
			t.Fatalf("grant %s after its deadline: %v", id, g)
		}
	}
	// Lists filter on the state they show, whether or not the sweepers
	// have recorded the expiries yet.
	for _, tc := range []struct {
		path, key string
		want      []string
	}{
		{"/v1/grants?state=pending", "grants", nil},
		{"/v1/grants?state=approved", "grants", nil},
		{"/v1/grants?state=expired", "grants", []string{approved, pending}},
		{"/v1/leases?state=active", "leases", nil},
		{"/v1/leases?state=expired", "leases", []string{lease}},
	} {
		var ids []string
		for _, it := range e.Do("GET", tc.path, testOperatorToken, nil).JSON(t)[tc.key].([]any) {
			m := it.(map[string]any)
			ids = append(ids, m["id"].(string))
			if want := tc.path[strings.Index(tc.path, "=")+1:]; m["state"] != want {
				t.Errorf("%s lists %s shown as %v", tc.path, m["id"], m["state"])
			}
		}
		if slices.Sort(ids); !slices.Equal(ids, slices.Sorted(slices.Values(tc.want))) {
			t.Errorf("%s lists %v, want %v", tc.path, ids, tc.want)
		}
	}
	if r := e.Do("POST", "/v1/grants/"+approved+"/redeem", e.Attest("slow-agent", nil), nil); r.Status != http.StatusConflict {
		t.Fatalf("redeem of an expired approval: %d %s", r.Status, r.Body)
	}
	decide(t, e, opToken("bob"), pending, "approve", http.StatusConflict)
	// The sweeper records the expiries and announces them.
	eventually(t, 10*time.Second, "expiries recorded", func() bool {
		if fake.Waiters() > 0 {
			fake.Advance(5 * time.Second)
		}
		return auditKinds(t, e)["grant.expire"] == 2
	})
	n := 0
	for _, ty := range e.Events.Types() {
		if ty == "grant.expired" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("expiry events: %v", e.Events.Types())
	}
}

func TestGrantConcurrentRedeemMintsOnce(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("racer", nil)
	id := requestGrant(t, e, agent, "elevated", "race me")
	decide(t, e, testOperatorToken, id, "approve", 200)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil)
			mu.Lock()
			codes[r.Status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[http.StatusCreated] != 1 || codes[http.StatusConflict] != 19 {
		t.Fatalf("20 concurrent redeems answered %v; want exactly one 201", codes)
	}
	if got := e.LeaseCounts(); got["active"] != 1 {
		t.Fatalf("leases %v, want exactly one active", got)
	}
}

func TestGrantRedeemByAnotherAgentRefused(t *testing.T) {
	e := newTestEnv(t).Start()
	id := requestGrant(t, e, e.Attest("asker", nil), "elevated", "for me only")
	decide(t, e, testOperatorToken, id, "approve", 200)
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", e.Attest("thief", nil), nil); r.Status != http.StatusNotFound {
		t.Fatalf("redeem by another agent: %d %s", r.Status, r.Body)
	}
	if r := e.Do("POST", "/v1/grants/"+id+"/redeem", e.Attest("asker", nil), nil); r.Status != http.StatusCreated {
		t.Fatalf("the asker could no longer redeem after the thief tried: %d %s", r.Status, r.Body)
	}
}

func TestGrantTamperedContentRefused(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("tamper-agent", nil)
	id := requestGrant(t, e, agent, "elevated", "small change")
	decide(t, e, testOperatorToken, id, "approve", 200)
	// Someone with write access to the database stretches the approved
	// TTL. The server holds the file; write through its own store.
	err := e.Server.store.(*bolt.Store).Tamper("grants", []byte(id), func(v []byte) []byte {
		var g map[string]any
		json.Unmarshal(v, &g)
		g["ttl"] = "24h0m0s"
		v, _ = json.Marshal(g)
		return v
	})
	if err != nil {
		t.Fatal(err)
	}
	r := e.Do("POST", "/v1/grants/"+id+"/redeem", agent, nil)
	if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "different request") {
		t.Fatalf("redeem of a tampered grant: %d %s", r.Status, r.Body)
	}
	if got := e.LeaseCounts(); len(got) != 0 {
		t.Fatalf("a tampered grant minted: %v", got)
	}

}

func TestBreakGlassAndReview(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("firefighter", nil)
	// A reason is mandatory.
	if r := e.Do("POST", "/v1/credentials", agent, map[string]any{"role": "glass", "break_glass": true}); r.Status != http.StatusBadRequest {
		t.Fatalf("break-glass without reason: %d %s", r.Status, r.Body)
	}
	// Roles that do not allow it refuse.
	if r := e.Do("POST", "/v1/credentials", agent, map[string]any{"role": "elevated", "break_glass": true, "reason": "prod is down, paging failed"}); r.Status != http.StatusForbidden {
		t.Fatalf("break-glass on a role without it: %d %s", r.Status, r.Body)
	}
	r := e.Do("POST", "/v1/credentials", agent, map[string]any{"role": "glass", "break_glass": true, "reason": "prod is down, paging failed", "ttl": "1h"})
	if r.Status != http.StatusCreated {
		t.Fatalf("break-glass: %d %s", r.Status, r.Body)
	}
	cred := r.JSON(t)
	if d := time.Until(mustTime(t, cred["expires_at"])); d > 2*time.Minute {
		t.Fatalf("break-glass lease lasts %s; the role caps it at 2m", d)
	}
	gid := cred["grant_id"].(string)
	// Flagged until reviewed.
	list := e.Do("GET", "/v1/grants?review=pending", testOperatorToken, nil).JSON(t)["grants"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["id"] != gid {
		t.Fatalf("review queue: %v", list)
	}
	if e.Events.Types()[0] != "break_glass" || e.Events.events[0].Severity != "high" {
		t.Fatalf("events %v", e.Events.events)
	}
	decide(t, e, testOperatorToken, gid, "review", 200)
	if list := e.Do("GET", "/v1/grants?review=pending", testOperatorToken, nil).JSON(t)["grants"].([]any); len(list) != 0 {
		t.Fatalf("review queue after review: %v", list)
	}
	decide(t, e, opToken("bob"), gid, "review", http.StatusConflict)
	kinds := auditKinds(t, e)
	if kinds["break_glass"] != 2 || kinds["grant.review"] != 1 { // the refusal and the grant
		t.Fatalf("audit %v", kinds)
	}
}

func TestGrantLongPoll(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("patient", nil)
	id := requestGrant(t, e, agent, "elevated", "waiting for a human")
	done := make(chan map[string]any)
	go func() {
		r := e.Do("GET", "/v1/grants/"+id+"?wait=30s", agent, nil)
		done <- r.JSON(t)
	}()
	// The poll is parked until the approval arrives.
	eventually(t, 5*time.Second, "the poll is parked", func() bool { return e.Server.broker.WaitingOn(id) > 0 })
	select {
	case g := <-done:
		t.Fatalf("the long poll returned before any change: %v", g)
	default:
	}
	start := time.Now()
	decide(t, e, testOperatorToken, id, "approve", 200)
	select {
	case g := <-done:
		if g["state"] != "approved" {
			t.Fatalf("long poll answered %v", g)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the long poll woke %s after the approval", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not wake on approval")
	}
	if r := e.Do("GET", "/v1/grants/"+id+"?wait=2h", agent, nil); r.Status != http.StatusBadRequest {
		t.Fatalf("wait over the limit: %d", r.Status)
	}
}

func TestGrantWebhooksDelivered(t *testing.T) {
	got := make(chan *http.Request, 8)
	bodies := make(chan []byte, 8)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- b
	}))
	defer recv.Close()
	e := newTestEnv(t)
	secret := filepath.Join(e.Dir, "hook-secret")
	os.WriteFile(secret, []byte("s3cret-hmac-key"), 0o600)
	e.Config.Notifications.Webhooks = []notify.WebhookConfig{config.Defaulted(func(w *notify.WebhookConfig) {
		w.Name, w.URL, w.SecretFile, w.Events = "sec", recv.URL, secret, []string{"grant.requested"}
	})}
	e.Start()
	id := requestGrant(t, e, e.Attest("hooked", nil), "elevated", "webhook test")
	select {
	case r := <-got:
		body := <-bodies
		mac := hmac.New(sha256.New, []byte("s3cret-hmac-key"))
		mac.Write([]byte(r.Header.Get("X-Valet-Timestamp") + "." + string(body)))
		if r.Header.Get("X-Valet-Event") != "grant.requested" || r.Header.Get("X-Valet-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) {
			t.Fatalf("headers %v", r.Header)
		}
		var ev map[string]any
		json.Unmarshal(body, &ev)
		if ev["grant"].(map[string]any)["id"] != id || !strings.HasSuffix(ev["url"].(string), "/ui/grants/"+id) {
			t.Fatalf("payload %s", body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook delivery within 10s")
	}
	r := e.Do("GET", "/v1/notifications", testOperatorToken, nil)
	if hooks := r.JSON(t)["webhooks"].([]any); len(hooks) != 1 {
		t.Fatalf("notification stats: %s", r.Body)
	}
}

func TestShutdownEndsLongPolls(t *testing.T) {
	e := newTestEnv(t).Start()
	agent := e.Attest("patient-at-shutdown", nil)
	id := requestGrant(t, e, agent, "elevated", "waiting while valet stops")
	done := make(chan int)
	go func() { done <- e.Do("GET", "/v1/grants/"+id+"?wait=60s", agent, nil).Status }()
	eventually(t, 5*time.Second, "the poll is parked", func() bool {
		return e.Server.broker.WaitingOn(id) > 0
	})
	start := time.Now()
	if err := e.Server.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-done:
		if st != http.StatusOK {
			t.Fatalf("the parked poll answered %d", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll held up the shutdown")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
}

func TestGrantReviewFollowsDecisionRules(t *testing.T) {
	e := newTestEnv(t)
	addRole(t, e, func(r *broker.Role) {
		r.Name, r.Backend, r.Approval.Required = "guarded-glass", "tokens", 1
		r.Approval.Approvers = broker.ApproversConfig{Groups: []string{"approvers"}}
		r.Approval.BreakGlass.Allowed = true
	})
	e.Start()
	// The agent's attestation names owner@example.com (an approver) as
	// the person behind it.
	agent := e.Attest("owned-firefighter", map[string]any{"email": "Owner@Example.com"})
	r := e.Do("POST", "/v1/credentials", agent, map[string]any{"role": "guarded-glass", "break_glass": true, "reason": "prod is down"})
	if r.Status != http.StatusCreated {
		t.Fatalf("break-glass: %d %s", r.Status, r.Body)
	}
	gid := r.JSON(t)["grant_id"].(string)
	cases := []struct {
		name, op, want string
	}{
		{"an operator outside the approvers", opToken("carol"), "carol is not among the approvers of role guarded-glass"},
		{"the person who took the access", opToken("owner@example.com"), "owner@example.com asked for this access and cannot review it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Do("POST", "/v1/grants/"+gid+"/review", c.op, map[string]any{"comment": "looks fine to me"})
			if p := assertProblem(t, r, http.StatusForbidden); !strings.Contains(p.Detail, c.want) {
				t.Fatalf("detail %q, want %q", p.Detail, c.want)
			}
			g := e.Do("GET", "/v1/grants/"+gid, testOperatorToken, nil).JSON(t)
			if g["review"] != nil || g["review_pending"] != true {
				t.Fatalf("grant after a refused review: %v", g)
			}
		})
	}
	if n := auditKindsDecision(t, e, "grant.review", "deny"); n != 2 {
		t.Fatalf("%d refused reviews audited, want 2", n)
	}
	if g := decide(t, e, opToken("bob"), gid, "review", http.StatusOK); g["review"].(map[string]any)["operator"] != "bob" {
		t.Fatalf("review by an approver: %v", g)
	}
}
