package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
)

// The one platform flick runs.
var hostPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// parallelLayers is how many layers download at once.
const parallelLayers = 4

// Docker's PATH for images whose config sets none.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Pull fetches ref from its registry (credentials from the keychain, plain
// HTTP for loopback registries), picks linux/amd64 from a multi-platform
// index, downloads the layers the cache lacks in parallel and records the
// image under ref. progress, if not nil, is called (never concurrently) per
// layer as bytes arrive and a last time with Status "done" and the image.
func (s *Store) Pull(ctx context.Context, ref string, progress func(api.Progress)) (api.Image, error) {
	r, err := parseRef(ref)
	if err != nil {
		return api.Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	report := serialize(progress)
	report(api.Progress{Status: "resolving"})
	start := time.Now()

	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(s.keychain),
		remote.WithPlatform(hostPlatform),
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return api.Image{}, classify(ref, r, err)
	}
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return api.Image{}, classify(ref, r, err)
		}
		img, err = pickPlatform(idx)
		if err != nil {
			return api.Image{}, fmt.Errorf("pull %s: %w", ref, err)
		}
	case desc.MediaType.IsImage():
		if img, err = desc.Image(); err != nil {
			return api.Image{}, classify(ref, r, err)
		}
	default:
		return api.Image{}, errdefs.InvalidArgument("pull %s: unsupported manifest type %s", ref, desc.MediaType)
	}

	var names []imageName
	if _, ok := r.(name.Tag); ok {
		names = append(names, imageName{Ref: r.Name(), Display: displayName(ref, r)})
	}
	rec, err := s.storeImage(ctx, img, names, "downloading", report)
	if err != nil {
		return api.Image{}, classify(ref, r, err)
	}
	out := rec.api()
	s.log.Info("pulled image", "op", "pull", "ref", ref, "digest", out.Digest, "ms", time.Since(start).Milliseconds())
	report(api.Progress{Status: "done", Image: &out})
	return out, nil
}

// pickPlatform returns the linux/amd64 image of idx, or an error listing
// the platforms the index has.
func pickPlatform(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil {
			continue
		}
		if m.Platform.OS == "unknown" { // attestations
			continue
		}
		if m.Platform.Satisfies(hostPlatform) && m.MediaType.IsImage() {
			return idx.Image(m.Digest)
		}
		have = append(have, m.Platform.String())
	}
	if len(have) == 0 {
		have = []string{"none"}
	}
	return nil, errdefs.NotFound("no %s image in the index; it has: %s", hostPlatform.String(), strings.Join(have, ", "))
}

// classify turns a registry error into one that names the registry and has
// the right class.
func classify(ref string, r name.Reference, err error) error {
	reg := registryOf(r)
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case 404:
			return errdefs.NotFound("pull %s: image %s not found in registry %s: %v", ref, repoTag(r), reg, err)
		case 401, 403:
			return fmt.Errorf("pull %s: registry %s refused access (credentials come from ~/.docker/config.json; try docker login %s): %w", ref, reg, reg, err)
		}
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				return errdefs.NotFound("pull %s: image %s not found in registry %s: %v", ref, repoTag(r), reg, err)
			}
		}
		if terr.StatusCode >= 500 {
			return errdefs.Unavailable("pull %s: registry %s failed: %v", ref, reg, err)
		}
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if unreachable(err) {
		return errdefs.Unavailable("pull %s: registry %s unreachable: %v", ref, reg, err)
	}
	return fmt.Errorf("pull %s: %w", ref, err)
}

func unreachable(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	var ue *url.Error
	switch {
	case errors.As(err, &op), errors.As(err, &dns):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &ue) && ue.Timeout():
		return true
	}
	return false
}

// repoTag is a reference without its registry: "team/app:1.2".
func repoTag(r name.Reference) string {
	repo := r.Context().RepositoryStr()
	repo = strings.TrimPrefix(repo, "library/")
	if t, ok := r.(name.Tag); ok {
		return repo + ":" + t.TagStr()
	}
	return repo + "@" + r.Identifier()
}

// serialize makes a progress callback safe to call from several goroutines.
func serialize(progress func(api.Progress)) func(api.Progress) {
	if progress == nil {
		return func(api.Progress) {}
	}
	var mu sync.Mutex
	return func(p api.Progress) {
		mu.Lock()
		defer mu.Unlock()
		progress(p)
	}
}

// storeImage writes the blobs of img that the cache lacks (layers in
// parallel), then records it under names. verb is the progress status of
// a blob being written: "downloading" for a pull, "copying" for a load.
func (s *Store) storeImage(ctx context.Context, img v1.Image, names []imageName, verb string, report func(api.Progress)) (*record, error) {
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	if cf.OS != "" && cf.OS != "linux" {
		return nil, errdefs.InvalidArgument("image %s is for %s/%s, not linux", digest, cf.OS, cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}

	rec := &record{
		Digest:  digest.String(),
		Config:  cfgName.String(),
		Created: cf.Created.Time,
		Pulled:  time.Now().UTC(),
		Image:   imageConfig(cf),
	}

	s.gc.RLock()
	defer s.gc.RUnlock()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelLayers)
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return nil, err
		}
		size, err := l.Size()
		if err != nil {
			return nil, err
		}
		rec.Layers = append(rec.Layers, ld.String())
		rec.Size += size
		id := ld.String()
		if s.hasBlob(id) {
			report(api.Progress{Status: "exists", Layer: id, Current: size, Total: size})
			continue
		}
		report(api.Progress{Status: "waiting", Layer: id, Total: size})
		g.Go(func() error {
			_, err, _ := s.blobs.Do(id, func() (any, error) {
				if s.hasBlob(id) {
					return nil, nil
				}
				return nil, s.writeBlob(gctx, id, l.Compressed, func(n int64) {
					report(api.Progress{Status: verb, Layer: id, Current: n, Total: size})
				})
			})
			if err != nil {
				return fmt.Errorf("layer %s: %w", id, err)
			}
			report(api.Progress{Status: "complete", Layer: id, Current: size, Total: size})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		digest string
		data   []byte
	}{{rec.Config, rawConfig}, {rec.Digest, manifest}} {
		if s.hasBlob(b.digest) {
			continue
		}
		err := s.writeBlob(ctx, b.digest, func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(string(b.data))), nil
		}, nil)
		if err != nil {
			return nil, err
		}
	}
	return s.commit(rec, names)
}

func (s *Store) hasBlob(digest string) bool {
	fi, err := os.Stat(s.blobPath(digest))
	return err == nil && fi.Mode().IsRegular()
}

// writeBlob streams a blob into tmp, checks its sha256 and renames it into
// the cache, so that the cache only ever holds complete, verified blobs.
func (s *Store) writeBlob(ctx context.Context, digest string, open func() (io.ReadCloser, error), onProgress func(int64)) error {
	want, ok := strings.CutPrefix(digest, "sha256:")
	if !ok {
		return fmt.Errorf("unsupported digest %s", digest)
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Join(s.root, "tmp"), "blob-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()

	h := sha256.New()
	w := io.MultiWriter(f, h)
	buf := make([]byte, 256<<10)
	var n int64
	last := time.Time{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, rerr := rc.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return err
			}
			n += int64(m)
			if onProgress != nil && time.Since(last) > 100*time.Millisecond {
				onProgress(n)
				last = time.Now()
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if onProgress != nil {
		onProgress(n)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("blob %s: content has digest sha256:%s", digest, got)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), s.blobPath(digest))
}

// imageConfig is the part of an image config that flick honours, with
// Docker's default PATH when the image sets none.
func imageConfig(cf *v1.ConfigFile) api.ImageConfig {
	c := cf.Config
	out := api.ImageConfig{
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		User:       c.User,
		StopSignal: c.StopSignal,
		Ready:      c.Labels[api.ReadyLabel],
	}
	if v, ok := c.Labels[api.PoolLabel]; ok {
		// An unusable value is the default, as for any label flick
		// does not understand.
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 && n <= api.MaxPool {
			out.Pool = &n
		}
	}
	hasPath := false
	for _, e := range out.Env {
		if strings.HasPrefix(e, "PATH=") {
			hasPath = true
		}
	}
	if !hasPath {
		out.Env = append([]string{defaultPath}, out.Env...)
	}
	return out
}
