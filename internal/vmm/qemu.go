package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/fsutil"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/vmm/qmp"
)

// QEMUConfig configures the QEMU driver.
type QEMUConfig struct {
	// Binary is the qemu-system-x86_64 to run; found in PATH when empty.
	Binary string
	// RAMDir holds the guest RAM files (a tmpfs such as /dev/shm), so that
	// guest memory is a file that snapshots can map.
	RAMDir string
	// TCGCPU is the CPU model under TCG (KVM always passes the host's).
	TCGCPU string
}

// DefaultTCGCPU is the CPU model that emulated guests get: max, every
// feature QEMU emulates, so that images built for newer x86-64 levels run.
// A plainer model boots a little faster: with Nehalem-v2 (x86-64-v2) the
// kernel reached /init 25-55 ms sooner in interleaved verbose boots (mean
// 0.320 vs 0.374 s over 8, 0.343 vs 0.368 s over 6), and flick bench -n 12
// gave p50 628/679 ms against 638/698 ms; flickd --tcg-cpu picks one.
//
// ERMS and FSRM are taken away: with them the guest kernel's copies to and
// from user space, and Go's memmove, use REP MOVSB, which TCG runs one byte
// per iteration. Without them flick cp of 100 MiB went from 32.8 to 74.8
// MiB/s in and from 11.2 to 104.8 MiB/s out; cold boots did not change
// beyond the host's drift (bench -n 10 p50, in A/B order 576 vs 628 and
// 670 vs 720 ms, in B/A order 718 vs 751 and 744 vs 757 ms).
const DefaultTCGCPU = "max,erms=off,fsrm=off"

// QEMU drives qemu-system-x86_64 with the microvm machine.
type QEMU struct {
	binary string
	ramDir string
	tcgCPU string
}

var _ Driver = (*QEMU)(nil)

// NewQEMU checks that QEMU is installed and returns the driver.
func NewQEMU(cfg QEMUConfig) (*QEMU, error) {
	bin := cfg.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, errdefs.Unavailable("%s not found: install it with apt-get install qemu-system-x86", bin)
	}
	ramDir := cfg.RAMDir
	if ramDir == "" {
		ramDir = "/dev/shm/flick"
	}
	if err := os.MkdirAll(ramDir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu ram dir: %w", err)
	}
	tcgCPU := cfg.TCGCPU
	if tcgCPU == "" {
		tcgCPU = DefaultTCGCPU
	}
	return &QEMU{binary: path, ramDir: ramDir, tcgCPU: tcgCPU}, nil
}

// Args returns QEMU's command line for spec, without the binary. Every
// device is on virtio-mmio; there is no firmware, no option ROM and no ACPI.
func (q *QEMU) Args(spec Spec, socks Sockets, ramFile string) []string {
	cpus := max(spec.CPUs, 1)
	mem := max(spec.MemoryMiB, 16)
	a := []string{
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-S",
		"-name", "flick-" + spec.ID,
		"-M", "microvm,acpi=off,x-option-roms=off,rtc=on,isa-serial=on,pic=on,pit=on",
		"-accel", spec.Accel,
		"-smp", strconv.Itoa(cpus),
		"-m", strconv.Itoa(mem) + "M",
		"-object", ramObject(spec, mem, ramFile),
		"-machine", "memory-backend=mem",
		"-kernel", spec.Kernel,
		"-append", spec.Cmdline,
		// The guest's console is a virtio console port (below). The UART
		// stays, writing to the same log, for kernels that print there
		// (console=ttyS0): ours has no 8250 driver.
		"-chardev", "file,id=serial,path=" + spec.ConsoleLog + ",append=on",
		"-serial", "chardev:serial",
	}
	if spec.Accel == "kvm" {
		a = append(a, "-cpu", "host")
	} else {
		a = append(a, "-cpu", q.tcgCPU)
	}
	if spec.Initrd != "" {
		a = append(a, "-initrd", spec.Initrd)
	}
	for i, d := range spec.Disks {
		// A raw node over a file node of its own, so that ReplaceDisk
		// can put another file under the device.
		id := diskNode(i)
		a = append(a,
			"-blockdev", fileNode(id+"-file", d),
			"-blockdev", fmt.Sprintf("driver=raw,node-name=%s,file=%s-file%s", id, id, readOnlyOpt(d)),
			"-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", id, d.Serial))
	}
	if spec.NIC != nil {
		// The TAP is the first of the extra files: fd 3.
		a = append(a,
			"-netdev", "tap,id=net0,fd=3",
			"-device", "virtio-net-device,netdev=net0,mac="+spec.NIC.MAC,
		)
	}
	// The console is hvc0 in the guest, a virtio console of its own: with
	// a single port the guest's driver sets it up as it probes the device,
	// before init runs, where ports of a multiport device come up later
	// from a work queue. Under TCG the 8250 UART it replaced cost a trap
	// per byte, and its driver's set-up ~260 translated blocks of every
	// boot.
	a = append(a,
		"-device", "virtio-serial-device,id=cons,max_ports=1",
		"-chardev", "file,id=console,path="+spec.ConsoleLog+",append=on",
		"-device", "virtconsole,chardev=console,bus=cons.0",
	)
	// Two ports, always, so the device layout does not depend on whether
	// the instance runs an agent.
	a = append(a,
		"-device", "virtio-serial-device,id=ports,max_ports=3",
		"-chardev", "socket,id=control,path="+socks.Control+",server=on,wait=off",
		"-device", "virtserialport,chardev=control,bus=ports.0,name="+wire.PortName,
		"-chardev", "socket,id=agent,path="+socks.Agent+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,bus=ports.0,name="+wire.AgentPortName,
	)
	if spec.GuestConfig != "" {
		a = append(a, "-fw_cfg", "name=opt/flick/config,file="+spec.GuestConfig)
	}
	a = append(a, "-qmp", "unix:"+socks.QMP+",server=on,wait=off")
	if spec.Restore != nil {
		a = append(a, "-incoming", "defer")
	}
	return a
}

func diskNode(i int) string { return "disk" + strconv.Itoa(i) }

// fileNode is the -blockdev of d's file, named name.
func fileNode(name string, d Disk) string {
	return "driver=file,node-name=" + name + ",filename=" + d.Path + readOnlyOpt(d)
}

func readOnlyOpt(d Disk) string {
	if d.ReadOnly {
		return ",read-only=on"
	}
	return ""
}

// ramObject is the guest RAM: a file of the VM's own, shared so that a
// snapshot can copy it, or for a restore the snapshot's RAM mapped
// privately: pages are read from it on first touch and copied on write,
// and the file is never written.
func ramObject(spec Spec, mem int, ramFile string) string {
	if spec.Restore != nil && spec.Restore.RAM != "" {
		return fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=off", mem, spec.Restore.RAM)
	}
	if spec.RAMFile != "" {
		return fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", mem, spec.RAMFile)
	}
	if spec.Restore != nil {
		// The memory comes in the stream. QEMU reads every page it is
		// told is zero to see whether it must clear it: on anonymous
		// memory that maps the shared zero page, where a file would
		// allocate and clear a page of its own for each one.
		return fmt.Sprintf("memory-backend-ram,id=mem,size=%dM", mem)
	}
	return fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", mem, ramFile)
}

// Sockets are the unix sockets QEMU serves for one VM.
type Sockets struct {
	QMP, Control, Agent string
}

// Start spawns QEMU paused (-S) in its own process group and returns once
// QMP has answered.
func (q *QEMU) Start(ctx context.Context, spec Spec) (VM, error) {
	socks := Sockets{
		QMP:     filepath.Join(spec.Dir, "qmp.sock"),
		Control: filepath.Join(spec.Dir, "control.sock"),
		Agent:   filepath.Join(spec.Dir, "agent.sock"),
	}
	for _, s := range []string{socks.QMP, socks.Control, socks.Agent} {
		if len(s) >= 108 {
			return nil, errdefs.InvalidArgument("socket path %s is longer than a unix socket allows: use a shorter --root", s)
		}
		_ = os.Remove(s)
	}
	ramFile := filepath.Join(q.ramDir, spec.ID+".ram")
	console, err := os.OpenFile(spec.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	defer console.Close()

	cmd := exec.Command(q.binary, q.Args(spec, socks, ramFile)...)
	cmd.Stdout = console
	cmd.Stderr = console
	if spec.NIC != nil {
		if spec.NIC.TAP == nil {
			return nil, errors.New("start qemu: the NIC has no TAP")
		}
		cmd.ExtraFiles = []*os.File{spec.NIC.TAP}
	}
	// A restore reads its device state from a descriptor QEMU inherits:
	// no shell and no cat between the file and the VMM.
	stateFD := 0
	if spec.Restore != nil {
		f, err := os.Open(spec.Restore.State)
		if err != nil {
			return nil, fmt.Errorf("restore snapshot: %w", err)
		}
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		stateFD = 2 + len(cmd.ExtraFiles)
	}
	// Its own process group: a signal to the daemon's terminal does not
	// reach the VMs, which outlive a daemon restart.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	vm := &qemuVM{
		handle: Handle{Driver: "qemu", PID: cmd.Process.Pid, QMPSocket: socks.QMP, ControlSocket: socks.Control, AgentSocket: socks.Agent},
		done:   make(chan struct{}),
		proc:   cmd.Process,
	}
	go func() {
		_ = cmd.Wait()
		_ = os.Remove(ramFile)
		close(vm.done)
	}()

	dctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-vm.done:
			cancel()
		case <-dctx.Done():
		}
	}()
	conn, err := qmp.Dial(dctx, socks.QMP)
	cancel()
	if err != nil {
		_ = vm.Kill()
		<-vm.done
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("start qemu: %w", ctx.Err())
		default:
		}
		return nil, fmt.Errorf("qemu exited at start: %s", lastLines(spec.ConsoleLog, 5))
	}
	vm.qmp = conn
	if spec.RAMFile != "" {
		vm.ramFile = spec.RAMFile
	} else if spec.KeepRAM && spec.Restore == nil {
		vm.ramFile = ramFile
		go func() { <-vm.done; _ = os.Remove(ramFile) }()
	} else {
		// QEMU has mapped the RAM file by the time QMP answers;
		// unlinking it now means no exit path of QEMU can leave it
		// behind.
		_ = os.Remove(ramFile)
	}
	vm.handle.StartTime, _ = procStartTime(vm.handle.PID)
	if spec.Restore != nil {
		if err := vm.incoming(ctx, *spec.Restore, stateFD); err != nil {
			_ = vm.Kill()
			<-vm.done
			return nil, fmt.Errorf("restore snapshot: %w; console: %s", err, lastLines(spec.ConsoleLog, 3))
		}
	}
	return vm, nil
}

// ignoreShared keeps guest RAM out of the migration stream (on), where it
// lives in the RAM file that a snapshot copies and a restore maps, or puts
// it in (off).
func ignoreShared(on bool) map[string]any {
	return map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
}

// incoming loads a snapshot into a VM started with -incoming defer; the VM
// stays paused.
func (v *qemuVM) incoming(ctx context.Context, snap Snapshot, fd int) error {
	if _, err := v.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared(snap.RAM != "")); err != nil {
		return err
	}
	// No announce after the load. QEMU would broadcast RARPs from the
	// MAC in the snapshot's device state (the VM that was saved, which
	// may still run) and have the guest send gratuitous ARPs for the
	// address it had then: five rounds each, which every VM on the
	// bridge receives and its guest handles, and which point the
	// bridge's entry for that MAC at this VM's TAP. A guest gets its own
	// MAC and address from its config, and the bridge learns them from
	// its first frame.
	if _, err := v.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"announce-rounds": 0}); err != nil {
		return err
	}
	if _, err := v.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(fd)}); err != nil {
		return err
	}
	return v.waitMigration(ctx)
}

// waitMigration polls query-migrate until the migration completes.
func (v *qemuVM) waitMigration(ctx context.Context) error {
	for {
		raw, err := v.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.done:
			return errors.New("vmm exited during migration")
		case <-time.After(time.Millisecond):
		}
	}
}

func (v *qemuVM) Moved(dir string) {
	for _, p := range []*string{&v.handle.QMPSocket, &v.handle.ControlSocket, &v.handle.AgentSocket} {
		*p = filepath.Join(dir, filepath.Base(*p))
	}
}

// SaveSnapshot stops the vCPUs, writes the device state (RAM excluded) to
// snap.State and copies the RAM file, holes kept, to snap.RAM.
func (v *qemuVM) SaveSnapshot(ctx context.Context, snap Snapshot) error {
	if snap.RAM != "" && v.ramFile == "" {
		return errors.New("save snapshot: the VM was not started with KeepRAM")
	}
	if _, err := v.qmp.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("save snapshot: stop: %w", err)
	}
	if _, err := v.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared(snap.RAM != "")); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if _, err := v.qmp.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(snap.State)}); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if err := v.waitMigration(ctx); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if snap.RAM == "" {
		return nil
	}
	if snap.RAM == v.ramFile {
		// The RAM is already the snapshot's file: make it durable.
		f, err := os.Open(snap.RAM)
		if err != nil {
			return fmt.Errorf("save snapshot: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("save snapshot: sync RAM: %w", err)
		}
		return nil
	}
	if err := fsutil.CopySparse(v.ramFile, snap.RAM, true); err != nil {
		return fmt.Errorf("save snapshot: copy RAM: %w", err)
	}
	return nil
}

// shellQuote quotes s for the sh -c that QEMU's exec: migration runs.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Attach re-connects to a QEMU started by an earlier daemon.
func (q *QEMU) Attach(ctx context.Context, h Handle) (VM, error) {
	st, err := procStartTime(h.PID)
	if err != nil || (h.StartTime != 0 && st != h.StartTime) {
		return nil, errdefs.NotFound("vmm process %d is gone", h.PID)
	}
	pidfd, err := unix.PidfdOpen(h.PID, 0)
	if err != nil {
		return nil, errdefs.NotFound("vmm process %d: %v", h.PID, err)
	}
	proc, err := os.FindProcess(h.PID)
	if err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	vm := &qemuVM{handle: h, done: make(chan struct{}), proc: proc}
	// The daemon that started the VM would have removed its RAM file when
	// it exited; this one does now.
	ramFile := ownRAMFile(h.PID, q.ramDir)
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		if ramFile != "" {
			_ = os.Remove(ramFile)
		}
		close(vm.done)
	}()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := qmp.Dial(cctx, h.QMPSocket)
	if err != nil {
		return nil, fmt.Errorf("attach to vmm %d: %w", h.PID, err)
	}
	vm.qmp = conn
	return vm, nil
}

// Running scans /proc for QEMU processes named flick-<id> (-name) whose
// command line names a file under dir.
func (q *QEMU) Running(dir string) (map[string]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir) + "/"
	found := map[string]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if id, ok := flickVM(strings.Split(string(raw), "\x00"), dir); ok {
			found[id] = pid
		}
	}
	return found, nil
}

// flickVM reports the instance id of a QEMU command line that this driver
// made for an instance whose files are under dir.
func flickVM(args []string, dir string) (string, bool) {
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "qemu-system-") {
		return "", false
	}
	var id string
	mine := false
	for i, a := range args {
		if a == "-name" && i+1 < len(args) {
			if rest, ok := strings.CutPrefix(args[i+1], "flick-"); ok {
				id = rest
			}
		}
		if strings.Contains(a, "="+dir) {
			mine = true
		}
	}
	return id, id != "" && mine
}

type qemuVM struct {
	handle  Handle
	proc    *os.Process
	qmp     *qmp.Conn
	done    chan struct{}
	ramFile string // kept for SaveSnapshot; "" when unlinked

	mu        sync.Mutex
	diskFiles map[int]int // how many times ReplaceDisk replaced each disk's file
}

func (v *qemuVM) Handle() Handle { return v.handle }

// QMP runs one QMP command; tests use it to look inside.
func (v *qemuVM) QMP(ctx context.Context, cmd string) (json.RawMessage, error) {
	return v.qmp.Execute(ctx, cmd, nil)
}

// ReplaceDisk puts d's file under disk i: a new file node, the disk's raw
// node reopened over it, the old file node deleted.
func (v *qemuVM) ReplaceDisk(ctx context.Context, i int, d Disk) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.diskFiles == nil {
		v.diskFiles = map[int]int{}
	}
	id := diskNode(i)
	old := id + "-file"
	if n := v.diskFiles[i]; n > 0 {
		old += "-" + strconv.Itoa(n)
	}
	next := id + "-file-" + strconv.Itoa(v.diskFiles[i]+1)
	add := map[string]any{"driver": "file", "node-name": next, "filename": d.Path, "read-only": d.ReadOnly}
	if _, err := v.qmp.Execute(ctx, "blockdev-add", add); err != nil {
		return fmt.Errorf("replace disk %d with %s: %w", i, d.Path, err)
	}
	reopen := map[string]any{"options": []map[string]any{{"driver": "raw", "node-name": id, "file": next, "read-only": d.ReadOnly}}}
	if _, err := v.qmp.Execute(ctx, "blockdev-reopen", reopen); err != nil {
		_, _ = v.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": next})
		return fmt.Errorf("replace disk %d with %s: %w", i, d.Path, err)
	}
	v.diskFiles[i]++
	if _, err := v.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": old}); err != nil {
		return fmt.Errorf("replace disk %d: drop the old file: %w", i, err)
	}
	return nil
}

func (v *qemuVM) Resume(ctx context.Context) error {
	_, err := v.qmp.Execute(ctx, "cont", nil)
	return err
}

func (v *qemuVM) DialControl(ctx context.Context) (net.Conn, error) {
	return v.dial(ctx, "control channel", v.handle.ControlSocket)
}

func (v *qemuVM) DialAgent(ctx context.Context) (net.Conn, error) {
	return v.dial(ctx, "agent channel", v.handle.AgentSocket)
}

func (v *qemuVM) dial(ctx context.Context, what, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s %s: %w", what, path, err)
		case <-v.done:
			return nil, fmt.Errorf("dial %s: vmm exited", what)
		case <-time.After(time.Millisecond):
		}
	}
}

func (v *qemuVM) Shutdown(ctx context.Context) error {
	_, err := v.qmp.Execute(ctx, "quit", nil)
	if errors.Is(err, qmp.ErrClosed) {
		return nil
	}
	return err
}

func (v *qemuVM) Kill() error {
	select {
	case <-v.done:
		return nil
	default:
	}
	err := v.proc.Signal(syscall.SIGKILL)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (v *qemuVM) Done() <-chan struct{} { return v.done }

func (v *qemuVM) Close() error { return v.qmp.Close() }

func (v *qemuVM) RSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.handle.PID))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// procStartTime reads field 22 of /proc/PID/stat.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state); start time is field 22.
	return strconv.ParseUint(f[19], 10, 64)
}

// lastLines returns the last n non-empty lines of a file, joined by " | ".
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no console output)"
	}
	return LastLines(string(b), n)
}

// LastLines returns the last n non-empty lines of s, joined by " | ".
func LastLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	if len(out) == 0 {
		return "(no console output)"
	}
	return strings.Join(out, " | ")
}
