package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// tcpConn is one client connection and, once dialled, its guest side.
type tcpConn struct {
	client net.Conn
	probe  func() int64 // last activity the kernel saw on client, or nil

	mu       sync.Mutex
	upstream net.Conn
	closed   bool
}

// lastActive is the last activity on c in unix nanoseconds, or 0 if the
// kernel cannot tell.
func (c *tcpConn) lastActive() int64 {
	if c.probe == nil {
		return 0
	}
	return c.probe()
}

// setUpstream attaches the guest side, or reports false if c was closed
// meanwhile.
func (c *tcpConn) setUpstream(up net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.upstream = up
	return true
}

// close closes both sides; copies in flight return.
func (c *tcpConn) close() {
	c.mu.Lock()
	c.closed = true
	up := c.upstream
	c.mu.Unlock()
	c.client.Close()
	if up != nil {
		up.Close()
	}
}

func (p *Proxy) serveTCP() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: wait and go on.
			p.log.Warn("accept", "err", err)
			if !p.acceptBackoff(&backoff) {
				return
			}
			continue
		}
		backoff = 0
		c := &tcpConn{client: client, probe: kernelProbe(client)}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.handleTCP(c)
	}
}

func (p *Proxy) handleTCP(c *tcpConn) {
	defer p.wg.Done()
	defer func() {
		if t := c.lastActive(); t != 0 {
			p.touchAt(t)
		}
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	log := p.log.With("client", c.client.RemoteAddr().String())

	addr, err := p.targetAddr()
	if err != nil {
		log.Debug("drop connection", "err", err)
		return
	}
	up, err := p.dial("tcp", addr)
	if err != nil {
		log.Debug("drop connection", "err", err)
		return
	}
	if !c.setUpstream(up) {
		up.Close()
		return
	}

	// Without the kernel's view of the client socket, count bytes here;
	// that also means no splice.
	var fromClient, fromGuest io.Reader = c.client, up
	if c.probe == nil {
		fromClient = &activeReader{r: c.client, p: p}
		fromGuest = &activeReader{r: up, p: p}
	}
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		p.pipe(c, up, fromClient, &failed, log)
	}()
	p.pipe(c, c.client, fromGuest, &failed, log)
	wg.Done()
	wg.Wait()
}

// pipe copies src to dst until EOF and then half-closes dst, so the other
// end sees EOF while the reverse direction goes on. An error on either
// side closes the whole connection. With both ends *net.TCPConn, io.Copy
// moves the bytes with splice(2).
func (p *Proxy) pipe(c *tcpConn, dst net.Conn, src io.Reader, failed *atomic.Bool, log *slog.Logger) {
	_, err := io.Copy(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			err = cw.CloseWrite()
		} else {
			// No half-close: closing is the only way to pass on EOF.
			err = dst.Close()
		}
	}
	if err != nil && !failed.Swap(true) {
		if !errors.Is(err, net.ErrClosed) {
			log.Debug("connection ended", "err", err)
		}
		c.close()
	}
}

// activeReader records activity on every read that moves bytes.
type activeReader struct {
	r io.Reader
	p *Proxy
}

func (a *activeReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.p.touch()
	}
	return n, err
}
