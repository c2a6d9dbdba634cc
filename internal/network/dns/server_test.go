package dns

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// instances is the fake network used by most tests.
var instances = map[string]netip.Addr{
	"web": netip.MustParseAddr("10.77.0.2"),
	"db":  netip.MustParseAddr("10.77.0.3"),
	"v6":  netip.MustParseAddr("fd00:77::5"),
}

func lookupInstances(name string) (netip.Addr, bool) {
	a, ok := instances[name]
	return a, ok
}

func reverseInstances(addr netip.Addr) (string, bool) {
	for name, a := range instances {
		if a == addr {
			return name, true
		}
	}
	return "", false
}

// start runs a resolver on 127.0.0.1 and closes it when the test ends.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Lookup == nil {
		cfg.Lookup = lookupInstances
	}
	if cfg.Upstreams == nil {
		// Never reach the host's resolvers from a test.
		cfg.Upstreams = []string{deadAddr(t)}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Start("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// deadAddr is a local UDP and TCP address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// query asks addr over network ("udp" or "tcp") and fails the test when no
// reply comes.
func query(t *testing.T, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", network, m.Question[0].Name, err)
	}
	if resp.Id != m.Id {
		t.Fatalf("reply id %d, want the query's %d", resp.Id, m.Id)
	}
	return resp
}

func question(name string, qtype uint16) *dns.Msg {
	return new(dns.Msg).SetQuestion(name, qtype)
}

func TestLocalNames(t *testing.T) {
	s := start(t, Config{Reverse: reverseInstances})

	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		answer  string // the answer's rdata, "" for none
		soaInNs bool   // SOA in the authority section
	}{
		{name: "A", qname: "web.flick.internal.", qtype: dns.TypeA, answer: "10.77.0.2"},
		{name: "A other instance", qname: "db.flick.internal.", qtype: dns.TypeA, answer: "10.77.0.3"},
		{name: "case insensitive", qname: "WeB.Flick.INTERNAL.", qtype: dns.TypeA, answer: "10.77.0.2"},
		{name: "ANY gives A", qname: "web.flick.internal.", qtype: dns.TypeANY, answer: "10.77.0.2"},
		{name: "AAAA of v4 instance is NODATA", qname: "web.flick.internal.", qtype: dns.TypeAAAA, soaInNs: true},
		{name: "AAAA of v6 instance", qname: "v6.flick.internal.", qtype: dns.TypeAAAA, answer: "fd00:77::5"},
		{name: "A of v6 instance is NODATA", qname: "v6.flick.internal.", qtype: dns.TypeA, soaInNs: true},
		{name: "TXT is NODATA", qname: "web.flick.internal.", qtype: dns.TypeTXT, soaInNs: true},
		{name: "unknown instance", qname: "nope.flick.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, soaInNs: true},
		{name: "unknown instance AAAA", qname: "nope.flick.internal.", qtype: dns.TypeAAAA, rcode: dns.RcodeNameError, soaInNs: true},
		{name: "below an instance", qname: "x.web.flick.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, soaInNs: true},
		{name: "bare domain A is NODATA", qname: "flick.internal.", qtype: dns.TypeA, soaInNs: true},
		{name: "bare domain AAAA is NODATA", qname: "Flick.Internal.", qtype: dns.TypeAAAA, soaInNs: true},
		{name: "bare domain SOA", qname: "flick.internal.", qtype: dns.TypeSOA, answer: "ns.flick.internal. hostmaster.flick.internal. 1 3600 600 86400 1"},
		{name: "PTR v4", qname: "2.0.77.10.in-addr.arpa.", qtype: dns.TypePTR, answer: "web.flick.internal."},
		{name: "PTR v6", qname: "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.7.7.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypePTR, answer: "v6.flick.internal."},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				m := question(tt.qname, tt.qtype)
				resp := query(t, network, s.Addr(), m)
				if resp.Rcode != tt.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				if !resp.Authoritative {
					t.Errorf("reply is not authoritative")
				}
				if !resp.RecursionAvailable {
					t.Errorf("reply does not advertise recursion")
				}
				if tt.answer == "" {
					if len(resp.Answer) != 0 {
						t.Errorf("answers %v, want none", resp.Answer)
					}
				} else {
					if len(resp.Answer) != 1 {
						t.Fatalf("answers %v, want one", resp.Answer)
					}
					rr := resp.Answer[0]
					if got := strings.TrimPrefix(rr.String(), rr.Header().String()); got != tt.answer {
						t.Errorf("answer %q, want %q", got, tt.answer)
					}
					if rr.Header().Name != tt.qname {
						t.Errorf("answer owner %q, want the question's %q", rr.Header().Name, tt.qname)
					}
					if rr.Header().Rrtype != dns.TypeSOA && rr.Header().Ttl != 0 {
						t.Errorf("answer ttl %d, want 0", rr.Header().Ttl)
					}
				}
				gotSOA := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA &&
					resp.Ns[0].Header().Name == "flick.internal."
				if gotSOA != tt.soaInNs {
					t.Errorf("authority %v, want SOA of flick.internal.: %v", resp.Ns, tt.soaInNs)
				}
			})
		}
	}
}

func TestCustomDomain(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.7"))
	s := start(t, Config{Domain: "Lab.Example", Upstreams: []string{up.addr}})

	resp := query(t, "udp", s.Addr(), question("web.lab.example.", dns.TypeA))
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "10.77.0.2" {
		t.Errorf("web.lab.example. answered %v, want 10.77.0.2", resp.Answer)
	}
	// The default domain is not ours any more: it is forwarded.
	resp = query(t, "udp", s.Addr(), question("web.flick.internal.", dns.TypeA))
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
		t.Errorf("web.flick.internal. answered %v, want the upstream's 192.0.2.7", resp.Answer)
	}
}

func TestEDNSEchoed(t *testing.T) {
	s := start(t, Config{})
	m := question("web.flick.internal.", dns.TypeA)
	m.SetEdns0(4096, false)
	resp := query(t, "udp", s.Addr(), m)
	if resp.IsEdns0() == nil {
		t.Errorf("reply to an EDNS0 query has no OPT record")
	}
	resp = query(t, "udp", s.Addr(), question("web.flick.internal.", dns.TypeA))
	if resp.IsEdns0() != nil {
		t.Errorf("reply to a plain query has an OPT record")
	}
}

func TestParseReverse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // "" for not an address
	}{
		{name: "v4", in: "4.3.2.1.in-addr.arpa.", want: "1.2.3.4"},
		{name: "v4 too short", in: "3.2.1.in-addr.arpa.", want: ""},
		{name: "v4 too long", in: "5.4.3.2.1.in-addr.arpa.", want: ""},
		{name: "v4 not a number", in: "x.3.2.1.in-addr.arpa.", want: ""},
		{name: "v4 out of range", in: "256.3.2.1.in-addr.arpa.", want: ""},
		{name: "v6", in: "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.ip6.arpa.", want: "ff00::1"},
		{name: "v6 short", in: "1.0.ip6.arpa.", want: ""},
		{name: "v6 bad nibble", in: "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.ip6.arpa.", want: ""},
		{name: "other zone", in: "example.com.", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseReverse(tt.in)
			if tt.want == "" {
				if ok {
					t.Errorf("parseReverse(%q) = %v, want not an address", tt.in, got)
				}
				return
			}
			if !ok || got != netip.MustParseAddr(tt.want) {
				t.Errorf("parseReverse(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
			}
		})
	}
}

func TestGarbageDoesNotStopServer(t *testing.T) {
	s := start(t, Config{})

	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	valid, err := question("web.flick.internal.", dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	header := func(b []byte, qd, an, ns, ar uint16) []byte {
		c := append([]byte(nil), b...)
		c[4], c[5] = byte(qd>>8), byte(qd)
		c[6], c[7] = byte(an>>8), byte(an)
		c[8], c[9] = byte(ns>>8), byte(ns)
		c[10], c[11] = byte(ar>>8), byte(ar)
		return c
	}
	response := append([]byte(nil), valid...)
	response[2] |= 0x80 // QR: a reply, not a query
	garbage := [][]byte{
		{},
		{0},
		[]byte("hello, world, this is not dns"),
		valid[:12],           // header only, claims one question
		valid[:len(valid)-3], // cut inside the question
		header(valid, 0, 0, 0, 0),
		header(valid, 2, 0, 0, 0),
		header(valid, 1, 0, 0, 1), // claims an additional record it lacks
		header(valid, 65535, 65535, 65535, 65535),
		response,
		append(valid, 0xde, 0xad, 0xbe, 0xef), // trailing bytes
		{0xc0, 0x0c, 0xc0, 0x0c, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, // compression loop
	}
	for _, g := range garbage {
		if _, err := conn.Write(g); err != nil {
			t.Fatalf("write garbage: %v", err)
		}
	}
	// Over TCP: a length prefix promising more than comes, then junk.
	tc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Write([]byte{0x01, 0x00, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	tc.Close()

	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, s.Addr(), question("web.flick.internal.", dns.TypeA))
		if len(resp.Answer) != 1 {
			t.Errorf("%s after garbage: answers %v, want web's A", network, resp.Answer)
		}
	}
}

func TestStart(t *testing.T) {
	s := start(t, Config{})
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		t.Fatalf("Addr %q: %v", s.Addr(), err)
	}
	if host != "127.0.0.1" || port == "0" {
		t.Errorf("Addr = %q, want 127.0.0.1 with the bound port", s.Addr())
	}

	tests := []struct {
		name    string
		addr    string
		cfg     Config
		wantErr string
	}{
		{name: "port taken", addr: s.Addr(), cfg: Config{Lookup: lookupInstances}, wantErr: s.Addr()},
		{name: "no lookup", addr: "127.0.0.1:0", cfg: Config{}, wantErr: "no lookup"},
		{name: "bad upstream", addr: "127.0.0.1:0", cfg: Config{Lookup: lookupInstances, Upstreams: []string{"resolver"}}, wantErr: "resolver"},
		{name: "bad domain", addr: "127.0.0.1:0", cfg: Config{Lookup: lookupInstances, Domain: "a..b"}, wantErr: "a..b"},
		{name: "bad address", addr: "127.0.0.1", cfg: Config{Lookup: lookupInstances}, wantErr: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Start(tt.addr, tt.cfg)
			if err == nil {
				got.Close()
				t.Fatalf("Start(%q) succeeded, want an error naming %q", tt.addr, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Start(%q) error %q does not name %q", tt.addr, err, tt.wantErr)
			}
		})
	}
}

func TestStartTCPPortTaken(t *testing.T) {
	// The first UDP port the kernel offers is already taken for TCP;
	// Start must try again and still serve one port for both.
	var mu sync.Mutex
	var tcpAddrs []string
	calls := 0
	cfg := Config{
		Lookup:    lookupInstances,
		Upstreams: []string{deadAddr(t)},
		Listen: func(network, addr string) (net.Listener, error) {
			mu.Lock()
			defer mu.Unlock()
			tcpAddrs = append(tcpAddrs, addr)
			calls++
			if calls == 1 {
				return nil, errors.New("address already in use")
			}
			return net.Listen(network, addr)
		},
	}
	s, err := Start("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer s.Close()
	if len(tcpAddrs) != 2 {
		t.Fatalf("Listen called for %v, want two attempts", tcpAddrs)
	}
	if tcpAddrs[1] != s.Addr() {
		t.Errorf("TCP bound %s, UDP %s: want the same port", tcpAddrs[1], s.Addr())
	}
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, s.Addr(), question("db.flick.internal.", dns.TypeA))
		if len(resp.Answer) != 1 {
			t.Errorf("%s: answers %v, want db's A", network, resp.Answer)
		}
	}
}

func TestStartFixedPortNoRetry(t *testing.T) {
	calls := 0
	_, err := Start("127.0.0.1:5353", Config{
		Lookup:       lookupInstances,
		Upstreams:    []string{"127.0.0.1:53"},
		ListenPacket: func(network, addr string) (net.PacketConn, error) { return net.ListenPacket(network, "127.0.0.1:0") },
		Listen: func(network, addr string) (net.Listener, error) {
			calls++
			return nil, errors.New("address already in use")
		},
	})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:5353") {
		t.Errorf("Start error %v, want one naming 127.0.0.1:5353", err)
	}
	if calls != 1 {
		t.Errorf("Listen called %d times for a fixed port, want 1", calls)
	}
}

func TestListenHooks(t *testing.T) {
	var got []string
	s := start(t, Config{
		ListenPacket: func(network, addr string) (net.PacketConn, error) {
			got = append(got, network+" "+addr)
			return net.ListenPacket(network, addr)
		},
		Listen: func(network, addr string) (net.Listener, error) {
			got = append(got, network+" "+addr)
			return net.Listen(network, addr)
		},
	})
	want := []string{"udp 127.0.0.1:0", "tcp " + s.Addr()}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("sockets made with %q, want %q", got, want)
	}
}

func TestClose(t *testing.T) {
	// An upstream that never answers holds a query in flight.
	silent, received := startSilentUpstream(t)
	s, err := Start("127.0.0.1:0", Config{
		Lookup:    lookupInstances,
		Upstreams: []string{silent},
		Timeout:   time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c := &dns.Client{Net: "udp", Timeout: time.Minute}
		_, _, _ = c.Exchange(question("example.com.", dns.TypeA), s.Addr())
	}()
	select {
	case <-received:
	case <-time.After(5 * time.Second):
		t.Fatal("query never reached the upstream")
	}

	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the upstream timeout")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	c := &dns.Client{Net: "tcp", Timeout: time.Second}
	if _, _, err := c.Exchange(question("web.flick.internal.", dns.TypeA), s.Addr()); err == nil {
		t.Errorf("closed server still answers over TCP")
	}
	// The port is free again.
	s2, err := Start(s.Addr(), Config{Lookup: lookupInstances, Upstreams: []string{silent}})
	if err != nil {
		t.Fatalf("Start again on %s: %v", s.Addr(), err)
	}
	s2.Close()
}

func TestLookupPanic(t *testing.T) {
	s := start(t, Config{Lookup: func(name string) (netip.Addr, bool) {
		if name == "boom" {
			panic("lookup exploded")
		}
		return lookupInstances(name)
	}})
	resp := query(t, "udp", s.Addr(), question("boom.flick.internal.", dns.TypeA))
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	resp = query(t, "tcp", s.Addr(), question("web.flick.internal.", dns.TypeA))
	if len(resp.Answer) != 1 {
		t.Errorf("after a panic: answers %v, want web's A", resp.Answer)
	}
}
