package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

// newDevLBCmd is `valet dev lb`, the one address of `make run-ha`: a
// round-robin reverse proxy in front of valet replicas. It is for trying
// replicas on one machine, not for production (use the platform's load
// balancer there: a Kubernetes Service, for example).
func newDevLBCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "lb --listen ADDR URL...",
		Short:  "A round-robin reverse proxy in front of valet replicas, for make run-ha",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lb, err := newDevLB(args, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			go lb.watch(ctx, 500*time.Millisecond)
			srv := &http.Server{Handler: lb, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				srv.Close()
			}()
			fmt.Fprintf(cmd.OutOrStdout(), "valet dev lb on http://%s, in front of %v\n", ln.Addr(), args)
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", DefaultListen, "address to listen on")
	return cmd
}

// devLB sends each request to the next replica that answered its last
// /readyz, and on to the one after when a replica refuses the connection
// (it died since its last check): nothing reached the dead one, so the
// request can go elsewhere. It does not keep connections to the replicas
// open, so a replica killed between two requests is a refused
// connection, never a request lost on a dead connection.
type devLB struct {
	backends []*lbBackend
	next     atomic.Uint64
	proxy    *httputil.ReverseProxy
	client   *http.Client
	log      *slog.Logger
}

type lbBackend struct {
	url   *url.URL
	ready atomic.Bool
}

// maxLBBody bounds the request body the proxy holds to send again.
const maxLBBody = 4 << 20

type lbBackendKey struct{}

func newDevLB(urls []string, log *slog.Logger) (*devLB, error) {
	lb := &devLB{log: log}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return nil, fmt.Errorf("%q is not an http(s) URL of a replica", u)
		}
		b := &lbBackend{url: p}
		b.ready.Store(true) // until its first check says otherwise
		lb.backends = append(lb.backends, b)
	}
	transport := &http.Transport{DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	lb.client = &http.Client{Transport: transport, Timeout: 2 * time.Second}
	lb.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			b := r.In.Context().Value(lbBackendKey{}).(*lbBackend)
			r.SetURL(b.url)
			r.SetXForwarded()
		},
		Transport:     transport,
		FlushInterval: -1, // long polls and streams pass at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// Nothing is written yet: try decides.
			*r.Context().Value(lbErrKey{}).(*error) = err
		},
	}
	return lb, nil
}

// lbErrKey keys where the proxy's ErrorHandler leaves a request's error.
type lbErrKey struct{}

// ServeHTTP proxies r to a ready replica, trying the others in turn while
// the connection is refused.
func (lb *devLB) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxLBBody+1))
	if err != nil || len(body) > maxLBBody {
		http.Error(w, "valet dev lb: the request body is unreadable or over 4 MiB", http.StatusRequestEntityTooLarge)
		return
	}
	start := lb.next.Add(1)
	var last error
	for i := range uint64(len(lb.backends)) {
		b := lb.backends[(start+i)%uint64(len(lb.backends))]
		if !b.ready.Load() {
			continue
		}
		sent, err := lb.try(w, r, b, body)
		if sent {
			return
		}
		last = err
		b.ready.Store(false)
		lb.log.Warn("replica refused the connection; trying the next", "replica", b.url, "err", err)
	}
	lb.log.Error("no replica is ready", "err", last)
	http.Error(w, "valet dev lb: no replica is ready", http.StatusServiceUnavailable)
}

// try proxies r to b. It reports sent false, with the error, only when
// the connection to b failed before anything was sent or answered.
func (lb *devLB) try(w http.ResponseWriter, r *http.Request, b *lbBackend, body []byte) (sent bool, err error) {
	var proxyErr error
	ctx := context.WithValue(context.WithValue(r.Context(), lbBackendKey{}, b), lbErrKey{}, &proxyErr)
	out := r.Clone(ctx)
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	lb.proxy.ServeHTTP(w, out)
	if proxyErr == nil {
		return true, nil
	}
	var op *net.OpError
	if errors.As(proxyErr, &op) && op.Op == "dial" {
		return false, proxyErr
	}
	// The replica got the request and failed while answering: sending
	// it again could do it twice.
	lb.log.Error("replica failed while answering", "replica", b.url, "err", proxyErr)
	http.Error(w, "valet dev lb: the replica failed while answering", http.StatusBadGateway)
	return true, nil
}

// watch asks each replica's /readyz every interval until ctx ends.
func (lb *devLB) watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, b := range lb.backends {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok := lb.check(ctx, b)
				if was := b.ready.Swap(ok); was != ok {
					lb.log.Info("replica readiness changed", "replica", b.url, "ready", ok)
				}
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (lb *devLB) check(ctx context.Context, b *lbBackend) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url.JoinPath("/readyz").String(), nil)
	if err != nil {
		return false
	}
	resp, err := lb.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
