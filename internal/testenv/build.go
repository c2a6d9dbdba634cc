package testenv

// The builders in this file return errors instead of taking a testing.TB so
// that scripts/mkimage can use them too.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultPath is the PATH that images built here put in their config.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is the time stamp of every file and image built here, so that the
// same inputs give the same digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// File is one entry of a layer.
type File struct {
	Path     string      // inside the image, e.g. "bin/sh"; a leading slash is dropped
	Mode     fs.FileMode // permission bits, plus fs.ModeDir or fs.ModeSymlink
	Data     []byte      // contents of a regular file
	Linkname string      // target of a symlink
	UID, GID int
}

// Dir is a directory entry with permissions perm.
func Dir(p string, perm fs.FileMode) File { return File{Path: p, Mode: fs.ModeDir | perm} }

// Reg is a regular file.
func Reg(p string, perm fs.FileMode, data string) File {
	return File{Path: p, Mode: perm, Data: []byte(data)}
}

// Symlink is a symbolic link at p pointing to target.
func Symlink(p, target string) File {
	return File{Path: p, Mode: fs.ModeSymlink | 0o777, Linkname: target}
}

// LayerTar returns the uncompressed tar stream of files, in order.
func LayerTar(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if name == "" {
			return nil, fmt.Errorf("layer entry %q: empty path", f.Path)
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    int64(f.Mode.Perm()),
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if f.Mode&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		switch {
		case f.Mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case f.Mode&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = f.Linkname
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("layer entry %s: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// NewLayer returns a gzip-compressed layer holding files.
func NewLayer(files []File) (v1.Layer, error) {
	b, err := LayerTar(files)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// NewImage returns a linux image of the host's architecture made of layers,
// bottom first, with cfg as its runtime config.
func NewImage(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	img, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		return nil, err
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer:   l,
			History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "flick testenv"},
		}
	}
	return mutate.Append(img, adds...)
}

// ScratchImage returns a one-layer image holding only binary as /app, with
// entrypoint ["/app"], like a Dockerfile "FROM scratch; COPY app /app".
func ScratchImage(binary []byte) (v1.Image, error) {
	layer, err := NewLayer([]File{{Path: "app", Mode: 0o755, Data: binary}})
	if err != nil {
		return nil, err
	}
	return NewImage(v1.Config{Entrypoint: []string{"/app"}, Env: []string{DefaultPath}}, layer)
}

// goTool returns the go command to build with: the one on PATH, else the
// one of the toolchain that runs us.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// BuildStatic builds the Go package pkg (as the go command names it,
// relative to dir) into a static linux binary at out.
func BuildStatic(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// dockerManifest is one entry of a docker-archive's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// WriteDockerArchiveFile writes img as a tarball in the format of
// `docker save` (manifest.json, config and uncompressed layers), with tag
// recorded as the user wrote it (e.g. "flick/demo:latest").
func WriteDockerArchiveFile(img v1.Image, tag, file string) (err error) {
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(file)
		}
	}()
	tw := tar.NewWriter(f)
	add := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: epoch, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	m := dockerManifest{Config: cfgName.Hex + ".json"}
	if tag != "" {
		m.RepoTags = []string{tag}
	}
	if err := add(m.Config, int64(len(rawCfg)), bytes.NewReader(rawCfg)); err != nil {
		return err
	}
	for _, l := range layers {
		diffID, err := l.DiffID()
		if err != nil {
			return err
		}
		// The size goes in the header before the data: read the layer once.
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		name := diffID.Hex + "/layer.tar"
		if err := add(name, int64(len(b)), bytes.NewReader(b)); err != nil {
			return err
		}
		m.Layers = append(m.Layers, name)
	}
	mj, err := json.Marshal([]dockerManifest{m})
	if err != nil {
		return err
	}
	if err := add("manifest.json", int64(len(mj)), bytes.NewReader(mj)); err != nil {
		return err
	}
	if repo, t, ok := splitTag(tag); ok {
		top := ""
		if len(layers) > 0 {
			d, _ := layers[len(layers)-1].DiffID()
			top = d.Hex
		}
		rj, err := json.Marshal(map[string]map[string]string{repo: {t: top}})
		if err != nil {
			return err
		}
		if err := add("repositories", int64(len(rj)), bytes.NewReader(rj)); err != nil {
			return err
		}
	}
	return tw.Close()
}

// splitTag splits "repo:tag" at the last colon after the last slash.
func splitTag(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

// sourceKey names a Go source text in the build cache.
func sourceKey(src string) string {
	h := sha256.Sum256([]byte(src))
	return hex.EncodeToString(h[:])
}
