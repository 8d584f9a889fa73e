package freeport

import (
	"net"
	"strconv"
	"testing"
)

// The ports handed out are below the ephemeral range, free (a listener
// binds them), and spread (not one port every time).
func TestAddr(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		addr, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if port < 10000 || port >= ephemeralStart() {
			t.Errorf("port %d is outside [10000, %d)", port, ephemeralStart())
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s was handed out but cannot be bound: %v", addr, err)
			continue
		}
		l.Close()
		seen[addr] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 calls gave %d distinct ports", len(seen))
	}
	if p, err := Port(); err != nil || p < 10000 {
		t.Errorf("Port() = %d, %v", p, err)
	}
}
