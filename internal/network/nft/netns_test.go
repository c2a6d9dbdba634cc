package nft

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNS is a throwaway network namespace made with `ip netns add`.
type testNS struct {
	name string
	f    *os.File
}

// uniquePrefix returns a prefix for the names of a test's namespaces, so
// that parallel runs of the tests do not clash.
func uniquePrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "flicknft-" + hex.EncodeToString(b) + "-"
}

// newNS makes the namespace name, with its loopback up, and removes it
// when the test ends.
func newNS(t *testing.T, name string) *testNS {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ns := &testNS{name: name, f: f}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

func (ns *testNS) fd() int { return int(ns.f.Fd()) }

// ip runs `ip -n NS args...`.
func (ns *testNS) ip(t *testing.T, args ...string) {
	t.Helper()
	run(t, append([]string{"ip", "-n", ns.name}, args...)...)
}

// sysctl sets a sysctl inside the namespace.
func (ns *testNS) sysctl(t *testing.T, kv string) {
	t.Helper()
	run(t, "ip", "netns", "exec", ns.name, "sysctl", "-q", "-w", kv)
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// do runs fn on an OS thread that has entered the namespace. A socket
// belongs to the namespace of the thread that made it, for its whole life,
// so fn can open sockets that outlive the call. The thread stays locked
// and so is thrown away when fn returns: no other goroutine ever runs in
// the namespace by accident.
func (ns *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns.fd(), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// serveTCP listens on addr inside the namespace and answers every
// connection with the address it came from, as one line.
func (ns *testNS) serveTCP(t *testing.T, addr string) {
	t.Helper()
	var l net.Listener
	err := ns.do(func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			fmt.Fprintln(c, ap.Addr())
			c.Close()
		}
	}()
}

// serveUDP answers every datagram on addr with the address it came from.
func (ns *testNS) serveUDP(t *testing.T, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := ns.do(func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			ap := from.(*net.UDPAddr).AddrPort()
			pc.WriteTo([]byte(ap.Addr().String()), from)
		}
	}()
}

// askTCP connects from the namespace to addr and returns the line the
// server answers: the address it saw the connection come from.
func (ns *testNS) askTCP(addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// askUDP sends a datagram from the namespace to addr and returns the
// answer. Datagrams can be lost, so it tries a few times within timeout.
func (ns *testNS) askUDP(addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.Dial("udp4", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 512)
	for {
		if _, err := c.Write([]byte("who am i")); err != nil {
			return "", err
		}
		wait := time.Now().Add(200 * time.Millisecond)
		if wait.After(deadline) {
			wait = deadline
		}
		c.SetReadDeadline(wait)
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !isTimeout(err) || time.Now().After(deadline) {
			return "", err
		}
	}
}

// isTimeout says whether err is a network timeout, as a connection to a
// port whose packets are dropped ends.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
