package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// rootDir opens files inside the image's root as the app would see them:
// symlinks, absolute or not, resolve inside the root, never out of it.
type rootDir struct{ fd int }

func openRootDir(path string) (rootDir, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return rootDir{}, fmt.Errorf("open %s: %w", path, err)
	}
	return rootDir{fd: fd}, nil
}

func (r rootDir) open(name string, flags int, perm uint32) (*os.File, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Mode:    uint64(perm),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(r.fd, name, &how)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		return os.NewFile(uintptr(fd), name), nil
	}
}

func (r rootDir) stat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	f, err := r.open(name, unix.O_PATH, 0)
	if err != nil {
		return st, err
	}
	defer f.Close()
	err = unix.Fstat(int(f.Fd()), &st)
	return st, err
}

func (r rootDir) readFile(name string) ([]byte, error) {
	f, err := r.open(name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func (r rootDir) writeFile(name string, data []byte, perm uint32) error {
	// Not O_TRUNC: on ext4 (a disk layer) a file cut to nothing and
	// written starts its writeback when it is closed (auto_da_alloc), and
	// a zygote's start rewrites the files its rehearsal wrote: that cost
	// ~5 ms of each start of a disk-layer instance under TCG. The length
	// is set after the write instead.
	f, err := r.open(name, unix.O_WRONLY|unix.O_CREAT, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r rootDir) mkdir(name string, perm uint32) error {
	err := unix.Mkdirat(r.fd, name, perm)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
