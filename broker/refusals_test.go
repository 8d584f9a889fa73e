package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/leases/audit"
)

// startSummaries runs the broker's summarizer; stop ends it and waits for
// its last summary.
func startSummaries(f *fixture) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.b.SummarizeRefusals(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// waitUntil waits for cond, which another goroutine makes true, for at
// most 10 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// refusalRecords lists the records of refused credentials (one by one)
// and the summaries.
func refusalRecords(t *testing.T, f *fixture) (individual, summaries []audit.Record) {
	t.Helper()
	recs, err := f.store.ListAudit(context.Background(), audit.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		switch {
		case r.Kind == audit.KindAuthRefusedSummary:
			summaries = append(summaries, r)
		case r.Actor.Type == audit.ActorAnonymous:
			individual = append(individual, r)
		}
	}
	return individual, summaries
}

func TestFailedAttestationsThrottledPerAddress(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) { c.Limits.AuthFailuresPerMinute = 3 })
	ctx := context.Background()
	mint := func(tok, ip string) error {
		_, err := f.b.Mint(ctx, broker.MintRequest{Attestation: tok, Role: "r", SourceIP: ip, RequestID: "req-" + ip})
		return err
	}
	wantCode := func(t *testing.T, err error, code string) *broker.Error {
		t.Helper()
		var be *broker.Error
		if !errors.As(err, &be) || be.Code != code {
			t.Fatalf("error %v, want code %s", err, code)
		}
		return be
	}
	for range 3 {
		wantCode(t, mint("garbage", "192.0.2.1"), broker.EUNAUTHORIZED)
	}
	be := wantCode(t, mint("garbage", "192.0.2.1"), broker.ERATELIMIT)
	if be.RetryAfter <= 0 || be.RetryAfter > 20*time.Second {
		t.Errorf("RetryAfter = %s, want up to 20s (3 a minute)", be.RetryAfter)
	}

	t.Run("a valid attestation from the throttled address passes", func(t *testing.T) {
		if err := mint(f.attest(t, "agent-1"), "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.b.AuthenticateAgent(ctx, f.attest(t, "agent-1"), "192.0.2.1", "r1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("every flow that takes an attestation is throttled", func(t *testing.T) {
		_, err := f.b.AuthenticateAgent(ctx, "garbage", "192.0.2.1", "r2")
		wantCode(t, err, broker.ERATELIMIT)
		_, err = f.b.RedeemGrant(ctx, broker.RedeemRequest{Attestation: "garbage", GrantID: "g", SourceIP: "192.0.2.1"})
		wantCode(t, err, broker.ERATELIMIT)
	})
	t.Run("other addresses have their own budget", func(t *testing.T) {
		wantCode(t, mint("garbage", "192.0.2.2"), broker.EUNAUTHORIZED)
	})
	t.Run("IPv6 addresses are counted by /64", func(t *testing.T) {
		for i := range 3 {
			wantCode(t, mint("garbage", fmt.Sprintf("2001:db8::%d", i+1)), broker.EUNAUTHORIZED)
		}
		wantCode(t, mint("garbage", "2001:db8::ff"), broker.ERATELIMIT)
		wantCode(t, mint("garbage", "2001:db8:0:1::1"), broker.EUNAUTHORIZED)
	})
	t.Run("the budget refills", func(t *testing.T) {
		f.clock.Advance(20 * time.Second)
		wantCode(t, mint("garbage", "192.0.2.1"), broker.EUNAUTHORIZED)
		wantCode(t, mint("garbage", "192.0.2.1"), broker.ERATELIMIT)
	})

	// Within the budget each refusal is recorded with its address; over it,
	// none is.
	individual, _ := refusalRecords(t, f)
	perSource := map[string]int{}
	for _, r := range individual {
		if r.Decision != audit.Deny || r.Details["credential"] != broker.CredentialAttestation || r.PolicyVersion == "" {
			t.Errorf("refusal recorded as %+v", r)
		}
		perSource[r.Details["source_ip"]]++
	}
	want := map[string]int{"192.0.2.1": 4, "192.0.2.2": 1, "2001:db8::1": 1, "2001:db8::2": 1, "2001:db8::3": 1, "2001:db8:0:1::1": 1}
	if fmt.Sprint(perSource) != fmt.Sprint(want) {
		t.Errorf("refusals recorded per address %v, want %v", perSource, want)
	}
}

// TestRefusalSummaries: refusals not recorded one by one — over an
// address's budget, or over the records allowed a minute — are summarized
// once a minute and at shutdown, with counts that add up.
func TestRefusalSummaries(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Limits.AuthFailuresPerMinute = 5
		c.Limits.AuthFailureRecordsPerMinute = 2
	})
	stop := startSummaries(f)
	refuse := func(cred, ip string) error {
		return f.b.RefuseCredential(context.Background(), broker.Refusal{Credential: cred, SourceIP: ip, Kind: audit.KindOperatorAuth, Reason: "bad"})
	}
	// 4 addresses within their budgets: 2 recorded, 2 counted.
	for i := range 4 {
		if err := refuse(broker.CredentialOperatorToken, fmt.Sprintf("192.0.2.%d", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	// One address floods: its first 5 are within budget (counted, as the
	// records of the minute are used up), the rest throttled.
	for range 100 {
		refuse(broker.CredentialAttestation, "198.51.100.7")
	}
	individual, summaries := refusalRecords(t, f)
	if len(individual) != 2 || len(summaries) != 0 {
		t.Fatalf("%d refusals recorded one by one and %d summaries before the minute is up, want 2 and 0", len(individual), len(summaries))
	}

	waitUntil(t, "the summarizer arms its timer", func() bool { return f.clock.Waiters() > 0 })
	f.clock.Advance(time.Minute)
	waitUntil(t, "a summary", func() bool {
		_, summaries = refusalRecords(t, f)
		return len(summaries) > 0
	})
	s := summaries[0]
	wantDetails := map[string]string{
		"refused": "102", "refused.attestation": "100", "refused.operator_token": "2", "addresses": "3",
		"top_addresses": "198.51.100.7=100, 192.0.2.3=1, 192.0.2.4=1",
	}
	for k, v := range wantDetails {
		if s.Details[k] != v {
			t.Errorf("summary %s = %q, want %q (all: %v)", k, s.Details[k], v, s.Details)
		}
	}
	if s.Details["since"] == "" || s.Actor.Type != audit.ActorSystem || s.Decision != audit.Deny {
		t.Errorf("summary %+v", s)
	}

	// At shutdown the counts since the last summary are written. A minute
	// on, the budgets have refilled: 2 of 10 are recorded one by one.
	for range 10 {
		refuse(broker.CredentialConsoleToken, "198.51.100.7")
	}
	stop()
	_, summaries = refusalRecords(t, f)
	if len(summaries) != 2 || summaries[1].Details["refused"] != "8" || summaries[1].Details["refused.console_token"] != "8" {
		t.Fatalf("summaries after shutdown: %+v, want a second one with 8 console_token refusals", summaries)
	}
	res, err := f.store.VerifyAudit(context.Background())
	if err != nil || !res.OK {
		t.Errorf("audit verify: %+v %v", res, err)
	}
}

// TestRefusalAccountingIsBounded: a flood from more addresses than valet
// tracks neither grows memory without bound nor escapes throttling, and
// its summary names a bounded number of addresses.
func TestRefusalAccountingIsBounded(t *testing.T) {
	f := newFixture(t, func(c *fixtureConfig) {
		c.Limits.AuthFailuresPerMinute = 1
		c.Limits.AuthFailureRecordsPerMinute = 0
	})
	stop := startSummaries(f)
	throttled := 0
	const n = 30000
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		if err := f.b.RefuseCredential(context.Background(), broker.Refusal{Credential: broker.CredentialAttestation, SourceIP: ip, Kind: audit.KindMint}); err != nil {
			throttled++
		}
	}
	// 10,000 addresses get a budget of their own; the others share one.
	if throttled < n-10001 {
		t.Errorf("%d of %d first failures throttled, want all but about 10,000", throttled, n)
	}
	stop()
	individual, summaries := refusalRecords(t, f)
	if len(individual) != 0 || len(summaries) != 1 {
		t.Fatalf("%d individual records and %d summaries, want 0 and 1 (records per minute 0)", len(individual), len(summaries))
	}
	d := summaries[0].Details
	if d["refused"] != strconv.Itoa(n) || d["addresses"] != "more than 1000" {
		t.Errorf("summary %v", d)
	}
}
