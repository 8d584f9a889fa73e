package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
)

// BenchmarkMintHTTP mints through the real server in-process over
// loopback HTTP, with durable leases and audit. Run with -cpu to vary the
// load; each parallel goroutine is a separate agent.
func BenchmarkMintHTTP(b *testing.B) {
	e := newTestEnv(b).Start()
	var n atomic.Int64
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	client := &http.Client{Transport: tr}
	body := []byte(`{"role":"demo","ttl":"15m"}`)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tok := e.Attest(fmt.Sprintf("bench-%d", n.Add(1)), nil)
		for pb.Next() {
			req, _ := http.NewRequest("POST", e.URL+"/v1/credentials", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}
