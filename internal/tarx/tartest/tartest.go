// Package tartest builds tar archives for tests.
package tartest

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Entry is one entry of a test archive; the zero typ means a regular file.
type Entry struct {
	Name string
	Typ  byte // tar.TypeReg when zero
	Body string
	Link string
	Mode int64
	UID  int
	GID  int
}

// Mtime is the mtime of every entry.
var Mtime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

// Build returns the archive of entries, in order.
func Build(tb testing.TB, entries ...Entry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:     e.Name,
			Typeflag: e.Typ,
			Linkname: e.Link,
			Mode:     e.Mode,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  Mtime,
			Format:   tar.FormatPAX,
		}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatalf("tar header %s: %v", e.Name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// WantFile checks the content and mode of the file p below root.
func WantFile(t *testing.T, root, p, body string, mode fs.FileMode) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	if string(got) != body {
		t.Errorf("%s = %q, want %q", p, got, body)
	}
	WantMode(t, root, p, mode)
}

// WantMode checks the mode of p below root, not following a final symlink.
func WantMode(t *testing.T, root, p string, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	if fi.Mode() != mode {
		t.Errorf("%s mode = %v, want %v", p, fi.Mode(), mode)
	}
}

// WantOwner checks the owner of p below root.
func WantOwner(t *testing.T, root, p string, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s owner = %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
	}
}

// WantGone checks that nothing is at p below root.
func WantGone(t *testing.T, root, p string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
		t.Errorf("%s still exists", p)
	}
}
