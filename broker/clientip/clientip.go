// Package clientip finds the address of the client behind an HTTP request:
// the connection's peer, or, when the peer is a trusted reverse proxy, the
// address that proxy reports in X-Forwarded-For. It is the one place where
// valet decides which address a request came from, for throttling, audit
// records, logs and the policy's context.source_ip.
package clientip

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Resolver finds a request's client address. Its zero value, and a nil
// *Resolver, trust no proxy: the client is the connection's peer.
type Resolver struct {
	trusted []netip.Prefix
}

// New returns a Resolver that believes X-Forwarded-For only on connections
// from an address inside one of trusted.
func New(trusted []netip.Prefix) *Resolver {
	return &Resolver{trusted: trusted}
}

// ParseTrusted parses the entries of a trusted proxy list (see ParsePrefix).
// The error names the index of the first bad entry, e.g. `[1] "x": ...`.
func ParseTrusted(entries []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(entries))
	for i, s := range entries {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("[%d] %q: %w", i, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// ParsePrefix parses one trusted proxy entry: a CIDR prefix such as
// 10.0.0.0/8 or fd00::/8, or a single address (a /32 or /128). A prefix
// with bits set after its length (10.0.0.1/8) is refused as a likely typo.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, errors.New("must be an IP address or a CIDR prefix such as 10.0.0.0/8")
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("must be an IP address or a CIDR prefix such as 10.0.0.0/8")
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("has bits set after the prefix length; did you mean %s?", p.Masked())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		// ::ffff:10.0.0.0/104 is 10.0.0.0/8: peers are compared unmapped.
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// ClientIP returns the address of the client that sent r, in canonical
// text form (IPv4-mapped IPv6 addresses unmapped, zones dropped):
//
//   - the connection's peer, unless it is a trusted proxy;
//   - from a trusted proxy, the right-most address of X-Forwarded-For
//     (all its header lines, in order) that is not itself a trusted proxy —
//     what the outermost trusted proxy saw — or its left-most address when
//     every hop is trusted. Addresses to the left of the first untrusted
//     one are the client's own claims and are never believed;
//   - the peer again when X-Forwarded-For is absent, or malformed before
//     an untrusted address is reached (an empty, non-IP or port-only
//     entry).
//
// A RemoteAddr that is not host:port (as from a Unix socket) is returned
// as it is.
func (r *Resolver) ClientIP(req *http.Request) string {
	peer, ok := parseAddr(req.RemoteAddr)
	if !ok {
		return req.RemoteAddr
	}
	if !r.trusts(peer) {
		return peer.String()
	}
	values := req.Header.Values("X-Forwarded-For")
	if len(values) == 0 {
		return peer.String()
	}
	hops := strings.Split(strings.Join(values, ","), ",")
	var client netip.Addr
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseAddr(strings.TrimSpace(hops[i]))
		if !ok {
			return peer.String()
		}
		client = a
		if !r.trusts(a) {
			break
		}
	}
	return client.String()
}

func (r *Resolver) trusts(a netip.Addr) bool {
	if r == nil {
		return false
	}
	for _, p := range r.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseAddr reads an address with or without a port ("192.0.2.1",
// "192.0.2.1:443", "[2001:db8::1]:443", "2001:db8::1").
func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		host, _, serr := net.SplitHostPort(s)
		if serr != nil {
			return netip.Addr{}, false
		}
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.Addr{}, false
		}
	}
	return a.Unmap().WithZone(""), true
}
