package broker

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/valet-broker/valet/leases/audit"
)

// Credential types a refusal names: a closed set, so they can label
// metrics and key the counts of summary records.
const (
	CredentialAttestation         = "attestation"          // an agent's workload attestation
	CredentialOperatorToken       = "operator_token"       // a bearer token at an operator endpoint
	CredentialConsoleToken        = "console_token"        // the token of the console's sign-in form
	CredentialIntrospectionClient = "introspection_client" // a resource server's client authentication at introspection
	CredentialSignalSource        = "signal_source"        // a signal source's token or ID token at POST /v1/signals
	CredentialSET                 = "set"                  // a Security Event Token pushed to POST /v1/signals/set
)

// CredentialTypes lists every credential type, in a fixed order.
var CredentialTypes = []string{CredentialAttestation, CredentialOperatorToken, CredentialConsoleToken, CredentialIntrospectionClient,
	CredentialSignalSource, CredentialSET}

// Refusal is a credential that did not verify, refused before valet knows
// who presented it.
type Refusal struct {
	// Credential is one of CredentialTypes.
	Credential string
	// SourceIP is the client's address (see broker/clientip).
	SourceIP string
	// Kind is the kind of the audit record when the refusal is recorded
	// one by one (mint, grant.redeem, operator.auth, ...).
	Kind      string
	Role      string // the role asked for, if any
	RequestID string
	// Reason says why the credential did not verify. It is recorded, so it
	// must never contain the credential.
	Reason string
}

// RefuseCredential accounts for a credential that did not verify. Callers
// verify the credential first and call this only when it failed, so a
// valid credential is never refused whatever its address did before.
//
// Each client address may fail limits.auth_failures_per_minute times a
// minute (a token bucket of that size refilled at that rate; IPv6
// addresses are counted by /64). Within that budget RefuseCredential
// writes the refusal as an audit record of r.Kind (unless more than
// limits.auth_failure_records_per_minute were written in the last minute,
// across all addresses) and returns nil: the caller answers with its own
// authentication error. Over the budget it returns an ERATELIMIT *Error
// whose RetryAfter says when the address may present a credential that
// fails again; the refusal is then only counted. Counted refusals reach
// the audit log as one auth.refused.summary record a minute (see
// SummarizeRefusals), so a flood of any size adds a bounded number of
// records.
func (b *Broker) RefuseCredential(ctx context.Context, r Refusal) error {
	now := b.clock.Now()
	throttled, retry, record := b.refusals.refuse(r, now)
	if b.obs != nil {
		b.obs.CredentialRefused(r.Credential, throttled)
	}
	if record {
		details := map[string]string{"credential": r.Credential}
		if r.SourceIP != "" {
			details["source_ip"] = r.SourceIP
		}
		b.audit(ctx, audit.Entry{Kind: r.Kind, Actor: audit.Actor{Type: audit.ActorAnonymous}, Decision: audit.Deny,
			Reason: r.Reason, Role: r.Role, RequestID: r.RequestID, PolicyVersion: b.authz.Version(), Details: details})
	}
	if !throttled {
		return nil
	}
	e := &Error{Code: ERATELIMIT, RetryAfter: retry}
	e.Message = fmt.Sprintf("too many credentials that did not verify came from your address (%s), and this one did not verify either; "+
		"check the credential, then retry after %ds", r.SourceIP, e.RetryAfterSeconds())
	return e
}

// refusalSummaryInterval is how often counted refusals are summarized.
const refusalSummaryInterval = time.Minute

// SummarizeRefusals writes an auth.refused.summary record of the refusals
// counted since the last one, once every minute in which there were any,
// until ctx ends; then it writes the last one, so a shutdown loses no
// count. Run runs it; call it directly (once, on its own goroutine) only
// without Run.
func (b *Broker) SummarizeRefusals(ctx context.Context) {
	for {
		t := b.clock.NewTimer(refusalSummaryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			b.flushRefusals(context.WithoutCancel(ctx))
			return
		case <-t.C():
		}
		b.flushRefusals(ctx)
	}
}

func (b *Broker) flushRefusals(ctx context.Context) {
	if e, ok := b.refusals.summary(); ok {
		b.audit(ctx, e)
	}
}

// Bounds on what the refusal accounting remembers.
const (
	// maxTrackedSources bounds the per-address budgets. While it is
	// reached and no budget is idle, new addresses share one budget, so
	// an attacker with many addresses throttles only itself.
	maxTrackedSources = 10000
	// maxSummarySources bounds the addresses a summary counts one by one.
	maxSummarySources = 1000
	// summaryTopSources is how many of the busiest addresses a summary names.
	summaryTopSources = 10
)

// refusals is the state behind RefuseCredential: a failure budget per
// address, a budget of individual audit records, and the counts of the
// next summary. Memory is bounded by the constants above.
type refusals struct {
	perSource rate.Limit
	burst     int

	mu        sync.Mutex
	sources   map[string]*rate.Limiter
	overflow  *rate.Limiter
	records   *rate.Limiter
	lastSweep time.Time
	pending   refusalCounts
}

// refusalCounts are the refusals of one summary.
type refusalCounts struct {
	since        time.Time
	total        int64
	byCredential map[string]int64
	bySource     map[string]int64
	moreSources  bool // bySource was full: some addresses were not counted one by one
}

func newRefusals(l LimitsConfig) *refusals {
	perMinute, records := l.AuthFailuresPerMinute, l.AuthFailureRecordsPerMinute
	perSource := rate.Limit(float64(perMinute) / 60)
	return &refusals{
		perSource: perSource, burst: perMinute,
		sources:  map[string]*rate.Limiter{},
		overflow: rate.NewLimiter(perSource, perMinute),
		records:  rate.NewLimiter(rate.Limit(float64(records)/60), records),
	}
}

// refuse spends one failure of r's address. It reports whether the address
// was over its budget (and when it may fail again), and, if not, whether
// the refusal should be recorded one by one. Refusals not recorded are
// counted for the next summary.
func (rs *refusals) refuse(r Refusal, now time.Time) (throttled bool, retryAfter time.Duration, record bool) {
	key := budgetKey(r.SourceIP)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	lim := rs.budget(key, now)
	if lim.AllowN(now, 1) {
		if rs.records.AllowN(now, 1) {
			return false, 0, true
		}
		rs.count(key, r.Credential, now)
		return false, 0, false
	}
	rs.count(key, r.Credential, now)
	missing := 1 - lim.TokensAt(now)
	return true, time.Duration(math.Ceil(missing / float64(rs.perSource) * float64(time.Second))), false
}

// budget returns the failure budget of an address.
func (rs *refusals) budget(key string, now time.Time) *rate.Limiter {
	if lim, ok := rs.sources[key]; ok {
		return lim
	}
	if len(rs.sources) >= maxTrackedSources || now.Sub(rs.lastSweep) >= time.Minute {
		rs.sweep(now)
	}
	if len(rs.sources) >= maxTrackedSources {
		return rs.overflow
	}
	lim := rate.NewLimiter(rs.perSource, rs.burst)
	rs.sources[key] = lim
	return lim
}

// sweep forgets budgets that have refilled (they are as good as new), at
// most once a second so a full table cannot make every failure pay for a
// scan.
func (rs *refusals) sweep(now time.Time) {
	if now.Sub(rs.lastSweep) < time.Second {
		return
	}
	rs.lastSweep = now
	for k, lim := range rs.sources {
		if lim.TokensAt(now) >= float64(rs.burst) {
			delete(rs.sources, k)
		}
	}
}

func (rs *refusals) count(key, credential string, now time.Time) {
	p := &rs.pending
	if p.total == 0 {
		*p = refusalCounts{since: now, byCredential: map[string]int64{}, bySource: map[string]int64{}}
	}
	p.total++
	p.byCredential[credential]++
	if _, ok := p.bySource[key]; ok || len(p.bySource) < maxSummarySources {
		p.bySource[key]++
	} else {
		p.moreSources = true
	}
}

// summary takes the pending counts as an audit entry; ok is false when
// nothing was counted.
func (rs *refusals) summary() (e audit.Entry, ok bool) {
	rs.mu.Lock()
	p := rs.pending
	rs.pending = refusalCounts{}
	rs.mu.Unlock()
	if p.total == 0 {
		return audit.Entry{}, false
	}
	addresses := strconv.Itoa(len(p.bySource))
	if p.moreSources {
		addresses = "more than " + addresses
	}
	d := map[string]string{
		"since":     p.since.UTC().Format(time.RFC3339),
		"refused":   strconv.FormatInt(p.total, 10),
		"addresses": addresses,
	}
	for c, n := range p.byCredential {
		d["refused."+c] = strconv.FormatInt(n, 10)
	}
	type sourceCount struct {
		key string
		n   int64
	}
	top := make([]sourceCount, 0, len(p.bySource))
	for k, n := range p.bySource {
		top = append(top, sourceCount{k, n})
	}
	slices.SortFunc(top, func(a, b sourceCount) int { return cmp.Or(cmp.Compare(b.n, a.n), strings.Compare(a.key, b.key)) })
	names := make([]string, 0, summaryTopSources)
	for _, s := range top[:min(len(top), summaryTopSources)] {
		names = append(names, s.key+"="+strconv.FormatInt(s.n, 10))
	}
	d["top_addresses"] = strings.Join(names, ", ")
	return audit.Entry{
		Kind: audit.KindAuthRefusedSummary, Actor: audit.Actor{Type: audit.ActorSystem, ID: "valet"}, Decision: audit.Deny,
		Reason:  fmt.Sprintf("%d refused credentials from %s addresses were counted, not recorded one by one", p.total, addresses),
		Details: d,
	}, true
}

// budgetKey is the address a failure is counted against: the address
// itself, or its /64 for IPv6, since one host commonly holds a whole /64.
// Anything that is not an address is its own key.
func budgetKey(source string) string {
	a, err := netip.ParseAddr(source)
	if err != nil || !a.Is6() || a.Is4In6() {
		return source
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}
