package api

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/valet-broker/valet/leases"
)

// Metrics are valet's Prometheus metrics. Labels never carry agent ids,
// tokens or lease ids: only roles, outcomes, routes and states.
type Metrics struct {
	Registry     *prometheus.Registry
	Mints        *prometheus.CounterVec
	MintLatency  *prometheus.HistogramVec
	HTTPRequests *prometheus.CounterVec
	ExpiryLate   prometheus.Histogram
	Revocations  *prometheus.CounterVec
	PolicyReload *prometheus.CounterVec
	// PolicyErrors counts policies that failed to evaluate, by policy id
	// (the ids of the loaded policy sets, a closed set).
	PolicyErrors *prometheus.CounterVec
	// Notifications counts webhook deliveries by outcome (ok, retry,
	// failed, dropped).
	Notifications *prometheus.CounterVec
}

// NewMetrics registers valet's metrics (and the Go and process collectors)
// on reg.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	m := &Metrics{
		Registry: reg,
		Mints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_mints_total", Help: "Mint requests by role and outcome (ok or an error code).",
		}, []string{"role", "outcome"}),
		MintLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "valet_mint_duration_seconds", Help: "Time to answer a mint request.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		ExpiryLate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "valet_lease_expiry_lateness_seconds", Help: "How long after its expiry a lease was recorded as expired.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		Revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_revocation_attempts_total", Help: "Revocation attempts by outcome: revoked (the backend confirmed), failed (retried later), expired (the credential died on its own first).",
		}, []string{"outcome"}),
		PolicyReload: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_policy_reloads_total", Help: "Policy reloads by result (ok or error).",
		}, []string{"result"}),
		PolicyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_policy_evaluation_errors_total", Help: "Policies that failed to evaluate for a request, by policy id (policy.on_error says whether a forbid that errors denies).",
		}, []string{"policy"}),
		Notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_notifications_total", Help: "Webhook delivery attempts by webhook, event and outcome (ok, retry, failed, dropped).",
		}, []string{"webhook", "event", "outcome"}),
	}
	reg.MustRegister(m.Mints, m.MintLatency, m.HTTPRequests, m.ExpiryLate, m.Revocations, m.PolicyReload, m.PolicyErrors, m.Notifications,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Minted implements broker.Observer.
func (m *Metrics) Minted(role, outcome string, d time.Duration) {
	if role == "" {
		role = "unknown"
	}
	m.Mints.WithLabelValues(role, outcome).Inc()
	m.MintLatency.WithLabelValues(outcome).Observe(d.Seconds())
}

// Expired records expiry lateness for a batch of expired leases.
func (m *Metrics) Expired(expired []*leases.Lease, now time.Time) {
	for _, l := range expired {
		m.ExpiryLate.Observe(now.Sub(l.ExpiresAt).Seconds())
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
