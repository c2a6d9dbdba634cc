package proxy

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// kernelProbe returns a function that asks the kernel when data last moved
// on c (TCP_INFO's last_data_recv and last_data_sent), in unix nanoseconds,
// or nil if c is no TCP socket the kernel answers for. Bytes spliced between
// two sockets never pass through the proxy, so this is how it sees them.
func kernelProbe(c net.Conn) func() int64 {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	probe := func() int64 {
		var (
			info *unix.TCPInfo
			err  error
		)
		now := time.Now()
		if cerr := raw.Control(func(fd uintptr) {
			info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); cerr != nil || err != nil {
			return 0
		}
		ago := min(info.Last_data_recv, info.Last_data_sent) // milliseconds
		return now.Add(-time.Duration(ago) * time.Millisecond).UnixNano()
	}
	if probe() == 0 {
		return nil
	}
	return probe
}
