package clientip

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	proxies, err := ParseTrusted([]string{"10.0.0.0/8", "::1", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	trusting := New(proxies)
	tests := []struct {
		name     string
		resolver *Resolver
		remote   string
		xff      []string // X-Forwarded-For header lines
		want     string
	}{
		{"no proxy configured: the peer", nil, "203.0.113.7:5000", nil, "203.0.113.7"},
		{"no proxy configured: X-Forwarded-For ignored", nil, "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"zero Resolver trusts nobody", &Resolver{}, "10.0.0.1:5000", []string{"198.51.100.1"}, "10.0.0.1"},
		{"untrusted peer: X-Forwarded-For ignored", trusting, "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"trusted peer without X-Forwarded-For", trusting, "10.1.2.3:5000", nil, "10.1.2.3"},
		{"trusted peer: the forwarded client", trusting, "10.1.2.3:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"the right-most untrusted hop, not the client's claim", trusting, "10.1.2.3:5000", []string{"1.2.3.4, 198.51.100.1"}, "198.51.100.1"},
		{"trusted hops are skipped", trusting, "10.1.2.3:5000", []string{"1.2.3.4, 198.51.100.1, 10.9.9.9, 10.8.8.8"}, "198.51.100.1"},
		{"several header lines in order", trusting, "10.1.2.3:5000", []string{"1.2.3.4, 198.51.100.1", "10.9.9.9"}, "198.51.100.1"},
		{"every hop trusted: the left-most", trusting, "10.1.2.3:5000", []string{"10.5.5.5, 10.6.6.6"}, "10.5.5.5"},
		{"a hop with a port", trusting, "10.1.2.3:5000", []string{"198.51.100.1:4711"}, "198.51.100.1"},
		{"an IPv6 hop with a port", trusting, "10.1.2.3:5000", []string{"[2001:db8::7]:4711"}, "2001:db8::7"},
		{"IPv6 proxy and client", trusting, "[::1]:5000", []string{"2001:db8::7"}, "2001:db8::7"},
		{"IPv4-mapped peer is matched as IPv4", trusting, "[::ffff:10.1.2.3]:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"IPv4-mapped client is unmapped", nil, "[::ffff:203.0.113.7]:5000", nil, "203.0.113.7"},
		{"zone dropped", nil, "[fe80::1%eth0]:5000", nil, "fe80::1"},
		{"malformed hop: the peer", trusting, "10.1.2.3:5000", []string{"198.51.100.1, garbage"}, "10.1.2.3"},
		{"empty hop: the peer", trusting, "10.1.2.3:5000", []string{"198.51.100.1,,"}, "10.1.2.3"},
		{"empty header: the peer", trusting, "10.1.2.3:5000", []string{""}, "10.1.2.3"},
		{"malformed left of the client is never read", trusting, "10.1.2.3:5000", []string{"garbage, 198.51.100.1"}, "198.51.100.1"},
		{"unparsable RemoteAddr as is", trusting, "@", []string{"198.51.100.1"}, "@"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := tt.resolver.ClientIP(r); got != tt.want {
				t.Errorf("ClientIP = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in, want string // want "" means refused
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"::1", "::1/128"},
		{"fd00::/8", "fd00::/8"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:10.0.0.1", "10.0.0.1/32"},
		{"10.0.0.1/8", ""},
		{"10.0.0.0/33", ""},
		{"proxy.internal", ""},
		{"", ""},
		{"fe80::1%eth0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParsePrefix(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("ParsePrefix(%q) = %s, want an error", tt.in, p)
				}
				return
			}
			if err != nil || p != netip.MustParsePrefix(tt.want) {
				t.Fatalf("ParsePrefix(%q) = %s, %v; want %s", tt.in, p, err, tt.want)
			}
		})
	}
	if _, err := ParseTrusted([]string{"10.0.0.0/8", "nope"}); err == nil || err.Error()[:10] != `[1] "nope"` {
		t.Errorf("ParseTrusted error %v, want one naming [1] \"nope\"", err)
	}
}
