package etcdtest

import (
	"net"
	"strings"
	"testing"
)

// A port taken between freeAddr and the member's bind (here: a listener
// holding the first address handed out) starts the cluster again on
// other ports instead of failing the test that asked for it.
func TestStartWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	orig := freeAddr
	defer func() { freeAddr = orig }()
	calls := 0
	freeAddr = func() string {
		calls++
		if calls == 1 {
			return taken.Addr().String()
		}
		return orig()
	}
	c, err := Start(t.TempDir(), 3)
	if err != nil {
		t.Fatalf("Start with a taken port: %v", err)
	}
	defer c.Stop()
	for _, m := range c.Members() {
		if strings.Contains(m.ClientURL, taken.Addr().String()) || strings.Contains(m.listenPeer, taken.Addr().String()) {
			t.Errorf("member %s kept the taken address %s", m.Name, taken.Addr())
		}
	}
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Put(t.Context(), "k", "v"); err != nil {
		t.Errorf("the cluster started again does not serve: %v", err)
	}
	if calls <= 6 {
		t.Errorf("freeAddr was called %d times: the cluster did not start again", calls)
	}
}
