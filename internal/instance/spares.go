package instance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/vmm"
)

// Spare VMMs. Before a cold boot's guest runs its first instruction, QEMU
// has to start: load its libraries, build the machine, load the kernel and
// answer QMP, 30-45 ms on these hosts (host-side work, as much under KVM). A
// spare is a QEMU spawned ahead of time for one shape of VM and left paused
// before the guest's first instruction, over the root disk of the image
// that cold-booted last in that shape (else an empty stand-in), with a data
// disk, console and TAP of its own, like a zygote's. A cold boot of that
// shape claims it, puts the image's root disk under it (VM.ReplaceDisk)
// unless it has that file already, and resumes it: the kernel and
// flick-init still boot from nothing. A spare keeps its root disk file open
// while it waits, also after rmi has removed it. The guest learns its
// instance the way a boot snapshot's first start does: its fw_cfg config
// names only the disks and the writable layer (AwaitConfig), flick-init
// mounts the image and says hello, and the host sends the instance's
// config.
//
// Spares serve cold boots that take no boot snapshot (flick run --cold,
// bench, or flickd without snapshots) and find no data disk of the
// instance's yet, or keep the writable layer in memory. The pool keeps
// SpareVMMs of each of the spareShapes shapes that cold-booted most
// recently, refilled as each is claimed. A spare costs no CPU while it
// waits, and its guest RAM holds only the kernel and initramfs that QEMU
// loaded.

// spareShapes is how many shapes of VM keep spares: the most recently
// cold-booted.
const spareShapes = 2

// spareMAC is a spare's MAC until its guest sets the instance's.
const spareMAC = "02:fc:a9:fe:00:03"

// spareKey names the shape of spec's VM: what a spare must share with the
// boot that claims it. Disk files, console, run directory and TAP are the
// spare's own, and the root disk is replaced at the claim.
func spareKey(spec vmm.Spec, layer, fstype string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{
		spec.Kernel, spec.Initrd, spec.Cmdline, spec.Accel,
		strconv.Itoa(spec.CPUs), strconv.Itoa(spec.MemoryMiB),
		layer, fstype, strconv.FormatBool(spec.NIC != nil),
	}, "\x00")))
	return hex.EncodeToString(sum[:12])
}

// fillSpares keeps spares of the shape of spec (a cold boot's) whose
// writable layer and root file system are layer and fstype.
func (m *Manager) fillSpares(key string, spec vmm.Spec, layer, fstype string) {
	boot := wire.Config{
		AwaitConfig: true, Spare: true,
		RootDevice: "root", RootFSType: fstype, DataDevice: "data",
		WritableLayer: layer,
	}
	if spec.NIC != nil {
		spec.NIC = &vmm.NIC{MAC: spareMAC}
	}
	m.fill(m.spares, key, m.cfg.SpareVMMs, func() (*zygote, error) { return m.makeSpare(spec, boot) })
}

// makeSpare spawns a VMM for a VM like spec, paused, with boot as its
// guest's config, over spec's root disk or an empty stand-in.
func (m *Manager) makeSpare(spec vmm.Spec, boot wire.Config) (*zygote, error) {
	z, spec, tap, err := m.newPoolVM(spec)
	if err != nil {
		return nil, err
	}
	if tap != nil {
		defer tap.Close() // the VMM holds it
	}
	spec.GuestConfig = filepath.Join(z.dir, "boot.json")
	b, _ := json.Marshal(boot)
	if err := os.WriteFile(spec.GuestConfig, b, 0o600); err != nil {
		z.discard()
		return nil, err
	}
	// Under the root disk of the image that cold-booted last, which the
	// next cold boot of this shape most likely wants again: it then
	// claims the spare with no ReplaceDisk, whose QMP commands took 3.3
	// ms of the vmm phase. Otherwise an empty stand-in.
	if fi, err := os.Stat(spec.Disks[0].Path); err == nil && fi.Mode().IsRegular() {
		z.root = fi
	} else {
		spec.Disks[0].Path = filepath.Join(z.dir, "root.none")
		if err := os.WriteFile(spec.Disks[0].Path, nil, 0o600); err != nil {
			z.discard()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	defer cancel()
	vm, err := m.cfg.Driver.Start(ctx, spec)
	if err != nil {
		z.discard()
		return nil, fmt.Errorf("spare VMM: %w", err)
	}
	z.vm = vm
	return z, nil
}

// hasRoot says whether the spare z was spawned over the root disk at path:
// the same file, not only the same name (a disk rebuilt or pulled again is
// another file).
func (z *zygote) hasRoot(path string) bool {
	if z.root == nil {
		return false
	}
	fi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, z.root)
}
