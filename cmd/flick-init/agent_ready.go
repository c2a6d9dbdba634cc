package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// ready answers once the app passes check, or with 408 when check.TimeoutMS
// passes first.
func (a *agent) ready(st net.Conn, check *wire.ReadyCheck) {
	if check == nil || check.Port <= 0 || check.Port > 65535 || (check.Kind != "tcp" && check.Kind != "http") {
		sendResult(st, wire.Result{Status: 400, Error: "ready: want a tcp or http check with a port"})
		return
	}
	interval := time.Duration(max(check.IntervalMS, 1)) * time.Millisecond
	deadline := time.Now().Add(time.Duration(check.TimeoutMS) * time.Millisecond)
	var last error
	for {
		if last = probe(check); last == nil {
			sendResult(st, wire.Result{})
			return
		}
		if time.Now().Add(interval).After(deadline) {
			break
		}
		time.Sleep(interval)
	}
	sendResult(st, wire.Result{Status: 408, Error: fmt.Sprintf("not ready after %v: %v", time.Duration(check.TimeoutMS)*time.Millisecond, last)})
}

// probe tries check once against the guest's loopback.
func probe(check *wire.ReadyCheck) error {
	c, err := dialLoopback(check.Port, 2*time.Second)
	if err != nil {
		return fmt.Errorf("connect to port %d: %w", check.Port, err)
	}
	defer c.Close()
	if check.Kind == "tcp" {
		return nil
	}
	// A hand-written HTTP/1.0 GET: net/http would double flick-init.
	p := check.Path
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: flick-agent\r\n\r\n", p); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("GET %s: %w", p, err)
	}
	fields := strings.Fields(line)
	if len(fields) < 2 || !strings.HasPrefix(fields[0], "HTTP/") {
		return fmt.Errorf("GET %s: not an HTTP answer: %q", p, strings.TrimSpace(line))
	}
	if fields[1] != "200" {
		return fmt.Errorf("GET %s: status %s", p, strings.Join(fields[1:], " "))
	}
	return nil
}

// dialLoopback connects to 127.0.0.1:port with plain syscalls, timeout
// bounding the connect and every read and write: the net package's dialer
// would pull its resolver into flick-init.
func dialLoopback(port int, timeout time.Duration) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for {
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "probe"), nil
}
