package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startDevLB runs `valet dev lb`'s proxy in front of urls, as make run-ha
// does, and returns its URL.
func startDevLB(t *testing.T, urls ...string) (string, *devLB) {
	t.Helper()
	lb, err := newDevLB(urls, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go lb.watch(ctx, 50*time.Millisecond)
	srv := httptest.NewServer(lb)
	t.Cleanup(srv.Close)
	return srv.URL, lb
}

// TestDevLBInFrontOfReplicas is make run-ha without the shell: two valet
// replicas on a real etcd cluster behind the proxy; mints through the
// one address reach both; once a replica is gone, the next mint through
// the address succeeds at once, before any health check noticed.
func TestDevLBInFrontOfReplicas(t *testing.T) {
	a, b := startReplicas(t)
	url, _ := startDevLB(t, a.URL, b.URL)
	front := &testEnv{t: t, URL: url, Issuer: a.Issuer, Config: a.Config}
	tok := front.Attest("behind-the-proxy", nil)
	var ids []string
	for range 4 {
		ids = append(ids, front.Mint(tok, "demo")["lease_id"].(string))
	}
	a.Server.Close()
	// Of two requests in a row, one is a's turn: it goes to b.
	for range 2 {
		ids = append(ids, front.Mint(tok, "demo")["lease_id"].(string))
	}
	for _, id := range ids {
		if got := leaseState(t, front, id); got != "active" {
			t.Errorf("lease %s through the proxy: %s", id, got)
		}
	}
}

// TestDevLB: the proxy alternates between ready replicas, skips one that
// fails /readyz or refuses connections, and never sends a request twice
// once a replica got it.
func TestDevLB(t *testing.T) {
	type replica struct {
		calls atomic.Int64
		ready atomic.Bool
		srv   *httptest.Server
	}
	newReplica := func(answer func(w http.ResponseWriter)) *replica {
		r := &replica{}
		r.ready.Store(true)
		r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == "/readyz" {
				if !r.ready.Load() {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
				return
			}
			r.calls.Add(1)
			body, _ := io.ReadAll(req.Body)
			if string(body) != "the body" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			answer(w)
		}))
		t.Cleanup(r.srv.Close)
		return r
	}
	ok := func(w http.ResponseWriter) { io.WriteString(w, "ok") }
	post := func(t *testing.T, url string) (int, string) {
		t.Helper()
		resp, err := http.Post(url+"/v1/credentials", "application/json", strings.NewReader("the body"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("round robin over ready replicas", func(t *testing.T) {
		x, y := newReplica(ok), newReplica(ok)
		url, _ := startDevLB(t, x.srv.URL, y.srv.URL)
		for range 6 {
			if code, body := post(t, url); code != 200 || body != "ok" {
				t.Fatalf("%d %s", code, body)
			}
		}
		if x.calls.Load() != 3 || y.calls.Load() != 3 {
			t.Fatalf("calls %d and %d, want 3 each", x.calls.Load(), y.calls.Load())
		}
	})
	t.Run("a replica that is not ready gets nothing", func(t *testing.T) {
		x, y := newReplica(ok), newReplica(ok)
		y.ready.Store(false)
		url, lb := startDevLB(t, x.srv.URL, y.srv.URL)
		waitFor(t, "the proxy sees y not ready", func() bool { return !lb.backends[1].ready.Load() })
		for range 4 {
			post(t, url)
		}
		if x.calls.Load() != 4 || y.calls.Load() != 0 {
			t.Fatalf("calls %d and %d, want 4 and 0", x.calls.Load(), y.calls.Load())
		}
	})
	t.Run("a refused connection goes to the next replica", func(t *testing.T) {
		x := newReplica(ok)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + l.Addr().String()
		l.Close()
		lb, err := newDevLB([]string{dead, x.srv.URL}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(lb) // no health checks: only the refusal tells
		defer srv.Close()
		for range 4 {
			if code, body := post(t, srv.URL); code != 200 || body != "ok" {
				t.Fatalf("%d %s", code, body)
			}
		}
		if x.calls.Load() != 4 {
			t.Fatalf("calls %d, want 4", x.calls.Load())
		}
	})
	t.Run("a replica that fails while answering is not asked again", func(t *testing.T) {
		broken := newReplica(func(w http.ResponseWriter) {
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
		})
		url, _ := startDevLB(t, broken.srv.URL)
		code, _ := post(t, url)
		if code != http.StatusBadGateway || broken.calls.Load() != 1 {
			t.Fatalf("status %d after %d calls, want 502 after 1", code, broken.calls.Load())
		}
	})
	t.Run("no replica", func(t *testing.T) {
		x := newReplica(ok)
		x.ready.Store(false)
		url, lb := startDevLB(t, x.srv.URL)
		waitFor(t, "the proxy sees x not ready", func() bool { return !lb.backends[0].ready.Load() })
		if code, _ := post(t, url); code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503", code)
		}
	})
}
