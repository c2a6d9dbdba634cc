package testenv

import (
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// BusyboxApplets are the commands BusyboxImage links to busybox in /bin.
var BusyboxApplets = []string{
	"sh", "ash", "echo", "cat", "ls", "sleep", "env", "id", "pwd", "true", "false",
	"printf", "grep", "wc", "tee", "touch", "rm", "mkdir", "sync", "head", "tail",
	"kill", "ps", "hostname", "uname", "date", "seq", "test", "[", "stat", "readlink",
	"mount", "df", "whoami", "yes", "sed", "dd", "cp", "mv", "ln", "chmod", "find",
}

// Passwd and Group are the account files of BusyboxImage: root, a user
// "app" with uid 1000 and nobody (65534).
const (
	Passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"app:x:1000:1000:app:/home/app:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	Group = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
)

var (
	goBuilds sync.Map // sourceKey -> []byte, static binaries built this run
)

// ScratchGoImage builds goSource (a main package with no dependencies
// outside the standard library) into a static binary and returns a scratch
// image that holds it as /app, with entrypoint ["/app"]. Binaries are
// cached for the life of the test binary by source text.
func ScratchGoImage(t testing.TB, goSource string) v1.Image {
	t.Helper()
	key := sourceKey(goSource)
	var bin []byte
	if b, ok := goBuilds.Load(key); ok {
		bin = b.([]byte)
	} else {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module flicktest/app\n\ngo 1.26\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(goSource), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "app")
		if err := BuildStatic(t.Context(), dir, ".", out); err != nil {
			t.Fatal(err)
		}
		var err error
		if bin, err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
		goBuilds.Store(key, bin)
	}
	img, err := ScratchImage(bin)
	if err != nil {
		t.Fatalf("scratch image: %v", err)
	}
	return img
}

// busyboxFiles is the root file system of BusyboxImage.
func busyboxFiles(t testing.TB) []File {
	t.Helper()
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		skip(t, "%s: %v: apt-get install busybox-static", BusyboxPath, err)
	}
	files := []File{
		Dir("bin", 0o755),
		{Path: "bin/busybox", Mode: 0o755, Data: bb},
	}
	for _, a := range BusyboxApplets {
		files = append(files, Symlink("bin/"+a, "busybox"))
	}
	files = append(files,
		Dir("etc", 0o755),
		Reg("etc/passwd", 0o644, Passwd),
		Reg("etc/group", 0o644, Group),
		Reg("etc/hostname", 0o644, "busybox\n"),
		Dir("root", 0o700),
		Dir("home", 0o755),
		File{Path: "home/app", Mode: fs.ModeDir | 0o755, UID: 1000, GID: 1000},
		File{Path: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		Dir("proc", 0o555),
		Dir("sys", 0o555),
		Dir("dev", 0o755),
		Dir("run", 0o755),
		Dir("var", 0o755),
	)
	return files
}

// BusyboxImage returns a one-layer image with Debian's static busybox as
// /bin/busybox, links to it for the common commands (BusyboxApplets),
// /etc/passwd and /etc/group with root, app (1000) and nobody (65534),
// and Cmd ["sh"].
func BusyboxImage(t testing.TB) v1.Image {
	t.Helper()
	layer, err := NewLayer(busyboxFiles(t))
	if err != nil {
		t.Fatalf("busybox layer: %v", err)
	}
	img, err := NewImage(v1.Config{Cmd: []string{"sh"}, Env: []string{DefaultPath}}, layer)
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	return img
}

// WhiteoutLayers are the two layers WhiteoutImage puts on busybox: the
// first adds /data/{a,b} and /opq/{x,y}; the second deletes /data/a with a
// whiteout, makes /opq opaque and adds /opq/z. A correct flatten leaves
// /data/b alone in /data and /opq/z alone in /opq.
var WhiteoutLayers = [][]File{
	{
		Dir("data", 0o755),
		Reg("data/a", 0o644, "a\n"),
		Reg("data/b", 0o644, "b\n"),
		Dir("opq", 0o755),
		Reg("opq/x", 0o644, "x\n"),
		Reg("opq/y", 0o644, "y\n"),
	},
	{
		Dir("data", 0o755),
		Reg("data/.wh.a", 0o644, ""),
		Dir("opq", 0o755),
		Reg("opq/.wh..wh..opq", 0o644, ""),
		Reg("opq/z", 0o644, "z\n"),
	},
}

// WhiteoutImage returns busybox plus WhiteoutLayers: three layers in all.
func WhiteoutImage(t testing.TB) v1.Image {
	t.Helper()
	layers := make([]v1.Layer, 0, 3)
	for _, files := range append([][]File{busyboxFiles(t)}, WhiteoutLayers...) {
		l, err := NewLayer(files)
		if err != nil {
			t.Fatalf("whiteout image layer: %v", err)
		}
		layers = append(layers, l)
	}
	img, err := NewImage(v1.Config{Cmd: []string{"sh"}, Env: []string{DefaultPath}}, layers...)
	if err != nil {
		t.Fatalf("whiteout image: %v", err)
	}
	return img
}

// Push pushes img to ref, a reference in a registry such as the one
// StartRegistry runs (plain HTTP).
func Push(t testing.TB, img v1.Image, ref string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// WriteDockerArchive writes img to path as `docker save` would, tagged tag.
func WriteDockerArchive(t testing.TB, img v1.Image, tag, path string) {
	t.Helper()
	if err := WriteDockerArchiveFile(img, tag, path); err != nil {
		t.Fatalf("write docker archive %s: %v", path, err)
	}
}

// WriteOCILayout writes img into dir as an OCI image layout (oci-layout,
// index.json, blobs/sha256/...), creating dir if needed.
func WriteOCILayout(t testing.TB, img v1.Image, dir string) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatalf("write oci layout %s: %v", dir, err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatalf("write oci layout %s: %v", dir, err)
	}
}
