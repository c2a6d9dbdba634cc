package tarx

import (
	"github.com/flick-vm/flick/internal/tarx/tartest"

	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

type tarEntry = tartest.Entry

var testMtime = tartest.Mtime

func mkTar(tb testing.TB, entries ...tarEntry) []byte { return tartest.Build(tb, entries...) }

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
				{Name: "bin/", Typ: tar.TypeDir, Mode: 0o755},
				{Name: "bin/su", Body: "su", Mode: 0o4755, UID: 0, GID: 0},
				{Name: "home/app/", Typ: tar.TypeDir, Mode: 0o750, UID: 1000, GID: 1000},
				{Name: "home/app/data", Body: "hello", Mode: 0o640, UID: 1000, GID: 1001},
				{Name: "bin/sh", Typ: tar.TypeSymlink, Link: "busybox"},
				{Name: "bin/busybox", Body: "bb", Mode: 0o755},
				{Name: "bin/ls", Typ: tar.TypeLink, Link: "bin/busybox"},
				{Name: "./etc/hosts", Body: "127.0.0.1 localhost\n"}, // parent not in the tar
				{Name: "run/fifo", Typ: tar.TypeFifo, Mode: 0o600},
			}},
			check: func(t *testing.T, root string) {
				tartest.WantFile(t, root, "bin/su", "su", fs.ModeSetuid|0o755)
				tartest.WantFile(t, root, "home/app/data", "hello", 0o640)
				tartest.WantOwner(t, root, "home/app/data", 1000, 1001)
				tartest.WantOwner(t, root, "home/app", 1000, 1000)
				tartest.WantMode(t, root, "home/app", fs.ModeDir|0o750)
				if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "busybox" {
					t.Errorf("bin/sh -> %q, %v; want busybox", l, err)
				}
				a, _ := os.Stat(filepath.Join(root, "bin/ls"))
				b, _ := os.Stat(filepath.Join(root, "bin/busybox"))
				if a == nil || b == nil || !os.SameFile(a, b) {
					t.Errorf("bin/ls is not a hard link of bin/busybox")
				}
				tartest.WantFile(t, root, "etc/hosts", "127.0.0.1 localhost\n", 0o644)
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
				{{Name: "a/b", Body: "b"}, {Name: "a/c", Body: "c"}, {Name: "d/e/f", Body: "f"}},
				{{Name: "a/.wh.b"}, {Name: ".wh.d"}},
			},
			check: func(t *testing.T, root string) {
				tartest.WantGone(t, root, "a/b")
				tartest.WantGone(t, root, "d")
				tartest.WantFile(t, root, "a/c", "c", 0o644)
			},
		},
		{
			name: "opaque directory",
			layers: [][]tarEntry{
				{{Name: "d/x", Body: "x"}, {Name: "d/sub/y", Body: "y"}, {Name: "e/keep", Body: "k"}},
				{{Name: "d/", Typ: tar.TypeDir}, {Name: "d/z", Body: "z"}, {Name: "d/.wh..wh..opq"}},
			},
			check: func(t *testing.T, root string) {
				tartest.WantGone(t, root, "d/x")
				tartest.WantGone(t, root, "d/sub")
				tartest.WantFile(t, root, "d/z", "z", 0o644)
				tartest.WantFile(t, root, "e/keep", "k", 0o644)
			},
		},
		{
			name: "later layer replaces file with dir and dir with file",
			layers: [][]tarEntry{
				{{Name: "p", Body: "file"}, {Name: "q/r", Body: "r"}},
				{{Name: "p/", Typ: tar.TypeDir}, {Name: "p/in", Body: "in"}, {Name: "q", Body: "now a file"}},
			},
			check: func(t *testing.T, root string) {
				tartest.WantFile(t, root, "p/in", "in", 0o644)
				tartest.WantFile(t, root, "q", "now a file", 0o644)
			},
		},
		{
			name: "symlink inside the root is followed for parents",
			layers: [][]tarEntry{
				{{Name: "usr/lib/", Typ: tar.TypeDir}, {Name: "lib", Typ: tar.TypeSymlink, Link: "usr/lib"}},
				{{Name: "lib/libc.so", Body: "c"}},
			},
			check: func(t *testing.T, root string) {
				tartest.WantFile(t, root, "usr/lib/libc.so", "c", 0o644)
			},
		},
		{
			name: "a file replaces a symlink instead of writing through it",
			layers: [][]tarEntry{
				{{Name: "etc/passwd", Typ: tar.TypeSymlink, Link: "../../outside/etc/passwd"}},
				{{Name: "etc/passwd", Body: "mine"}},
			},
			check: func(t *testing.T, root string) {
				tartest.WantFile(t, root, "etc/passwd", "mine", 0o644)
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
		{"dot-dot", [][]tarEntry{{{Name: "../x", Body: "x"}}}, "../x"},
		{"dot-dot inside", [][]tarEntry{{{Name: "a/../../x", Body: "x"}}}, "a/../../x"},
		{"absolute", [][]tarEntry{{{Name: "/etc/x", Body: "x"}}}, "/etc/x"},
		{"symlink parent to /", [][]tarEntry{
			{{Name: "lnk", Typ: tar.TypeSymlink, Link: "/"}},
			{{Name: "lnk" + outside + "/etc/passwd", Body: "pwned"}},
		}, "lnk" + outside + "/etc/passwd"},
		{"symlink parent to /, same layer", [][]tarEntry{{
			{Name: "lnk", Typ: tar.TypeSymlink, Link: "/"},
			{Name: "lnk" + outside + "/x", Body: "pwned"},
		}}, "lnk" + outside + "/x"},
		{"symlink parent up", [][]tarEntry{{
			{Name: "lnk", Typ: tar.TypeSymlink, Link: "../.."},
			{Name: "lnk/x", Body: "pwned"},
		}}, "lnk/x"},
		{"symlink chain up", [][]tarEntry{{
			{Name: "a/b", Typ: tar.TypeSymlink, Link: "../c"},
			{Name: "c", Typ: tar.TypeSymlink, Link: "../outside"},
			{Name: "a/b/etc/passwd", Body: "pwned"},
		}}, "a/b/etc/passwd"},
		{"symlink parent to absolute outside", [][]tarEntry{{
			{Name: "lnk", Typ: tar.TypeSymlink, Link: outside},
			{Name: "lnk/new", Body: "pwned"},
		}}, "lnk/new"},
		{"hardlink escape", [][]tarEntry{{{Name: "h", Typ: tar.TypeLink, Link: "../../etc/passwd"}}}, "../../etc/passwd"},
		{"hardlink absolute", [][]tarEntry{{{Name: "h", Typ: tar.TypeLink, Link: "/etc/passwd"}}}, "/etc/passwd"},
		{"hardlink through symlink", [][]tarEntry{{
			{Name: "lnk", Typ: tar.TypeSymlink, Link: "../outside"},
			{Name: "h", Typ: tar.TypeLink, Link: "lnk/etc/passwd"},
		}}, "lnk/etc/passwd"},
		{"hardlink missing target", [][]tarEntry{{{Name: "h", Typ: tar.TypeLink, Link: "nope"}}}, "nope"},
		{"char device", [][]tarEntry{{{Name: "dev/mem", Typ: tar.TypeChar}}}, "dev/mem"},
		{"block device", [][]tarEntry{{{Name: "dev/sda", Typ: tar.TypeBlock}}}, "dev/sda"},
		{"whiteout through symlink", [][]tarEntry{
			{{Name: "lnk", Typ: tar.TypeSymlink, Link: "../outside/etc"}},
			{{Name: "lnk/.wh.passwd"}},
		}, "lnk/.wh.passwd"},
		{"opaque through symlink", [][]tarEntry{
			{{Name: "lnk", Typ: tar.TypeSymlink, Link: "../outside/etc"}},
			{{Name: "lnk/.wh..wh..opq"}},
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
					e.Name = strings.ReplaceAll(e.Name, "/OUTSIDE", outside)
					if e.Link == "/OUTSIDE" {
						e.Link = outside
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
		tarEntry{Name: "d/x", Body: "x"}, tarEntry{Name: "d/.wh..wh..opq"},
		tarEntry{Name: "l", Typ: tar.TypeSymlink, Link: "d"}, tarEntry{Name: "l/y", Body: "y"},
		tarEntry{Name: "h", Typ: tar.TypeLink, Link: "d/x"}, tarEntry{Name: ".wh.d"},
		tarEntry{Name: "d", Body: "file"}, tarEntry{Name: "d/", Typ: tar.TypeDir},
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
