package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/store"
	"github.com/flick-vm/flick/internal/tarx"
)

// FSTypeErofs is the filesystem of the root disks.
const FSTypeErofs = "erofs"

// RootDisk returns the read-only root disk of the image with the given
// manifest digest, building it on first use: the layers are flattened into
// a temporary tree and made into an uncompressed erofs image, which is
// renamed into place only when complete. Concurrent calls for one digest
// build once; a caller that gives up does not stop the build.
func (s *Store) RootDisk(ctx context.Context, digest string) (path, fstype string, err error) {
	var rec record
	if err := s.db.Get(bucketImages, digest, &rec); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return "", "", errdefs.NotFound("root disk: image %s not found", digest)
		}
		return "", "", fmt.Errorf("root disk %s: %w", digest, err)
	}
	p := s.diskPath(rec.Digest)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		return p, FSTypeErofs, nil
	}
	ch := s.disks.DoChan(rec.Digest, func() (any, error) {
		return nil, s.buildDisk(context.WithoutCancel(ctx), &rec)
	})
	select {
	case <-ctx.Done():
		return "", "", fmt.Errorf("root disk %s: %w", digest, ctx.Err())
	case res := <-ch:
		if res.Err != nil {
			return "", "", fmt.Errorf("root disk %s: %w", digest, res.Err)
		}
	}
	return p, FSTypeErofs, nil
}

func (s *Store) buildDisk(ctx context.Context, rec *record) error {
	p := s.diskPath(rec.Digest)
	if _, err := os.Stat(p); err == nil {
		return nil // a caller before us built it
	}
	mkfs, err := exec.LookPath("mkfs.erofs")
	if err != nil {
		return errors.New("mkfs.erofs not found: apt-get install erofs-utils")
	}
	start := time.Now()
	hex := strings.TrimPrefix(rec.Digest, "sha256:")
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "disk-"+hex[:12]+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}

	// Hold the blobs against Remove while they are read.
	s.gc.RLock()
	err = s.flattenBlobs(tree, rec.Layers)
	s.gc.RUnlock()
	if err != nil {
		return err
	}
	flattened := time.Since(start)

	out := filepath.Join(tmp, "disk.erofs")
	if err := mkfsErofs(ctx, mkfs, out, tree); err != nil {
		return err
	}
	f, err := os.Open(out)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Chmod(out, 0o444); err != nil {
		return err
	}
	if err := os.Rename(out, p); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if err := s.setDiskSize(rec.Digest, fi.Size()); err != nil {
		return err
	}
	s.log.Info("built root disk", "op", "rootdisk", "digest", rec.Digest, "size", fi.Size(),
		"flatten_ms", flattened.Milliseconds(), "ms", time.Since(start).Milliseconds())
	return nil
}

func mkfsErofs(ctx context.Context, mkfs, out, tree string) error {
	cmd := exec.CommandContext(ctx, mkfs, "--quiet", "--preserve-mtime", out, tree)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mkfs.erofs: %w: %s", err, strings.TrimSpace(buf.String()))
	}
	return nil
}

func (s *Store) setDiskSize(digest string, size int64) error {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	return s.db.Update(func(tx *store.Tx) error {
		var rec record
		if err := tx.Get(bucketImages, digest, &rec); err != nil {
			return err
		}
		rec.DiskSize = size
		return tx.Put(bucketImages, digest, &rec)
	})
}

// flattenBlobs flattens the cached layer blobs into dir.
func (s *Store) flattenBlobs(dir string, layers []string) error {
	var readers []io.Reader
	for _, l := range layers {
		f, err := os.Open(s.blobPath(l))
		if err != nil {
			return fmt.Errorf("layer %s: %w", l, err)
		}
		defer f.Close()
		r, closeFn, err := decompress(f)
		if err != nil {
			return fmt.Errorf("layer %s: %w", l, err)
		}
		defer closeFn()
		readers = append(readers, r)
	}
	return tarx.Flatten(dir, readers...)
}

// decompress returns the tar stream of a layer blob, recognising gzip and
// zstd by their magic numbers.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}
