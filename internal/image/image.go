// Package image pulls and loads OCI images into a content-addressed blob
// cache, keeps their metadata in the daemon's store, and builds one
// read-only root disk per image digest.
//
// On disk, under Config.Root:
//
//	layout/        an oci-layout; blobs/sha256/<hex> holds manifests, configs and layers
//	disks/<hex>.erofs  root disks, by manifest digest
//	tmp/           downloads, unpacked archives and flattened trees in progress
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sync/singleflight"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/store"
)

// Store buckets.
const (
	bucketImages = "images"      // manifest digest -> record
	bucketNames  = "image-names" // normalized reference -> nameRecord
)

// Config configures a Store.
type Config struct {
	Root     string // e.g. /var/lib/flick/images
	DB       *store.DB
	Logger   *slog.Logger
	Keychain authn.Keychain // default authn.DefaultKeychain (~/.docker/config.json)
}

// Store is the image store.
type Store struct {
	root     string
	db       *store.DB
	log      *slog.Logger
	keychain authn.Keychain
	layout   layout.Path

	// gc is held for reading while blobs are written and recorded, and for
	// writing while Remove deletes blobs, so that a blob another image is
	// about to use is never collected.
	gc     sync.RWMutex
	blobs  singleflight.Group // one download per blob digest
	disks  singleflight.Group // one build per image digest
	metaMu sync.Mutex         // serialises read-modify-write of records
}

// record is what the store keeps per image.
type record struct {
	Digest   string          `json:"digest"`
	Config   string          `json:"config"` // config blob digest
	Layers   []string        `json:"layers"` // compressed layer digests, bottom first
	Size     int64           `json:"size"`
	Created  time.Time       `json:"created"`
	Pulled   time.Time       `json:"pulled"`
	DiskSize int64           `json:"disk_size"`
	Image    api.ImageConfig `json:"image_config"`
	Names    []imageName     `json:"names"`
}

type imageName struct {
	Ref     string `json:"ref"`     // normalized, e.g. index.docker.io/library/busybox:latest
	Display string `json:"display"` // as the user wrote it, e.g. busybox:latest
}

type nameRecord struct {
	Digest  string `json:"digest"`
	Display string `json:"display"`
}

// New opens the image store under cfg.Root, creating its directories.
func New(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, errors.New("image store: no root directory")
	}
	if cfg.DB == nil {
		return nil, errors.New("image store: no database")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Keychain == nil {
		cfg.Keychain = authn.DefaultKeychain
	}
	for _, d := range []string{"disks", "tmp", "layout/blobs/sha256"} {
		if err := os.MkdirAll(filepath.Join(cfg.Root, d), 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	lp := filepath.Join(cfg.Root, "layout")
	p, err := layout.FromPath(lp)
	if err != nil {
		if p, err = layout.Write(lp, empty.Index); err != nil {
			return nil, fmt.Errorf("image store: create oci-layout %s: %w", lp, err)
		}
	}
	// Leftovers of a crash: nothing in tmp is in use before we start.
	if ents, err := os.ReadDir(filepath.Join(cfg.Root, "tmp")); err == nil {
		for _, e := range ents {
			_ = os.RemoveAll(filepath.Join(cfg.Root, "tmp", e.Name()))
		}
	}
	return &Store{
		root:     cfg.Root,
		db:       cfg.DB,
		log:      cfg.Logger,
		keychain: cfg.Keychain,
		layout:   p,
	}, nil
}

func (s *Store) blobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(s.root, "layout", "blobs", "sha256", hex)
}

func (s *Store) diskPath(digest string) string {
	return filepath.Join(s.root, "disks", strings.TrimPrefix(digest, "sha256:")+".erofs")
}

func (r *record) api() api.Image {
	img := api.Image{
		Digest:   r.Digest,
		Names:    []string{},
		Size:     r.Size,
		Created:  r.Created,
		DiskSize: r.DiskSize,
		Config:   r.Image,
	}
	for _, n := range r.Names {
		img.Names = append(img.Names, n.Display)
	}
	return img
}

// parseRef parses a user's image reference the way Docker does: a missing
// registry is Docker Hub, a missing tag is latest, and registries on the
// loopback interface are spoken to over plain HTTP.
func parseRef(ref string) (name.Reference, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument("empty image reference")
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, errdefs.InvalidArgument("bad image reference %q: %v", ref, err)
	}
	if isLoopback(r.Context().RegistryStr()) {
		r, err = name.ParseReference(ref, name.Insecure)
		if err != nil {
			return nil, errdefs.InvalidArgument("bad image reference %q: %v", ref, err)
		}
	}
	return r, nil
}

// isLoopback reports whether a registry host[:port] is on the loopback
// interface: localhost, 127.0.0.0/8 or ::1.
func isLoopback(reg string) bool {
	host := reg
	if h, _, ok := strings.Cut(reg, "]"); ok && strings.HasPrefix(reg, "[") {
		host = strings.TrimPrefix(h, "[")
	} else if i := strings.LastIndexByte(reg, ':'); i >= 0 && strings.Count(reg, ":") == 1 {
		host = reg[:i]
	}
	if host == "localhost" || host == "::1" {
		return true
	}
	if strings.HasPrefix(host, "127.") {
		parts := strings.Split(host, ".")
		return len(parts) == 4
	}
	return false
}

// displayName is how a name is shown back: as given, with ":latest" added
// when it had neither tag nor digest.
func displayName(given string, r name.Reference) string {
	if _, ok := r.(name.Tag); ok {
		last := given[strings.LastIndexByte(given, '/')+1:]
		if !strings.Contains(last, ":") {
			return given + ":latest"
		}
	}
	return given
}

// registryOf names a reference's registry the way users write it.
func registryOf(r name.Reference) string {
	reg := r.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		return "docker.io"
	}
	return reg
}

// Resolve finds a local image by "name:tag", "name" (:latest), a digest
// "sha256:...", "name@sha256:...", or a unique prefix of a digest's hex.
func (s *Store) Resolve(ctx context.Context, ref string) (api.Image, error) {
	rec, _, err := s.resolve(ref)
	if err != nil {
		return api.Image{}, err
	}
	return rec.api(), nil
}

// resolve returns the record and, when ref was a name, its normalized form.
func (s *Store) resolve(ref string) (*record, string, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return nil, "", errdefs.InvalidArgument("empty image reference")
	}
	var rec record
	// A digest or a prefix of one.
	if hex, ok := digestPrefix(ref); ok {
		var matches []string
		err := s.db.View(func(tx *store.Tx) error {
			return tx.ForEach(bucketImages, func(key string, _ []byte) error {
				if strings.HasPrefix(strings.TrimPrefix(key, "sha256:"), hex) {
					matches = append(matches, key)
				}
				return nil
			})
		})
		if err != nil {
			return nil, "", err
		}
		switch len(matches) {
		case 1:
			if err := s.db.Get(bucketImages, matches[0], &rec); err != nil {
				return nil, "", err
			}
			return &rec, "", nil
		case 0:
			if !strings.HasPrefix(ref, "sha256:") {
				break // may still be a name such as "abc"
			}
			return nil, "", errdefs.NotFound("image %s not found", ref)
		default:
			return nil, "", errdefs.InvalidArgument("image ID prefix %s is ambiguous: %d images match", ref, len(matches))
		}
	}
	r, err := parseRef(ref)
	if err != nil {
		return nil, "", errdefs.NotFound("image %s not found: %v", ref, err)
	}
	if d, ok := r.(name.Digest); ok {
		if err := s.db.Get(bucketImages, d.DigestStr(), &rec); err != nil {
			return nil, "", errdefs.NotFound("image %s not found", ref)
		}
		return &rec, "", nil
	}
	var nr nameRecord
	if err := s.db.Get(bucketNames, r.Name(), &nr); err != nil {
		return nil, "", errdefs.NotFound("image %s not found", ref)
	}
	if err := s.db.Get(bucketImages, nr.Digest, &rec); err != nil {
		return nil, "", errdefs.NotFound("image %s not found", ref)
	}
	return &rec, r.Name(), nil
}

// digestPrefix reports whether ref looks like a digest or an ID prefix and
// returns its hex part.
func digestPrefix(ref string) (string, bool) {
	hex := strings.TrimPrefix(ref, "sha256:")
	if hex == "" || len(hex) > 64 {
		return "", false
	}
	for _, c := range hex {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	if hex == ref && len(hex) < 4 {
		return "", false // too short to be meant as an ID
	}
	return hex, true
}

// List returns every local image, most recently created first.
func (s *Store) List(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	err := s.db.View(func(tx *store.Tx) error {
		return tx.ForEach(bucketImages, func(key string, raw []byte) error {
			var rec record
			if err := json.Unmarshal(raw, &rec); err != nil {
				return fmt.Errorf("decode image %s: %w", key, err)
			}
			out = append(out, rec.api())
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// Remove removes ref. When ref is one of several names of an image, only
// that name goes. Otherwise the image goes with all its names, its root disk
// and the blobs no other image uses; inUse(digest) true refuses that with a
// Conflict error.
func (s *Store) Remove(ctx context.Context, ref string, inUse func(digest string) bool) error {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	rec, normalized, err := s.resolve(ref)
	if err != nil {
		return err
	}
	if normalized != "" && len(rec.Names) > 1 {
		rec.Names = slices.DeleteFunc(rec.Names, func(n imageName) bool { return n.Ref == normalized })
		err := s.db.Update(func(tx *store.Tx) error {
			if err := tx.Delete(bucketNames, normalized); err != nil {
				return err
			}
			return tx.Put(bucketImages, rec.Digest, rec)
		})
		if err != nil {
			return fmt.Errorf("untag %s: %w", ref, err)
		}
		s.log.Info("untagged image", "op", "rmi", "ref", ref, "digest", rec.Digest)
		return nil
	}
	if inUse != nil && inUse(rec.Digest) {
		return errdefs.Conflict("remove image %s: in use by an instance (%s)", ref, rec.Digest)
	}

	s.gc.Lock()
	defer s.gc.Unlock()
	err = s.db.Update(func(tx *store.Tx) error {
		for _, n := range rec.Names {
			if err := tx.Delete(bucketNames, n.Ref); err != nil {
				return err
			}
		}
		return tx.Delete(bucketImages, rec.Digest)
	})
	if err != nil {
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	// Blobs: keep those that another image still references.
	keep := map[string]bool{}
	err = s.db.View(func(tx *store.Tx) error {
		return tx.ForEach(bucketImages, func(_ string, raw []byte) error {
			var other record
			if err := json.Unmarshal(raw, &other); err != nil {
				return err
			}
			keep[other.Digest] = true
			keep[other.Config] = true
			for _, l := range other.Layers {
				keep[l] = true
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	for _, b := range append([]string{rec.Digest, rec.Config}, rec.Layers...) {
		if keep[b] {
			continue
		}
		if err := os.Remove(s.blobPath(b)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove blob", "op", "rmi", "blob", b, "err", err)
		}
	}
	if err := os.Remove(s.diskPath(rec.Digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove root disk", "op", "rmi", "digest", rec.Digest, "err", err)
	}
	s.log.Info("removed image", "op", "rmi", "ref", ref, "digest", rec.Digest)
	return nil
}

// addNames records img under names (normalized, display) pairs, moving a
// name off any image that held it before. It returns the updated record.
func (s *Store) commit(rec *record, names []imageName) (*record, error) {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	var out record
	err := s.db.Update(func(tx *store.Tx) error {
		var existing record
		if err := tx.Get(bucketImages, rec.Digest, &existing); err == nil {
			out = existing
		} else if errors.Is(err, errdefs.ErrNotFound) {
			out = *rec
			out.Names = nil
		} else {
			return err
		}
		for _, n := range names {
			var old nameRecord
			if err := tx.Get(bucketNames, n.Ref, &old); err == nil && old.Digest != out.Digest {
				var prev record
				if err := tx.Get(bucketImages, old.Digest, &prev); err == nil {
					prev.Names = slices.DeleteFunc(prev.Names, func(x imageName) bool { return x.Ref == n.Ref })
					if err := tx.Put(bucketImages, prev.Digest, &prev); err != nil {
						return err
					}
				}
			}
			if err := tx.Put(bucketNames, n.Ref, nameRecord{Digest: out.Digest, Display: n.Display}); err != nil {
				return err
			}
			i := slices.IndexFunc(out.Names, func(x imageName) bool { return x.Ref == n.Ref })
			if i >= 0 {
				out.Names[i] = n
			} else {
				out.Names = append(out.Names, n)
			}
		}
		return tx.Put(bucketImages, out.Digest, &out)
	})
	if err != nil {
		return nil, fmt.Errorf("record image %s: %w", rec.Digest, err)
	}
	return &out, nil
}
