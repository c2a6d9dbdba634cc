package tarx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// pieces hands out at most n bytes per Read, as a stream from the host does.
type pieces struct {
	r io.Reader
	n int
}

func (p pieces) Read(b []byte) (int, error) { return p.r.Read(b[:min(len(b), p.n)]) }

// directSizes are file sizes around the edges of the direct path.
var directSizes = []int{0, 5000, directMin - 1, directMin, directMin + 1, directChunk,
	directChunk + directAlign, directChunk + 123, 2*directChunk + directAlign - 1}

// randomFiles returns random contents of each size, named f<size>.
func randomFiles(seed uint64) map[string][]byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	files := map[string][]byte{}
	for _, n := range directSizes {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
		files[fmt.Sprintf("f%d", n)] = body
	}
	return files
}

// inDirectDirs runs f in a fresh directory on a disk filesystem and in one
// on tmpfs, which refuses O_DIRECT, so that the files go through the page
// cache there.
func inDirectDirs(t *testing.T, f func(t *testing.T, dir string)) {
	for _, d := range []struct{ name, parent string }{{"disk", t.TempDir()}, {"tmpfs", "/dev/shm"}} {
		t.Run(d.name, func(t *testing.T) {
			if _, err := os.Stat(d.parent); err != nil {
				t.Skipf("no %s here: %v", d.parent, err)
			}
			dir, err := os.MkdirTemp(d.parent, "tarx-direct-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			f(t, dir)
		})
	}
}

// wantFiles checks that dir holds files, byte for byte.
func wantFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes that differ from the %d expected", name, len(got), len(want))
		}
	}
}

func TestExtractDirect(t *testing.T) {
	files := randomFiles(1)
	var entries []tarEntry
	for name, body := range files {
		entries = append(entries, tarEntry{Name: name, Body: string(body), Mode: 0o640})
	}
	archive := mkTar(t, entries...)
	inDirectDirs(t, func(t *testing.T, dest string) {
		if err := ExtractDirect(dest, pieces{bytes.NewReader(archive), 64 << 10}); err != nil {
			t.Fatalf("ExtractDirect: %v", err)
		}
		wantFiles(t, dest, files)
		for name := range files {
			fi, err := os.Stat(filepath.Join(dest, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(testMtime) {
				t.Errorf("%s: mode %v mtime %v, want -rw-r----- and %v", name, fi.Mode(), fi.ModTime(), testMtime)
			}
		}
	})
}

func TestExtractDirectTruncated(t *testing.T) {
	body := bytes.Repeat([]byte("x"), directChunk+directMin)
	archive := mkTar(t, tarEntry{Name: "big", Body: string(body)})
	cut := archive[:len(archive)/2]
	err := ExtractDirect(t.TempDir(), bytes.NewReader(cut))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ExtractDirect of a cut stream: %v, want unexpected EOF", err)
	}
}

func TestCreateDirect(t *testing.T) {
	files := randomFiles(3)
	inDirectDirs(t, func(t *testing.T, src string) {
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(src, name), body, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		var archive bytes.Buffer
		if err := CreateDirect(&archive, src, "out"); err != nil {
			t.Fatalf("CreateDirect: %v", err)
		}
		dest := t.TempDir()
		if err := Extract(dest, &archive); err != nil {
			t.Fatalf("Extract: %v", err)
		}
		wantFiles(t, filepath.Join(dest, "out"), files)
	})
}
