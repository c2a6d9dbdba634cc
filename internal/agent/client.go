// Package agent is the host's side of the guest agent channel: it keeps a
// yamux session with the agent in one VM, re-establishing it whenever the
// agent or the connection is replaced, and runs requests on it, one stream
// each (see package wire for the protocol).
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/mux"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// Dialer connects to the VM's agent channel.
type Dialer func(ctx context.Context) (net.Conn, error)

// DefaultTimeout bounds a request whose context has no deadline of its own.
const DefaultTimeout = 30 * time.Second

// Client talks to the agent of one VM.
type Client struct {
	dial  Dialer
	start func() error
	log   *slog.Logger
	once  sync.Once

	mu     sync.Mutex
	sess   *yamux.Session
	conn   net.Conn      // the connection being handshaken or in session
	up     chan struct{} // closed while sess is usable
	closed bool
	done   chan struct{} // closed when Run returns
}

// New returns a client. It connects at its first request, after calling
// start (when not nil), which asks the guest to start its agent: a VM that
// nobody execs into never runs one. Run connects at once instead.
func New(dial Dialer, start func() error, log *slog.Logger) *Client {
	return &Client{dial: dial, start: start, log: log, up: make(chan struct{}), done: make(chan struct{})}
}

// ensure starts the agent and the connection, the first time.
func (c *Client) ensure() {
	c.once.Do(func() {
		if c.start != nil {
			if err := c.start(); err != nil {
				c.log.Warn("ask the guest to start its agent", "err", err)
			}
		}
		go c.run(context.Background())
	})
}

// Run connects, handshakes and keeps a session until Close, starting over
// whenever the session ends. It returns when ctx ends or Close is called.
// The first request runs it, unless it already runs.
func (c *Client) Run(ctx context.Context) {
	started := false
	c.once.Do(func() { started = true })
	if !started {
		return // ensure or another Run has it
	}
	c.run(ctx)
}

func (c *Client) run(ctx context.Context) {
	defer close(c.done)
	for {
		if c.isClosed() || ctx.Err() != nil {
			return
		}
		if err := c.session(ctx); err != nil && !c.isClosed() && ctx.Err() == nil {
			c.log.Debug("agent session", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Client) session(ctx context.Context) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return nil
	}
	c.conn = conn
	c.mu.Unlock()
	defer conn.Close()

	// No deadline: the agent starts after the app and may take as long
	// as the app lets it. Reset and Close end the wait by closing conn.
	r, err := wire.HostHandshake(conn, conn)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	sess, err := yamux.Client(rwc{r, conn}, mux.Config())
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.sess = sess
	close(c.up)
	c.mu.Unlock()
	c.log.Debug("agent session up")

	<-sess.CloseChan()

	c.mu.Lock()
	c.sess = nil
	c.conn = nil
	c.up = make(chan struct{})
	c.mu.Unlock()
	return nil
}

type rwc struct {
	io.Reader
	io.WriteCloser
}

// Reset drops the session, as when PID 1 reports that the agent died; Run
// connects again and handshakes with the agent's successor.
func (c *Client) Reset() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Close ends the session for good and waits for Run to return, if it runs.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Wait blocks until Run has returned, if it ever ran.
func (c *Client) Wait() {
	started := true
	c.once.Do(func() { started = false })
	if started {
		<-c.done
	}
}

// Up reports whether a session is established.
func (c *Client) Up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil
}

// open waits for a session and opens a stream carrying req.
func (c *Client) open(ctx context.Context, req wire.Request) (net.Conn, error) {
	c.ensure()
	for {
		c.mu.Lock()
		sess, up, closed := c.sess, c.up, c.closed
		c.mu.Unlock()
		if closed {
			return nil, errdefs.Unavailable("agent channel closed: the instance is going away")
		}
		if sess == nil {
			select {
			case <-up:
				continue
			case <-ctx.Done():
				return nil, errdefs.Unavailable("the guest agent did not answer in time (it starts after the app; see flick console for why it may not)")
			}
		}
		st, err := sess.OpenStream()
		if err != nil {
			if errors.Is(err, yamux.ErrSessionShutdown) || sess.IsClosed() {
				// Replaced meanwhile; wait for the next session.
				select {
				case <-sess.CloseChan():
				case <-ctx.Done():
					return nil, errdefs.Unavailable("agent session lost: %v", err)
				}
				continue
			}
			return nil, errdefs.Unavailable("agent: open stream: %v", err)
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = st.SetWriteDeadline(dl)
		}
		if err := wire.WriteJSON(st, wire.TypeRequest, req); err != nil {
			st.Close()
			return nil, errdefs.Unavailable("agent: send request: %v", err)
		}
		_ = st.SetWriteDeadline(time.Time{})
		return st, nil
	}
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// readResult reads the Result frame that answers a request.
func readResult(ctx context.Context, st net.Conn) (wire.Result, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetReadDeadline(dl)
		defer st.SetReadDeadline(time.Time{})
	}
	f, err := wire.ReadFrame(st)
	if err != nil {
		return wire.Result{}, errdefs.Unavailable("agent: no answer: %v", err)
	}
	var res wire.Result
	if f.Type != wire.TypeResult || json.Unmarshal(f.Payload, &res) != nil {
		return wire.Result{}, fmt.Errorf("agent: unexpected frame type %d", f.Type)
	}
	return res, nil
}

// resultErr maps a failed Result to an error of the matching class.
func resultErr(res wire.Result) error {
	switch res.Status {
	case 0, 200:
		return nil
	case 400:
		return errdefs.InvalidArgument("%s", res.Error)
	case 403:
		return errdefs.Forbidden("%s", res.Error)
	case 404:
		return errdefs.NotFound("%s", res.Error)
	case 408:
		return errdefs.Timeout("%s", res.Error)
	}
	return fmt.Errorf("agent: %s", res.Error)
}

// Exec starts spec and returns its stream: the caller writes TypeStdin,
// TypeStdinClose, TypeResize and TypeSignal frames and reads TypeStdout,
// TypeStderr and finally TypeExit. Closing the stream before TypeExit kills
// the process.
func (c *Client) Exec(ctx context.Context, spec wire.ExecSpec) (net.Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return c.open(ctx, wire.Request{Op: wire.OpExec, Exec: &spec})
}

// Stat describes path in the guest.
func (c *Client) Stat(ctx context.Context, path string) (wire.PathStat, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	st, err := c.open(ctx, wire.Request{Op: wire.OpStat, Path: path})
	if err != nil {
		return wire.PathStat{}, err
	}
	defer st.Close()
	res, err := readResult(ctx, st)
	if err != nil {
		return wire.PathStat{}, err
	}
	if err := resultErr(res); err != nil {
		return wire.PathStat{}, err
	}
	if res.Stat == nil {
		return wire.PathStat{}, errors.New("agent: stat without a stat")
	}
	return *res.Stat, nil
}

// ArchiveGet returns the stat of path and a tar stream of it, whose top
// entry is path's base name. The caller closes the stream.
func (c *Client) ArchiveGet(ctx context.Context, path string) (wire.PathStat, io.ReadCloser, error) {
	octx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	st, err := c.open(octx, wire.Request{Op: wire.OpArchiveGet, Path: path})
	if err != nil {
		return wire.PathStat{}, nil, err
	}
	res, err := readResult(octx, st)
	if err == nil {
		err = resultErr(res)
	}
	if err != nil {
		st.Close()
		return wire.PathStat{}, nil, err
	}
	var s wire.PathStat
	if res.Stat != nil {
		s = *res.Stat
	}
	return s, idle{st}, nil
}

// IdleTimeout bounds how long a copy may wait for the guest to send or to
// take the next bytes: a guest that stops reading or writing fails the copy
// instead of holding it forever.
const IdleTimeout = 30 * time.Second

// idle renews the stream's deadline before every read and write.
type idle struct{ net.Conn }

func (c idle) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(IdleTimeout))
	return c.Conn.Read(p)
}

func (c idle) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(IdleTimeout))
	return c.Conn.Write(p)
}

// ArchivePut extracts the tar stream r into the directory path in the
// guest. Entries that would land outside path are refused (400).
func (c *Client) ArchivePut(ctx context.Context, path string, r io.Reader) error {
	octx, cancel := withDefaultTimeout(ctx)
	st, err := c.open(octx, wire.Request{Op: wire.OpArchivePut, Path: path})
	cancel()
	if err != nil {
		return err
	}
	defer st.Close()
	// The agent may answer early (a missing directory, a refused entry)
	// and then drains the rest; either way the answer comes after the
	// stream's end.
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	_, copyErr := io.Copy(idle{st}, r)
	// A yamux stream closes half-way: the agent reads the end of the tar
	// stream and the answer can still be read.
	_ = st.Close()
	// Extraction of what is buffered may still take a while.
	rctx, cancel := context.WithTimeout(context.Background(), IdleTimeout)
	defer cancel()
	res, err := readResult(rctx, st)
	if err != nil {
		if copyErr != nil {
			return fmt.Errorf("copy: %w", copyErr)
		}
		return err
	}
	if err := resultErr(res); err != nil {
		return err
	}
	if copyErr != nil {
		return fmt.Errorf("copy: %w", copyErr)
	}
	return nil
}

// Ready waits until check passes in the guest, or fails with a Timeout
// error after check.TimeoutMS.
func (c *Client) Ready(ctx context.Context, check wire.ReadyCheck) error {
	st, err := c.open(ctx, wire.Request{Op: wire.OpReady, Ready: &check})
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := readResult(ctx, st)
	if err != nil {
		return err
	}
	return resultErr(res)
}
