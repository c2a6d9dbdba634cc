package dns

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// forward relays req to the upstreams in order and returns the first
// useful reply under the client's ID, cut to the client's UDP buffer when
// it asked over UDP. A SERVFAIL or REFUSED upstream is passed over for the
// next one but still returned when nothing better comes; when no upstream
// answers at all the client gets SERVFAIL.
func (s *Server) forward(req *dns.Msg, tcp bool) *dns.Msg {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()

	q := req.Copy()
	q.Id = dns.Id()

	var fallback *dns.Msg
	for _, up := range s.upstreams {
		resp, err := s.exchange(ctx, up, q)
		if err != nil {
			if ctx.Err() != nil {
				break // closing
			}
			s.log.Debug("dns: upstream", "upstream", up, "name", q.Question[0].Name, "err", err)
			if resp != nil && fallback == nil {
				fallback = resp // truncated over UDP, TCP retry failed
			}
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			fallback = resp
			continue
		}
		return relay(req, resp, tcp)
	}
	if fallback != nil {
		return relay(req, fallback, tcp)
	}
	if ctx.Err() == nil {
		s.log.Warn("dns: no upstream answered", "name", q.Question[0].Name, "upstreams", len(s.upstreams))
	}
	return reply(req, dns.RcodeServerFailure)
}

// exchange asks one upstream over UDP and, when the reply is truncated,
// again over TCP. On a failed TCP retry it returns the truncated reply
// along with the error.
func (s *Server) exchange(ctx context.Context, upstream string, q *dns.Msg) (*dns.Msg, error) {
	resp, err := s.exchangeOver(ctx, s.udpClient, upstream, q)
	if err != nil {
		return nil, err
	}
	if !resp.Truncated {
		return resp, nil
	}
	full, err := s.exchangeOver(ctx, s.tcpClient, upstream, q)
	if err != nil {
		return resp, fmt.Errorf("retry over tcp: %w", err)
	}
	return full, nil
}

func (s *Server) exchangeOver(ctx context.Context, c *dns.Client, upstream string, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	conn, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.Net, upstream, err)
	}
	defer conn.Close()
	// The client only takes the context's deadline; closing the socket is
	// what stops a read when Close cancels.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.Net, upstream, err)
	}
	if !sameQuestion(q, resp) {
		return nil, fmt.Errorf("%s %s: %w", c.Net, upstream, errQuestion)
	}
	return resp, nil
}

var errQuestion = errors.New("reply is for another question")

func sameQuestion(q, resp *dns.Msg) bool {
	if len(resp.Question) != 1 {
		return false
	}
	a, b := q.Question[0], resp.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// relay readies an upstream reply for the client.
func relay(req, resp *dns.Msg, tcp bool) *dns.Msg {
	resp.Id = req.Id
	if tcp {
		resp.Compress = true
		return resp
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	resp.Truncate(size)
	return resp
}
