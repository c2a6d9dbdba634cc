// Package guest provisions what a flick microVM boots: the guest kernel, the
// initramfs that carries flick-init and the kernel command line. The format
// of the config and of the agent channel lives in package wire, which
// flick-init shares.
package guest

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// DefaultKernelPath is $FLICK_KERNEL, else the vmlinux that
// scripts/build-kernel.sh links at ${XDG_CACHE_HOME:-~/.cache}/flick/kernel/vmlinux.
func DefaultKernelPath() string {
	if p := os.Getenv("FLICK_KERNEL"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "flick", "kernel", "vmlinux")
}

// SMPKernel returns the kernel for guests of more than one vCPU that goes
// with kernel: kernel+"-smp" when that file exists, as scripts/build-kernel.sh
// builds it beside the uniprocessor vmlinux, else kernel itself.
func SMPKernel(kernel string) string {
	if _, err := os.Stat(kernel + "-smp"); err == nil {
		return kernel + "-smp"
	}
	return kernel
}

// CmdlineOptions tunes KernelCmdline.
type CmdlineOptions struct {
	// TSCkHz is the guest TSC's frequency in kHz; 0 uses the host's. Under
	// TCG the guest reads the host's TSC, so the host's is right there too.
	TSCkHz int
	// Verbose drops "quiet", so the kernel logs its boot to the console.
	Verbose bool
	// Accel is the accelerator the guest runs under, "kvm" or "tcg" (the
	// default).
	Accel string
	// Extra parameters are appended as they are.
	Extra []string
}

// KernelCmdline returns the guest kernel's command line for a QEMU microvm
// machine (acpi=off). QEMU appends the virtio_mmio.device= entries itself.
//
// Each parameter is there for boot time or for flick-init; the costs were
// measured on this project's 6.1 kernel under TCG (see DESIGN.md):
//
//	console=hvc0          the virtio console port that QEMU logs to. The
//	                      8250 UART it replaced cost a trap into QEMU per
//	                      byte, and its driver's probe and console set-up
//	                      ran at every boot. The console comes up when the
//	                      kernel probes the virtio console, three quarters
//	                      into its boot by translated code, and writes the
//	                      log so far (our patch 0005 makes that write reach
//	                      the port). A panic before then reaches no console
//	                      log: for a kernel with an 8250 driver, flickd
//	                      --kernel-args console=ttyS0 logs from the first
//	                      line (QEMU keeps the UART).
//	quiet                 the console is a log, not a progress bar: the full
//	                      boot log cost tens of ms on the UART, and each
//	                      line is a trap into QEMU on the virtio console.
//	lapic_timer_period=   (TCG) the local APIC timer's rate, 1e9/HZ: QEMU's
//	                      emulated APIC counts at 1 GHz, and HZ is 250 in
//	                      flick.config. Calibrating it spins ~260 ms under
//	                      TCG; the PIT instead (noapictimer, before) wakes
//	                      an idle guest ~40 times a second, as its 16-bit
//	                      counter cannot wait longer than ~27 ms. The
//	                      parameter is our kernel's (guest/kernel/patches).
//	                      Under KVM the APIC has a TSC deadline mode or
//	                      calibrates in real time.
//	rodata=off            (TCG) the kernel leaves its read-only data
//	                      writable: write-protecting it rewrites the
//	                      kernel's page tables just before /init, ~6 ms
//	                      under TCG (the "Write protecting" line to /init
//	                      took 5.8-5.9 ms with it, 0.1-0.3 ms without).
//	                      The guest kernel guards nothing from the app it
//	                      runs; the VMM is the boundary.
//	tsc_early_khz=N       the TSC's rate, so that the kernel does not
//	                      measure it against the PIT (it can hang
//	                      outright under TCG). The stock kernel measured
//	                      the CPU's speed against the PIT all the same;
//	                      our patch (guest/kernel/patches) takes it to be
//	                      the TSC's: cold boot p50 568 -> 484 ms and 615
//	                      -> 518 ms (with erofs's decompression left out
//	                      of the kernel), 50 boots of each interleaved.
//	pty.legacy_count=0    256 legacy PTYs cost ~10-20 ms (also configured
//	                      out of our kernel; kept for other kernels).
//	8250.nr_uarts=1       probing the three absent UARTs costs ~10-20 ms
//	                      (kernels with an 8250 driver; ours has none).
//	panic=-1 reboot=t     a panic (flick-init dying) resets at once, and
//	                      the reset is a triple fault (microvm has neither
//	                      ACPI nor a keyboard controller to reset through),
//	                      which QEMU -no-reboot turns into an exit: the VM
//	                      ends when the guest is done.
//	no_timer_check        the I/O-APIC setup otherwise busy-waits 10 ticks
//	                      (40 ms at HZ=250) to see the timer interrupt
//	                      arrive: /init 25 ms sooner (0.384 -> 0.359 s,
//	                      mean of 6 interleaved boots).
//	noreplace-smp         with one vCPU the kernel would rewrite every
//	                      LOCK prefix of its text into a NOP; under TCG each
//	                      rewrite of translated code is self-modifying code:
//	                      ~50 ms (iTLB line to "Freeing SMP alternatives"
//	                      went from 66-77 ms to 16 ms in a verbose boot).
//	random.trust_cpu=on   the CPU's RDRAND (under TCG QEMU's, which reads
//	                      the host's getrandom) counts as entropy, so the
//	                      kernel's RNG is ready early in boot. Without it
//	                      a cold boot never made it ready before the app:
//	                      crypto/rand in the app waited 1.03 s for the
//	                      kernel to gather entropy from timer jitter; and
//	                      a start from a snapshot made it ready in its
//	                      reseed, running that first-time code (and a log
//	                      line) on the way to the app. Every start from a
//	                      snapshot still reseeds it with fresh bytes from
//	                      the host before the app runs.
//	rdinit=/init          flick-init from the initramfs.
//	qemu_fw_cfg.ioport=   where the fw_cfg sysfs driver finds fw_cfg without
//	                      ACPI: microvm puts it at I/O port 0x510, 12 ports,
//	                      selector at +0, data at +1, DMA at +4. flick-init
//	                      reads its config from it.
func KernelCmdline(opts CmdlineOptions) string {
	khz := opts.TSCkHz
	if khz == 0 {
		khz = hostTSCkHz()
	}
	args := []string{"console=hvc0"}
	if !opts.Verbose {
		args = append(args, "quiet")
	}
	if opts.Accel != "kvm" {
		args = append(args, "lapic_timer_period=4000000", "rodata=off")
	}
	if khz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(khz))
	}
	args = append(args,
		"pty.legacy_count=0",
		"8250.nr_uarts=1",
		"panic=-1",
		"reboot=t",
		"no_timer_check",
		"noreplace-smp",
		"random.trust_cpu=on",
		"rdinit=/init",
		"qemu_fw_cfg.ioport=12@0x510:0:1:4",
	)
	args = append(args, opts.Extra...)
	return strings.Join(args, " ")
}

var hostTSC = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return parseCPUMHz(b)
})

func hostTSCkHz() int { return hostTSC() }

// parseCPUMHz returns the first "cpu MHz" of /proc/cpuinfo in kHz, or 0.
// On CPUs with constant_tsc (every x86 CPU that runs VMs) that is the TSC's
// rate.
func parseCPUMHz(cpuinfo []byte) int {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int(math.Round(mhz * 1000))
	}
	return 0
}
