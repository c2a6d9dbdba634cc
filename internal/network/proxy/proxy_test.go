package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/errdefs"
)

// testTimeout bounds every wait, so a broken proxy fails a test instead of
// hanging it.
const testTimeout = 10 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fixed is a Target that always answers addr.
func fixed(addr netip.AddrPort) func(context.Context) (netip.AddrPort, error) {
	return func(context.Context) (netip.AddrPort, error) { return addr, nil }
}

func start(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	p, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tcpServer serves each connection with handle on 127.0.0.1 until the test
// ends.
func tcpServer(t *testing.T, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(testTimeout))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// streamEcho echoes as it reads and half-closes at EOF.
func streamEcho(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// replyAtEOF answers only once the client has half-closed: it reads to EOF
// and then writes "you said: " and what it read.
func replyAtEOF(c *net.TCPConn) {
	b, err := io.ReadAll(c)
	if err != nil {
		return
	}
	c.Write(append([]byte("you said: "), b...))
}

func dialProxy(t *testing.T, p *Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

// roundTrip sends msg, half-closes and reads until the proxy's EOF.
func roundTrip(c *net.TCPConn, msg []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; err == nil {
		err = werr
	}
	return got, err
}

func TestTCPHalfClose(t *testing.T) {
	p := start(t, Config{Proto: "tcp", Target: fixed(tcpServer(t, replyAtEOF))})
	c := dialProxy(t, p)
	got, err := roundTrip(c, []byte("hello"))
	if err != nil {
		t.Fatalf("round trip: %v (got %q)", err, got)
	}
	if string(got) != "you said: hello" {
		t.Errorf("reply = %q, want %q", got, "you said: hello")
	}
}

func TestTCPLargeTransfer(t *testing.T) {
	p := start(t, Config{Proto: "tcp", Target: fixed(tcpServer(t, streamEcho))})
	msg := make([]byte, 8<<20)
	rand.Read(msg)
	got, err := roundTrip(dialProxy(t, p), msg)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Errorf("echo differs: got %d bytes, sent %d", len(got), len(msg))
	}
}

func TestTCPManyConnections(t *testing.T) {
	p := start(t, Config{Proto: "tcp", Target: fixed(tcpServer(t, replyAtEOF))})
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := net.Dial("tcp", p.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			msg := fmt.Sprintf("client %d: %s", i, strings.Repeat("x", i*1000))
			got, err := roundTrip(c.(*net.TCPConn), []byte(msg))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			if want := "you said: " + msg; string(got) != want {
				errs <- fmt.Errorf("client %d got %.40q..., want %.40q...", i, got, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "Conns() == 0 after all clients closed", func() bool { return p.Conns() == 0 })
}

// lockedBuffer is a bytes.Buffer a logger and a test may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestTCPTargetError(t *testing.T) {
	tests := []struct {
		name    string
		target  func(context.Context) (netip.AddrPort, error)
		wantLog string
	}{
		{"error", func(context.Context) (netip.AddrPort, error) {
			return netip.AddrPort{}, errors.New("instance web is gone")
		},
			"resolve target: instance web is gone"},
		{"invalid address", func(context.Context) (netip.AddrPort, error) { return netip.AddrPort{}, nil },
			"resolve target: invalid address invalid AddrPort"},
		{"nothing listening", fixed(closedTCPPort(t)), "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs lockedBuffer
			p := start(t, Config{
				Proto:  "tcp",
				Target: tt.target,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			c := dialProxy(t, p)
			got, err := io.ReadAll(c)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v, want the proxy to close the connection", err)
			}
			if len(got) != 0 {
				t.Errorf("read %q, want nothing", got)
			}
			waitFor(t, "Conns() == 0", func() bool { return p.Conns() == 0 })
			if !strings.Contains(logs.String(), tt.wantLog) || !strings.Contains(logs.String(), "level=DEBUG") {
				t.Errorf("debug log does not mention %q:\n%s", tt.wantLog, logs.String())
			}
		})
	}
}

// closedTCPPort is an address nothing listens on.
func closedTCPPort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return addr
}

// TestTCPTargetBlocks is wake on request: Target holds the connection until
// the guest is there, and then it is served as if nothing happened.
func TestTCPTargetBlocks(t *testing.T) {
	guest := tcpServer(t, replyAtEOF)
	called := make(chan struct{})
	release := make(chan struct{})
	var hasDeadline atomic.Bool
	p := start(t, Config{Proto: "tcp", Target: func(ctx context.Context) (netip.AddrPort, error) {
		_, ok := ctx.Deadline()
		hasDeadline.Store(ok)
		close(called)
		select {
		case <-release:
			return guest, nil
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		}
	}})

	c := dialProxy(t, p)
	if _, err := c.Write([]byte("wake up")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
	case <-time.After(testTimeout):
		t.Fatal("Target was not called")
	}
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() = %d while held, want 1", n)
	}
	if !hasDeadline.Load() {
		t.Error("Target's context has no deadline")
	}
	// Held: nothing comes back, and the connection is not closed either.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("read while held = %d, %v; want a timeout", n, err)
	}

	close(release)
	c.SetReadDeadline(time.Now().Add(testTimeout))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "you said: wake up" {
		t.Errorf("reply = %q, want %q", got, "you said: wake up")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestCloseClosesConnections(t *testing.T) {
	live := tcpServer(t, streamEcho)
	held := make(chan struct{})
	canceled := make(chan struct{})
	var calls atomic.Int32
	p, err := Start(Config{Proto: "tcp", Listen: "127.0.0.1:0", Logger: testLogger(t),
		Target: func(ctx context.Context) (netip.AddrPort, error) {
			if calls.Add(1) == 1 {
				return live, nil
			}
			close(held)
			<-ctx.Done() // a VM that never resumes
			close(canceled)
			return netip.AddrPort{}, ctx.Err()
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	// One connection that is through to the guest...
	c1 := dialProxy(t, p)
	if _, err := c1.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c1, make([]byte, 4)); err != nil {
		t.Fatalf("echo before Close: %v", err)
	}
	// ...and one waiting for Target.
	c2 := dialProxy(t, p)
	<-held
	if n := p.Conns(); n != 2 {
		t.Errorf("Conns() = %d, want 2", n)
	}

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not return")
	}
	select {
	case <-canceled:
	default:
		t.Error("Close returned before Target's context was canceled")
	}
	for i, c := range []*net.TCPConn{c1, c2} {
		if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("connection %d: read after Close = %d, %v; want EOF or reset", i+1, n, err)
		}
	}
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Close = %d, want 0", n)
	}
	if _, err := net.DialTimeout("tcp", p.Addr().String(), time.Second); err == nil {
		t.Error("the port still accepts connections after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	tcpLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	udpLn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpLn.Close()

	tests := []struct {
		name   string
		proto  string
		listen string
	}{
		{"tcp", "tcp", tcpLn.Addr().String()},
		{"udp", "udp", udpLn.LocalAddr().String()},
		{"tcp all addresses", "tcp", fmt.Sprintf("0.0.0.0:%d", tcpLn.Addr().(*net.TCPAddr).Port)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Start(Config{Proto: tt.proto, Listen: tt.listen, Target: fixed(netip.MustParseAddrPort("127.0.0.1:1"))})
			if err == nil {
				p.Close()
				t.Fatalf("Start on %s in use succeeded", tt.listen)
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error does not wrap EADDRINUSE: %v", err)
			}
			if !errors.Is(err, errdefs.ErrConflict) {
				t.Errorf("error is not ErrConflict: %v", err)
			}
			if want := "publish " + tt.listen + "/" + tt.proto + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	target := fixed(netip.MustParseAddrPort("127.0.0.1:1"))
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no target", Config{Proto: "tcp", Listen: "127.0.0.1:0"}, "proxy: no Target"},
		{"sctp", Config{Proto: "sctp", Listen: "127.0.0.1:0", Target: target}, `publish 127.0.0.1:0/sctp: protocol "sctp" is not supported: use tcp or udp`},
		{"no port", Config{Proto: "tcp", Listen: "127.0.0.1", Target: target}, "publish 127.0.0.1/tcp: address 127.0.0.1: missing port in address"},
		{"not an address here", Config{Proto: "udp", Listen: "192.0.2.1:0", Target: target}, "publish 192.0.2.1:0/udp: listen udp4 192.0.2.1:0: bind: cannot assign requested address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Start(tt.cfg)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded")
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestListenNetwork(t *testing.T) {
	tests := []struct {
		proto, listen, want string
	}{
		{"tcp", "127.0.0.1:80", "tcp4"},
		{"tcp", "0.0.0.0:80", "tcp4"},
		{"udp", "[::1]:80", "udp6"},
		{"tcp", "[::]:80", "tcp6"},
		{"tcp", "[::ffff:127.0.0.1]:80", "tcp4"},
		{"tcp", ":80", "tcp"},
		{"udp", "localhost:80", "udp"},
	}
	for _, tt := range tests {
		t.Run(tt.proto+" "+tt.listen, func(t *testing.T) {
			got, err := listenNetwork(tt.proto, tt.listen)
			if err != nil || got != tt.want {
				t.Errorf("listenNetwork(%q, %q) = %q, %v; want %q", tt.proto, tt.listen, got, err, tt.want)
			}
		})
	}
}

func TestTCPConnsAndLastActive(t *testing.T) {
	p := start(t, Config{Proto: "tcp", Target: fixed(tcpServer(t, streamEcho))})
	started := p.LastActive()
	if since := time.Since(started); since < 0 || since > testTimeout {
		t.Errorf("LastActive() right after Start is %v ago, want about now", since)
	}
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() before any client = %d", n)
	}

	c := dialProxy(t, p)
	echo(t, c, "one")
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() with one client = %d, want 1", n)
	}
	assertActivity(t, p, c)

	c.Close()
	waitFor(t, "Conns() == 0 after the client closed", func() bool { return p.Conns() == 0 })
	// What moved on a closed connection still counts.
	if got := p.LastActive(); got.Before(started) {
		t.Errorf("LastActive() went back from %v to %v", started, got)
	}
}

// TestTCPPlainConns drives the proxy through ListenTCP and Dial hooks whose
// connections are no kernel sockets to it: the generic copy path, counting
// bytes itself.
func TestTCPPlainConns(t *testing.T) {
	guest := tcpServer(t, replyAtEOF)
	var dials atomic.Int32
	p := start(t, Config{
		Proto:  "tcp",
		Target: fixed(guest),
		ListenTCP: func(network, addr string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			return plainListener{ln}, err
		},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return plainConn{c}, nil
		},
	})
	got, err := roundTrip(dialProxy(t, p), []byte("hello"))
	if err != nil || string(got) != "you said: hello" {
		t.Fatalf("round trip = %q, %v; want %q", got, err, "you said: hello")
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("Dial hook called %d times, want 1", n)
	}

	c := dialProxy(t, p)
	waitFor(t, "the connection to be accepted", func() bool { return p.Conns() == 1 })
	before := p.LastActive()
	waitFor(t, "the clock to move", func() bool { return time.Since(before) > 20*time.Millisecond })
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "LastActive() to follow a byte", func() bool { return p.LastActive().After(before) })
}

// plainListener hands out plainConns.
type plainListener struct{ net.Listener }

func (l plainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainConn{c}, nil
}

// plainConn hides everything of a *net.TCPConn but net.Conn and CloseWrite.
type plainConn struct{ net.Conn }

func (c plainConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// assertActivity checks that LastActive follows bytes on c, an open
// connection to an echo server, and stands still while c is quiet.
func assertActivity(t *testing.T, p *Proxy, c net.Conn) {
	t.Helper()
	// The kernel counts in milliseconds of a few ms each; give it room.
	const slack = 40 * time.Millisecond
	before := p.LastActive()
	waitFor(t, "the clock to move", func() bool { return time.Since(before) > 4*slack })
	if moved := p.LastActive().Sub(before); moved > slack || moved < -slack {
		t.Errorf("LastActive() moved %v on a quiet connection", moved)
	}
	sent := time.Now()
	echo(t, c, "two")
	if got := p.LastActive(); got.Before(sent.Add(-slack)) {
		t.Errorf("LastActive() = %v, before the echo sent at %v", got.Format(time.StampMicro), sent.Format(time.StampMicro))
	}
}
