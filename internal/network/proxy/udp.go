package proxy

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxDatagram fits any UDP payload.
	maxDatagram = 64 << 10
	// flowQueue is how many datagrams from one client may wait for the
	// flow toward the guest (while Target resolves, say); more are dropped.
	flowQueue = 64
)

// flow is one UDP client's conversation with the guest: datagrams from the
// client go out on a socket of the flow's own, and whatever comes back on
// that socket goes to the client from the listening socket.
type flow struct {
	key    string
	client net.Addr
	in     chan []byte   // datagrams from the client
	done   chan struct{} // closed when the flow ends
	end    sync.Once
	last   atomic.Int64 // unix nanoseconds of the last datagram either way

	mu    sync.Mutex
	up    net.Conn
	ended bool
}

// setUp attaches the socket toward the guest, or reports false if the flow
// ended meanwhile.
func (f *flow) setUp(up net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return false
	}
	f.up = up
	return true
}

func (p *Proxy) touchFlow(f *flow) {
	now := time.Now().UnixNano()
	f.last.Store(now)
	p.touchAt(now)
}

func (p *Proxy) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	var backoff time.Duration
	for {
		n, client, err := p.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			p.log.Warn("read", "err", err)
			if !p.acceptBackoff(&backoff) {
				return
			}
			continue
		}
		backoff = 0
		data := append([]byte(nil), buf[:n]...)
		key := client.String()

		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		f := p.flows[key]
		if f == nil {
			f = &flow{key: key, client: client, in: make(chan []byte, flowQueue), done: make(chan struct{})}
			p.flows[key] = f
			p.wg.Add(1)
			go p.runFlow(f)
		}
		p.mu.Unlock()

		select {
		case f.in <- data:
		default:
			p.log.Debug("drop datagram: flow queue full", "client", key)
		}
	}
}

// runFlow resolves and dials the guest for f, then sends it f's datagrams
// until f has been idle for UDPIdle or ends otherwise.
func (p *Proxy) runFlow(f *flow) {
	defer p.wg.Done()
	defer p.endFlow(f)
	log := p.log.With("client", f.key)

	addr, err := p.targetAddr()
	if err != nil {
		log.Debug("drop datagrams", "err", err)
		return
	}
	up, err := p.dial("udp", addr)
	if err != nil {
		log.Debug("drop datagrams", "err", err)
		return
	}
	if !f.setUp(up) {
		up.Close()
		return
	}
	p.wg.Add(1)
	go p.flowReplies(f, up, log)

	p.touchFlow(f)
	idle := time.NewTimer(p.cfg.UDPIdle)
	defer idle.Stop()
	for {
		select {
		case data := <-f.in:
			p.touchFlow(f)
			if _, err := up.Write(data); err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					// An earlier datagram met a closed guest port; the
					// guest may open it yet.
					log.Debug("send to guest", "err", err)
					continue
				}
				log.Debug("flow ended", "err", err)
				return
			}
		case <-idle.C:
			since := time.Since(time.Unix(0, f.last.Load()))
			if since >= p.cfg.UDPIdle {
				log.Debug("flow expired", "idle", since)
				return
			}
			idle.Reset(p.cfg.UDPIdle - since)
		case <-f.done:
			return
		}
	}
}

// flowReplies sends what the guest answers on up back to f's client.
func (p *Proxy) flowReplies(f *flow, up net.Conn, log *slog.Logger) {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // the guest port is closed, for now
			}
			if !errors.Is(err, net.ErrClosed) {
				log.Debug("flow ended", "err", err)
			}
			p.endFlow(f)
			return
		}
		p.touchFlow(f)
		if _, err := p.pc.WriteTo(buf[:n], f.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Debug("send to client", "err", err)
		}
	}
}

// endFlow forgets f and closes its socket toward the guest; its goroutines
// return. Only the first call does anything.
func (p *Proxy) endFlow(f *flow) {
	f.end.Do(func() {
		p.mu.Lock()
		if p.flows[f.key] == f {
			delete(p.flows, f.key)
		}
		p.mu.Unlock()
		close(f.done)
		f.mu.Lock()
		f.ended = true
		up := f.up
		f.mu.Unlock()
		if up != nil {
			up.Close()
		}
	})
}
