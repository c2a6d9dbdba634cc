package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// dataTemplate makes, once, an empty ext4 image of sizeMiB that every
// instance's writable layer is copied from, so no mkfs runs when an
// instance starts. The image is sparse; copying it moves only the few
// hundred KiB that mkfs wrote.
func dataTemplate(ctx context.Context, dir string, sizeMiB int) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("data-%dM.ext4", sizeMiB))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 not found: install it with apt-get install e2fsprogs")
	}
	tmp, err := os.CreateTemp(dir, ".data-*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := os.Truncate(tmp.Name(), int64(sizeMiB)<<20); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "flick-data",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp.Name()).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 writable layer template: %w: %s", err, out)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// sparseCopy copies src to dst, writing only the data extents of src, and
// renames it into place so dst never exists half-written.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	inFd, outFd := int(in.Fd()), int(out.Fd())
	var off int64
	for off < st.Size() {
		data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data in %s: %w", src, err)
		}
		hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s: %w", src, err)
		}
		if err := copyRange(in, out, inFd, outFd, data, hole-data); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		off = hole
	}
	// No fsync: the copy is renamed into place only when complete, so a
	// daemon crash never leaves a half-copied layer under the final name,
	// and a host crash loses the VM's unsynced writes anyway. The fsync
	// cost 20-60 ms of every first start here.
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	ok = true
	return nil
}

func copyRange(in, out *os.File, inFd, outFd int, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(inFd, &roff, outFd, &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
				_, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
				return err
			}
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}
