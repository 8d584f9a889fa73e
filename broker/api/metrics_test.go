package api

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricLabelsComeFromClosedSets: whatever a caller passes, every
// label value is a configured name, a known value or "other".
func TestMetricLabelsComeFromClosedSets(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, KnownLabels{Roles: []string{"demo"}, Webhooks: []string{"security"}, Jobs: []string{"housekeeping"}})
	for i := range 1000 {
		bogus := fmt.Sprintf("bogus-%d", i)
		m.Minted(bogus, bogus, time.Millisecond)
		m.Request(bogus, bogus, 200)
		m.Notified(bogus, bogus, bogus)
		m.RevocationAttempt(bogus)
		m.CredentialRefused(bogus, true)
		m.JobRun(bogus, bogus, time.Second, time.Unix(1, 0))
		m.JobSkipped(bogus)
	}
	m.JobRun("housekeeping", "ok", time.Second, time.Unix(1700000000, 0))
	m.JobRun("housekeeping", "timeout", time.Second, time.Unix(1700000100, 0))
	m.JobSkipped("housekeeping")
	m.Minted("demo", "ok", time.Millisecond)
	m.Minted("", "not_found", time.Millisecond)
	m.Request("", "GET", 404)
	m.Notified("security", "grant.requested", "ok")
	m.RevocationAttempt("revoked")
	m.PolicyReloaded(true)
	m.CredentialRefused("attestation", false)

	want := map[string][]string{
		"valet_mints_total":               {"outcome=ok,role=demo 1", "outcome=not_found,role=other 1", "outcome=other,role=other 1000"},
		"valet_mint_duration_seconds":     {"outcome=ok", "outcome=not_found", "outcome=other"},
		"valet_http_requests_total":       {"method=other,route=bogus-%d,status=200", "method=GET,route=unmatched,status=404 1"},
		"valet_notifications_total":       {"event=other,outcome=other,webhook=other 1000", "event=grant.requested,outcome=ok,webhook=security 1"},
		"valet_revocation_attempts_total": {"outcome=other 1000", "outcome=revoked 1"},
		"valet_policy_reloads_total":      {"result=error 1"},
		"valet_auth_refusals_total":       {"credential=other,throttled=true 1000", "credential=attestation,throttled=false 1"},
		"valet_job_runs_total": {"job=other,outcome=other 1000", "job=housekeeping,outcome=ok 1",
			"job=housekeeping,outcome=timeout 1"},
		"valet_job_skips_total":                    {"job=other 1000", "job=housekeeping 1"},
		"valet_job_duration_seconds":               {"job=other", "job=housekeeping"},
		"valet_job_last_success_timestamp_seconds": {"job=housekeeping"},
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		exp, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		var got []string
		for _, metric := range mf.GetMetric() {
			var labels []string
			for _, lp := range metric.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			s := strings.Join(labels, ",")
			if c := metric.GetCounter(); c != nil {
				s += fmt.Sprintf(" %g", c.GetValue())
			}
			got = append(got, s)
		}
		if mf.GetName() == "valet_http_requests_total" {
			// Routes are the router's patterns, passed in by the server
			// itself; only the method is client-chosen here.
			if len(got) != 1001 {
				t.Errorf("%s: %d series, want 1001 (one per route pattern)", mf.GetName(), len(got))
			}
			for _, g := range got {
				if !strings.Contains(g, "method=other") && !strings.Contains(g, "method=GET") {
					t.Errorf("%s: series %s", mf.GetName(), g)
				}
			}
			continue
		}
		if len(got) != len(exp) {
			t.Errorf("%s: series %q, want %q", mf.GetName(), got, exp)
			continue
		}
		for _, e := range exp {
			found := false
			for _, g := range got {
				found = found || strings.HasPrefix(g, e)
			}
			if !found {
				t.Errorf("%s: no series %q in %q", mf.GetName(), e, got)
			}
		}
		delete(want, mf.GetName())
	}
	delete(want, "valet_http_requests_total")
	for name := range want {
		t.Errorf("metric %s not exported", name)
	}
}

// The soak's signals are exported: the live heap (a leak grows it, the
// collector's cycle does not) and the expiry backlog, read at scrape time
// with the time given.
func TestLiveHeapAndExpiryBacklogMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, KnownLabels{})
	at := time.Unix(1700000000, 0)
	var asked time.Time
	m.RegisterExpiryBacklog(func(now time.Time) (int, error) { asked = now; return 42, nil }, func() time.Time { return at })
	runtime.GC() // the live heap is what the last collection found
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, metric := range mf.GetMetric() {
			got[mf.GetName()] = metric.GetGauge().GetValue()
		}
	}
	if v, ok := got["go_gc_heap_live_bytes"]; !ok || v <= 0 {
		t.Errorf("go_gc_heap_live_bytes = %v (exported: %v); want a live heap", v, ok)
	}
	if got["valet_lease_expiry_backlog"] != 42 || !asked.Equal(at) {
		t.Errorf("valet_lease_expiry_backlog = %v, read at %v; want 42 at %v", got["valet_lease_expiry_backlog"], asked, at)
	}
}
