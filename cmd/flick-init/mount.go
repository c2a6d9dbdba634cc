package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mountPoint is one row of a mount table.
type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// earlyMounts give flick-init devices, /proc and /sys.
var earlyMounts = []mountPoint{
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// appMounts are what the app finds in its root, on top of the overlay.
var appMounts = []mountPoint{
	{"proc", newRoot + "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", newRoot + "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY, ""},
	{"devtmpfs", newRoot + "/dev", "devtmpfs", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0755"},
	{"devpts", newRoot + "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", newRoot + "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// mounted lists what flick-init mounted, in order, so that shutdown can
// unmount it in reverse.
var mounted []string

func (m mountPoint) mount() error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil // already mounted (the kernel's devtmpfs automount)
		}
		return fmt.Errorf("mount %s on %s (%s): %w", m.source, m.target, m.fstype, err)
	}
	mounted = append(mounted, m.target)
	return nil
}

// mountAll mounts a table, logging and going on past failures: an app that
// does not need /dev/shm should still run when it cannot be mounted.
func mountAll(table []mountPoint) {
	for _, m := range table {
		if err := m.mount(); err != nil {
			logf("%v", err)
		}
	}
}

// unmountAll unmounts everything mounted, newest first, detaching what is
// still busy.
func unmountAll() {
	for i := len(mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounted[i], 0); err != nil {
			if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err != nil {
				logf("unmount %s: %v", mounted[i], err)
			}
		}
	}
	mounted = nil
}
