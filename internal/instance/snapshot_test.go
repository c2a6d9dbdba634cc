package instance

import (
	"os"
	"path/filepath"
	"testing"
)

// saveFake writes a snapshot of key for digest as a save would.
func saveFake(t *testing.T, m *Manager, key, digest string) {
	t.Helper()
	tmp, snap, err := m.newSnapshotDir(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap.RAM, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap.State, []byte("device state"), 0o600); err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(t.TempDir(), "boot.json")
	if err := os.WriteFile(boot, []byte(`{"await_config":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.commitSnapshot(tmp, key, digest, boot); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotLookupValidates(t *testing.T) {
	m, _ := newTestManager(t, serveApp(0, false))
	for _, tc := range []struct {
		name   string
		damage func(dir string) error
	}{
		{"whole", func(string) error { return nil }},
		{"truncated ram", func(dir string) error { return os.Truncate(filepath.Join(dir, "ram"), 100) }},
		{"corrupt state", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "state"), []byte("device stat!"), 0o600)
		}},
		{"no meta", func(dir string) error { return os.Remove(filepath.Join(dir, "meta.json")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saveFake(t, m, "k1", "sha256:a")
			dir := filepath.Join(m.snapDir(), "k1")
			if err := tc.damage(dir); err != nil {
				t.Fatal(err)
			}
			s, ok := m.lookupSnapshot("k1")
			if want := tc.name == "whole"; ok != want {
				t.Fatalf("lookup found=%v, want %v", ok, want)
			}
			if ok && (s.meta.ImageDigest != "sha256:a" || s.snap.RAM != filepath.Join(dir, "ram")) {
				t.Errorf("lookup = %+v", s)
			}
			if _, err := os.Stat(dir); !ok && tc.name != "no meta" && err == nil {
				t.Error("a damaged snapshot was left in place")
			}
			os.RemoveAll(dir)
		})
	}
}

func TestSnapshotGC(t *testing.T) {
	m, _ := newTestManager(t, serveApp(0, false))
	saveFake(t, m, "k1", "sha256:a")
	saveFake(t, m, "k2", "sha256:b")
	// A second save of the same key (two first starts at once) keeps one.
	saveFake(t, m, "k2", "sha256:b")
	// A save that a crash interrupted.
	if err := os.MkdirAll(filepath.Join(m.snapDir(), ".new-k3-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	m.RemoveImageSnapshots("sha256:a")
	m.cleanSnapshots()
	ents, _ := os.ReadDir(m.snapDir())
	if len(ents) != 1 || ents[0].Name() != "k2" {
		t.Fatalf("after removing image a and cleaning: %v, want only k2", ents)
	}
	if sizes := m.SnapshotSizes(); sizes["sha256:b"] <= 0 || sizes["sha256:a"] != 0 {
		t.Errorf("SnapshotSizes = %v, want only sha256:b, not empty", sizes)
	}
}
