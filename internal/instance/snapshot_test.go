package instance

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/internal/resident"
)

// inputsOf are the inputs of a start of the image digest on m's kernel.
func inputsOf(m *Manager, digest string) snapInputs {
	return snapInputs{Kernel: m.cfg.Kernel, Digest: digest, Layer: "memory", MemMiB: 128, CPUs: 1, Accel: "tcg"}
}

// saveFake writes a snapshot of key for digest as a save would; an empty
// key is the one the inputs give.
func saveFake(t *testing.T, m *Manager, key, digest string) {
	t.Helper()
	in := inputsOf(m, digest)
	if key == "" {
		var err error
		if key, err = m.snapKey(in); err != nil {
			t.Fatal(err)
		}
	}
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
	if err := m.commitSnapshot(tmp, key, in, boot); err != nil {
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
	saveFake(t, m, "", "sha256:a")
	saveFake(t, m, "", "sha256:b")
	// A second save of the same key (two first starts at once) keeps one.
	saveFake(t, m, "", "sha256:b")
	keyB, err := m.snapKey(inputsOf(m, "sha256:b"))
	if err != nil {
		t.Fatal(err)
	}
	// A save that a crash interrupted.
	if err := os.MkdirAll(filepath.Join(m.snapDir(), ".new-k3-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A snapshot whose inputs give another key now (as after a new initrd
	// or kernel command line), and one of a flick that did not record its
	// inputs.
	saveFake(t, m, "k4", "sha256:b")
	saveFake(t, m, "k5", "sha256:b")
	meta := filepath.Join(m.snapDir(), "k5", "meta.json")
	if err := os.WriteFile(meta, []byte(`{"key":"k5","image_digest":"sha256:b"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	m.RemoveImageSnapshots("sha256:a")
	m.cleanSnapshots()
	ents, _ := os.ReadDir(m.snapDir())
	if len(ents) != 1 || ents[0].Name() != keyB {
		t.Fatalf("after removing image a and cleaning: %v, want only %s, image b's", ents, keyB)
	}
	// Another kernel file at the same path: no start can use it either.
	if err := os.WriteFile(m.cfg.Kernel, []byte("another kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.cleanSnapshots()
	if ents, _ := os.ReadDir(m.snapDir()); len(ents) != 0 {
		t.Errorf("after the kernel changed: %v, want none", ents)
	}
	saveFake(t, m, "", "sha256:b")
	if sizes := m.SnapshotSizes(); sizes["sha256:b"] <= 0 || sizes["sha256:a"] != 0 {
		t.Errorf("SnapshotSizes = %v, want only sha256:b, not empty", sizes)
	}
}

func TestSnapshotFilesResident(t *testing.T) {
	var lim unix.Rlimit
	if os.Geteuid() != 0 && (unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) != nil || lim.Cur < 1<<20) {
		t.Skip("locking memory needs root or an RLIMIT_MEMLOCK of 1 MiB (ulimit -l 1024)")
	}
	m, _ := newTestManager(t, serveApp(0, false))
	set := resident.New(64 << 20)
	defer set.Close()
	m.cfg.Resident = set
	saveFake(t, m, "", "sha256:a")
	key, err := m.snapKey(inputsOf(m, "sha256:a"))
	if err != nil {
		t.Fatal(err)
	}
	s := m.snapshotFiles(key)
	// The save has them kept in memory, in the background.
	deadline := time.Now().Add(10 * time.Second)
	for !(set.Has(s.snap.RAM) && set.Has(s.snap.State)) {
		if time.Now().After(deadline) {
			t.Fatalf("after the save: RAM file resident %v, device state %v; want both", set.Has(s.snap.RAM), set.Has(s.snap.State))
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.RemoveImageSnapshots("sha256:a")
	if set.Has(s.snap.RAM) || set.Has(s.snap.State) || set.Bytes() != 0 {
		t.Errorf("after the image's snapshots went: RAM file resident %v, device state %v, %d bytes locked; want none", set.Has(s.snap.RAM), set.Has(s.snap.State), set.Bytes())
	}
}
