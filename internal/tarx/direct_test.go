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

func TestExtractDirect(t *testing.T) {
	sizes := []int{0, 5000, directMin - 1, directMin, directMin + 1, directChunk,
		directChunk + directAlign, directChunk + 123, 2*directChunk + directAlign - 1}
	rng := rand.New(rand.NewPCG(1, 2))
	var entries []tarEntry
	bodies := map[string][]byte{}
	for _, n := range sizes {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("f%d", n)
		bodies[name] = body
		entries = append(entries, tarEntry{Name: name, Body: string(body), Mode: 0o640})
	}
	archive := mkTar(t, entries...)

	dirs := []struct{ name, parent string }{
		{"disk filesystem", t.TempDir()},
		// tmpfs refuses O_DIRECT: the files go through the page cache.
		{"tmpfs", "/dev/shm"},
	}
	for _, d := range dirs {
		t.Run(d.name, func(t *testing.T) {
			if _, err := os.Stat(d.parent); err != nil {
				t.Skipf("no %s here: %v", d.parent, err)
			}
			dest, err := os.MkdirTemp(d.parent, "tarx-direct-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dest) })
			if err := ExtractDirect(dest, pieces{bytes.NewReader(archive), 64 << 10}); err != nil {
				t.Fatalf("ExtractDirect: %v", err)
			}
			for name, want := range bodies {
				p := filepath.Join(dest, name)
				got, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s: %d bytes differ from the %d sent", name, len(got), len(want))
				}
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(testMtime) {
					t.Errorf("%s: mode %v mtime %v, want -rw-r----- and %v", name, fi.Mode(), fi.ModTime(), testMtime)
				}
			}
		})
	}
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
	sizes := []int{0, 5000, directMin, directMin + 1, directChunk, directChunk + 123, 2*directChunk + directAlign - 1}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, parent := range []string{t.TempDir(), "/dev/shm"} {
		t.Run(parent, func(t *testing.T) {
			if _, err := os.Stat(parent); err != nil {
				t.Skipf("no %s here: %v", parent, err)
			}
			src, err := os.MkdirTemp(parent, "tarx-direct-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(src) })
			bodies := map[string][]byte{}
			for _, n := range sizes {
				body := make([]byte, n)
				for i := range body {
					body[i] = byte(rng.Uint32())
				}
				name := fmt.Sprintf("f%d", n)
				bodies[name] = body
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
			for name, want := range bodies {
				got, err := os.ReadFile(filepath.Join(dest, "out", name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s: %d bytes came out, differing from the %d in", name, len(got), len(want))
				}
			}
		})
	}
}
