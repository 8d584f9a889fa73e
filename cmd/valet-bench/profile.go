package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/valet-broker/valet/backends/freeport"
)

// profiler fetches profiles of the valet server under load: a CPU profile
// and the allocations over exactly the measured part of a run, and the
// heap and goroutines after it. The server listens for pprof on a loopback
// port of its own (VALET_PPROF_LISTEN), never on the API's.
type profiler struct {
	dir string
}

// freeAddr picks a free loopback port (a server's pprof listener, an
// etcd member's client and peer URLs) below the kernel's ephemeral range,
// so that none of the load's connections takes it before the bind.
func freeAddr() string {
	addr, err := freeport.Addr()
	must(err)
	return addr
}

// during starts a CPU profile and an allocation profile of s covering d;
// the returned function waits for both and writes them as
// <name>.cpu.pprof and <name>.allocs.pprof, then the heap and a goroutine
// dump after the run.
func (p *profiler) during(s *server, name string, d time.Duration) (wait func()) {
	if p == nil || s.pprof == "" {
		return func() {}
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	var wg sync.WaitGroup
	for _, prof := range []struct{ path, file string }{
		{fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), name + ".cpu.pprof"},
		{fmt.Sprintf("/debug/pprof/allocs?seconds=%d", secs), name + ".allocs.pprof"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.fetch(s, prof.path, prof.file)
		}()
	}
	return func() {
		wg.Wait()
		p.fetch(s, "/debug/pprof/heap", name+".heap.pprof")
		p.fetch(s, "/debug/pprof/goroutine?debug=1", name+".goroutines.txt")
	}
}

func (p *profiler) fetch(s *server, path, file string) {
	resp, err := http.Get("http://" + s.pprof + path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "valet-bench: profile %s: %v\n", file, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(p.dir, file))
	must(err)
	_, err = io.Copy(f, resp.Body)
	must(err)
	must(f.Close())
}
