package instance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flick-vm/flick/internal/resident"
	"github.com/flick-vm/flick/internal/vmm"
)

// Boot snapshots. The first start of an image (for a given kernel, init,
// writable layer kind, memory size, vCPU count and VMM) boots with a config
// that makes flick-init mount what every start of the image shares (the
// image's disk; with a layer in memory the whole root), say hello and wait;
// the daemon saves the VM there, then sends the instance's real config. Every later start of that image restores the
// snapshot instead of booting, and sends its own config. A snapshot lives
// in Root/snapshots/KEY: ram (guest memory, mapped copy-on-write by each
// restore), state (QEMU's device state, tens of KB), boot.json (the config
// the guest booted with, which the VM's layout refers to) and meta.json.

type snapMeta struct {
	Key         string    `json:"key"`
	ImageDigest string    `json:"image_digest"`
	Created     time.Time `json:"created"`
	RAMSize     int64     `json:"ram_size"`
	StateSize   int64     `json:"state_size"`
	StateSHA256 string    `json:"state_sha256"`
	// Inputs are the start's part of the key, from which a later daemon
	// computes the key again to find snapshots that no start can use.
	Inputs *snapInputs `json:"inputs,omitempty"`
}

// snapInputs are what a start brings to a boot snapshot's key; the rest is
// the daemon's: its initrd, the kernel command line for the accelerator,
// the VMM, and the kernel file as it is now.
type snapInputs struct {
	Kernel string `json:"kernel"`
	Digest string `json:"image_digest"`
	Layer  string `json:"layer"`
	MemMiB int    `json:"mem_mib"`
	CPUs   int    `json:"cpus"`
	Accel  string `json:"accel"`
	NIC    bool   `json:"nic"`
}

// bootSnapshot is a snapshot found valid on disk.
type bootSnapshot struct {
	dir  string
	meta snapMeta
	snap vmm.Snapshot
	boot string // boot.json
}

func (m *Manager) snapDir() string { return filepath.Join(m.cfg.Root, "snapshots") }

// snapKey names the snapshot that a start with these inputs can use: any
// change to one of them, or to the daemon's initrd, kernel command line or
// VMM, needs a new boot. The version at its head changes with the VM's
// device layout (v3: the virtio console port).
func (m *Manager) snapKey(in snapInputs) (string, error) {
	ki, err := os.Stat(in.Kernel)
	if err != nil {
		return "", err
	}
	ii, err := os.Stat(m.cfg.Initrd)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "v3\nkernel %s %d %d\ninit %s %d %d\nimage %s layer %s\nmem %d cpus %d accel %s\ncmdline %s\nvmm %s\nnic %t\n",
		in.Kernel, ki.Size(), ki.ModTime().UnixNano(), m.cfg.Initrd, ii.Size(), ii.ModTime().UnixNano(),
		in.Digest, in.Layer, in.MemMiB, in.CPUs, in.Accel, m.cfg.Cmdline(in.Accel), m.cfg.SnapshotTag, in.NIC)
	return hex.EncodeToString(h.Sum(nil))[:24], nil
}

// snapshotFiles names the files of the snapshot of key, whether or not
// they are there.
func (m *Manager) snapshotFiles(key string) *bootSnapshot {
	dir := filepath.Join(m.snapDir(), key)
	return &bootSnapshot{
		dir:  dir,
		snap: vmm.Snapshot{RAM: filepath.Join(dir, "ram"), State: filepath.Join(dir, "state")},
		boot: filepath.Join(dir, "boot.json"),
	}
}

// lookupSnapshot returns the snapshot of key if it is there and whole: its
// RAM file has the size it was saved with and its device state the same
// checksum. A damaged one is removed.
func (m *Manager) lookupSnapshot(key string) (*bootSnapshot, bool) {
	s := m.snapshotFiles(key)
	dir := s.dir
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, false
	}
	bad := func(why string) (*bootSnapshot, bool) {
		m.log.Warn("boot snapshot damaged; removed, the next start boots cold", "snapshot", key, "why", why)
		m.removeSnapshot(dir)
		return nil, false
	}
	if err := json.Unmarshal(b, &s.meta); err != nil {
		return bad("meta.json: " + err.Error())
	}
	if fi, err := os.Stat(s.snap.RAM); err != nil || fi.Size() != s.meta.RAMSize {
		return bad("ram file missing or of the wrong size")
	}
	sum, n, err := fileSHA256(s.snap.State)
	if err != nil || n != s.meta.StateSize || sum != s.meta.StateSHA256 {
		return bad("device state missing or corrupt")
	}
	if _, err := os.Stat(s.boot); err != nil {
		return bad("boot.json missing")
	}
	m.keepResident(s)
	return s, true
}

// keepResident has the device state and RAM file of snapshot s kept in
// memory, once per snapshot, in the background: locking reads what of them
// is not in memory yet.
func (m *Manager) keepResident(s *bootSnapshot) {
	if m.cfg.Resident == nil {
		return
	}
	if _, tried := m.resident.LoadOrStore(s.dir, true); tried {
		return
	}
	go func() {
		for _, p := range []string{s.snap.State, s.snap.RAM} {
			if err := m.cfg.Resident.Add(p); errors.Is(err, resident.ErrBudget) {
				m.log.Info("boot snapshot left to the page cache", "snapshot", filepath.Base(s.dir), "why", err)
				return
			} else if err != nil {
				m.log.Warn("boot snapshot not kept in memory", "snapshot", filepath.Base(s.dir), "err", err)
				return
			}
		}
	}()
}

// removeSnapshot removes the snapshot directory dir, letting its files go
// from memory first.
func (m *Manager) removeSnapshot(dir string) {
	if m.cfg.Resident != nil {
		m.cfg.Resident.RemoveUnder(dir)
	}
	m.resident.Delete(dir)
	_ = os.RemoveAll(dir)
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// newSnapshotDir returns a fresh directory to save a snapshot of key into;
// commitSnapshot moves it into place once it is whole.
func (m *Manager) newSnapshotDir(key string) (string, vmm.Snapshot, error) {
	if err := os.MkdirAll(m.snapDir(), 0o700); err != nil {
		return "", vmm.Snapshot{}, err
	}
	tmp, err := os.MkdirTemp(m.snapDir(), ".new-"+key+"-")
	if err != nil {
		return "", vmm.Snapshot{}, err
	}
	return tmp, vmm.Snapshot{RAM: filepath.Join(tmp, "ram"), State: filepath.Join(tmp, "state")}, nil
}

// commitSnapshot writes meta.json and boot.json into tmp and renames it to
// the snapshot of key; a crash before the rename leaves only a .new-
// directory, which the next daemon removes.
func (m *Manager) commitSnapshot(tmp, key string, in snapInputs, bootConfig string) error {
	ri, err := os.Stat(filepath.Join(tmp, "ram"))
	if err != nil {
		return err
	}
	sum, n, err := fileSHA256(filepath.Join(tmp, "state"))
	if err != nil {
		return err
	}
	boot, err := os.ReadFile(bootConfig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "boot.json"), boot, 0o600); err != nil {
		return err
	}
	meta := snapMeta{Key: key, ImageDigest: in.Digest, Created: time.Now().UTC(), RAMSize: ri.Size(), StateSize: n, StateSHA256: sum, Inputs: &in}
	b, _ := json.Marshal(meta)
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), b, 0o600); err != nil {
		return err
	}
	dst := filepath.Join(m.snapDir(), key)
	if err := os.Rename(tmp, dst); err != nil {
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			// Another start saved the same snapshot first.
			return os.RemoveAll(tmp)
		}
		return err
	}
	m.keepResident(m.snapshotFiles(key))
	return nil
}

// discardSnapshot removes a snapshot that failed to restore.
func (m *Manager) discardSnapshot(s *bootSnapshot, why error) {
	m.log.Warn("boot snapshot failed to restore; removed, booting cold", "snapshot", s.meta.Key, "err", why)
	m.removeSnapshot(s.dir)
}

// RemoveImageSnapshots removes the boot snapshots of an image, when the
// image goes.
func (m *Manager) RemoveImageSnapshots(digest string) {
	ents, err := os.ReadDir(m.snapDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".new-") {
			continue // being saved
		}
		dir := filepath.Join(m.snapDir(), e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
		var meta snapMeta
		if err != nil || json.Unmarshal(b, &meta) != nil || meta.ImageDigest == digest {
			m.removeSnapshot(dir)
		}
	}
}

// cleanSnapshots removes the leftovers of saves that a crash interrupted,
// and the snapshots that no start can use any more: their key is not what
// their inputs give now (another initrd, kernel command line or VMM, a
// kernel file changed or gone), or they are of a flick that did not record
// their inputs.
func (m *Manager) cleanSnapshots() {
	ents, err := os.ReadDir(m.snapDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		dir := filepath.Join(m.snapDir(), e.Name())
		if strings.HasPrefix(e.Name(), ".new-") {
			_ = os.RemoveAll(dir)
			continue
		}
		var meta snapMeta
		b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
		if err == nil {
			err = json.Unmarshal(b, &meta)
		}
		if err == nil && meta.Inputs != nil {
			if key, err := m.snapKey(*meta.Inputs); err == nil && key == e.Name() {
				continue
			}
		}
		m.log.Info("boot snapshot removed: no start can use it any more", "snapshot", e.Name(), "image", meta.ImageDigest)
		m.removeSnapshot(dir)
	}
}

// SnapshotSizes is the disk space of the boot snapshots of each image
// digest, in bytes: the blocks their files use, not their apparent size.
func (m *Manager) SnapshotSizes() map[string]int64 {
	sizes := map[string]int64{}
	ents, err := os.ReadDir(m.snapDir())
	if err != nil {
		return sizes
	}
	for _, e := range ents {
		dir := filepath.Join(m.snapDir(), e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
		var meta snapMeta
		if err != nil || json.Unmarshal(b, &meta) != nil {
			continue
		}
		sizes[meta.ImageDigest] += diskUsage(dir)
	}
	return sizes
}

// diskUsage is the disk that the files under dir take, in bytes: the
// blocks allocated, so a sparse file counts what was written.
func diskUsage(dir string) int64 {
	var total int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			} else {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}
