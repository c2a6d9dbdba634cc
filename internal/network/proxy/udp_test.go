package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpEcho answers every datagram with "echo " and the datagram, until the
// test ends. It counts the distinct source addresses it saw.
type udpEcho struct {
	addr    netip.AddrPort
	mu      sync.Mutex
	sources map[string]bool
}

func startUDPEcho(t *testing.T) *udpEcho {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), sources: map[string]bool{}}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.sources[from.String()] = true
			e.mu.Unlock()
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	return e
}

func (e *udpEcho) sourceCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sources)
}

func dialUDP(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg on c and waits for the answer, sending again now and
// then since UDP may drop datagrams.
func exchange(c net.Conn, msg string) (string, error) {
	buf := make([]byte, maxDatagram)
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if isTimeout(err) {
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("no answer to %q", msg)
}

func TestUDPTwoClients(t *testing.T) {
	guest := startUDPEcho(t)
	p := start(t, Config{Proto: "udp", Target: fixed(guest.addr)})

	clients := []net.Conn{dialUDP(t, p), dialUDP(t, p)}
	var wg sync.WaitGroup
	errs := make(chan error, 2*50)
	for i, c := range clients {
		wg.Go(func() {
			for j := range 50 {
				msg := fmt.Sprintf("client %d message %d", i, j)
				got, err := exchange(c, msg)
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				// A late answer to a resend of an earlier message is fine;
				// an answer meant for the other client is not.
				if want := fmt.Sprintf("echo client %d message", i); len(got) < len(want) || got[:len(want)] != want {
					errs <- fmt.Errorf("client %d got %q", i, got)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.Conns(); n != 2 {
		t.Errorf("Conns() = %d, want 2 flows", n)
	}
	if n := guest.sourceCount(); n != 2 {
		t.Errorf("guest saw %d source addresses, want one per client: 2", n)
	}
}

func TestUDPFlowExpires(t *testing.T) {
	guest := startUDPEcho(t)
	const idle = 300 * time.Millisecond
	p := start(t, Config{Proto: "udp", Target: fixed(guest.addr), UDPIdle: idle})
	c := dialUDP(t, p)

	sent := time.Now()
	if got, err := exchange(c, "one"); err != nil || got != "echo one" {
		t.Fatalf("exchange = %q, %v", got, err)
	}
	if n := p.Conns(); n != 1 {
		// Only a machine slower than idle gets here.
		t.Fatalf("Conns() = %d right after an answer, want 1 (idle %v, took %v)", n, idle, time.Since(sent))
	}
	waitFor(t, "the flow to expire", func() bool { return p.Conns() == 0 })
	if since := time.Since(sent); since < idle {
		t.Errorf("flow expired after %v, before UDPIdle %v", since, idle)
	}

	// The client carries on: a new flow, a new source port at the guest.
	if got, err := exchange(c, "two"); err != nil || got != "echo two" {
		t.Fatalf("exchange after expiry = %q, %v", got, err)
	}
	if n := guest.sourceCount(); n != 2 {
		t.Errorf("guest saw %d source addresses, want 2 (one per flow)", n)
	}
}

// TestUDPFlowKeptAlive checks that traffic keeps a flow past UDPIdle.
func TestUDPFlowKeptAlive(t *testing.T) {
	guest := startUDPEcho(t)
	const idle = 300 * time.Millisecond
	p := start(t, Config{Proto: "udp", Target: fixed(guest.addr), UDPIdle: idle})
	c := dialUDP(t, p)
	first := time.Now()
	for i := 0; time.Since(first) < 3*idle; i++ {
		if _, err := exchange(c, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 10)
	}
	if n := guest.sourceCount(); n != 1 {
		t.Errorf("guest saw %d source addresses over %v of traffic, want 1 flow", n, time.Since(first))
	}
}

func TestUDPTargetError(t *testing.T) {
	guest := startUDPEcho(t)
	var calls atomic.Int32
	p := start(t, Config{Proto: "udp", Target: func(context.Context) (netip.AddrPort, error) {
		if calls.Add(1) == 1 {
			return netip.AddrPort{}, errors.New("instance is gone")
		}
		return guest.addr, nil
	}})
	c := dialUDP(t, p)
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Target to be asked and the flow dropped", func() bool { return calls.Load() >= 1 && p.Conns() == 0 })
	// The next datagram asks again.
	if got, err := exchange(c, "again"); err != nil || got != "echo again" {
		t.Fatalf("exchange = %q, %v", got, err)
	}
}

// TestUDPTargetBlocks holds a client's datagrams while Target waits and
// delivers them once it answers.
func TestUDPTargetBlocks(t *testing.T) {
	guest := startUDPEcho(t)
	release := make(chan struct{})
	p := start(t, Config{Proto: "udp", Target: func(ctx context.Context) (netip.AddrPort, error) {
		select {
		case <-release:
			return guest.addr, nil
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		}
	}})
	c := dialUDP(t, p)
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a pending flow", func() bool { return p.Conns() == 1 })
	close(release)
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "echo queued" {
		t.Fatalf("read = %q, %v; want %q", buf[:n], err, "echo queued")
	}
}

func TestUDPCloseEndsFlows(t *testing.T) {
	guest := startUDPEcho(t)
	var hold atomic.Bool
	p, err := Start(Config{Proto: "udp", Listen: "127.0.0.1:0", Logger: testLogger(t), Target: func(ctx context.Context) (netip.AddrPort, error) {
		if !hold.Load() {
			return guest.addr, nil
		}
		<-ctx.Done()
		return netip.AddrPort{}, ctx.Err()
	}})
	if err != nil {
		t.Fatal(err)
	}
	c1 := dialUDP(t, p)
	if got, err := exchange(c1, "up"); err != nil || got != "echo up" {
		t.Fatalf("exchange = %q, %v", got, err)
	}
	hold.Store(true) // the next flow waits for a VM that never comes
	c2 := dialUDP(t, p)
	if _, err := c2.Write([]byte("pending")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two flows", func() bool { return p.Conns() == 2 })

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
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Close = %d", n)
	}
}

func TestUDPLastActive(t *testing.T) {
	guest := startUDPEcho(t)
	p := start(t, Config{Proto: "udp", Target: fixed(guest.addr)})
	before := p.LastActive()
	waitFor(t, "the clock to move", func() bool { return time.Since(before) > 20*time.Millisecond })
	if got := p.LastActive(); !got.Equal(before) {
		t.Errorf("LastActive() moved from %v to %v with no traffic", before, got)
	}
	sent := time.Now()
	if _, err := exchange(dialUDP(t, p), "x"); err != nil {
		t.Fatal(err)
	}
	if got := p.LastActive(); got.Before(sent) {
		t.Errorf("LastActive() = %v, before the datagram sent at %v", got, sent)
	}
}
