package dns

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a fake resolver on 127.0.0.1, UDP and TCP on one port.
type upstream struct {
	addr string

	mu   sync.Mutex
	seen []string // "udp example.com." per query received
	ids  []uint16
}

func (u *upstream) queries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

// upstreamFunc answers one query; network is "udp" or "tcp".
type upstreamFunc func(network string, req *dns.Msg) *dns.Msg

func startUpstream(t *testing.T, answer upstreamFunc) *upstream {
	t.Helper()
	pc, ln, err := bind("127.0.0.1:0", net.ListenPacket, net.Listen)
	if err != nil {
		t.Fatalf("fake upstream: %v", err)
	}
	u := &upstream{addr: pc.LocalAddr().String()}
	handler := func(network string) dns.HandlerFunc {
		return func(w dns.ResponseWriter, r *dns.Msg) {
			u.mu.Lock()
			u.seen = append(u.seen, network+" "+r.Question[0].Name)
			u.ids = append(u.ids, r.Id)
			u.mu.Unlock()
			if m := answer(network, r); m != nil {
				_ = w.WriteMsg(m)
			}
		}
	}
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: handler("udp")},
		{Listener: ln, Handler: handler("tcp")},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// answerA answers every query with one A record.
func answerA(ip string) upstreamFunc {
	return func(_ string, req *dns.Msg) *dns.Msg {
		m := new(dns.Msg).SetReply(req)
		rr, err := dns.NewRR(fmt.Sprintf("%s 300 IN A %s", req.Question[0].Name, ip))
		if err != nil {
			panic(err)
		}
		m.Answer = []dns.RR{rr}
		return m
	}
}

func answerRcode(rcode int) upstreamFunc {
	return func(_ string, req *dns.Msg) *dns.Msg {
		return new(dns.Msg).SetRcode(req, rcode)
	}
}

// answerMany answers with n TXT records, too many for 512 bytes when n is
// large; over UDP it honours the requester's buffer and sets TC as a real
// server does.
func answerMany(n int) upstreamFunc {
	return func(network string, req *dns.Msg) *dns.Msg {
		m := new(dns.Msg).SetReply(req)
		for i := range n {
			rr, err := dns.NewRR(fmt.Sprintf("%s 60 IN TXT \"record %03d padding padding padding\"", req.Question[0].Name, i))
			if err != nil {
				panic(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		if network == "udp" {
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size)
		}
		return m
	}
}

// startSilentUpstream reads UDP queries and never answers; received gets
// a value per query.
func startSilentUpstream(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	received := make(chan struct{}, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case received <- struct{}{}:
			default:
			}
		}
	}()
	return pc.LocalAddr().String(), received
}

func TestForward(t *testing.T) {
	live := startUpstream(t, answerA("192.0.2.1"))
	other := startUpstream(t, answerA("192.0.2.99"))
	servfail := startUpstream(t, answerRcode(dns.RcodeServerFailure))
	refused := startUpstream(t, answerRcode(dns.RcodeRefused))
	nxdomain := startUpstream(t, answerRcode(dns.RcodeNameError))
	silent, _ := startSilentUpstream(t)
	dead := deadAddr(t)

	tests := []struct {
		name      string
		upstreams []string
		rcode     int
		answer    string // A record expected, "" for none
		maxTime   time.Duration
	}{
		{name: "relayed", upstreams: []string{live.addr, other.addr}, answer: "192.0.2.1"},
		{name: "upstream NXDOMAIN relayed", upstreams: []string{nxdomain.addr, live.addr}, rcode: dns.RcodeNameError},
		{name: "dead then live", upstreams: []string{dead, live.addr}, answer: "192.0.2.1"},
		{name: "silent then live", upstreams: []string{silent, live.addr}, answer: "192.0.2.1", maxTime: 5 * time.Second},
		{name: "servfail then live", upstreams: []string{servfail.addr, live.addr}, answer: "192.0.2.1"},
		{name: "refused then live", upstreams: []string{refused.addr, live.addr}, answer: "192.0.2.1"},
		{name: "only servfail", upstreams: []string{dead, servfail.addr}, rcode: dns.RcodeServerFailure},
		{name: "refused relayed when nothing better", upstreams: []string{refused.addr, dead}, rcode: dns.RcodeRefused},
		{name: "all dead", upstreams: []string{dead, silent}, rcode: dns.RcodeServerFailure},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				s := start(t, Config{Upstreams: tt.upstreams, Timeout: 300 * time.Millisecond})
				m := question("Example.COM.", dns.TypeA)
				m.Id = 0x1234
				began := time.Now()
				resp := query(t, network, s.Addr(), m) // checks the ID
				if resp.Rcode != tt.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				if resp.Authoritative && tt.answer != "" {
					t.Errorf("forwarded answer claims authority")
				}
				var got []string
				for _, rr := range resp.Answer {
					if a, ok := rr.(*dns.A); ok {
						got = append(got, a.A.String())
					}
				}
				want := []string{}
				if tt.answer != "" {
					want = []string{tt.answer}
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("answers %v, want %v", got, want)
				}
				if len(resp.Question) != 1 || resp.Question[0].Name != "Example.COM." {
					t.Errorf("question %v, want Example.COM. as asked", resp.Question)
				}
				if d := time.Since(began); tt.maxTime > 0 && d > tt.maxTime {
					t.Errorf("took %v, want under %v", d, tt.maxTime)
				}
			})
		}
	}
	if q := other.queries(); len(q) != 0 {
		t.Errorf("second upstream asked %v although the first answered", q)
	}
}

func TestForwardUsesOwnID(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1"))
	s := start(t, Config{Upstreams: []string{up.addr}})
	for range 3 {
		m := question("example.com.", dns.TypeA)
		m.Id = 7
		query(t, "udp", s.Addr(), m)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	distinct := map[uint16]bool{}
	for _, id := range up.ids {
		distinct[id] = true
	}
	// Three random 16-bit IDs all colliding with 7 or each other is not
	// a thing that happens.
	if len(distinct) < 2 {
		t.Errorf("upstream saw ids %v for three queries with id 7, want fresh ones", up.ids)
	}
}

func TestForwardTruncated(t *testing.T) {
	tests := []struct {
		name          string
		records       int
		edns          uint16 // client's EDNS0 buffer, 0 for none
		network       string // client's transport
		wantTC        bool
		wantAll       bool
		wantUpstreams []string
	}{
		{
			name: "small answer over udp", records: 2, network: "udp",
			wantAll: true, wantUpstreams: []string{"udp example.org."},
		},
		{
			name: "upstream truncates, client gets all in its edns buffer", records: 20, edns: 4096, network: "udp",
			wantAll: true, wantUpstreams: []string{"udp example.org."},
		},
		{
			name: "upstream truncates, retried over tcp, client over tcp gets all", records: 20, network: "tcp",
			wantAll: true, wantUpstreams: []string{"udp example.org.", "tcp example.org."},
		},
		{
			name: "upstream truncates, retried over tcp, cut to the client's 512 bytes", records: 20, network: "udp",
			wantTC: true, wantUpstreams: []string{"udp example.org.", "tcp example.org."},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, answerMany(tt.records))
			s := start(t, Config{Upstreams: []string{up.addr}})
			m := question("example.org.", dns.TypeTXT)
			if tt.edns != 0 {
				m.SetEdns0(tt.edns, false)
			}
			resp := query(t, tt.network, s.Addr(), m)
			if resp.Rcode != dns.RcodeSuccess {
				t.Fatalf("rcode %s", dns.RcodeToString[resp.Rcode])
			}
			if resp.Truncated != tt.wantTC {
				t.Errorf("TC %v, want %v", resp.Truncated, tt.wantTC)
			}
			if all := len(resp.Answer) == tt.records; all != tt.wantAll {
				t.Errorf("%d of %d records, want all: %v", len(resp.Answer), tt.records, tt.wantAll)
			}
			if got := up.queries(); strings.Join(got, ",") != strings.Join(tt.wantUpstreams, ",") {
				t.Errorf("upstream asked %q, want %q", got, tt.wantUpstreams)
			}
		})
	}
}

func TestForwardTruncatedTCPFails(t *testing.T) {
	// The upstream truncates over UDP and has nothing on TCP: the client
	// gets the truncated reply rather than SERVFAIL.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.Truncated = true
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })

	s := start(t, Config{Upstreams: []string{pc.LocalAddr().String()}, Timeout: 300 * time.Millisecond})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(question("example.net.", dns.TypeA), s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Rcode != dns.RcodeSuccess || !resp.Truncated {
		t.Errorf("rcode %s TC %v, want NOERROR with TC", dns.RcodeToString[resp.Rcode], resp.Truncated)
	}
}

func TestForwardWrongQuestion(t *testing.T) {
	// An upstream whose reply is for another name is not believed.
	liar := startUpstream(t, func(_ string, req *dns.Msg) *dns.Msg {
		m := new(dns.Msg).SetReply(req)
		m.Question[0].Name = "evil.example."
		rr, _ := dns.NewRR("evil.example. 300 IN A 203.0.113.66")
		m.Answer = []dns.RR{rr}
		return m
	})
	live := startUpstream(t, answerA("192.0.2.1"))
	s := start(t, Config{Upstreams: []string{liar.addr, live.addr}})
	resp := query(t, "udp", s.Addr(), question("example.com.", dns.TypeA))
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Errorf("answers %v, want the honest upstream's 192.0.2.1", resp.Answer)
	}
}

func TestPTRUnknownForwarded(t *testing.T) {
	up := startUpstream(t, answerRcode(dns.RcodeNameError))
	s := start(t, Config{Reverse: reverseInstances, Upstreams: []string{up.addr}})
	resp := query(t, "udp", s.Addr(), question("99.0.77.10.in-addr.arpa.", dns.TypePTR))
	if resp.Rcode != dns.RcodeNameError {
		t.Errorf("rcode %s, want the upstream's NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
	if got := up.queries(); len(got) != 1 {
		t.Errorf("upstream asked %v, want the PTR query once", got)
	}
}
