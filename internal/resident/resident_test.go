package resident

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// writeSparse writes a file of size bytes with n bytes of data at each of
// offsets and holes elsewhere.
func writeSparse(t *testing.T, path string, size int64, n int, offsets ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{0xa5}, n)
	for _, off := range offsets {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// requireLock skips t where this process may not lock the few MiB that
// the tests lock.
func requireLock(t *testing.T) {
	t.Helper()
	var lim unix.Rlimit
	if os.Geteuid() != 0 && (unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) != nil || lim.Cur < 8*mib) {
		t.Skip("locking memory needs root or an RLIMIT_MEMLOCK of 8 MiB (ulimit -l 8192)")
	}
}

// lockedKiB is this process's locked memory (VmLck), in KiB.
func lockedKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmLck:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmLck in /proc/self/status")
	return 0
}

func TestAddLocksDataNotHoles(t *testing.T) {
	requireLock(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "ram")
	// 2 MiB of data in a 64 MiB file, as a snapshot's RAM file is.
	writeSparse(t, p, 64*mib, mib, 0, 40*mib)
	s := New(16 * mib)
	defer s.Close()
	before := lockedKiB(t)
	if err := s.Add(p); err != nil {
		t.Fatal(err)
	}
	if got := s.Bytes(); got < 2*mib || got > 2*mib+2*int64(os.Getpagesize()) {
		t.Errorf("Bytes = %d, want the 2 MiB of data (the holes are not locked)", got)
	}
	if got := lockedKiB(t) - before; got < 2048 {
		t.Errorf("VmLck grew by %d KiB, want at least 2048", got)
	}
	if !s.Has(p) {
		t.Error("Has = false after Add")
	}
	s.Remove(p)
	if s.Has(p) || s.Bytes() != 0 {
		t.Errorf("after Remove: Has %v, Bytes %d; want false, 0", s.Has(p), s.Bytes())
	}
	if got := lockedKiB(t) - before; got != 0 {
		t.Errorf("VmLck is %d KiB over what it was after Remove, want 0", got)
	}
}

func TestAddBudget(t *testing.T) {
	requireLock(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeSparse(t, a, 3*mib, 3*mib, 0)
	writeSparse(t, b, 2*mib, 2*mib, 0)
	s := New(4 * mib)
	defer s.Close()
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(b); !errors.Is(err, ErrBudget) {
		t.Fatalf("Add over the budget: err = %v, want ErrBudget", err)
	}
	if s.Has(b) || s.Bytes() != 3*mib {
		t.Errorf("after a refused Add: Has(b) %v, Bytes %d; want false, %d", s.Has(b), s.Bytes(), 3*mib)
	}
	s.Remove(a)
	if err := s.Add(b); err != nil {
		t.Errorf("Add once there is room: %v", err)
	}
}

func TestAddAgain(t *testing.T) {
	requireLock(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	writeSparse(t, p, 2*mib, 2*mib, 0)
	s := New(3 * mib)
	defer s.Close()
	for range 2 {
		if err := s.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if s.Bytes() != 2*mib {
		t.Errorf("the same file added twice: Bytes %d, want %d", s.Bytes(), 2*mib)
	}
	// A new file at the path (as a snapshot saved again) is locked anew,
	// in place of the old one: the two together would not fit.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	const n = 5 * mib / 2
	writeSparse(t, p, n, n, 0)
	if err := s.Add(p); err != nil {
		t.Fatal(err)
	}
	if s.Bytes() != n {
		t.Errorf("after the file was replaced: Bytes %d, want %d", s.Bytes(), n)
	}
}

func TestRemoveUnder(t *testing.T) {
	requireLock(t)
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	in1, in2, out := filepath.Join(snap, "ram"), filepath.Join(snap, "state"), filepath.Join(dir, "snapshot-other")
	for _, p := range []string{in1, in2, out} {
		writeSparse(t, p, mib, mib, 0)
	}
	s := New(16 * mib)
	defer s.Close()
	for _, p := range []string{in1, in2, out} {
		if err := s.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	s.RemoveUnder(snap)
	if s.Has(in1) || s.Has(in2) || !s.Has(out) {
		t.Errorf("RemoveUnder(%s): Has ram %v, state %v, the file beside the directory %v; want false, false, true", snap, s.Has(in1), s.Has(in2), s.Has(out))
	}
}

func TestAddErrors(t *testing.T) {
	requireLock(t)
	dir := t.TempDir()
	s := New(16 * mib)
	defer s.Close()
	if err := s.Add(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Add of a missing file: %v, want not exist", err)
	}
	if err := s.Add(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Add of a directory: %v, want an error saying it is not a regular file", err)
	}
	empty := filepath.Join(dir, "empty")
	writeSparse(t, empty, 0, 0)
	if err := s.Add(empty); err != nil || s.Bytes() != 0 {
		t.Errorf("Add of an empty file: err %v, Bytes %d; want nil, 0", err, s.Bytes())
	}
}
