package gcptest

import (
	"strings"
	"testing"
)

// Start runs a server on a free loopback port for the test, with its key
// file in the test's temporary directory, and stops it when the test ends.
func Start(tb testing.TB, c Config) *Server {
	tb.Helper()
	if c.Dir == "" {
		c.Dir = tb.TempDir()
	}
	s, err := New(c)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// SetEnv sets Env for the rest of the test (see testing.T.Setenv).
func (s *Server) SetEnv(t *testing.T) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
