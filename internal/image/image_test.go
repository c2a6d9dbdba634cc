package image

import (
	"archive/tar"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/store"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	return newStoreWith(t, nil, nil)
}

func newStoreWith(t *testing.T, kc authn.Keychain, log *slog.Logger) *Store {
	t.Helper()
	dir := t.TempDir()
	db, err := store.Open(filepath.Join(dir, "flick.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := New(Config{Root: filepath.Join(dir, "images"), DB: db, Logger: log, Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testRegistry is an in-process registry that counts blob downloads.
type testRegistry struct {
	host string // 127.0.0.1:port
	mu   sync.Mutex
	gets map[string]int // blob digest -> GET count
}

func newRegistry(t *testing.T) (*testRegistry, http.Handler) {
	t.Helper()
	tr := &testRegistry{gets: map[string]int{}}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			if i := strings.Index(r.URL.Path, "/blobs/"); i >= 0 {
				tr.mu.Lock()
				tr.gets[r.URL.Path[i+len("/blobs/"):]]++
				tr.mu.Unlock()
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr, h
}

func (r *testRegistry) blobGets(digests ...v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, d := range digests {
		n += r.gets[d.String()]
	}
	return n
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func randomImage(t *testing.T, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(512, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Hash
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

func digestOf(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestPull(t *testing.T) {
	reg, _ := newRegistry(t)
	base := randomImage(t, 3)
	base, err := mutate.Config(base, v1.Config{
		Entrypoint: []string{"/bin/app"},
		Cmd:        []string{"--serve"},
		Env:        []string{"A=1"},
		WorkingDir: "/srv",
		User:       "1000:1000",
		StopSignal: "SIGINT",
	})
	if err != nil {
		t.Fatal(err)
	}
	extra, err := random.Layer(512, "application/vnd.oci.image.layer.v1.tar+gzip")
	if err != nil {
		t.Fatal(err)
	}
	derived, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.host+"/team/app:1.2", base)
	push(t, reg.host+"/team/app:1.3", derived)

	s := newStore(t)
	var progress []api.Progress
	ref := reg.host + "/team/app:1.2"
	img, err := s.Pull(t.Context(), ref, func(p api.Progress) { progress = append(progress, p) })
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if img.Digest != digestOf(t, base) {
		t.Errorf("digest = %s, want %s", img.Digest, digestOf(t, base))
	}
	if len(img.Names) != 1 || img.Names[0] != ref {
		t.Errorf("names = %q, want [%s]", img.Names, ref)
	}
	wantCfg := api.ImageConfig{
		Entrypoint: []string{"/bin/app"},
		Cmd:        []string{"--serve"},
		Env:        []string{defaultPath, "A=1"},
		WorkingDir: "/srv",
		User:       "1000:1000",
		StopSignal: "SIGINT",
	}
	if fmt.Sprint(img.Config) != fmt.Sprint(wantCfg) {
		t.Errorf("config = %+v\nwant %+v", img.Config, wantCfg)
	}
	if img.Size <= 0 {
		t.Errorf("size = %d", img.Size)
	}
	baseLayers := layerDigests(t, base)
	if n := reg.blobGets(baseLayers...); n != 3 {
		t.Errorf("first pull fetched %d layer blobs, want 3", n)
	}
	// Progress: per layer bytes, and a final "done" with the image.
	perLayer := map[string]bool{}
	for _, p := range progress {
		if p.Layer != "" && p.Status == "complete" && p.Current == p.Total && p.Total > 0 {
			perLayer[p.Layer] = true
		}
	}
	if len(perLayer) != 3 {
		t.Errorf("progress completed %d layers, want 3: %+v", len(perLayer), progress)
	}
	if last := progress[len(progress)-1]; last.Status != "done" || last.Image == nil || last.Image.Digest != img.Digest {
		t.Errorf("last progress = %+v, want done with the image", last)
	}

	// The same image again: nothing downloaded.
	if _, err := s.Pull(t.Context(), ref, nil); err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets(baseLayers...); n != 3 {
		t.Errorf("second pull fetched layers again: %d GETs in all", n)
	}
	// An image sharing three layers: only the new one comes down.
	if _, err := s.Pull(t.Context(), reg.host+"/team/app:1.3", nil); err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets(baseLayers...); n != 3 {
		t.Errorf("pull of a derived image fetched shared layers again: %d GETs in all", n)
	}
	if n := reg.blobGets(layerDigests(t, derived)[3]); n != 1 {
		t.Errorf("new layer fetched %d times, want 1", n)
	}
}

func TestPullMultiPlatform(t *testing.T) {
	reg, _ := newRegistry(t)
	amd, arm, armv7 := randomImage(t, 1), randomImage(t, 1), randomImage(t, 1)
	add := func(img v1.Image, p v1.Platform) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}}
	}
	pushIndex(t, reg.host+"/multi:1", mutate.AppendManifests(empty.Index,
		add(arm, v1.Platform{OS: "linux", Architecture: "arm64"}),
		add(amd, v1.Platform{OS: "linux", Architecture: "amd64"}),
	))
	pushIndex(t, reg.host+"/armonly:1", mutate.AppendManifests(empty.Index,
		add(arm, v1.Platform{OS: "linux", Architecture: "arm64"}),
		add(armv7, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}),
	))
	s := newStore(t)

	img, err := s.Pull(t.Context(), reg.host+"/multi:1", nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if img.Digest != digestOf(t, amd) {
		t.Errorf("picked %s, want the linux/amd64 image %s", img.Digest, digestOf(t, amd))
	}

	_, err = s.Pull(t.Context(), reg.host+"/armonly:1", nil)
	if err == nil {
		t.Fatal("pull of an index without linux/amd64 succeeded")
	}
	for _, want := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7", reg.host + "/armonly:1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestPullErrors(t *testing.T) {
	reg, _ := newRegistry(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	tests := []struct {
		name  string
		ref   string
		class error
		want  string
	}{
		{"unreachable", dead + "/x:1", errdefs.ErrUnavailable, "pull " + dead + "/x:1: registry " + dead + " unreachable: "},
		{"unknown repo", reg.host + "/x:1", errdefs.ErrNotFound, "image x:1 not found in registry " + reg.host},
		{"bad reference", "UPPER/case::", errdefs.ErrInvalidArgument, "UPPER/case::"},
	}
	s := newStore(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Pull(t.Context(), tt.ref, nil)
			if !errors.Is(err, tt.class) {
				t.Fatalf("error %v is not %v", err, tt.class)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
	push(t, reg.host+"/x:1", randomImage(t, 1))
	if _, err := s.Pull(t.Context(), reg.host+"/x:2", nil); !errors.Is(err, errdefs.ErrNotFound) ||
		!strings.Contains(err.Error(), "image x:2 not found in registry "+reg.host) {
		t.Errorf("missing tag: %v", err)
	}
}

func TestPullAuth(t *testing.T) {
	open, h := newRegistry(t)
	// The same registry contents behind basic auth.
	locked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "flick" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(locked.Close)
	host := strings.TrimPrefix(locked.URL, "http://")
	img := randomImage(t, 2)
	push(t, open.host+"/private/app:1", img)
	ref := host + "/private/app:1"

	t.Run("no credentials", func(t *testing.T) {
		t.Setenv("DOCKER_CONFIG", t.TempDir())
		s := newStore(t)
		_, err := s.Pull(t.Context(), ref, nil)
		if err == nil || !strings.Contains(err.Error(), host) {
			t.Fatalf("pull without credentials: %v, want an error naming %s", err, host)
		}
	})
	t.Run("docker config", func(t *testing.T) {
		dir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte("flick:s3cret"))
		cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, auth)
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", dir)
		s := newStore(t) // default keychain
		got, err := s.Pull(t.Context(), ref, nil)
		if err != nil {
			t.Fatalf("pull with credentials: %v", err)
		}
		if got.Digest != digestOf(t, img) {
			t.Errorf("digest %s, want %s", got.Digest, digestOf(t, img))
		}
	})
}

func TestLoad(t *testing.T) {
	named := randomImage(t, 2)
	unnamed := randomImage(t, 1)
	dir := t.TempDir()

	dockerTar := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("flick.test/team/app:1.2")
	if err := tarball.WriteToFile(dockerTar, tag, named); err != nil {
		t.Fatal(err)
	}
	dockerUntagged := filepath.Join(dir, "untagged.tar")
	d, _ := name.NewDigest("flick.test/x@" + digestOf(t, unnamed))
	f, err := os.Create(dockerUntagged)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.MultiRefWrite(map[name.Reference]v1.Image{d: unnamed}, f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	ociDir := filepath.Join(dir, "oci")
	lp, err := layout.Write(ociDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(named, layout.WithAnnotations(map[string]string{annotationRefName: "flick.test/oci/app:2"})); err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(unnamed, layout.WithAnnotations(map[string]string{annotationRefName: "3.0"})); err != nil {
		t.Fatal(err)
	}
	ociTar := filepath.Join(dir, "oci.tar")
	tarDir(t, ociDir, ociTar)

	tests := []struct {
		name  string
		path  string
		tag   string
		want  map[string][]string // digest -> names
		class error
	}{
		{name: "docker-archive", path: dockerTar,
			want: map[string][]string{digestOf(t, named): {"flick.test/team/app:1.2"}}},
		{name: "docker-archive without a name, tagged", path: dockerUntagged, tag: "mine",
			want: map[string][]string{digestOf(t, unnamed): {"mine:latest"}}},
		{name: "oci-layout directory", path: ociDir, tag: "flick.test/unnamed:1",
			want: map[string][]string{digestOf(t, named): {"flick.test/oci/app:2"}, digestOf(t, unnamed): {"flick.test/unnamed:1"}}},
		{name: "oci tarball", path: ociTar,
			want: map[string][]string{digestOf(t, named): {"flick.test/oci/app:2"}, digestOf(t, unnamed): {}}},
		{name: "missing file", path: filepath.Join(dir, "nope.tar"), class: errdefs.ErrNotFound},
		{name: "not an archive", path: filepath.Join(dir, "oci", "oci-layout"), class: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			imgs, err := s.Load(t.Context(), tt.path, tt.tag, nil)
			if tt.class != nil {
				if !errors.Is(err, tt.class) {
					t.Fatalf("Load: %v, want %v", err, tt.class)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got := map[string][]string{}
			for _, img := range imgs {
				got[img.Digest] = img.Names
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("loaded %v, want %v", got, tt.want)
			}
			for dg, names := range tt.want {
				for _, n := range names {
					r, err := s.Resolve(t.Context(), n)
					if err != nil || r.Digest != dg {
						t.Errorf("Resolve(%s) = %s, %v; want %s", n, r.Digest, err, dg)
					}
				}
				// The layers are in the cache and flatten.
				if _, _, err := s.RootDisk(t.Context(), dg); err != nil {
					t.Errorf("RootDisk(%s): %v", dg, err)
				}
			}
		})
	}
}

// tarDir writes the tree at dir into a tar file.
func tarDir(t *testing.T, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestResolveAndRemove(t *testing.T) {
	reg, _ := newRegistry(t)
	shared := randomImage(t, 2)
	other, err := mutate.AppendLayers(shared, mustLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.host+"/app:latest", shared)
	push(t, reg.host+"/app:v1", shared)
	push(t, reg.host+"/other:1", other)

	s := newStore(t)
	ctx := t.Context()
	img, err := s.Pull(ctx, reg.host+"/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, reg.host+"/app:v1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, reg.host+"/other:1", nil); err != nil {
		t.Fatal(err)
	}
	hex := strings.TrimPrefix(img.Digest, "sha256:")

	resolves := []struct {
		name, ref string
		class     error
	}{
		{"name and tag", reg.host + "/app:v1", nil},
		{"name means latest", reg.host + "/app", nil},
		{"digest", img.Digest, nil},
		{"hex", hex, nil},
		{"prefix", hex[:12], nil},
		{"name at digest", reg.host + "/app@" + img.Digest, nil},
		{"unknown tag", reg.host + "/app:v2", errdefs.ErrNotFound},
		{"unknown digest", "sha256:" + strings.Repeat("0", 64), errdefs.ErrNotFound},
		{"empty", "", errdefs.ErrInvalidArgument},
	}
	for _, tt := range resolves {
		t.Run("resolve "+tt.name, func(t *testing.T) {
			got, err := s.Resolve(ctx, tt.ref)
			if tt.class != nil {
				if !errors.Is(err, tt.class) {
					t.Fatalf("Resolve(%q) = %v, want %v", tt.ref, err, tt.class)
				}
				return
			}
			if err != nil || got.Digest != img.Digest {
				t.Fatalf("Resolve(%q) = %s, %v; want %s", tt.ref, got.Digest, err, img.Digest)
			}
			if len(got.Names) != 2 {
				t.Errorf("names = %q, want both tags", got.Names)
			}
		})
	}

	disk, _, err := s.RootDisk(ctx, img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	inUse := func(d string) bool { return d == img.Digest }
	notInUse := func(string) bool { return false }

	// One of two names: untag only, even while in use.
	if err := s.Remove(ctx, reg.host+"/app:v1", inUse); err != nil {
		t.Fatalf("untag: %v", err)
	}
	if _, err := s.Resolve(ctx, reg.host+"/app:v1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("untagged name still resolves: %v", err)
	}
	if got, err := s.Resolve(ctx, reg.host+"/app:latest"); err != nil || len(got.Names) != 1 {
		t.Errorf("other name after untag: %+v, %v", got, err)
	}
	// The last name of an image in use: Conflict, nothing removed.
	if err := s.Remove(ctx, reg.host+"/app", inUse); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("remove in use: %v, want conflict", err)
	}
	if _, err := s.Resolve(ctx, img.Digest); err != nil {
		t.Fatalf("image gone after refused remove: %v", err)
	}
	// Now really.
	if err := s.Remove(ctx, reg.host+"/app", notInUse); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := s.Resolve(ctx, img.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("removed image resolves: %v", err)
	}
	if _, err := os.Stat(disk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root disk %s left behind: %v", disk, err)
	}
	if _, err := os.Stat(s.blobPath(img.Digest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("manifest blob left behind: %v", err)
	}
	for _, l := range layerDigests(t, shared) {
		if !s.hasBlob(l.String()) {
			t.Errorf("layer %s that other:1 uses was removed", l)
		}
	}
	if _, _, err := s.RootDisk(ctx, digestOf(t, other)); err != nil {
		t.Errorf("other image broken after remove: %v", err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Digest != digestOf(t, other) {
		t.Errorf("List = %+v, %v; want only other:1", list, err)
	}
	// The other image's own layer goes with it.
	if err := s.Remove(ctx, digestOf(t, other), notInUse); err != nil {
		t.Fatal(err)
	}
	for _, l := range layerDigests(t, other) {
		if s.hasBlob(l.String()) {
			t.Errorf("layer %s left behind", l)
		}
	}
	if err := s.Remove(ctx, "nope:1", notInUse); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove unknown: %v", err)
	}
}

func mustLayer(t *testing.T) v1.Layer {
	t.Helper()
	l, err := random.Layer(256, "application/vnd.oci.image.layer.v1.tar+gzip")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestParseRef(t *testing.T) {
	tests := []struct {
		ref, normalized, display string
		insecure                 bool
	}{
		{"busybox", "index.docker.io/library/busybox:latest", "busybox:latest", false},
		{"docker.io/library/busybox:1.36", "index.docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36", false},
		{"127.0.0.1:5000/team/app:1.2", "127.0.0.1:5000/team/app:1.2", "127.0.0.1:5000/team/app:1.2", true},
		{"127.1.2.3:5000/app", "127.1.2.3:5000/app:latest", "127.1.2.3:5000/app:latest", true},
		{"localhost:5000/app", "localhost:5000/app:latest", "localhost:5000/app:latest", true},
		{"[::1]:5000/app:x", "[::1]:5000/app:x", "[::1]:5000/app:x", true},
		{"ghcr.io/o/app:1", "ghcr.io/o/app:1", "ghcr.io/o/app:1", false},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			r, err := parseRef(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if r.Name() != tt.normalized {
				t.Errorf("normalized %s, want %s", r.Name(), tt.normalized)
			}
			if d := displayName(tt.ref, r); d != tt.display {
				t.Errorf("display %s, want %s", d, tt.display)
			}
			if got := r.Context().Scheme() == "http"; got != tt.insecure {
				t.Errorf("plain http = %v, want %v", got, tt.insecure)
			}
		})
	}
}
