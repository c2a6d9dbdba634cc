package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/tarx"
)

// Annotations that name an image in an oci-layout.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// loadable is one image found in an archive, with the names it carries.
type loadable struct {
	img   v1.Image
	names []string // references as written in the archive
}

// Load imports the images of a docker-archive tar (docker save), an OCI
// image tarball (an oci-layout in a tar) or an oci-layout directory at p.
// tag, if set, names the one image that has no name in the archive.
func (s *Store) Load(ctx context.Context, p, tag string, progress func(api.Progress)) ([]api.Image, error) {
	report := serialize(progress)
	start := time.Now()
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.NotFound("load %s: no such file or directory", p)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", p, err)
	}
	var tagRef name.Reference
	if tag != "" {
		if tagRef, err = parseRef(tag); err != nil {
			return nil, fmt.Errorf("load %s: %w", p, err)
		}
		if _, ok := tagRef.(name.Tag); !ok {
			return nil, errdefs.InvalidArgument("load %s: tag %s is a digest, not a name", p, tag)
		}
	}

	var found []loadable
	switch {
	case fi.IsDir():
		found, err = fromLayout(p)
	default:
		var cleanup func()
		found, cleanup, err = s.fromTar(p)
		defer cleanup()
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", p, err)
	}
	if len(found) == 0 {
		return nil, errdefs.InvalidArgument("load %s: no linux/amd64 image in the archive", p)
	}
	unnamed := 0
	for _, f := range found {
		if len(f.names) == 0 {
			unnamed++
		}
	}
	if tag != "" {
		switch {
		case unnamed > 1:
			return nil, errdefs.InvalidArgument("load %s: tag %s is ambiguous: the archive holds %d images without a name", p, tag, unnamed)
		case unnamed == 0 && len(found) > 1:
			return nil, errdefs.InvalidArgument("load %s: tag %s is ambiguous: the archive holds %d images", p, tag, len(found))
		}
		for i := range found {
			if len(found[i].names) == 0 || len(found) == 1 {
				found[i].names = append(found[i].names, tag)
			}
		}
	}

	var out []api.Image
	for _, f := range found {
		var names []imageName
		for _, n := range f.names {
			r, err := parseRef(n)
			if err != nil {
				return nil, fmt.Errorf("load %s: %w", p, err)
			}
			if _, ok := r.(name.Tag); ok {
				names = append(names, imageName{Ref: r.Name(), Display: displayName(n, r)})
			}
		}
		rec, err := s.storeImage(ctx, f.img, names, "copying", report)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", p, err)
		}
		out = append(out, rec.api())
	}
	s.log.Info("loaded images", "op", "load", "path", p, "images", len(out), "ms", time.Since(start).Milliseconds())
	for i := range out {
		report(api.Progress{Status: "done", Image: &out[i]})
	}
	return out, nil
}

// fromTar reads a docker-archive or, when the tar holds an oci-layout and no
// manifest.json, unpacks it into tmp (with the same defences as layers) and
// reads it as a layout. The images read their blobs lazily: call cleanup
// only once they are stored.
func (s *Store) fromTar(p string) (found []loadable, cleanup func(), err error) {
	cleanup = func() {}
	hasManifest, hasLayout, err := tarKind(p)
	if err != nil {
		return nil, cleanup, errdefs.InvalidArgument("not a tar archive: %v", err)
	}
	switch {
	case hasManifest:
		found, err := fromDockerArchive(p)
		return found, cleanup, err
	case hasLayout:
		dir, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "load-")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		f, err := os.Open(p)
		if err != nil {
			return nil, cleanup, err
		}
		defer f.Close()
		if err := tarx.Flatten(dir, f); err != nil {
			return nil, cleanup, errdefs.InvalidArgument("unpack oci-layout: %v", err)
		}
		found, err := fromLayout(dir)
		return found, cleanup, err
	}
	return nil, cleanup, errdefs.InvalidArgument("neither a docker-archive (no manifest.json) nor an OCI tarball (no oci-layout)")
}

func tarKind(p string) (hasManifest, hasLayout bool, err error) {
	f, err := os.Open(p)
	if err != nil {
		return false, false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hasManifest, hasLayout, nil
		}
		if err != nil {
			return false, false, err
		}
		switch path.Clean(hdr.Name) {
		case "manifest.json":
			hasManifest = true
		case "oci-layout":
			hasLayout = true
		}
	}
}

func fromDockerArchive(p string) ([]loadable, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(p) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, errdefs.InvalidArgument("docker-archive: %v", err)
	}
	var out []loadable
	for _, d := range m {
		var tag *name.Tag
		if len(d.RepoTags) > 0 {
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return nil, errdefs.InvalidArgument("docker-archive: bad tag %q: %v", d.RepoTags[0], err)
			}
			tag = &t
		} else if len(m) > 1 {
			return nil, errdefs.InvalidArgument("docker-archive: %d images, some without a name (config %s)", len(m), d.Config)
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, errdefs.InvalidArgument("docker-archive: %v", err)
		}
		out = append(out, loadable{img: img, names: d.RepoTags})
	}
	return out, nil
}

// fromLayout reads the images of an oci-layout directory, picking
// linux/amd64 out of nested indexes.
func fromLayout(dir string) ([]loadable, error) {
	lp, err := layout.FromPath(dir)
	if err != nil {
		return nil, errdefs.InvalidArgument("not an oci-layout: %v", err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, errdefs.InvalidArgument("oci-layout index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, errdefs.InvalidArgument("oci-layout index: %v", err)
	}
	var out []loadable
	for _, d := range im.Manifests {
		names := layoutNames(d.Annotations)
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			img, err := pickPlatform(child)
			if err != nil {
				return nil, fmt.Errorf("index %s: %w", d.Digest, err)
			}
			out = append(out, loadable{img: img, names: names})
		case d.MediaType.IsImage():
			if d.Platform != nil && !d.Platform.Satisfies(hostPlatform) {
				continue
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, err
			}
			out = append(out, loadable{img: img, names: names})
		}
	}
	return out, nil
}

// layoutNames returns the full references an index entry carries. A bare
// tag in org.opencontainers.image.ref.name ("1.0") names no repository and
// is ignored.
func layoutNames(a map[string]string) []string {
	if n := a[annotationContainerdName]; n != "" {
		return []string{n}
	}
	if n := a[annotationRefName]; n != "" && strings.ContainsAny(n, "/:") {
		if _, err := name.NewTag(n); err == nil {
			return []string{n}
		}
	}
	return nil
}
