// Package api is valet's HTTP interface: a chi router with one file per
// resource, strict request decoding, one error-to-status table (errors.go)
// and bearer authentication for agents (attestations) and operators.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/valet-broker/valet/broker"
	"github.com/valet-broker/valet/broker/clientip"
	"github.com/valet-broker/valet/broker/jobs"
	"github.com/valet-broker/valet/leases/audit"
)

// Config are the Server's dependencies.
type Config struct {
	Broker    *broker.Broker
	Operators *broker.Operators
	// ResourceServers authenticates introspection clients; nil means none
	// are configured and every introspection call is refused.
	ResourceServers *broker.ResourceServers
	// SignalSources authenticates the senders of POST /v1/signals besides
	// operators (nil: operators only).
	SignalSources *broker.SignalSources
	// Audit reads the audit log.
	Audit  audit.Reader
	Limits broker.LimitsConfig
	// PublicURL is valet's external URL (iss of its tokens).
	PublicURL string
	Metrics   *Metrics
	Logger    *slog.Logger
	// Ready reports whether the server can take traffic (/readyz).
	Ready func() error
	// UI, if set, is mounted at /ui/.
	UI http.Handler
	// NotificationStats, if set, reports webhook delivery (GET
	// /v1/notifications).
	NotificationStats func() any
	// ClientIP finds each request's client address (nil: the connection's
	// peer; no proxy is trusted).
	ClientIP *clientip.Resolver
	// Jobs is the scheduler (nil: no job is configured).
	Jobs *jobs.Scheduler
	// AuditKeys are the audit checkpoint public keys as JWKs, served at
	// /.well-known/valet-audit-keys.json.
	AuditKeys []map[string]any
}

// Server serves the API.
type Server struct {
	b       *broker.Broker
	ops     *broker.Operators
	rs      *broker.ResourceServers
	sources *broker.SignalSources
	audit   audit.Reader
	limits  broker.LimitsConfig
	public  string
	metrics *Metrics
	log     *slog.Logger
	ready   func() error
	router  chi.Router
	nstats  func() any
	addr    *clientip.Resolver
	jobs    *jobs.Scheduler
	// auditKeys are the checkpoint public keys (JWKs).
	auditKeys []map[string]any
	// routes are the router's route patterns: the closed set of the
	// route label.
	routes map[string]bool
}

// New builds the router.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry(), knownLabels(cfg.Broker))
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	if cfg.ResourceServers == nil {
		cfg.ResourceServers = broker.NewResourceServers(broker.IntrospectionConfig{}, nil, time.Now)
	}
	s := &Server{
		b: cfg.Broker, ops: cfg.Operators, rs: cfg.ResourceServers, sources: cfg.SignalSources, audit: cfg.Audit, limits: cfg.Limits, public: cfg.PublicURL,
		metrics: cfg.Metrics, log: cfg.Logger, ready: cfg.Ready, nstats: cfg.NotificationStats, addr: cfg.ClientIP,
		jobs: cfg.Jobs, auditKeys: cfg.AuditKeys,
	}
	r := chi.NewRouter()
	r.Use(s.withRequestID, s.withRecover, s.withLogging, s.withLimits)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.Error(w, r, broker.Errorf(broker.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, Problem{Type: ProblemType("method_not_allowed"), Title: "Method not allowed", Status: http.StatusMethodNotAllowed,
			Detail: fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path), Code: "method_not_allowed", RequestID: requestID(r.Context())})
	})
	s.registerHealthRoutes(r, cfg.Metrics.Registry)
	s.registerWellKnownRoutes(r)
	r.Get("/.well-known/valet-audit-keys.json", s.handleAuditKeys)
	r.Route("/v1", func(r chi.Router) {
		s.registerCredentialRoutes(r)
		s.registerOAuthRoutes(r)
		s.registerLeaseRoutes(r)
		s.registerAuditRoutes(r)
		s.registerRoleRoutes(r)
		s.registerGrantRoutes(r)
		s.registerSignalRoutes(r)
		s.registerAgentRoutes(r)
		s.registerJobRoutes(r)
		r.With(s.requireOperator).Get("/notifications", s.handleNotificationStats)
	})
	if cfg.UI != nil {
		r.Mount("/ui", cfg.UI)
	}
	s.router = r
	s.routes = map[string]bool{}
	_ = chi.Walk(r, func(_, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		s.routes[route] = true
		return nil
	})
	return s
}

// handleNotificationStats shows webhook delivery counters and the last
// error of each webhook, so failed notifications are visible.
func (s *Server) handleNotificationStats(w http.ResponseWriter, r *http.Request) {
	var stats any = []any{}
	if s.nstats != nil {
		stats = s.nstats()
	}
	writeJSON(w, http.StatusOK, map[string]any{"webhooks": stats})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

func (s *Server) registerHealthRoutes(r chi.Router, reg *prometheus.Registry) {
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(); err != nil {
			s.Error(w, r, broker.Wrap(broker.EUNAVAILABLE, err, "valet is not ready to take traffic yet; retry later"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	r.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyOperator
)

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

// withRequestID takes a well-formed X-Request-Id from the client or makes
// one, and echoes it.
func (s *Server) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			var b [12]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyRequestID, id)))
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (s *Server) withRecover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Error(w, r, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (sw *statusWriter) WriteHeader(code int) {
	if sw.status == 0 {
		sw.status = code
	}
	sw.ResponseWriter.WriteHeader(code)
}

func (sw *statusWriter) Write(b []byte) (int, error) {
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	return sw.ResponseWriter.Write(b)
}

func (sw *statusWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }

// withLogging logs one line per request: never headers or bodies, which
// carry attestations and credentials.
// RequestLogMessage is the message of the line logged for each request
// (at info; its attributes say the request id, method, route, status,
// duration and client address).
const RequestLogMessage = "http"

func (s *Server) withLogging(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if !s.routes[route] {
			route = "unmatched" // no route, or a sub-router's catch-all (404)
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		s.metrics.Request(route, r.Method, sw.status)
		if route == "/healthz" || route == "/metrics" || route == "/readyz" {
			return
		}
		s.log.Info(RequestLogMessage, "request_id", requestID(r.Context()), "method", r.Method, "route", route,
			"status", sw.status, "duration_ms", float64(time.Since(start).Microseconds())/1000, "remote", s.clientIP(r))
	})
}

// withLimits bounds the request body before any handler reads it. A body
// whose declared length is over the limit is never read: the first read
// fails with *http.MaxBytesError, so every handler refuses it in its own
// format (problem+json, or RFC 6749 JSON at the token endpoint).
func (s *Server) withLimits(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > s.limits.MaxBodyBytes {
			r.Body = tooLargeBody{limit: s.limits.MaxBodyBytes, orig: r.Body}
		} else {
			r.Body = http.MaxBytesReader(w, r.Body, s.limits.MaxBodyBytes)
		}
		next.ServeHTTP(w, r)
	})
}

// tooLargeBody stands in for a body declared over the limit.
type tooLargeBody struct {
	limit int64
	orig  io.Closer
}

func (b tooLargeBody) Read([]byte) (int, error) { return 0, &http.MaxBytesError{Limit: b.limit} }
func (b tooLargeBody) Close() error             { return b.orig.Close() }

// bearer returns the bearer token of the request, checking its size before
// anything parses it. A request carries one credential (RFC 9110 section
// 11.6.2): two Authorization headers are refused, never one chosen.
func (s *Server) bearer(r *http.Request) (string, error) {
	if n := len(r.Header.Values("Authorization")); n > 1 {
		return "", broker.Errorf(broker.EINVALID, "the Authorization header is given %d times; send one credential", n)
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", broker.Errorf(broker.EUNAUTHORIZED, "the Authorization header must be \"Bearer <token>\"")
	}
	tok = strings.TrimSpace(tok)
	if len(tok) > s.limits.MaxAttestationBytes {
		return "", broker.Errorf(broker.ETOOLARGE, "bearer token of %d bytes is over the limit of %d", len(tok), s.limits.MaxAttestationBytes)
	}
	return tok, nil
}

// caller authenticates the bearer as an operator or, failing that, as an
// agent attestation. A credential that does not verify is refused through
// broker.RefuseCredential, so its address's failures are throttled.
func (s *Server) caller(r *http.Request) (broker.Caller, error) {
	tok, err := s.bearer(r)
	if err != nil {
		return broker.Caller{}, err
	}
	if tok == "" {
		return broker.Caller{}, broker.Errorf(broker.EUNAUTHORIZED, "send an attestation or an operator token as Authorization: Bearer <token>")
	}
	op, isOp, err := s.ops.Authenticate(r.Context(), tok)
	if err != nil {
		return broker.Caller{}, s.refuseOperator(r, err)
	}
	if isOp {
		return broker.Caller{Operator: op}, nil
	}
	p, err := s.b.AuthenticateAgent(r.Context(), tok, s.clientIP(r), requestID(r.Context()))
	if err != nil {
		return broker.Caller{}, err
	}
	return broker.Caller{Agent: p}, nil
}

// requireOperator admits only operators. A bearer token that is not a
// valid operator credential is refused through broker.RefuseCredential:
// 401 while the client's address is within its failure budget, 429 once
// it is over; a valid one is admitted either way.
func (s *Server) requireOperator(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, err := s.bearer(r)
		if err != nil {
			s.Error(w, r, err)
			return
		}
		if tok == "" {
			s.Error(w, r, broker.Errorf(broker.EUNAUTHORIZED, "this endpoint is for operators: send an operator token as Authorization: Bearer <token>"))
			return
		}
		op, isOp, err := s.ops.Authenticate(r.Context(), tok)
		if err == nil && !isOp {
			err = broker.Errorf(broker.EUNAUTHORIZED, "this endpoint is for operators; the bearer token is not an operator credential")
		}
		if err != nil {
			s.Error(w, r, s.refuseOperator(r, err))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyOperator, op)))
	})
}

// refuseOperator accounts for an operator credential that did not verify
// (cause) and returns the error to answer with: cause, or ERATELIMIT when
// the client's address is over its failure budget.
func (s *Server) refuseOperator(r *http.Request, cause error) error {
	if broker.ErrorCode(cause) != broker.EUNAUTHORIZED {
		return cause // not a verdict on the credential (an issuer's keys could not be fetched)
	}
	if err := s.b.RefuseCredential(r.Context(), broker.Refusal{
		Credential: broker.CredentialOperatorToken, SourceIP: s.clientIP(r), Kind: audit.KindOperatorAuth,
		RequestID: requestID(r.Context()), Reason: broker.ErrorMessage(cause),
	}); err != nil {
		return err
	}
	return cause
}

func operatorFrom(ctx context.Context) *broker.Operator {
	op, _ := ctx.Value(keyOperator).(*broker.Operator)
	return op
}

// clientIP is the request's client address: the connection's peer, or
// the address a trusted proxy forwarded (see clientip.Resolver).
func (s *Server) clientIP(r *http.Request) string { return s.addr.ClientIP(r) }
