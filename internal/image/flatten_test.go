package image

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name string
	typ  byte // tar.TypeReg when zero
	body string
	link string
	mode int64
	uid  int
	gid  int
}

var testMtime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

func mkTar(tb testing.TB, entries ...tarEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:     e.name,
			Typeflag: e.typ,
			Linkname: e.link,
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.gid,
			ModTime:  testMtime,
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
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatalf("tar header %s: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func readers(layers [][]byte) []io.Reader {
	var rs []io.Reader
	for _, l := range layers {
		rs = append(rs, bytes.NewReader(l))
	}
	return rs
}

// sandbox makes parent/root (the flatten destination) next to a sentinel
// tree, and returns a check that nothing outside root changed.
func sandbox(tb testing.TB) (dest string, check func(tb testing.TB)) {
	tb.Helper()
	return sandboxIn(tb, tb.TempDir())
}

func sandboxIn(tb testing.TB, parent string) (dest string, check func(tb testing.TB)) {
	tb.Helper()
	dest = filepath.Join(parent, "root")
	if err := os.Mkdir(dest, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(parent, "outside", "etc"), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "outside", "etc", "passwd"), []byte("root:x:0:0\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	before := snapshot(tb, parent, dest)
	return dest, func(tb testing.TB) {
		tb.Helper()
		after := snapshot(tb, parent, dest)
		if strings.Join(before, "\n") != strings.Join(after, "\n") {
			tb.Fatalf("flatten wrote outside its root:\nbefore %q\nafter  %q", before, after)
		}
	}
}

// snapshot lists every path under parent except what is below skip, with
// its size and mode.
func snapshot(tb testing.TB, parent, skip string) []string {
	var out []string
	err := filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, p+" "+fi.Mode().String()+" "+strings.Repeat("*", int(fi.Size())))
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestFlatten(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]tarEntry
		check  func(t *testing.T, root string)
	}{
		{
			name: "files, modes, owners, links",
			layers: [][]tarEntry{{
				{name: "bin/", typ: tar.TypeDir, mode: 0o755},
				{name: "bin/su", body: "su", mode: 0o4755, uid: 0, gid: 0},
				{name: "home/app/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
				{name: "home/app/data", body: "hello", mode: 0o640, uid: 1000, gid: 1001},
				{name: "bin/sh", typ: tar.TypeSymlink, link: "busybox"},
				{name: "bin/busybox", body: "bb", mode: 0o755},
				{name: "bin/ls", typ: tar.TypeLink, link: "bin/busybox"},
				{name: "./etc/hosts", body: "127.0.0.1 localhost\n"}, // parent not in the tar
				{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
			}},
			check: func(t *testing.T, root string) {
				wantFile(t, root, "bin/su", "su", fs.ModeSetuid|0o755)
				wantFile(t, root, "home/app/data", "hello", 0o640)
				wantOwner(t, root, "home/app/data", 1000, 1001)
				wantOwner(t, root, "home/app", 1000, 1000)
				wantMode(t, root, "home/app", fs.ModeDir|0o750)
				if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "busybox" {
					t.Errorf("bin/sh -> %q, %v; want busybox", l, err)
				}
				a, _ := os.Stat(filepath.Join(root, "bin/ls"))
				b, _ := os.Stat(filepath.Join(root, "bin/busybox"))
				if a == nil || b == nil || !os.SameFile(a, b) {
					t.Errorf("bin/ls is not a hard link of bin/busybox")
				}
				wantFile(t, root, "etc/hosts", "127.0.0.1 localhost\n", 0o644)
				fi, err := os.Stat(filepath.Join(root, "home/app"))
				if err != nil || !fi.ModTime().Equal(testMtime) {
					t.Errorf("home/app mtime = %v, want %v (%v)", fi.ModTime(), testMtime, err)
				}
				if fi, err := os.Lstat(filepath.Join(root, "run/fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
					t.Errorf("run/fifo is not a fifo: %v", err)
				}
			},
		},
		{
			name: "whiteout",
			layers: [][]tarEntry{
				{{name: "a/b", body: "b"}, {name: "a/c", body: "c"}, {name: "d/e/f", body: "f"}},
				{{name: "a/.wh.b"}, {name: ".wh.d"}},
			},
			check: func(t *testing.T, root string) {
				wantGone(t, root, "a/b")
				wantGone(t, root, "d")
				wantFile(t, root, "a/c", "c", 0o644)
			},
		},
		{
			name: "opaque directory",
			layers: [][]tarEntry{
				{{name: "d/x", body: "x"}, {name: "d/sub/y", body: "y"}, {name: "e/keep", body: "k"}},
				{{name: "d/", typ: tar.TypeDir}, {name: "d/z", body: "z"}, {name: "d/.wh..wh..opq"}},
			},
			check: func(t *testing.T, root string) {
				wantGone(t, root, "d/x")
				wantGone(t, root, "d/sub")
				wantFile(t, root, "d/z", "z", 0o644)
				wantFile(t, root, "e/keep", "k", 0o644)
			},
		},
		{
			name: "later layer replaces file with dir and dir with file",
			layers: [][]tarEntry{
				{{name: "p", body: "file"}, {name: "q/r", body: "r"}},
				{{name: "p/", typ: tar.TypeDir}, {name: "p/in", body: "in"}, {name: "q", body: "now a file"}},
			},
			check: func(t *testing.T, root string) {
				wantFile(t, root, "p/in", "in", 0o644)
				wantFile(t, root, "q", "now a file", 0o644)
			},
		},
		{
			name: "symlink inside the root is followed for parents",
			layers: [][]tarEntry{
				{{name: "usr/lib/", typ: tar.TypeDir}, {name: "lib", typ: tar.TypeSymlink, link: "usr/lib"}},
				{{name: "lib/libc.so", body: "c"}},
			},
			check: func(t *testing.T, root string) {
				wantFile(t, root, "usr/lib/libc.so", "c", 0o644)
			},
		},
		{
			name: "a file replaces a symlink instead of writing through it",
			layers: [][]tarEntry{
				{{name: "etc/passwd", typ: tar.TypeSymlink, link: "../../outside/etc/passwd"}},
				{{name: "etc/passwd", body: "mine"}},
			},
			check: func(t *testing.T, root string) {
				wantFile(t, root, "etc/passwd", "mine", 0o644)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest, check := sandbox(t)
			var layers [][]byte
			for _, l := range tt.layers {
				layers = append(layers, mkTar(t, l...))
			}
			if err := Flatten(dest, readers(layers)...); err != nil {
				t.Fatalf("Flatten: %v", err)
			}
			tt.check(t, dest)
			check(t)
		})
	}
}

// hostileCases are layers that Flatten must refuse, with the path that the
// error must name.
func hostileCases(outside string) []struct {
	name   string
	layers [][]tarEntry
	path   string
} {
	return []struct {
		name   string
		layers [][]tarEntry
		path   string
	}{
		{"dot-dot", [][]tarEntry{{{name: "../x", body: "x"}}}, "../x"},
		{"dot-dot inside", [][]tarEntry{{{name: "a/../../x", body: "x"}}}, "a/../../x"},
		{"absolute", [][]tarEntry{{{name: "/etc/x", body: "x"}}}, "/etc/x"},
		{"symlink parent to /", [][]tarEntry{
			{{name: "lnk", typ: tar.TypeSymlink, link: "/"}},
			{{name: "lnk" + outside + "/etc/passwd", body: "pwned"}},
		}, "lnk" + outside + "/etc/passwd"},
		{"symlink parent to /, same layer", [][]tarEntry{{
			{name: "lnk", typ: tar.TypeSymlink, link: "/"},
			{name: "lnk" + outside + "/x", body: "pwned"},
		}}, "lnk" + outside + "/x"},
		{"symlink parent up", [][]tarEntry{{
			{name: "lnk", typ: tar.TypeSymlink, link: "../.."},
			{name: "lnk/x", body: "pwned"},
		}}, "lnk/x"},
		{"symlink chain up", [][]tarEntry{{
			{name: "a/b", typ: tar.TypeSymlink, link: "../c"},
			{name: "c", typ: tar.TypeSymlink, link: "../outside"},
			{name: "a/b/etc/passwd", body: "pwned"},
		}}, "a/b/etc/passwd"},
		{"symlink parent to absolute outside", [][]tarEntry{{
			{name: "lnk", typ: tar.TypeSymlink, link: outside},
			{name: "lnk/new", body: "pwned"},
		}}, "lnk/new"},
		{"hardlink escape", [][]tarEntry{{{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}}}, "../../etc/passwd"},
		{"hardlink absolute", [][]tarEntry{{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}}, "/etc/passwd"},
		{"hardlink through symlink", [][]tarEntry{{
			{name: "lnk", typ: tar.TypeSymlink, link: "../outside"},
			{name: "h", typ: tar.TypeLink, link: "lnk/etc/passwd"},
		}}, "lnk/etc/passwd"},
		{"hardlink missing target", [][]tarEntry{{{name: "h", typ: tar.TypeLink, link: "nope"}}}, "nope"},
		{"char device", [][]tarEntry{{{name: "dev/mem", typ: tar.TypeChar}}}, "dev/mem"},
		{"block device", [][]tarEntry{{{name: "dev/sda", typ: tar.TypeBlock}}}, "dev/sda"},
		{"whiteout through symlink", [][]tarEntry{
			{{name: "lnk", typ: tar.TypeSymlink, link: "../outside/etc"}},
			{{name: "lnk/.wh.passwd"}},
		}, "lnk/.wh.passwd"},
		{"opaque through symlink", [][]tarEntry{
			{{name: "lnk", typ: tar.TypeSymlink, link: "../outside/etc"}},
			{{name: "lnk/.wh..wh..opq"}},
		}, "lnk/.wh..wh..opq"},
	}
}

func TestFlattenRefusesHostileLayers(t *testing.T) {
	for _, tt := range hostileCases("/OUTSIDE") {
		t.Run(tt.name, func(t *testing.T) {
			dest, check := sandbox(t)
			outside := filepath.Join(filepath.Dir(dest), "outside")
			// Point the escapes at this test's own sentinel tree.
			var layers [][]byte
			for _, l := range tt.layers {
				var es []tarEntry
				for _, e := range l {
					e.name = strings.ReplaceAll(e.name, "/OUTSIDE", outside)
					if e.link == "/OUTSIDE" {
						e.link = outside
					}
					es = append(es, e)
				}
				layers = append(layers, mkTar(t, es...))
			}
			want := strings.ReplaceAll(tt.path, "/OUTSIDE", outside)
			err := Flatten(dest, readers(layers)...)
			if err == nil {
				t.Fatalf("Flatten accepted a hostile layer; want an error naming %s", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
			check(t)
		})
	}
}

func FuzzFlatten(f *testing.F) {
	for _, tt := range hostileCases("/tmp") {
		var all []tarEntry
		for _, l := range tt.layers {
			all = append(all, l...)
		}
		f.Add(mkTar(f, all...))
	}
	f.Add(mkTar(f,
		tarEntry{name: "d/x", body: "x"}, tarEntry{name: "d/.wh..wh..opq"},
		tarEntry{name: "l", typ: tar.TypeSymlink, link: "d"}, tarEntry{name: "l/y", body: "y"},
		tarEntry{name: "h", typ: tar.TypeLink, link: "d/x"}, tarEntry{name: ".wh.d"},
		tarEntry{name: "d", body: "file"}, tarEntry{name: "d/", typ: tar.TypeDir},
	))
	// Fuzzing makes and removes thousands of trees: on a disk mounted with
	// discard that alone runs at a few per second, so use tmpfs if there is one.
	base := f.TempDir()
	if shm, err := os.MkdirTemp("/dev/shm", "flick-fuzz-"); err == nil {
		base = shm
		f.Cleanup(func() { os.RemoveAll(shm) })
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		dest, check := sandboxIn(t, parent)
		_ = Flatten(dest, bytes.NewReader(data), bytes.NewReader(data))
		check(t)
	})
}

func wantFile(t *testing.T, root, p, body string, mode fs.FileMode) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	if string(got) != body {
		t.Errorf("%s = %q, want %q", p, got, body)
	}
	wantMode(t, root, p, mode)
}

func wantMode(t *testing.T, root, p string, mode fs.FileMode) {
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

func wantOwner(t *testing.T, root, p string, uid, gid int) {
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

func wantGone(t *testing.T, root, p string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
		t.Errorf("%s still exists", p)
	}
}
