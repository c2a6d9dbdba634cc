package main

import (
	"sync/atomic"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// prefetchMax bounds how much of the app's binary a rehearsal reads.
const prefetchMax = 16 << 20

// prefetch reads the start of the app's binary into the page cache, which
// the exec would otherwise read from the image's disk page by page.
func prefetch(root rootDir, path string) {
	f, err := root.open(path, unix.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	for n := 0; n < prefetchMax; {
		c, err := f.Read(buf)
		n += c
		if err != nil {
			return
		}
	}
}

// warmApp reads the app that a boot to snapshot names (the image's own
// command, which most starts run) into the page cache,
// with the accounts and directories found on the way: the snapshot keeps
// them, so a start from it execs without reading the image's disk.
func warmApp(cfg wire.Config) {
	if len(cfg.Args) == 0 {
		return
	}
	root, err := openRootDir(lowerDir)
	if err != nil {
		return
	}
	defer unix.Close(root.fd)
	if l, err := planApp(root, cfg); err == nil {
		prefetch(root, l.argv0)
	}
}

// warmEtc makes the app's /etc/hostname and /etc/hosts in a boot snapshot
// whose writable layer is in memory, where the snapshot keeps them: every
// start writes both, and creating them (or copying them up from the image)
// was ~20 ms of first-time overlay code after a restore. Existing files
// keep their content until the start writes its own.
func warmEtc() {
	root, err := openRootDir(newRoot)
	if err != nil {
		return
	}
	defer unix.Close(root.fd)
	if err := root.mkdir("etc", 0o755); err != nil {
		return
	}
	for _, name := range []string{"/etc/hostname", "/etc/hosts"} {
		if f, err := root.open(name, unix.O_WRONLY|unix.O_CREAT, 0o644); err == nil {
			f.Close()
		}
	}
}

// rehearsedLink is the network config that the rehearsal left the link
// with: a start with the same one (the address held for its zygote) need
// not set the link up again.
var rehearsedLink atomic.Pointer[wire.Net]

// rehearsedUpper is set when the rehearsal mounted the writable layer of a
// disk-layer zygote, and with it the app's root.
var rehearsedUpper atomic.Bool

// sameLink says whether the link set up with b is as a asks: MAC, address
// and gateway. (Names and search domains go to files of the app's root,
// which every start writes.)
func sameLink(a, b *wire.Net) bool {
	return a != nil && b != nil && a.MAC == b.MAC && a.Address == b.Address && a.Gateway == b.Gateway
}

// rehearsalArg0 is the name of the process a rehearsal starts.
const rehearsalArg0 = "flick-rehearsal"

// rehearse goes through the steps of a start with cfg, short of running an
// app: set the clock and reseed, name the host, resolve the app in its
// root and read its binary, configure the network, start and reap a
// process, report. It runs in a zygote, whose
// restored VM has no translated code under TCG, so that the start that
// claims it finds these paths translated. Whatever it changes, the real
// config sets again.
func rehearse(p *port, cfg wire.Config, recv int64) {
	t0 := time.Now()
	applyHostState(cfg, recv)
	if cfg.WritableLayer == wire.LayerDisk {
		// The zygote's data disk becomes the disk layer of the instance
		// that claims it, whose start then finds the root made.
		if err := mountUpper(cfg); err != nil {
			logf("rehearse: %v", err)
		} else {
			rehearsedUpper.Store(true)
		}
	}
	var app *launch
	if root, err := openRootDir(newRoot); err == nil {
		if err := setHostname(root, cfg.Hostname, cfg.Net); err != nil {
			logf("rehearse: %v", err)
		}
		if cfg.Net != nil {
			// The host gives the address held for the zygote, or a
			// link-local stand-in; its TAP is on no bridge yet. The
			// boot snapshot left the link on a stand-in of its own
			// (linkStandIn), so the host's goes through the paths
			// that replace an address, as a start's does when its
			// address is another.
			if err := netUp(root, cfg.Net); err != nil {
				logf("rehearse: %v", err)
			} else {
				rehearsedLink.Store(cfg.Net)
			}
		}
		if len(cfg.Args) > 0 {
			if l, err := planApp(root, cfg); err == nil {
				prefetch(root, l.argv0)
				app = l
			}
		}
		unix.Close(root.fd)
	}
	// The start's own way to a process: /dev/null, two pipes and their
	// pumps (the host ignores what comes before the rehearsal's end), and
	// the app's root and user: its chroot and the calls that drop to its
	// credential were a third of the code that a zygote start ran for the
	// first time (by QEMU's in_asm log). The process is flick-init
	// itself, which /proc/self/exe reaches from inside the app's root,
	// and it exits at once.
	plain := launch{argv0: "/init", args: []string{rehearsalArg0}, env: []string{"PATH=" + defaultPath}, dir: "/"}
	tries := []launch{plain}
	if app != nil {
		inRoot := plain
		inRoot.argv0, inRoot.chroot, inRoot.cred = "/proc/self/exe", app.chroot, app.cred
		tries = []launch{inRoot, plain}
	}
	for _, l := range tries {
		a, err := startApp(p, &l)
		if err != nil {
			logf("rehearse: %v", err)
			continue
		}
		a.wait()
		break
	}
	if app != nil {
		rehearsedTarget.Store(app.target)
	}
	if std, err := newStdio(); err == nil {
		if old := readyStdio.Swap(std); old != nil {
			old.close()
		}
	}
	p.event(wire.Event{Kind: wire.EventRehearsed, Message: time.Since(t0).String()})
}
