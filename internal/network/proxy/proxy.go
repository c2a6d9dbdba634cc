// Package proxy forwards a published port in userspace: it listens on a host
// address and relays each TCP connection, or each UDP client's datagrams, to
// the guest. flickd uses it for traffic nftables DNAT cannot see, such as
// connections the host makes to its own 127.0.0.1:8080. The guest address is
// asked for per connection, so a proxy can hold a connection while its VM
// resumes and then serve it.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flick-vm/flick/internal/errdefs"
)

const (
	// targetTimeout bounds how long Config.Target may take for one
	// connection or flow, a VM's resume included.
	targetTimeout = 30 * time.Second
	// dialTimeout bounds connecting to the guest once its address is known.
	dialTimeout = 10 * time.Second
	// defaultUDPIdle is Config.UDPIdle's default.
	defaultUDPIdle = 60 * time.Second
)

// Config describes one published port.
type Config struct {
	Proto  string // "tcp" or "udp"
	Listen string // "127.0.0.1:8080", "0.0.0.0:8080", "[::1]:8080", ":8080" (all); port 0 picks one

	// Target is asked for the guest address for every new TCP connection or
	// new UDP client flow; it may block (e.g. while a VM resumes) until ctx is
	// done. An error closes that connection (TCP) or drops the datagrams
	// (UDP) and is logged at debug.
	Target func(ctx context.Context) (netip.AddrPort, error)

	// ListenTCP, ListenUDP and Dial make sockets; nil means the net
	// package's. flickd passes functions that make them inside another
	// network namespace. The network is "tcp4", "tcp6", "udp4" or "udp6" for
	// an IP literal and "tcp" or "udp" otherwise.
	ListenTCP func(network, addr string) (net.Listener, error)
	ListenUDP func(network, addr string) (net.PacketConn, error)
	Dial      func(ctx context.Context, network, addr string) (net.Conn, error)

	Logger  *slog.Logger
	UDPIdle time.Duration // a UDP flow with no traffic for this long is dropped; default 60 s
}

// Proxy is a running published port.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener   // TCP
	pc     net.PacketConn // UDP
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex
	closed bool
	conns  map[*tcpConn]struct{}
	flows  map[string]*flow

	lastActive atomic.Int64 // unix nanoseconds
}

// Start binds the port and serves until Close. A port already in use gives
// an error of class errdefs.ErrConflict that wraps syscall.EADDRINUSE and
// names the address.
func Start(cfg Config) (*Proxy, error) {
	if cfg.Target == nil {
		return nil, errors.New("proxy: no Target")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = defaultUDPIdle
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	network, err := listenNetwork(cfg.Proto, cfg.Listen)
	if err != nil {
		return nil, err
	}

	p := &Proxy{
		cfg:   cfg,
		log:   cfg.Logger.With("op", "proxy", "proto", cfg.Proto, "listen", cfg.Listen),
		conns: make(map[*tcpConn]struct{}),
		flows: make(map[string]*flow),
	}
	switch cfg.Proto {
	case "tcp":
		listen := cfg.ListenTCP
		if listen == nil {
			listen = net.Listen
		}
		p.ln, err = listen(network, cfg.Listen)
	case "udp":
		listen := cfg.ListenUDP
		if listen == nil {
			listen = net.ListenPacket
		}
		p.pc, err = listen(network, cfg.Listen)
	}
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, errdefs.Conflict("publish %s/%s: %w", cfg.Listen, cfg.Proto, err)
		}
		return nil, fmt.Errorf("publish %s/%s: %w", cfg.Listen, cfg.Proto, err)
	}
	p.log = p.log.With("addr", p.Addr().String())
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.touch()

	p.wg.Add(1)
	if p.ln != nil {
		go p.serveTCP()
	} else {
		go p.serveUDP()
	}
	p.log.Debug("listening")
	return p, nil
}

// listenNetwork picks the network for Listen: one address family for an IP
// literal, so "0.0.0.0:8080" stays IPv4 and "[::]:8080" IPv6 (the kernel's
// default decides whether that includes IPv4), both for ":8080".
func listenNetwork(proto, listen string) (string, error) {
	if proto != "tcp" && proto != "udp" {
		return "", errdefs.InvalidArgument("publish %s/%s: protocol %q is not supported: use tcp or udp", listen, proto, proto)
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", errdefs.InvalidArgument("publish %s/%s: %w", listen, proto, err)
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return proto, nil
	case ip.Is4() || ip.Is4In6():
		return proto + "4", nil
	default:
		return proto + "6", nil
	}
}

// Addr is the bound address, with the port resolved when Listen asked for 0.
func (p *Proxy) Addr() net.Addr {
	if p.ln != nil {
		return p.ln.Addr()
	}
	return p.pc.LocalAddr()
}

// Close stops listening, closes every open connection and flow and waits
// until all of the proxy's goroutines have returned. Only the first call
// does anything; later ones return its result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		conns := make([]*tcpConn, 0, len(p.conns))
		for c := range p.conns {
			conns = append(conns, c)
		}
		flows := make([]*flow, 0, len(p.flows))
		for _, f := range p.flows {
			flows = append(flows, f)
		}
		p.mu.Unlock()

		if p.ln != nil {
			p.closeErr = p.ln.Close()
		} else {
			p.closeErr = p.pc.Close()
		}
		if p.closeErr != nil {
			p.closeErr = fmt.Errorf("close %s/%s: %w", p.Addr(), p.cfg.Proto, p.closeErr)
		}
		p.cancel()
		for _, c := range conns {
			c.close()
		}
		for _, f := range flows {
			p.endFlow(f)
		}
		p.wg.Wait()
		p.log.Debug("closed")
	})
	return p.closeErr
}

// Conns is the number of open TCP connections, those waiting for Target
// included, plus live UDP flows.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) + len(p.flows)
}

// LastActive is the last time a byte moved either way through the proxy, or
// the time it started if none has yet. For TCP connections between sockets
// of the kernel it asks the kernel, which copies the bytes without the
// proxy seeing them; its answer has a resolution of a few milliseconds.
func (p *Proxy) LastActive() time.Time {
	last := p.lastActive.Load()
	p.mu.Lock()
	for c := range p.conns {
		if t := c.lastActive(); t > last {
			last = t
		}
	}
	p.mu.Unlock()
	return time.Unix(0, last)
}

// touch records activity now.
func (p *Proxy) touch() { p.touchAt(time.Now().UnixNano()) }

// touchAt records activity at t (unix nanoseconds) unless later activity is
// already recorded.
func (p *Proxy) touchAt(t int64) {
	for {
		old := p.lastActive.Load()
		if t <= old || p.lastActive.CompareAndSwap(old, t) {
			return
		}
	}
}

// targetAddr asks Config.Target for the guest address, bounded by
// targetTimeout and by Close.
func (p *Proxy) targetAddr() (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(p.ctx, targetTimeout)
	defer cancel()
	addr, err := p.cfg.Target(ctx)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve target: %w", err)
	}
	if !addr.IsValid() || addr.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve target: invalid address %s", addr)
	}
	return addr, nil
}

// dial connects to the guest at addr.
func (p *Proxy) dial(network string, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	defer cancel()
	c, err := p.cfg.Dial(ctx, network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, err)
	}
	return c, nil
}

// acceptBackoff waits after a failed Accept or ReadFrom that is not the
// end: d doubles from 5 ms up to 1 s. It reports false once the proxy is
// closing.
func (p *Proxy) acceptBackoff(d *time.Duration) bool {
	if *d == 0 {
		*d = 5 * time.Millisecond
	} else if *d *= 2; *d > time.Second {
		*d = time.Second
	}
	t := time.NewTimer(*d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.ctx.Done():
		return false
	}
}
