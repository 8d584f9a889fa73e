package api

import (
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/agents"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/broker/notify"
	"github.com/valet-broker/valet/leases"
)

// Metrics are valet's Prometheus metrics. Every label value comes from a
// closed set — HTTP methods, route patterns, configured role and webhook
// names, error codes, outcomes — and anything outside it is counted as
// "other", so no request can add a series. Labels never carry agent ids,
// tokens or lease ids.
type Metrics struct {
	Registry      *prometheus.Registry
	mints         *prometheus.CounterVec
	mintLatency   *prometheus.HistogramVec
	httpRequests  *prometheus.CounterVec
	expiryLate    prometheus.Histogram
	revocations   *prometheus.CounterVec
	policyReloads *prometheus.CounterVec
	// policyErrors counts policies that failed to evaluate, by policy id
	// (the ids of the loaded policy sets, a closed set).
	policyErrors  *prometheus.CounterVec
	notifications *prometheus.CounterVec
	refusals      *prometheus.CounterVec
	signals       *prometheus.CounterVec
	jobRuns       *prometheus.CounterVec
	jobDuration   *prometheus.HistogramVec
	jobSuccess    *prometheus.GaugeVec
	jobSkips      *prometheus.CounterVec

	roles, outcomes, webhooks, events, jobs labelSet
}

// KnownLabels are the configured names metrics may carry as labels.
type KnownLabels struct {
	Roles    []string // role names
	Webhooks []string // webhook names
	Jobs     []string // scheduled job names
}

// otherLabel stands for every value outside a label's closed set.
const otherLabel = "other"

// labelSet is the closed set of values a label may take.
type labelSet map[string]bool

func newLabelSet(values ...string) labelSet {
	s := labelSet{}
	for _, v := range values {
		s[v] = true
	}
	return s
}

// value returns v if it is in the set, else "other".
func (s labelSet) value(v string) string {
	if s[v] {
		return v
	}
	return otherLabel
}

// httpMethods are the methods of RFC 9110 and RFC 5789 (PATCH).
var httpMethods = newLabelSet(http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace)

// Closed sets of outcomes reported by valet's own components.
var (
	revocationOutcomes = newLabelSet("revoked", "failed", "unrevocable", "expired")
	reloadResults      = newLabelSet("ok", "error")
	notifyOutcomes     = newLabelSet(notify.OutcomeOK, notify.OutcomeRetry, notify.OutcomeFailed, notify.OutcomeDropped)
	credentialTypes    = newLabelSet(broker.CredentialTypes...)
	signalSources      = newLabelSet(agents.SourceREST, agents.SourceSET, agents.SourceDetector, agents.SourceOperator)
	signalActions      = newLabelSet(string(agents.ActionAlert), string(agents.ActionRevoke), string(agents.ActionQuarantine))
	jobOutcomes        = newLabelSet(jobs.Outcomes...)
)

// liveHeap adds go_gc_heap_live_bytes, the heap the last collection found
// live: unlike the heap in use, which swings with the collector's cycle,
// it grows only when something is kept (a leak shows in it).
var liveHeap = collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}

// NewMetrics registers valet's metrics (and the Go and process collectors)
// on reg. known lists the configured names that may appear as labels.
func NewMetrics(reg *prometheus.Registry, known KnownLabels) *Metrics {
	outcomes := newLabelSet("ok", "pending")
	for code := range statusOf {
		outcomes[code] = true
	}
	events := newLabelSet()
	for ev := range notify.Events {
		events[ev] = true
	}
	m := &Metrics{
		Registry: reg,
		roles:    newLabelSet(known.Roles...), outcomes: outcomes, webhooks: newLabelSet(known.Webhooks...), events: events,
		jobs: newLabelSet(known.Jobs...),
		jobRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_job_runs_total", Help: "Finished runs of scheduled jobs by job and outcome (ok, error, timeout, interrupted).",
		}, []string{"job", "outcome"}),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "valet_job_duration_seconds", Help: "How long runs of scheduled jobs took, by job.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300},
		}, []string{"job"}),
		jobSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "valet_job_last_success_timestamp_seconds", Help: "When each scheduled job last ended successfully (Unix time; absent until it has).",
		}, []string{"job"}),
		jobSkips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_job_skips_total", Help: "Scheduled runs skipped because the previous run of the job was still in progress.",
		}, []string{"job"}),
		mints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_mints_total", Help: "Mint requests by role (other: not a configured role) and outcome (ok or an error code).",
		}, []string{"role", "outcome"}),
		mintLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "valet_mint_duration_seconds", Help: "Time to answer a mint request.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_http_requests_total", Help: "HTTP requests by route pattern (unmatched: no route), method (other: not a standard method) and status.",
		}, []string{"route", "method", "status"}),
		expiryLate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "valet_lease_expiry_lateness_seconds", Help: "How long after its expiry a lease was recorded as expired.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_revocation_attempts_total", Help: "Revocation attempts by outcome: revoked (the backend confirmed), failed (retried later), unrevocable (the backend cannot revoke it: it lives until its expiry), expired (the credential died on its own first).",
		}, []string{"outcome"}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_policy_reloads_total", Help: "Policy reloads by result (ok or error).",
		}, []string{"result"}),
		policyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_policy_evaluation_errors_total", Help: "Policies that failed to evaluate for a request, by policy id (policy.on_error says whether a forbid that errors denies).",
		}, []string{"policy"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_notifications_total", Help: "Webhook delivery attempts by webhook, event and outcome (ok, retry, failed, dropped).",
		}, []string{"webhook", "event", "outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_auth_refusals_total", Help: "Credentials that did not verify, by type (attestation, operator_token, console_token, introspection_client, signal_source, set) and whether their address was over its failure budget (answered 429).",
		}, []string{"credential", "throttled"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_signals_total", Help: "Accepted signals by source kind (source, ssf, detector, operator) and the action taken (alert, revoke, quarantine).",
		}, []string{"source", "action"}),
	}
	reg.MustRegister(m.mints, m.mintLatency, m.httpRequests, m.expiryLate, m.revocations, m.policyReloads, m.policyErrors, m.notifications, m.refusals, m.signals,
		m.jobRuns, m.jobDuration, m.jobSuccess, m.jobSkips,
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(liveHeap)), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// knownLabels are the role names of b's configuration (for a Server built
// without Metrics).
func knownLabels(b *broker.Broker) KnownLabels {
	var k KnownLabels
	if b != nil {
		for _, r := range b.Roles() {
			k.Roles = append(k.Roles, r.Name)
		}
	}
	return k
}

// Minted implements broker.Observer.
func (m *Metrics) Minted(role, outcome string, d time.Duration) {
	outcome = m.outcomes.value(outcome)
	m.mints.WithLabelValues(m.roles.value(role), outcome).Inc()
	m.mintLatency.WithLabelValues(outcome).Observe(d.Seconds())
}

// CredentialRefused implements broker.Observer.
func (m *Metrics) CredentialRefused(credential string, throttled bool) {
	m.refusals.WithLabelValues(credentialTypes.value(credential), strconv.FormatBool(throttled)).Inc()
}

// Signaled implements broker.Observer.
func (m *Metrics) Signaled(sourceKind string, action agents.Action) {
	m.signals.WithLabelValues(signalSources.value(sourceKind), signalActions.value(string(action))).Inc()
}

// Request counts an HTTP request. route must be one of the router's route
// patterns, or "" for none; the server checks it.
func (m *Metrics) Request(route, method string, status int) {
	if route == "" {
		route = "unmatched"
	}
	m.httpRequests.WithLabelValues(route, httpMethods.value(method), strconv.Itoa(status)).Inc()
}

// RevocationAttempt counts a revocation attempt (leases.RevocationQueue's
// OnAttempt).
func (m *Metrics) RevocationAttempt(outcome string) {
	m.revocations.WithLabelValues(revocationOutcomes.value(outcome)).Inc()
}

// PolicyReloaded counts a policy reload; failed says whether it was refused.
func (m *Metrics) PolicyReloaded(failed bool) {
	result := "ok"
	if failed {
		result = "error"
	}
	m.policyReloads.WithLabelValues(reloadResults.value(result)).Inc()
}

// PolicyErrored counts a policy that failed to evaluate for a request.
// id is a policy id of a loaded policy set, a closed set that changes
// only when an operator changes the policy files.
func (m *Metrics) PolicyErrored(id string) { m.policyErrors.WithLabelValues(id).Inc() }

// Notified counts a webhook delivery attempt (notify.Options.OnResult).
func (m *Metrics) Notified(webhook, event, outcome string) {
	m.notifications.WithLabelValues(m.webhooks.value(webhook), m.events.value(event), notifyOutcomes.value(outcome)).Inc()
}

// JobRun implements jobs.Observer.
func (m *Metrics) JobRun(name, outcome string, d time.Duration, end time.Time) {
	job := m.jobs.value(name)
	m.jobRuns.WithLabelValues(job, jobOutcomes.value(outcome)).Inc()
	m.jobDuration.WithLabelValues(job).Observe(d.Seconds())
	if outcome == jobs.OutcomeOK {
		m.jobSuccess.WithLabelValues(job).Set(float64(end.UnixNano()) / 1e9)
	}
}

// JobSkipped implements jobs.Observer.
func (m *Metrics) JobSkipped(name string) { m.jobSkips.WithLabelValues(m.jobs.value(name)).Inc() }

// RegisterStorageGauges exports the database file's size and free pages,
// read at scrape time.
func (m *Metrics) RegisterStorageGauges(stats func() (int64, int, error)) {
	m.Registry.MustRegister(&storageCollector{stats: stats})
}

type storageCollector struct {
	stats func() (int64, int, error)
}

var (
	descDBSize      = prometheus.NewDesc("valet_db_size_bytes", "Size of the database file.", nil, nil)
	descDBFreePages = prometheus.NewDesc("valet_db_free_pages", "Free pages in the database file (reused before it grows; housekeeping reports them too).", nil, nil)
)

func (c *storageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDBSize
	ch <- descDBFreePages
}

func (c *storageCollector) Collect(ch chan<- prometheus.Metric) {
	size, free, err := c.stats()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descDBSize, prometheus.GaugeValue, float64(size))
	ch <- prometheus.MustNewConstMetric(descDBFreePages, prometheus.GaugeValue, float64(free))
}

// RegisterExpiryBacklog exports valet_lease_expiry_backlog, read at each
// scrape at now(): the active leases whose expiry has passed, which the
// expirer has not ended yet.
func (m *Metrics) RegisterExpiryBacklog(backlog func(now time.Time) (int, error), now func() time.Time) {
	m.Registry.MustRegister(&backlogCollector{backlog: backlog, now: now})
}

type backlogCollector struct {
	backlog func(time.Time) (int, error)
	now     func() time.Time
}

var descExpiryBacklog = prometheus.NewDesc("valet_lease_expiry_backlog",
	"Active leases whose expiry has passed and that the expirer has not ended yet (normally 0, or the few that expired since its last pass).", nil, nil)

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descExpiryBacklog }

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.backlog(c.now())
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descExpiryBacklog, prometheus.GaugeValue, float64(n))
}

// Expired records expiry lateness for a batch of expired leases.
func (m *Metrics) Expired(expired []*leases.Lease, now time.Time) {
	for _, l := range expired {
		m.expiryLate.Observe(now.Sub(l.ExpiresAt).Seconds())
	}
}

// RegisterLeaseGauges exports lease counts by state, the revocation queue
// depth and the irrevocable count, read from the store's counters at scrape
// time.
func (m *Metrics) RegisterLeaseGauges(counts func() (map[leases.State]int64, error)) {
	m.Registry.MustRegister(&leaseCollector{counts: counts})
}

type leaseCollector struct {
	counts func() (map[leases.State]int64, error)
}

var (
	descLeases      = prometheus.NewDesc("valet_leases", "Leases by state.", []string{"state"}, nil)
	descQueue       = prometheus.NewDesc("valet_revocation_queue_depth", "Leases waiting for revocation at their backend (revoking and irrevocable).", nil, nil)
	descIrrevocable = prometheus.NewDesc("valet_irrevocable_leases", "Leases whose revocation failed after all attempts; still retried until they expire.", nil, nil)
	descActive      = prometheus.NewDesc("valet_active_leases", "Active leases.", nil, nil)
)

func (c *leaseCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLeases
	ch <- descQueue
	ch <- descIrrevocable
	ch <- descActive
}

func (c *leaseCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.counts()
	if err != nil {
		return
	}
	for _, st := range []leases.State{leases.StatePending, leases.StateActive, leases.StateRevoking, leases.StateIrrevocable,
		leases.StateReleased, leases.StateRevoked, leases.StateExpired} {
		ch <- prometheus.MustNewConstMetric(descLeases, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(counts[leases.StateRevoking]+counts[leases.StateIrrevocable]))
	ch <- prometheus.MustNewConstMetric(descIrrevocable, prometheus.GaugeValue, float64(counts[leases.StateIrrevocable]))
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(counts[leases.StateActive]))
}
