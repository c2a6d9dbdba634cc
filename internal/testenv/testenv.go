// Package testenv holds the helpers that flick's tests share: checks that
// skip a test when the machine lacks what it needs (QEMU, root, a guest
// kernel), a real registry to pull from, and builders of small OCI images
// (a static Go program on scratch, busybox, a layered image with whiteouts).
//
// Only tests import it, and scripts/mkimage, which reuses the image
// builders in build.go; product code never does.
package testenv

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// StrictEnv names the environment variable that turns every skip of a
// Require helper into a failure: CI machines have QEMU, root and a kernel,
// and a suite that skips there silently tests nothing.
const StrictEnv = "FLICK_TEST_STRICT"

// skip skips t, or fails it when StrictEnv is set.
func skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(StrictEnv) != "" {
		t.Fatalf(format+" ("+StrictEnv+" is set, so this is a failure)", args...)
	}
	t.Skipf(format, args...)
}

// RequireQEMU skips t unless qemu-system-x86_64 is on PATH.
func RequireQEMU(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skip(t, "qemu-system-x86_64 not found: apt-get install qemu-system-x86")
	}
}

// RequireRoot skips t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "needs root (TAP devices, loop mounts, /dev/kvm): run the tests as root, e.g. sudo -E go test")
	}
}

// KernelPath returns the guest kernel the tests boot: $FLICK_KERNEL if set,
// else ${XDG_CACHE_HOME:-~/.cache}/flick/kernel/vmlinux, where
// scripts/build-kernel.sh (make kernel) leaves it.
func KernelPath() string {
	if p := os.Getenv("FLICK_KERNEL"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "/root"
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "flick", "kernel", "vmlinux")
}

// RequireKernel returns the path of the guest kernel, or skips t when there
// is none. A FLICK_KERNEL that names a missing file fails t: somebody asked
// for that kernel.
func RequireKernel(t testing.TB) string {
	t.Helper()
	p := KernelPath()
	_, err := os.Stat(p)
	switch {
	case err == nil:
		return p
	case os.Getenv("FLICK_KERNEL") != "":
		t.Fatalf("FLICK_KERNEL=%s: %v", p, err)
	case errors.Is(err, fs.ErrNotExist):
		skip(t, "guest kernel %s not found: run make kernel (scripts/build-kernel.sh) or set FLICK_KERNEL", p)
	default:
		skip(t, "guest kernel %s: %v", p, err)
	}
	return ""
}
