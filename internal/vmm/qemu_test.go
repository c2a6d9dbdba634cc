package vmm_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest"
	"github.com/flick-vm/flick/internal/testenv"
	"github.com/flick-vm/flick/internal/vmm"
)

// bootSpec is a VM with the guest kernel and no root at all: once resumed
// the kernel panics for want of an init, and with panic=-1 and QEMU's
// -no-reboot the VMM then exits by itself.
func bootSpec(t *testing.T, kernel string) vmm.Spec {
	dir, err := os.MkdirTemp("", "vmm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return vmm.Spec{
		ID: "t" + filepath.Base(dir), Dir: dir, Kernel: kernel,
		Cmdline: guest.KernelCmdline(guest.CmdlineOptions{Verbose: true}),
		CPUs:    1, MemoryMiB: 64, Accel: "tcg", ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

func newDriver(t *testing.T) (*vmm.QEMU, string) {
	testenv.RequireQEMU(t)
	kernel := testenv.RequireKernel(t)
	q, err := vmm.NewQEMU(vmm.QEMUConfig{RAMDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return q, kernel
}

// qmp runs a QMP command without arguments in vm, a QEMU driver's.
func qmp(t *testing.T, ctx context.Context, vm vmm.VM, cmd string) json.RawMessage {
	t.Helper()
	ret, err := vm.(interface {
		QMP(ctx context.Context, cmd string) (json.RawMessage, error)
	}).QMP(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

func status(t *testing.T, ctx context.Context, vm vmm.VM) string {
	t.Helper()
	var st struct{ Status string }
	json.Unmarshal(qmp(t, ctx, vm, "query-status"), &st)
	return st.Status
}

func TestQEMULifecycle(t *testing.T) {
	q, kernel := newDriver(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	spec := bootSpec(t, kernel)
	vm, err := q.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if got := status(t, ctx, vm); got != "prelaunch" && got != "paused" {
		t.Fatalf("status after Start = %q, want paused before any vCPU ran", got)
	}
	if vm.RSS() <= 0 {
		t.Error("RSS of a live VMM is 0")
	}

	// A restarted daemon re-attaches once the first has let go.
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := q.Attach(ctx, vm.Handle())
	if err != nil {
		t.Fatalf("Attach to a live VM: %v", err)
	}
	if err := again.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatal("the VMM did not exit after the guest panicked")
	}
	<-again.Done()
	console, _ := os.ReadFile(spec.ConsoleLog)
	if !strings.Contains(string(console), "Kernel panic") {
		t.Errorf("console shows no kernel panic:\n%s", console)
	}
	// The console comes up late in the boot and writes what came before.
	if !strings.Contains(string(console), "Linux version") {
		t.Errorf("console lacks the kernel's first line:\n%s", console)
	}
	if _, err := q.Attach(ctx, vm.Handle()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Attach to an exited VM: err = %v, want not found", err)
	}
}

func TestQEMUKill(t *testing.T) {
	q, kernel := newDriver(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	vm, err := q.Start(ctx, bootSpec(t, kernel))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatal("Kill did not end the VMM")
	}
	if err := vm.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}
}

func TestQEMUStartErrorShowsConsole(t *testing.T) {
	q, _ := newDriver(t)
	spec := bootSpec(t, "/nonexistent/vmlinux")
	_, err := q.Start(t.Context(), spec)
	if err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Fatalf("Start with a missing kernel: err = %v, want QEMU's complaint naming the file", err)
	}
}

func TestQEMUFiles(t *testing.T) {
	testenv.RequireQEMU(t)
	q, err := vmm.NewQEMU(vmm.QEMUConfig{RAMDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	files, err := q.Files(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := exec.LookPath("qemu-system-x86_64")
	if len(files) < 2 || files[0] != bin {
		t.Fatalf("Files = %q, want %s and its libraries", files, bin)
	}
	libc := false
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("Files lists %s, which is not a file: %v", f, err)
		}
		libc = libc || strings.HasPrefix(filepath.Base(f), "libc.so")
	}
	if !libc {
		t.Errorf("Files = %q has no libc", files)
	}
}

// TestQEMUReplaceDisk: a VM spawned with a stand-in file under a disk gets
// another file there before it runs, read-only as the disk was made; a
// file that cannot be opened leaves the disk as it was.
func TestQEMUReplaceDisk(t *testing.T) {
	q, kernel := newDriver(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	spec := bootSpec(t, kernel)
	standIn := filepath.Join(spec.Dir, "none")
	image := filepath.Join(spec.Dir, "root.img")
	if err := os.WriteFile(standIn, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(image, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec.Disks = []vmm.Disk{{Path: standIn, Serial: "root", ReadOnly: true}}
	vm, err := q.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()

	type block struct {
		Inserted struct {
			File  string `json:"file"`
			RO    bool   `json:"ro"`
			Image struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	disk := func() block {
		t.Helper()
		raw := qmp(t, ctx, vm, "query-block")
		var bs []block
		if err := json.Unmarshal(raw, &bs); err != nil || len(bs) != 1 {
			t.Fatalf("query-block: %s (%v)", raw, err)
		}
		return bs[0]
	}
	if d := disk(); d.Inserted.File != standIn || d.Inserted.Image.VirtualSize != 0 {
		t.Fatalf("disk at start = %+v, want the empty stand-in", d)
	}

	missing := filepath.Join(spec.Dir, "missing.img")
	if err := vm.ReplaceDisk(ctx, 0, vmm.Disk{Path: missing, ReadOnly: true}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("ReplaceDisk with a missing file: err = %v, want one naming it", err)
	}
	if d := disk(); d.Inserted.File != standIn {
		t.Errorf("after a failed ReplaceDisk the disk is %s, want the stand-in still", d.Inserted.File)
	}

	// Twice: the second replaces the first replacement's file node.
	for _, f := range []string{standIn, image} {
		if err := vm.ReplaceDisk(ctx, 0, vmm.Disk{Path: f, ReadOnly: true}); err != nil {
			t.Fatalf("ReplaceDisk(%s): %v", f, err)
		}
	}
	if d := disk(); d.Inserted.File != image || !d.Inserted.RO || d.Inserted.Image.VirtualSize != 3<<20 {
		t.Errorf("disk after ReplaceDisk = %+v, want %s, read-only, 3 MiB", d, image)
	}
}
