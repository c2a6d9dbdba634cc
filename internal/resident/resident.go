// Package resident keeps the files on a VM's start path in memory: the
// VMM's binary and libraries, the guest kernels and initramfs, boot
// snapshots. The page cache would keep them while they are hot, but a host
// may evict file pages of its own accord, and then the next start reads
// them from disk. On the machines flick is developed on, the file LRU is
// held at ~60 MB: after 20 s of idleness a cold boot's QEMU took 40-54
// major faults and its vmm phase 79-92 ms, against 1-2 faults and 46-59 ms
// with these files locked.
//
// A Set maps each file's data (holes skipped: a sparse snapshot RAM file
// costs what it holds) read-only and shared, and locks the mapping
// (mlock), within a budget.
package resident

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrBudget is returned by Add when the file does not fit the budget.
var ErrBudget = errors.New("over the budget for resident files")

// Set is a set of files kept resident.
type Set struct {
	mu     sync.Mutex
	budget int64
	used   int64
	files  map[string]*file
}

// file is one resident file: its identity when it was locked and its
// locked mappings.
type file struct {
	dev, ino uint64
	size     int64
	mtime    unix.Timespec
	maps     [][]byte
	bytes    int64
}

// New returns an empty Set that locks at most budget bytes.
func New(budget int64) *Set {
	return &Set{budget: budget, files: map[string]*file{}}
}

// Add keeps path resident. A path already in the set is locked again only
// if the file has changed since (another inode, size or time). A file that
// does not fit the budget is left out with ErrBudget. Locking reads what
// of the file is not in memory yet, so Add can take a while: it holds no
// lock of the Set meanwhile.
func (s *Set) Add(path string) error {
	path = filepath.Clean(path)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file", path)
	}
	same := func(r *file) bool {
		return r.dev == st.Dev && r.ino == st.Ino && r.size == st.Size && r.mtime == st.Mtim
	}
	extents, err := dataExtents(int(f.Fd()), st.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var n int64
	for _, e := range extents {
		n += e[1] - e[0]
	}
	// Reserve the bytes, then map and lock without the Set's lock.
	s.mu.Lock()
	held := int64(0) // what a changed file at path holds, which it gives back
	if old := s.files[path]; old != nil {
		if same(old) {
			s.mu.Unlock()
			return nil
		}
		held = old.bytes
	}
	if s.used-held+n > s.budget {
		s.mu.Unlock()
		return fmt.Errorf("%s (%d MiB): %w of %d MiB", path, n>>20, ErrBudget, s.budget>>20)
	}
	s.used += n
	s.mu.Unlock()

	r := &file{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, bytes: n}
	err = r.lock(int(f.Fd()), extents)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		// Removed (RemoveUnder) or replaced while it was being locked:
		// holding it would keep a file that is gone in memory.
		var now unix.Stat_t
		if unix.Stat(path, &now) != nil || now.Ino != st.Ino || now.Dev != st.Dev {
			r.unmap()
			err = errors.New("removed while being locked")
		}
	}
	if err != nil {
		s.used -= n
		return fmt.Errorf("%s: %w", path, err)
	}
	if old := s.files[path]; old != nil {
		if same(old) { // locked meanwhile by another Add
			r.unmap()
			s.used -= n
			return nil
		}
		s.dropLocked(path)
	}
	s.files[path] = r
	return nil
}

// lock maps the extents of fd and locks them in memory.
func (r *file) lock(fd int, extents [][2]int64) error {
	for _, e := range extents {
		m, err := unix.Mmap(fd, e[0], int(e[1]-e[0]), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			r.unmap()
			return fmt.Errorf("map: %w", err)
		}
		r.maps = append(r.maps, m)
		if err := unix.Mlock(m); err != nil {
			r.unmap()
			return fmt.Errorf("lock in memory: %w", err)
		}
	}
	return nil
}

// Remove lets path go, if it is in the set.
func (s *Set) Remove(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(filepath.Clean(path))
}

// RemoveUnder lets every file under dir go: call it before removing dir,
// or its files' pages stay locked until the Set closes.
func (s *Set) RemoveUnder(dir string) {
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.files {
		if strings.HasPrefix(p, prefix) {
			s.dropLocked(p)
		}
	}
}

// Has says whether path is resident.
func (s *Set) Has(path string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[filepath.Clean(path)] != nil
}

// Bytes is how much the set holds locked.
func (s *Set) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// Close lets every file go.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.files {
		s.dropLocked(p)
	}
}

func (s *Set) dropLocked(path string) {
	if r := s.files[path]; r != nil {
		r.unmap()
		s.used -= r.bytes
		delete(s.files, path)
	}
}

func (r *file) unmap() {
	for _, m := range r.maps {
		_ = unix.Munmap(m) // unmapping unlocks
	}
	r.maps = nil
}

// dataExtents returns the page-aligned [start, end) ranges of fd that hold
// data, up to size. A file system without SEEK_DATA reports the whole file
// as data.
func dataExtents(fd int, size int64) ([][2]int64, error) {
	page := int64(os.Getpagesize())
	var out [][2]int64
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)
		start = start / page * page
		if n := len(out); n > 0 && out[n-1][1] >= start {
			out[n-1][1] = max(out[n-1][1], end)
		} else {
			out = append(out, [2]int64{start, end})
		}
		off = end
	}
	return out, nil
}
