package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flick-vm/flick/internal/tarx"
	"github.com/flick-vm/flick/internal/tarx/tartest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarImage makes an image of the given layers and loads it into s through
// an oci-layout directory.
func loadTarImage(t *testing.T, s *Store, ref string, layers ...[]byte) string {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(l)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{annotationRefName: ref})); err != nil {
		t.Fatal(err)
	}
	imgs, err := s.Load(t.Context(), dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return imgs[0].Digest
}

// countBuilds counts "built root disk" log records.
type countBuilds struct {
	slog.Handler
	n *atomic.Int32
}

func (c countBuilds) Enabled(context.Context, slog.Level) bool { return true }

func (c countBuilds) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "built root disk" {
		c.n.Add(1)
	}
	return nil
}

type tarEntry = tartest.Entry

func mkTar(tb testing.TB, entries ...tarEntry) []byte { return tartest.Build(tb, entries...) }

func TestRootDisk(t *testing.T) {
	var builds atomic.Int32
	log := slog.New(countBuilds{Handler: slog.DiscardHandler, n: &builds})
	s := newStoreWith(t, nil, log)
	digest := loadTarImage(t, s, "flick.test/disk:1",
		mkTar(t,
			tarEntry{Name: "bin/", Typ: tar.TypeDir},
			tarEntry{Name: "bin/app", Body: "#!/bin/app\n", Mode: 0o4755},
			tarEntry{Name: "bin/sh", Typ: tar.TypeSymlink, Link: "app"},
			tarEntry{Name: "etc/gone", Body: "x"},
			tarEntry{Name: "home/u/f", Body: "user", UID: 1000, GID: 1000},
		),
		mkTar(t, tarEntry{Name: "etc/.wh.gone"}, tarEntry{Name: "etc/hostname", Body: "flick\n"}),
	)

	// Concurrent first calls build once.
	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Go(func() { paths[i], _, errs[i] = s.RootDisk(t.Context(), digest) })
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil {
			t.Fatalf("RootDisk: %v", errs[i])
		}
		if paths[i] != paths[0] {
			t.Fatalf("RootDisk paths differ: %q", paths)
		}
	}
	disk := paths[0]
	if want := filepath.Join(s.root, "disks", strings.TrimPrefix(digest, "sha256:")+".erofs"); disk != want {
		t.Errorf("disk at %s, want %s", disk, want)
	}
	before, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	p, fstype, err := s.RootDisk(t.Context(), digest)
	if err != nil || p != disk || fstype != "erofs" {
		t.Fatalf("second RootDisk = %s %s %v", p, fstype, err)
	}
	after, _ := os.Stat(disk)
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second RootDisk rebuilt the disk")
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("built %d times, want once", n)
	}
	img, err := s.Resolve(t.Context(), digest)
	if err != nil || img.DiskSize != after.Size() {
		t.Errorf("DiskSize = %d, want %d (%v)", img.DiskSize, after.Size(), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.root, "tmp")); len(ents) != 0 {
		t.Errorf("tmp not cleaned: %v", ents)
	}

	root := extractErofs(t, disk)
	tartest.WantFile(t, root, "bin/app", "#!/bin/app\n", 0o755|os.ModeSetuid)
	tartest.WantFile(t, root, "etc/hostname", "flick\n", 0o644)
	tartest.WantGone(t, root, "etc/gone")
	tartest.WantOwner(t, root, "home/u/f", 1000, 1000)
	if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "app" {
		t.Errorf("bin/sh -> %q %v", l, err)
	}
}

// extractErofs makes the content of an erofs image readable: a loop mount
// when we can, fsck.erofs --extract otherwise.
func extractErofs(t *testing.T, disk string) string {
	t.Helper()
	mnt := t.TempDir()
	if os.Geteuid() == 0 {
		out, err := exec.Command("mount", "-t", "erofs", "-o", "loop,ro", disk, mnt).CombinedOutput()
		if err == nil {
			t.Cleanup(func() { exec.Command("umount", mnt).Run() })
			return mnt
		}
		t.Logf("mount -o loop,ro: %v: %s; trying fsck.erofs --extract", err, out)
	}
	if _, err := exec.LookPath("fsck.erofs"); err != nil {
		t.Skipf("cannot read the erofs image: not root and no fsck.erofs (apt-get install erofs-utils)")
	}
	dir := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command("fsck.erofs", "--extract="+dir, disk).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs --extract: %v: %s", err, out)
	}
	return dir
}

func TestRootDiskWithoutMkfs(t *testing.T) {
	s := newStore(t)
	digest := loadTarImage(t, s, "flick.test/nomkfs:1", mkTar(t, tarEntry{Name: "a", Body: "a"}))
	t.Setenv("PATH", t.TempDir())
	_, _, err := s.RootDisk(t.Context(), digest)
	if err == nil || !strings.Contains(err.Error(), "apt-get install erofs-utils") {
		t.Fatalf("RootDisk without mkfs.erofs: %v, want a hint to install erofs-utils", err)
	}
}

func BenchmarkFlattenMkfs(b *testing.B) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		b.Skip("no mkfs.erofs: apt-get install erofs-utils")
	}
	var entries []tarEntry
	for d := range 50 {
		entries = append(entries, tarEntry{Name: fmt.Sprintf("usr/share/d%02d/", d), Typ: tar.TypeDir})
		for f := range 60 {
			entries = append(entries, tarEntry{
				Name: fmt.Sprintf("usr/share/d%02d/file%03d", d, f),
				Body: strings.Repeat("x", 100+f*20),
			})
		}
	}
	layer := mkTar(b, entries...)
	// Where the tree lives matters: on a busy ext4 mounted with discard,
	// creating the files costs far more than the code around it.
	bases := map[string]string{"tempdir": b.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "flick-bench-"); err == nil {
		b.Cleanup(func() { os.RemoveAll(shm) })
		bases["tmpfs"] = shm
	}
	for _, where := range []string{"tempdir", "tmpfs"} {
		base, ok := bases[where]
		if !ok {
			continue
		}
		b.Run(where, func(b *testing.B) {
			b.ReportMetric(float64(len(entries)), "files")
			for b.Loop() {
				dir, err := os.MkdirTemp(base, "")
				if err != nil {
					b.Fatal(err)
				}
				tree := filepath.Join(dir, "rootfs")
				if err := os.Mkdir(tree, 0o755); err != nil {
					b.Fatal(err)
				}
				if err := tarx.Flatten(tree, bytes.NewReader(layer)); err != nil {
					b.Fatal(err)
				}
				if err := mkfsErofs(b.Context(), "mkfs.erofs", filepath.Join(dir, "disk.erofs"), tree); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(dir)
			}
		})
	}
}
