package tarx

import (
	"errors"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// directMin is the size from which ExtractDirect writes a file, and
	// CreateDirect reads one, around the page cache.
	directMin = 1 << 20
	// directAlign is the alignment of O_DIRECT buffers and lengths: a
	// page, which covers every logical block size up to it.
	directAlign = 4096
	// directChunk is how much one write or read hands the device.
	directChunk = 4 << 20
)

// directBuf is an aligned buffer for O_DIRECT writes and reads, made on
// first use and kept for the next files of the same stream.
type directBuf []byte

func (b *directBuf) get() []byte {
	if *b == nil {
		raw := make([]byte, directChunk+directAlign)
		off := int(-uintptr(unsafe.Pointer(&raw[0])) & (directAlign - 1))
		*b = raw[off : off+directChunk]
	}
	return *b
}

// copyDirect writes r to the empty file f with O_DIRECT, a chunk at a
// time, and the unaligned tail through the page cache. A filesystem that
// takes no direct writes (tmpfs refuses the flag) gets them all through
// the page cache.
func copyDirect(f *os.File, r io.Reader, buf *directBuf) error {
	direct := setDirect(f, true) == nil
	buffered := func() error {
		if !direct {
			return nil
		}
		direct = false
		return setDirect(f, false)
	}
	b := buf.get()
	for {
		n, rerr := fill(r, b)
		aligned := n &^ (directAlign - 1)
		_, err := f.Write(b[:aligned])
		if errors.Is(err, unix.EINVAL) && direct {
			// Accepted the flag but not the write: nothing was written.
			if err = buffered(); err == nil {
				_, err = f.Write(b[:aligned])
			}
		}
		if err != nil {
			return err
		}
		if rerr == nil {
			continue // b was filled, so it was all aligned
		}
		// The tail, if any, goes through the page cache: a direct write
		// must be a whole number of blocks.
		if err := buffered(); err != nil {
			return err
		}
		if _, err := f.Write(b[aligned:n]); err != nil {
			return err
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		return rerr
	}
}

// fill reads into b until it is full or r fails; io.EOF comes back as is.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readDirect copies up to size bytes of f to w in reads of all of b, whose
// length is aligned as O_DIRECT needs; the last read comes back short at
// the end of the file. A file that refuses the direct read is read through
// the page cache instead.
func readDirect(w io.Writer, f *os.File, size int64, b []byte) (int64, error) {
	var n int64
	for n < size {
		m, err := f.Read(b)
		if errors.Is(err, unix.EINVAL) && n == 0 {
			if err := setDirect(f, false); err != nil {
				return 0, err
			}
			return io.CopyBuffer(w, io.LimitReader(f, size), b)
		}
		take := min(int64(m), size-n)
		if _, werr := w.Write(b[:take]); werr != nil {
			return n, werr
		}
		n += take
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// setDirect turns O_DIRECT on or off for f.
func setDirect(f *os.File, on bool) error {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if on {
		fl |= unix.O_DIRECT
	} else {
		fl &^= unix.O_DIRECT
	}
	_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl)
	return err
}
