package etcdtest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/textproto"
	"sync"
	"time"
)

// peerNet is the network between the members' peer ports when the
// cluster runs behind proxies (StartProxied): which members are cut off.
type peerNet struct {
	mu  sync.Mutex
	cut map[string]bool // member ids (hex, as etcd writes them)
	all []*peerProxy
}

// allowed reports whether a connection from member src (its id; "" when
// the connection did not say) to member dst may carry traffic.
func (n *peerNet) allowed(src, dst string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.cut[dst] && !n.cut[src]
}

// setCut cuts member id off (or heals it) and closes every connection
// that may no longer carry traffic.
func (n *peerNet) setCut(id string, cut bool) {
	n.mu.Lock()
	n.cut[id] = cut
	all := append([]*peerProxy(nil), n.all...)
	n.mu.Unlock()
	for _, p := range all {
		p.enforce()
	}
}

// peerProxy stands in front of one member's peer port: other members
// dial it (it is the member's advertised peer URL) and it forwards to
// where the member listens. It learns which member dialed each
// connection from the first request's X-Server-From header (etcd's
// rafthttp sets it on its streams and pipeline posts), so that a cut
// member is cut off in both directions: the connections it dials and
// those dialed to it.
type peerProxy struct {
	net    *peerNet
	dst    func() string // the id of the member behind the proxy
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[*proxyConn]struct{}
}

type proxyConn struct {
	src       string
	down, up  net.Conn
	closeOnce sync.Once
}

func (c *proxyConn) close() {
	c.closeOnce.Do(func() {
		c.down.Close()
		if c.up != nil {
			c.up.Close()
		}
	})
}

func newPeerProxy(n *peerNet, ln net.Listener, target string, dst func() string) *peerProxy {
	p := &peerProxy{net: n, dst: dst, ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	n.mu.Lock()
	n.all = append(n.all, p)
	n.mu.Unlock()
	go p.serve()
	return p
}

func (p *peerProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

// handle reads the first request's header to learn the source member,
// then forwards bytes both ways until either side or a cut closes.
func (p *peerProxy) handle(down net.Conn) {
	pc := &proxyConn{down: down}
	br := bufio.NewReader(down)
	_ = down.SetReadDeadline(time.Now().Add(5 * time.Second))
	head, src := readHead(br)
	_ = down.SetReadDeadline(time.Time{})
	pc.src = src
	if !p.net.allowed(src, p.dst()) {
		down.Close()
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		down.Close()
		return
	}
	pc.up = up
	if !p.add(pc) {
		pc.close()
		return
	}
	defer p.remove(pc)
	if _, err := up.Write(head); err != nil {
		pc.close()
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, br); pc.close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(down, up); pc.close(); done <- struct{}{} }()
	<-done
	<-done
}

// readHead reads up to the end of the first HTTP request header and
// returns the bytes read and the X-Server-From value ("" if absent or
// if the header did not come).
func readHead(br *bufio.Reader) ([]byte, string) {
	var buf bytes.Buffer
	for buf.Len() < 64<<10 {
		line, err := br.ReadSlice('\n')
		buf.Write(line)
		if err != nil && err != bufio.ErrBufferFull {
			break
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 && err == nil {
			break
		}
	}
	src := ""
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(buf.Bytes())))
	if _, err := tp.ReadLine(); err == nil {
		if h, err := tp.ReadMIMEHeader(); err == nil || len(h) > 0 {
			src = h.Get("X-Server-From")
		}
	}
	return buf.Bytes(), src
}

// add registers a connection unless the network cuts it.
func (p *peerProxy) add(c *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.net.allowed(c.src, p.dst()) {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *peerProxy) remove(c *proxyConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// enforce closes the connections the network no longer allows.
func (p *peerProxy) enforce() {
	p.mu.Lock()
	var drop []*proxyConn
	for c := range p.conns {
		if !p.net.allowed(c.src, p.dst()) {
			drop = append(drop, c)
			delete(p.conns, c)
		}
	}
	p.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
}

func (p *peerProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	all := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.conns = map[*proxyConn]struct{}{}
	p.mu.Unlock()
	for _, c := range all {
		c.close()
	}
}
