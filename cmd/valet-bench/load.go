package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load driver speaks HTTP/1.1 over one keep-alive connection per
// agent with pre-built requests, so that on a small machine the driver
// spends as little CPU as possible that valet could otherwise use (Go's
// net/http client costs several times more per request).

// request builds the raw bytes of one POST.
func request(host, path, bearer string, body []byte) []byte {
	return requestMethod("POST", host, path, bearer, body)
}

// requestMethod builds the raw bytes of one request.
func requestMethod(method, host, path, bearer string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", method, path, host)
	if bearer != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", bearer)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	return b.Bytes()
}

// conn is one agent's connection.
type conn struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(host string) (*conn, error) {
	c, err := net.Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	return &conn{c: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

// roundTrip sends req and reads the response, returning its status.
func (c *conn) roundTrip(req []byte) (int, error) {
	st, _, err := c.roundTripLocation(req)
	return st, err
}

// roundTripLocation is roundTrip that also returns the response's
// Location header (a mint's lease, /v1/leases/<id>).
func (c *conn) roundTripLocation(req []byte) (status int, location string, err error) {
	if _, err := c.c.Write(req); err != nil {
		return 0, "", err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, "", err
	}
	if len(line) < 12 {
		return 0, "", fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, "", fmt.Errorf("bad status line %q", line)
	}
	length := -1
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		if len(h) <= 2 {
			break
		}
		switch {
		case len(h) > 16 && bytes.EqualFold(h[:15], []byte("Content-Length:")):
			length, err = strconv.Atoi(string(bytes.TrimSpace(h[15:])))
			if err != nil {
				return 0, "", err
			}
		case len(h) > 10 && bytes.EqualFold(h[:9], []byte("Location:")):
			location = string(bytes.TrimSpace(h[9:]))
		}
	}
	if length < 0 {
		return 0, "", fmt.Errorf("response without Content-Length")
	}
	if _, err := c.br.Discard(length); err != nil {
		return 0, "", err
	}
	return status, location, nil
}

// loadResult is what one load run measured.
type loadResult struct {
	rate      float64
	p50, p99  time.Duration
	n         int
	elapsed   time.Duration
	serverCPU time.Duration // valet's CPU time per request
	driverCPU time.Duration // the load driver's CPU time per request
	// others is the share of the machine's cores that other processes
	// kept busy during the run.
	others float64
	// ceilingBefore and ceilingAfter are the crypto ceiling measured
	// just before and just after the run (when asked for).
	ceilingBefore, ceilingAfter float64
}

// runLoad drives c agents for d, each sending next(agent, i) back to back
// and expecting status want. It returns the latencies of successful
// requests; any other status is fatal (a benchmark of errors is no
// benchmark).
func runLoad(base string, c int, d time.Duration, want int, next func(agent, i int) []byte) loadResult {
	u, err := url.Parse(base)
	must(err)
	var mu sync.Mutex
	var all []time.Duration
	var failed atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for a := 0; a < c; a++ {
		wg.Add(1)
		go func(a int) {
			defer wg.Done()
			cn, err := dial(u.Host)
			if err != nil {
				failed.Store(err)
				return
			}
			defer cn.c.Close()
			lat := make([]time.Duration, 0, 4096)
			for i := 0; time.Now().Before(deadline); i++ {
				req := next(a, i)
				t0 := time.Now()
				st, err := cn.roundTrip(req)
				if err != nil {
					failed.Store(err)
					return
				}
				if st != want {
					failed.Store(fmt.Errorf("status %d, want %d", st, want))
					return
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}(a)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		fatal("load at concurrency %d: %v", c, err)
	}
	if len(all) == 0 {
		fatal("no request completed")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return loadResult{rate: float64(len(all)) / elapsed.Seconds(), p50: all[len(all)/2], p99: all[len(all)*99/100], n: len(all), elapsed: elapsed}
}
