package dns

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

const (
	// answerTTL is 0: instances come and go, and a restarted one may get a
	// new address.
	answerTTL = 0
	// negativeTTL lets resolvers cache "no such instance" just long enough
	// to absorb retries.
	negativeTTL = 1
	// localUDPSize is the EDNS0 buffer size advertised in local answers.
	localUDPSize = 1232
)

// serve answers one query; tcp tells which listener it came in on.
func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg, tcp bool) {
	defer func() {
		// A panic in a Lookup must not take flickd down with it.
		if p := recover(); p != nil {
			s.log.Error("dns: handler panic", "panic", p)
			_ = w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeServerFailure))
		}
	}()

	resp := s.answer(req, tcp)
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns: write reply", "remote", w.RemoteAddr(), "err", err)
	}
}

// answer builds the reply to req: local when the name is ours, forwarded
// otherwise.
func (s *Server) answer(req *dns.Msg, tcp bool) *dns.Msg {
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		return reply(req, dns.RcodeNotImplemented)
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	if dns.IsSubDomain(s.domain, name) {
		return s.local(req, q, name)
	}
	if m := s.ptr(req, q, name); m != nil {
		return m
	}
	return s.forward(req, tcp)
}

// local answers a query under the domain.
func (s *Server) local(req *dns.Msg, q dns.Question, name string) *dns.Msg {
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return reply(req, dns.RcodeRefused)
	}
	m := reply(req, dns.RcodeSuccess)
	m.Authoritative = true

	if name == s.domain {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			m.Answer = []dns.RR{s.soaFor(q.Name)}
		} else {
			m.Ns = []dns.RR{s.soaFor(s.domain)}
		}
		return m
	}

	label := strings.TrimSuffix(name, "."+s.domain)
	var addr netip.Addr
	ok := false
	if !strings.Contains(label, ".") {
		addr, ok = s.lookup(label)
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soaFor(s.domain)}
		return m
	}

	addr = addr.Unmap()
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: answerTTL}
	switch {
	case addr.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeA
		m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: addr.AsSlice()}}
	case addr.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeAAAA
		m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: addr.AsSlice()}}
	default:
		// The name exists but has no record of that type: NODATA.
		m.Ns = []dns.RR{s.soaFor(s.domain)}
	}
	return m
}

// ptr answers a PTR query for an address Reverse knows, or returns nil to
// let the query be forwarded.
func (s *Server) ptr(req *dns.Msg, q dns.Question, name string) *dns.Msg {
	if s.reverse == nil || (q.Qtype != dns.TypePTR && q.Qtype != dns.TypeANY) ||
		(q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
		return nil
	}
	addr, ok := parseReverse(name)
	if !ok {
		return nil
	}
	instance, ok := s.reverse(addr)
	if !ok {
		return nil
	}
	target := dns.CanonicalName(instance + "." + s.domain)
	if _, ok := dns.IsDomainName(target); !ok {
		return nil
	}
	m := reply(req, dns.RcodeSuccess)
	m.Authoritative = true
	m.Answer = []dns.RR{&dns.PTR{
		Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: answerTTL},
		Ptr: target,
	}}
	return m
}

// parseReverse turns a lower-case, fully qualified in-addr.arpa or
// ip6.arpa name for a whole address back into the address.
func parseReverse(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
			labels[i], labels[j] = labels[j], labels[i]
		}
		a, err := netip.ParseAddr(strings.Join(labels, "."))
		return a, err == nil && a.Is4()
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			if len(l) != 1 {
				return netip.Addr{}, false
			}
			n := strings.IndexByte("0123456789abcdef", l[0])
			if n < 0 {
				return netip.Addr{}, false
			}
			// labels[0] is the lowest nibble of the last byte.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= byte(n) << 4
			} else {
				b[pos/2] |= byte(n)
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// soaFor is the zone's SOA, owned by name.
func (s *Server) soaFor(name string) dns.RR {
	soa := *s.soa
	soa.Hdr.Name = name
	return &soa
}

// reply starts a response to req with rcode; it advertises recursion (the
// forwarding) and echoes EDNS0 when the client used it.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg).SetRcode(req, rcode)
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(localUDPSize, false)
	}
	return m
}
