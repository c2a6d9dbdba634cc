package tarx

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/tarx/tartest"
)

func TestCreateExtractRoundTrip(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "dir", "sub"), 0o750))
	must(os.WriteFile(filepath.Join(src, "dir", "run.sh"), []byte("#!/bin/sh\n"), 0o755))
	must(os.WriteFile(filepath.Join(src, "dir", "sub", "data"), []byte("data"), 0o600))
	must(os.WriteFile(filepath.Join(src, "dir", ".wh.kept"), []byte("not a whiteout"), 0o644))
	must(os.Symlink("sub/data", filepath.Join(src, "dir", "link")))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "dir", "sub", "data"), old, old))
	must(os.Chtimes(filepath.Join(src, "dir", "sub"), old, old))

	var buf bytes.Buffer
	must(Create(&buf, filepath.Join(src, "dir"), "copy"))
	dest := t.TempDir()
	must(Extract(dest, &buf))

	tartest.WantFile(t, dest, "copy/run.sh", "#!/bin/sh\n", 0o755)
	tartest.WantFile(t, dest, "copy/sub/data", "data", 0o600)
	tartest.WantFile(t, dest, "copy/.wh.kept", "not a whiteout", 0o644)
	tartest.WantMode(t, dest, "copy/sub", 0o750|os.ModeDir)
	if l, err := os.Readlink(filepath.Join(dest, "copy", "link")); err != nil || l != "sub/data" {
		t.Errorf("copy/link -> %q (%v), want sub/data", l, err)
	}
	for _, p := range []string{"copy/sub/data", "copy/sub"} {
		fi, err := os.Stat(filepath.Join(dest, p))
		if err != nil || !fi.ModTime().Equal(old) {
			t.Errorf("%s mtime = %v (%v), want %v", p, fi.ModTime(), err, old)
		}
	}
}

func TestCreateSingleFile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app.log")
	if err := os.WriteFile(src, []byte("line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Create(&buf, src, "app.log"); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if err := Extract(dest, Rename(&buf, "app.log", "renamed.log")); err != nil {
		t.Fatal(err)
	}
	tartest.WantFile(t, dest, "renamed.log", "line\n", 0o640)
	tartest.WantGone(t, dest, "app.log")
}

func TestRenameKeepsOtherEntries(t *testing.T) {
	in := tartest.Build(t,
		tartest.Entry{Name: "a/", Typ: '5'},
		tartest.Entry{Name: "a/f", Body: "1"},
		tartest.Entry{Name: "a/h", Typ: '1', Link: "a/f"},
		tartest.Entry{Name: "ab", Body: "2"},
	)
	dest := t.TempDir()
	if err := Extract(dest, Rename(bytes.NewReader(in), "a", "b")); err != nil {
		t.Fatal(err)
	}
	tartest.WantFile(t, dest, "b/f", "1", 0o644)
	tartest.WantFile(t, dest, "b/h", "1", 0o644)
	tartest.WantFile(t, dest, "ab", "2", 0o644)
	tartest.WantGone(t, dest, "a")
}

func TestExtractRefusesTraversal(t *testing.T) {
	for _, name := range []string{"../escape", "/abs", "a/../../x"} {
		in := tartest.Build(t, tartest.Entry{Name: name, Body: "x"})
		err := Extract(t.TempDir(), bytes.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Extract(%q) = %v, want an error naming it", name, err)
		}
	}
	// A symlink that leads out, then a file through it.
	in := tartest.Build(t,
		tartest.Entry{Name: "out", Typ: '2', Link: "/tmp"},
		tartest.Entry{Name: "out/x", Body: "x"},
	)
	if err := Extract(t.TempDir(), bytes.NewReader(in)); err == nil {
		t.Error("Extract wrote through a symlink leading out of the destination")
	}
}
