package testenv

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const helloSource = `package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("hello from testenv", len(os.Args)-1)
	os.Exit(3)
}
`

// tarEntries reads a tar stream into name -> header (names without a
// trailing slash) and name -> contents.
func tarEntries(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	hdrs := map[string]*tar.Header{}
	data := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		n := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		hdrs[n] = h
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		data[n] = string(b)
	}
}

func layerEntries(t *testing.T, l v1.Layer) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return tarEntries(t, rc)
}

// flatten applies the image's layers, whiteouts included, the way a
// container runtime would, and returns the resulting file system.
func flatten(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	return tarEntries(t, rc)
}

func children(hdrs map[string]*tar.Header, dir string) []string {
	var out []string
	for n := range hdrs {
		if rest, ok := strings.CutPrefix(n, dir+"/"); ok && !strings.Contains(rest, "/") {
			out = append(out, rest)
		}
	}
	slices.Sort(out)
	return out
}

func TestLayerTar(t *testing.T) {
	b, err := LayerTar([]File{
		Dir("/etc/", 0o755),
		Reg("/etc/motd", 0o600, "hi\n"),
		Symlink("bin/sh", "busybox"),
		{Path: "tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	})
	if err != nil {
		t.Fatal(err)
	}
	hdrs, data := tarEntries(t, bytes.NewReader(b))
	tests := []struct {
		name     string
		typ      byte
		mode     int64
		linkname string
		data     string
	}{
		{name: "etc", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/motd", typ: tar.TypeReg, mode: 0o600, data: "hi\n"},
		{name: "bin/sh", typ: tar.TypeSymlink, mode: 0o777, linkname: "busybox"},
		{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ok := hdrs[tt.name]
			if !ok {
				t.Fatalf("no entry %s in %v", tt.name, hdrs)
			}
			if strings.HasPrefix(h.Name, "/") {
				t.Errorf("entry %q has a leading slash", h.Name)
			}
			if h.Typeflag != tt.typ || h.Mode != tt.mode || h.Linkname != tt.linkname || data[tt.name] != tt.data {
				t.Errorf("got type %c mode %o link %q data %q, want %c %o %q %q",
					h.Typeflag, h.Mode, h.Linkname, data[tt.name], tt.typ, tt.mode, tt.linkname, tt.data)
			}
		})
	}
}

func TestBusyboxImage(t *testing.T) {
	img := BusyboxImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Cmd, []string{"sh"}) || cf.OS != "linux" {
		t.Errorf("config: cmd %q os %q, want [sh] linux", cf.Config.Cmd, cf.OS)
	}
	hdrs, data := flatten(t, img)
	if h := hdrs["bin/busybox"]; h == nil || h.Mode&0o111 == 0 || h.Size < 100_000 {
		t.Errorf("bin/busybox: %+v, want an executable of Debian's busybox-static", h)
	}
	for _, a := range []string{"sh", "echo", "id", "sleep", "ls", "pwd", "env"} {
		if h := hdrs["bin/"+a]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: %+v, want a symlink to busybox", a, h)
		}
	}
	for _, want := range []string{"root:x:0:0:", "app:x:1000:1000:", "nobody:x:65534:65534:"} {
		if !strings.Contains(data["etc/passwd"], want) {
			t.Errorf("etc/passwd lacks %q:\n%s", want, data["etc/passwd"])
		}
	}
	if h := hdrs["tmp"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp: %+v, want mode 1777", h)
	}
}

func TestWhiteoutImage(t *testing.T) {
	img := WhiteoutImage(t)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 3 {
		t.Fatalf("got %d layers, want 3 (busybox, files, whiteouts)", len(layers))
	}
	mid, _ := layerEntries(t, layers[1])
	for _, n := range []string{"data/a", "data/b", "opq/x", "opq/y"} {
		if mid[n] == nil {
			t.Errorf("layer 1 lacks %s", n)
		}
	}
	top, _ := layerEntries(t, layers[2])
	for _, n := range []string{"data/.wh.a", "opq/.wh..wh..opq", "opq/z"} {
		if top[n] == nil {
			t.Errorf("layer 2 lacks %s", n)
		}
	}
	// What the VM must see, as a reference implementation flattens it.
	hdrs, _ := flatten(t, img)
	if got := children(hdrs, "data"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("flattened /data = %q, want [b]", got)
	}
	if got := children(hdrs, "opq"); !slices.Equal(got, []string{"z"}) {
		t.Errorf("flattened /opq = %q, want [z]", got)
	}
	if hdrs["bin/busybox"] == nil {
		t.Error("flattened image lost bin/busybox")
	}
}

func TestScratchGoImage(t *testing.T) {
	img := ScratchGoImage(t, helloSource)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/app"}) || !slices.Contains(cf.Config.Env, DefaultPath) {
		t.Errorf("config: entrypoint %q env %q", cf.Config.Entrypoint, cf.Config.Env)
	}
	hdrs, data := flatten(t, img)
	if len(hdrs) != 1 || hdrs["app"] == nil || hdrs["app"].Mode != 0o755 {
		t.Fatalf("want one entry app mode 755, got %v", hdrs)
	}
	// The binary is static: it runs on the host as it will in the VM.
	bin := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(bin, []byte(data["app"]), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "x", "y").Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("run app: %v, want exit status 3", err)
	}
	if string(out) != "hello from testenv 2\n" {
		t.Errorf("app printed %q", out)
	}
	// A second build of the same source comes from the cache, same digest.
	d1, _ := img.Digest()
	d2, _ := ScratchGoImage(t, helloSource).Digest()
	if d1 != d2 {
		t.Errorf("same source, different digests %s %s", d1, d2)
	}
}

func TestRegistryRoundTrip(t *testing.T) {
	addr := StartRegistry(t)
	img := BusyboxImage(t)
	ref := addr + "/testenv/busybox:v1"
	Push(t, img, ref)

	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(r, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull back %s: %v", ref, err)
	}
	want, _ := img.Digest()
	if d, err := got.Digest(); err != nil || d != want {
		t.Errorf("pulled digest %s (%v), want %s", d, err, want)
	}
	// The layers came over the wire too, not just the manifest.
	hdrs, _ := flatten(t, got)
	if hdrs["bin/busybox"] == nil {
		t.Error("pulled image lacks bin/busybox")
	}

	missing, _ := name.ParseReference(addr + "/testenv/busybox:nope")
	if _, err := remote.Image(missing, remote.WithContext(t.Context())); err == nil {
		t.Error("pull of an unknown tag succeeded")
	}
}

func TestWriteDockerArchive(t *testing.T) {
	img := WhiteoutImage(t)
	file := filepath.Join(t.TempDir(), "img.tar")
	WriteDockerArchive(t, img, "flick/whiteout:v1", file)

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, data := tarEntries(t, f)
	if !strings.Contains(data["manifest.json"], `"RepoTags":["flick/whiteout:v1"]`) {
		t.Errorf("manifest.json = %s, want the tag as written", data["manifest.json"])
	}

	tag, err := name.NewTag("flick/whiteout:v1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := tarball.ImageFromPath(file, &tag)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	wantCfg, _ := img.ConfigName()
	if c, err := got.ConfigName(); err != nil || c != wantCfg {
		t.Errorf("config digest %s (%v), want %s", c, err, wantCfg)
	}
	wl, _ := img.Layers()
	gl, err := got.Layers()
	if err != nil || len(gl) != len(wl) {
		t.Fatalf("layers: %d (%v), want %d", len(gl), err, len(wl))
	}
	for i := range wl {
		w, _ := wl[i].DiffID()
		if g, _ := gl[i].DiffID(); g != w {
			t.Errorf("layer %d diff id %s, want %s", i, g, w)
		}
	}
}

func TestWriteOCILayout(t *testing.T) {
	img := BusyboxImage(t)
	dir := filepath.Join(t.TempDir(), "layout")
	WriteOCILayout(t, img, dir)
	for _, f := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != want {
		t.Fatalf("index.json manifests %+v, want one of digest %s", m.Manifests, want)
	}
	if _, err := idx.Image(want); err != nil {
		t.Errorf("image %s from layout: %v", want, err)
	}
}

func TestKernelPath(t *testing.T) {
	tests := []struct {
		name, kernel, cache, home, want string
	}{
		{name: "FLICK_KERNEL wins", kernel: "/k/vmlinux", cache: "/c", home: "/h", want: "/k/vmlinux"},
		{name: "XDG cache", cache: "/c", home: "/h", want: "/c/flick/kernel/vmlinux"},
		{name: "home cache", home: "/h", want: "/h/.cache/flick/kernel/vmlinux"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("FLICK_KERNEL", tt.kernel)
			t.Setenv("XDG_CACHE_HOME", tt.cache)
			t.Setenv("HOME", tt.home)
			if got := KernelPath(); got != tt.want {
				t.Errorf("KernelPath() = %q, want %q", got, tt.want)
			}
		})
	}
}
