// Package dns is the resolver flickd runs on each network's gateway address.
//
// It answers <instance>.<domain> from the network's own instances and
// forwards every other query to the host's upstream resolvers.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// DefaultDomain is the zone instances are named in.
	DefaultDomain = "flick.internal"
	// DefaultTimeout bounds each exchange with one upstream.
	DefaultTimeout = 2 * time.Second

	defaultResolvConf = "/etc/resolv.conf"
	// bindAttempts is how often Start tries again when it picked the UDP
	// port itself and that port is taken for TCP.
	bindAttempts = 10
)

// Lookup maps an instance name (lower case, no domain) to its address on
// this network.
type Lookup func(name string) (netip.Addr, bool)

// ReverseLookup maps an address back to the name of the instance holding it.
type ReverseLookup func(addr netip.Addr) (string, bool)

// Config describes one network's resolver.
type Config struct {
	// Domain is the zone answered locally; DefaultDomain when empty.
	Domain string
	// Lookup answers the names under Domain. Required.
	Lookup Lookup
	// Reverse answers PTR queries for the network's addresses; may be nil.
	Reverse ReverseLookup
	// Upstreams are "ip:port" resolvers tried in order (a bare ip means
	// port 53). When empty they are read once, at Start, from
	// /etc/resolv.conf.
	Upstreams []string
	// Timeout bounds each exchange with an upstream; DefaultTimeout when zero.
	Timeout time.Duration
	// Logger receives the resolver's logs; discarded when nil.
	Logger *slog.Logger
	// ListenPacket and Listen make the listening sockets; nil means
	// net.ListenPacket and net.Listen. Upstream sockets are always dialed
	// with the net package, in the caller's namespace.
	ListenPacket func(network, addr string) (net.PacketConn, error)
	Listen       func(network, addr string) (net.Listener, error)
}

// Server serves one address over UDP and TCP.
type Server struct {
	addr      string
	domain    string // canonical: lower case, fully qualified
	soa       *dns.SOA
	lookup    Lookup
	reverse   ReverseLookup
	upstreams []string
	udpClient *dns.Client
	tcpClient *dns.Client
	log       *slog.Logger

	udp, tcp *dns.Server
	wg       sync.WaitGroup // the two serve loops
	quit     chan struct{}  // closed by Close; cancels upstream exchanges

	closeOnce sync.Once
	closeErr  error
}

// Start binds addr ("10.77.0.1:53") over UDP and TCP and serves it until
// Close. With port 0 the UDP socket picks a port and TCP uses the same one.
func Start(addr string, cfg Config) (*Server, error) {
	if cfg.Lookup == nil {
		return nil, fmt.Errorf("dns %s: config has no lookup", addr)
	}
	domain := cfg.Domain
	if domain == "" {
		domain = DefaultDomain
	}
	domain = dns.CanonicalName(domain)
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("dns %s: invalid domain %q", addr, cfg.Domain)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	upstreams, err := normalizeUpstreams(cfg.Upstreams)
	if err != nil {
		return nil, fmt.Errorf("dns %s: %w", addr, err)
	}
	if len(upstreams) == 0 {
		// Without upstreams the instance names still resolve; everything
		// else gets SERVFAIL.
		upstreams, err = ResolvConf(defaultResolvConf)
		if err != nil {
			log.Warn("dns: no upstream resolvers, forwarding disabled", "dns", addr, "err", err)
		}
	}

	listenPacket, listen := cfg.ListenPacket, cfg.Listen
	if listenPacket == nil {
		listenPacket = net.ListenPacket
	}
	if listen == nil {
		listen = net.Listen
	}
	pc, ln, err := bind(addr, listenPacket, listen)
	if err != nil {
		return nil, fmt.Errorf("dns %s: %w", addr, err)
	}

	s := &Server{
		addr:      pc.LocalAddr().String(),
		domain:    domain,
		lookup:    cfg.Lookup,
		reverse:   cfg.Reverse,
		upstreams: upstreams,
		udpClient: &dns.Client{Net: "udp", Timeout: timeout},
		tcpClient: &dns.Client{Net: "tcp", Timeout: timeout},
		quit:      make(chan struct{}),
	}
	s.log = log.With("dns", s.addr)
	s.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: negativeTTL},
		Ns:      "ns." + domain,
		Mbox:    "hostmaster." + domain,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  negativeTTL,
	}

	s.udp = &dns.Server{
		PacketConn: pc,
		Handler:    dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { s.serve(w, r, false) }),
		UDPSize:    dns.DefaultMsgSize,
	}
	s.tcp = &dns.Server{
		Listener: ln,
		Handler:  dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { s.serve(w, r, true) }),
	}
	if err := s.run(s.udp, "udp"); err != nil {
		pc.Close()
		ln.Close()
		return nil, fmt.Errorf("dns %s: serve udp: %w", s.addr, err)
	}
	if err := s.run(s.tcp, "tcp"); err != nil {
		ln.Close()
		close(s.quit)
		_ = s.udp.Shutdown()
		s.wg.Wait()
		return nil, fmt.Errorf("dns %s: serve tcp: %w", s.addr, err)
	}
	return s, nil
}

// Addr is the bound address, with the port chosen when Start was given 0.
func (s *Server) Addr() string { return s.addr }

// Close stops both listeners, cancels queries waiting on upstreams and
// waits for every handler to return. Calling it again returns the first
// result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		ctx := context.Background()
		errUDP := s.udp.ShutdownContext(ctx)
		errTCP := s.tcp.ShutdownContext(ctx)
		s.wg.Wait()
		if err := errors.Join(errUDP, errTCP); err != nil {
			s.closeErr = fmt.Errorf("dns %s: close: %w", s.addr, err)
		}
	})
	return s.closeErr
}

// run starts srv in its own goroutine and returns once it is serving, or
// with the error that stopped it before it could.
func (s *Server) run(srv *dns.Server, network string) error {
	started := make(chan struct{})
	early := make(chan error, 1)
	running := false // written and read only by the serve goroutine
	srv.NotifyStartedFunc = func() {
		running = true
		close(started)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := srv.ActivateAndServe()
		if !running {
			if err == nil {
				err = errors.New("stopped before serving")
			}
			early <- err
			return
		}
		if err != nil {
			s.log.Error("dns: listener stopped", "net", network, "err", err)
		}
	}()
	select {
	case <-started:
		return nil
	case err := <-early:
		return err
	}
}

// bind opens the UDP socket and a TCP listener on the same port. When the
// port is 0 and the kernel's UDP pick is taken for TCP, it tries again.
func bind(addr string,
	listenPacket func(network, addr string) (net.PacketConn, error),
	listen func(network, addr string) (net.Listener, error),
) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	attempts := 1
	if port == "0" || port == "" {
		attempts = bindAttempts
	}
	var lastErr error
	for range attempts {
		pc, err := listenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		_, bound, err := net.SplitHostPort(pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			return nil, nil, fmt.Errorf("udp socket address %s: %w", pc.LocalAddr(), err)
		}
		ln, err := listen("tcp", net.JoinHostPort(host, bound))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, lastErr
}

// normalizeUpstreams checks each upstream and gives bare addresses port 53.
func normalizeUpstreams(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, u := range in {
		if _, _, err := net.SplitHostPort(u); err == nil {
			out = append(out, u)
			continue
		}
		a, err := netip.ParseAddr(u)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: not ip:port or ip", u)
		}
		out = append(out, net.JoinHostPort(a.String(), "53"))
	}
	return out, nil
}
