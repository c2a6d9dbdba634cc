// Package netns runs work inside a Linux network namespace. flickd can keep
// every bridge, TAP, nftables table and published-port socket of its VMs in
// a namespace of their own (flickd --netns) while the daemon itself stays
// in the host's: a socket or a TAP belongs to the namespace of the thread
// that made it, for its whole life.
package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// NS is a network namespace, or the daemon's own when made by Host.
type NS struct {
	name string
	f    *os.File // nil for the daemon's own namespace
}

// Host is the namespace flickd runs in: Do runs fn directly.
func Host() *NS { return &NS{} }

// Open opens the named namespace that `ip netns add NAME` made
// (/run/netns/NAME), or the one at a path.
func Open(name string) (*NS, error) {
	path := name
	if !filepath.IsAbs(name) {
		path = filepath.Join("/run/netns", name)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w (make it with: ip netns add %s)", name, err, name)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || (st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC) {
		f.Close()
		return nil, fmt.Errorf("network namespace %s: %s is not a namespace file", name, path)
	}
	return &NS{name: name, f: f}, nil
}

// Name is the namespace's name, "" for the daemon's own.
func (n *NS) Name() string { return n.name }

// IsHost says whether this is the daemon's own namespace.
func (n *NS) IsHost() bool { return n.f == nil }

// FD is the namespace file's descriptor, -1 for the daemon's own.
func (n *NS) FD() int {
	if n.f == nil {
		return -1
	}
	return int(n.f.Fd())
}

// Close releases the namespace file.
func (n *NS) Close() error {
	if n.f == nil {
		return nil
	}
	return n.f.Close()
}

// Do runs fn on an OS thread that has entered the namespace, and waits for
// it. Sockets and TAPs fn makes belong to the namespace; goroutines fn
// starts do not run in it. The thread is thrown away if it cannot return to
// the daemon's namespace.
func (n *NS) Do(fn func() error) error {
	if n.f == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", n.name, err)
			return // the thread stays locked and dies with the goroutine
		}
		defer self.Close()
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		errc <- fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}
