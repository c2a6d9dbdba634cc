// Package vmm is the seam between flick and the virtual machine monitors it
// drives. A Driver turns a Spec into a running, paused VM; QEMU is the one
// implementation today, and Firecracker or Cloud Hypervisor would be others.
package vmm

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
)

// Disk is one virtio-blk device. Serial is how the guest finds it.
type Disk struct {
	Path     string `json:"path"`
	Serial   string `json:"serial"`
	ReadOnly bool   `json:"read_only"`
}

// Spec describes one VM. The device layout (disks in order, one agent
// port, one console) is fixed so that snapshots of the same image line up.
type Spec struct {
	ID        string
	Dir       string // runtime directory for sockets; must exist
	Kernel    string // uncompressed vmlinux, booted through its PVH entry
	Initrd    string
	Cmdline   string
	CPUs      int
	MemoryMiB int
	Accel     string // "kvm" or "tcg"; see PickAccel
	Disks     []Disk
	// GuestConfig is a file whose bytes the guest reads as wire.FwCfgName.
	GuestConfig string
	// Restore, when set, starts the VM from a snapshot made by
	// VM.SaveSnapshot of a VM with the same layout, instead of booting it.
	Restore *Snapshot
	// KeepRAM keeps the guest RAM file linked, for a VM that is to be
	// snapshotted; it is removed with the VM.
	KeepRAM bool
	// RAMFile, when set, is the guest RAM: a file of the caller's, mapped
	// shared and left in place when the VM ends. A restore whose memory
	// is in the stream fills it, and SaveSnapshot with Snapshot.RAM set to
	// it writes the device state alone.
	RAMFile string
	// ConsoleLog receives the serial console (kernel and flick-init) and
	// the VMM's own stderr.
	ConsoleLog string
	// NIC, when set, gives the VM one virtio-net interface.
	NIC *NIC
}

// NIC is a network interface backed by a TAP that the caller made: the VMM
// is handed its open queue and the caller closes its own copy after Start.
type NIC struct {
	TAP *os.File
	// MAC is the guest's hardware address at boot. A restored VM has the
	// one of the VM its snapshot was taken from, until the guest sets its
	// own.
	MAC string
}

// Snapshot is a saved VM: its guest RAM (mapped copy-on-write by every
// restore, never written) and its device state. With RAM empty the guest's
// memory is in the State stream, as for a standby: a restore loads it into
// a RAM file of the VM's own.
type Snapshot struct {
	RAM   string `json:"ram"`
	State string `json:"state"`
}

// Handle is what it takes to find a running VM again after the daemon
// restarts. It is persisted with the instance.
type Handle struct {
	Driver    string `json:"driver"`
	PID       int    `json:"pid"`
	QMPSocket string `json:"qmp_socket"`
	// ControlSocket reaches flick-init's channel, AgentSocket the guest
	// agent's.
	ControlSocket string `json:"control_socket"`
	AgentSocket   string `json:"agent_socket"`
	// StartTime is the process's start time in clock ticks since boot, from
	// /proc/PID/stat, so a reused PID is never mistaken for the VM.
	StartTime uint64 `json:"start_time"`
}

// Driver starts VMs and re-attaches to ones it started before.
type Driver interface {
	// Start spawns the VM paused: no vCPU has run when it returns.
	Start(ctx context.Context, spec Spec) (VM, error)
	// Attach finds a VM from a previous daemon's Handle. It returns an
	// error of class errdefs.ErrNotFound when that VM is gone.
	Attach(ctx context.Context, h Handle) (VM, error)
	// Running finds the live VMMs this driver started for instances whose
	// files are under dir, by instance id, with their pids: a daemon that
	// died between spawning a VMM and recording it leaves one that only
	// this can find.
	Running(dir string) (map[string]int, error)
}

// VM is a VMM process.
type VM interface {
	Handle() Handle
	// Resume starts or continues the vCPUs.
	Resume(ctx context.Context) error
	// ReplaceDisk puts d's file under the VM's disk i (Spec.Disks order;
	// d.Serial is ignored), for a VM spawned before its disk was known.
	// The guest reads a disk's size when it probes it: call it before
	// the first Resume.
	ReplaceDisk(ctx context.Context, i int, d Disk) error
	// Moved tells the VM that its run directory (Spec.Dir) was renamed to
	// dir: its sockets are found there from now on.
	Moved(dir string)
	// SaveSnapshot pauses the VM and writes its RAM and device state to
	// snap's files; the VM stays paused. A separate RAM file needs
	// Spec.KeepRAM; with snap.RAM empty the memory goes into the state.
	SaveSnapshot(ctx context.Context, snap Snapshot) error
	// DialControl connects to flick-init's channel: the boot sequence, the
	// app's output and its exit.
	DialControl(ctx context.Context) (net.Conn, error)
	// DialAgent connects to the guest agent's channel. The transport is
	// the driver's: a virtio-serial port here, AF_VSOCK where the host has
	// vhost-vsock.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Shutdown asks the VMM to quit at once; the guest gets no say.
	Shutdown(ctx context.Context) error
	// Kill ends the VMM process with SIGKILL.
	Kill() error
	// Done is closed once the VMM process has exited.
	Done() <-chan struct{}
	// RSS is the VMM's resident memory in bytes, 0 when unknown.
	RSS() int64
	// Close lets go of the VMM without stopping it (the daemon is going
	// away); Attach finds it again.
	Close() error
}

// CheckPath refuses a path that QEMU's options cannot carry: a comma ends
// an option's value. what names the path for the error.
func CheckPath(what, path string) error {
	if strings.Contains(path, ",") {
		return fmt.Errorf("%s %s: QEMU cannot be given a path with a comma; use one without", what, path)
	}
	return nil
}

// PickAccel resolves "auto" (or "") to "kvm" when the host CPU has
// hardware virtualisation and /dev/kvm exists, and to "tcg" otherwise. A
// /dev/kvm without vmx or svm in /proc/cpuinfo is a paravirtual KVM (such as
// PVM) that cannot run stock guest kernels.
func PickAccel(want string) string {
	if want != "" && want != "auto" {
		return want
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "tcg"
	}
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "tcg"
	}
	if hasVirtFlag(string(info)) {
		return "kvm"
	}
	return "tcg"
}

func hasVirtFlag(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
