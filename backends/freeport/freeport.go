// Package freeport finds loopback ports for servers that tests start
// and configure before they listen (Vault, PostgreSQL, etcd members,
// valet processes). A port found free by listening on port 0 comes from
// the kernel's ephemeral range, which the kernel also hands to outgoing
// connections: between the check and the server's bind, another test's
// connection can take it ("address already in use"). Ports are drawn
// instead at random below that range (Linux: net.ipv4.ip_local_port_range,
// 32768–60999 by default), where only listeners that ask for a port by
// number go.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Port returns a loopback port that is free now, drawn below the
// ephemeral range; after 100 taken ports it falls back to one the kernel
// picks. The error is the kernel's when no port can be bound.
func Port() (int, error) {
	lo, hi := 10000, ephemeralStart()
	for range 100 {
		if hi <= lo {
			break
		}
		port := lo + rand.IntN(hi-lo)
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			l.Close()
			return port, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is Port as "127.0.0.1:port".
func Addr() (string, error) {
	port, err := Port()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(port), nil
}

// ephemeralStart is the first port of the kernel's ephemeral range
// (32768 where it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 1024 {
		return 32768
	}
	return n
}
