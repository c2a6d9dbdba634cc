package tarx

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Create writes src (a file, a symlink or a directory with everything
// below it) to w as a tar stream whose entries are named name,
// name/child and so on. Symlinks are stored as symlinks, never followed;
// modes, owners and mtimes are kept. Sockets and device nodes are left out,
// because Extract refuses device nodes and a socket cannot be copied.
func Create(w io.Writer, src, name string) error {
	return create(w, src, name, false)
}

// CreateDirect is Create for a guest: files of 1 MiB and more are read
// around the page cache with O_DIRECT where the filesystem allows that.
// Under TCG a direct read of 100 MiB from ext4 took 0.06 s, against 0.22 s
// from the page cache and 0.59 s from the disk through it.
func CreateDirect(w io.Writer, src, name string) error {
	return create(w, src, name, true)
}

func create(w io.Writer, src, name string, direct bool) error {
	c := creator{direct: direct}
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		entry := path.Join(name, filepath.ToSlash(rel))
		return c.addEntry(tw, p, entry)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

type creator struct {
	// direct reads big files with O_DIRECT, through buf.
	direct bool
	buf    directBuf
}

func (c *creator) addEntry(tw *tar.Writer, p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if fi.Mode()&(fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0 {
		return nil
	}
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Format = tar.FormatPAX
	hdr.Uname, hdr.Gname = "", ""
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := c.open(p, hdr.Size)
	if err != nil {
		return err
	}
	defer f.Close()
	// A file that grows while it is read is cut at the size in its
	// header; one that shrinks is an error, as tar gives.
	var n int64
	if c.direct && hdr.Size >= directMin {
		n, err = readDirect(tw, f, hdr.Size, c.buf.get())
	} else {
		n, err = io.Copy(tw, io.LimitReader(f, hdr.Size))
	}
	if err == nil && n < hdr.Size {
		err = errors.New("file shrank while it was read")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// Rename returns a reader of the tar stream r with its top-level entry
// renamed from old to new: old itself and everything below old/. Entries
// outside old are passed unchanged and hard links are renamed alike.
func Rename(r io.Reader, old, new string) io.Reader {
	if old == new {
		return r
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(rename(r, pw, old, new))
	}()
	return pr
}

func rename(r io.Reader, w io.Writer, old, new string) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	re := func(n string) string {
		switch {
		case n == old || n == old+"/":
			return new + n[len(old):]
		case len(n) > len(old) && n[:len(old)+1] == old+"/":
			return new + n[len(old):]
		}
		return n
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return err
		}
		hdr.Name = re(hdr.Name)
		if hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = re(hdr.Linkname)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// open opens the regular file p for reading, with O_DIRECT when c reads
// big files around the page cache and p's filesystem allows it.
func (c *creator) open(p string, size int64) (*os.File, error) {
	if c.direct && size >= directMin {
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECT, 0)
		if !errors.Is(err, unix.EINVAL) {
			return f, err
		}
	}
	return os.Open(p)
}
