package proxy

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestKernelProbe checks that TCP sockets get the kernel's view of their
// activity: without it the proxy falls back to copying through its own
// buffers, and splice is lost.
func TestKernelProbe(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	probe := kernelProbe(server)
	if probe == nil {
		t.Fatal("kernelProbe(*net.TCPConn) = nil")
	}
	if kernelProbe(plainConn{server}) != nil {
		t.Error("kernelProbe of a conn without SyscallConn is not nil")
	}

	const slack = 40 * time.Millisecond
	connected := time.Unix(0, probe())
	waitFor(t, "the clock to move", func() bool { return time.Since(connected) > 4*slack })
	sent := time.Now()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if got := time.Unix(0, probe()); got.Before(sent.Add(-slack)) {
		t.Errorf("probe after a byte = %v, before it was sent at %v", got.Format(time.StampMilli), sent.Format(time.StampMilli))
	}
	server.Close()
	if got := probe(); got != 0 {
		t.Errorf("probe of a closed socket = %v, want 0", got)
	}
}
