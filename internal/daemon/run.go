package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/internal/guest"
	"github.com/flick-vm/flick/internal/image"
	"github.com/flick-vm/flick/internal/instance"
	"github.com/flick-vm/flick/internal/netns"
	"github.com/flick-vm/flick/internal/network"
	"github.com/flick-vm/flick/internal/resident"
	"github.com/flick-vm/flick/internal/store"
	"github.com/flick-vm/flick/internal/vmm"
)

// RunConfig is flickd's configuration.
type RunConfig struct {
	Root      string
	Socket    string
	Kernel    string
	KernelSMP string // for guests of more than one vCPU; empty: guest.SMPKernel(Kernel)
	Init      string
	QEMU      string
	TCGCPU    string // QEMU CPU model under TCG
	// KernelArgs are appended to the guest kernel's command line.
	KernelArgs  []string
	BootTimeout time.Duration
	// NoSnapshots turns boot snapshots off: every start boots cold.
	NoSnapshots bool
	// PoolSize is how many zygotes to keep per boot snapshot in use, and
	// PoolSnapshots for how many snapshots (the most recently started).
	PoolSize      int
	PoolSnapshots int
	// SpareVMMs is how many VMMs to keep spawned, paused, per shape of VM
	// that cold-booted recently, for the next cold boots.
	SpareVMMs int
	// BootSlots is how many VMs may start at once; 0 means twice the CPUs.
	BootSlots int
	// HotStandby is how long a standby keeps its VMM paused (its memory
	// held) so that a resume continues it; 0 ends it at once.
	HotStandby time.Duration
	// NoNetwork runs every instance with loopback only, and makes no
	// bridge, rule or DNS server.
	NoNetwork bool
	// NetNS is a network namespace (a name under /run/netns or a path) to
	// keep the VMs' bridges, TAPs, rules and published ports in; empty
	// means flickd's own.
	NetNS string
	// DefaultSubnet is the subnet of the network "default" when it is
	// made, at the first start.
	DefaultSubnet string
	// DNS are the servers that guests' names outside flick.internal go
	// to (ip or ip:port); default the host's /etc/resolv.conf.
	DNS []string
	// ResidentMiB bounds the memory locked to keep the files of the start
	// path resident (package resident): QEMU and its libraries, the
	// kernels, the initramfs, boot snapshots. 0 locks none; below 0 means
	// residentDefault.
	ResidentMiB int
	Logger      *slog.Logger
}

// Run wires the daemon's parts together and serves until ctx ends. VMs
// keep running when it returns; the next Run re-attaches to them.
func Run(ctx context.Context, cfg RunConfig) error {
	log := cfg.Logger
	for _, p := range []struct{ flag, path string }{{"--root", cfg.Root}, {"--kernel", cfg.Kernel}, {"--kernel-smp", cfg.KernelSMP}} {
		if err := vmm.CheckPath(p.flag, p.path); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.Root, 0o711); err != nil {
		return err
	}
	db, err := store.Open(filepath.Join(cfg.Root, "flick.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := os.Stat(cfg.Init); err != nil {
		return fmt.Errorf("flick-init not found at %s: build it with make build, or give --init", cfg.Init)
	}
	if _, err := os.Stat(cfg.Kernel); err != nil {
		// Not fatal: a run can name its own kernel. Starts fail with the fix.
		log.Warn("guest kernel not found: build it with make kernel, or give --kernel", "path", cfg.Kernel)
	}
	kernelSMP := cfg.KernelSMP
	if kernelSMP == "" {
		kernelSMP = guest.SMPKernel(cfg.Kernel)
	} else if _, err := os.Stat(kernelSMP); err != nil {
		return fmt.Errorf("--kernel-smp: %w", err)
	}
	initrd, err := guest.BuildInitrd(cfg.Init, filepath.Join(cfg.Root, "guest"))
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if old, err := guest.PruneInitrds(filepath.Dir(initrd), initrd); err != nil {
		log.Warn("remove the initramfs of earlier flick-init binaries", "err", err)
	} else if len(old) > 0 {
		log.Info("removed the initramfs of earlier flick-init binaries", "files", len(old))
	}
	images, err := image.New(image.Config{Root: filepath.Join(cfg.Root, "images"), DB: db, Logger: log})
	if err != nil {
		return err
	}
	driver, err := vmm.NewQEMU(vmm.QEMUConfig{Binary: cfg.QEMU, RAMDir: "/dev/shm/flick", TCGCPU: cfg.TCGCPU})
	if err != nil {
		return err
	}
	qv := qemuVersion(cfg.QEMU)
	var keep instance.Resident // nil, not a nil *resident.Set, when off
	if cfg.ResidentMiB < 0 {
		cfg.ResidentMiB = residentDefault()
	}
	if cfg.ResidentMiB > 0 {
		set := resident.New(int64(cfg.ResidentMiB) << 20)
		defer set.Close()
		keep = set
		go keepBootFiles(ctx, set, driver, log, cfg.Kernel, kernelSMP, initrd)
	}
	var mgr *instance.Manager
	var nets *network.Manager
	var networks instance.Networks // nil, not a nil *network.Manager, without networking
	if !cfg.NoNetwork {
		ns := netns.Host()
		if cfg.NetNS != "" {
			if ns, err = netns.Open(cfg.NetNS); err != nil {
				return err
			}
			defer ns.Close()
		}
		nets, err = network.New(ctx, network.Config{
			DB: db, NS: ns, Logger: log, DefaultSubnet: cfg.DefaultSubnet, Upstreams: cfg.DNS,
			// mgr is set before any request can ask.
			Users: func(n string) []string { return mgr.NetworkUsers(n) },
			Wake:  func(ctx context.Context, id string) error { return mgr.Wake(ctx, id) },
		})
		if err != nil {
			return fmt.Errorf("networking: %w (flickd --no-network runs without it)", err)
		}
		defer nets.Close()
		networks = nets
	}
	mgr, err = instance.New(ctx, instance.Config{
		Root: cfg.Root, DB: db, Images: images, Driver: driver, Logger: log, Networks: networks,
		Kernel: cfg.Kernel, KernelSMP: kernelSMP, Initrd: initrd,
		Cmdline: func(accel string) string {
			return guest.KernelCmdline(guest.CmdlineOptions{Accel: accel, Extra: cfg.KernelArgs})
		},
		BootTimeout:   cfg.BootTimeout,
		Snapshots:     !cfg.NoSnapshots,
		SnapshotTag:   qv + " " + cfg.TCGCPU,
		PoolSize:      cfg.PoolSize,
		PoolSnapshots: cfg.PoolSnapshots,
		SpareVMMs:     cfg.SpareVMMs,
		HotStandby:    cfg.HotStandby,
		BootSlots:     cfg.BootSlots,
		Resident:      keep,
	})
	if err != nil {
		return err
	}
	defer mgr.Close()
	// After the re-attach: the VMs still running keep their files.
	if removed, err := driver.PruneRAM(); err != nil {
		log.Warn("look for the RAM files of ended VMs", "err", err)
	} else if len(removed) > 0 {
		log.Info("removed the RAM files of VMs that ended without their daemon", "files", len(removed))
	}

	ln, err := listen(cfg.Socket)
	if err != nil {
		return err
	}
	tmp := filepath.Join(cfg.Root, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	srv := &http.Server{Handler: New(Config{
		Images: images, Instances: mgr, Networks: nets, Logger: log, TmpDir: tmp, QEMUVersion: qv,
	}), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("flickd serving", "socket", cfg.Socket, "root", cfg.Root, "kernel", cfg.Kernel, "kernel_smp", kernelSMP, "accel", vmm.PickAccel("auto"))
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = os.Remove(cfg.Socket)
	log.Info("flickd stopped; VMs keep running")
	return nil
}

// residentDefault is the default budget of resident files, in MiB: 1024,
// or a sixteenth of the host's memory if that is less.
func residentDefault() int {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 1024
	}
	return int(min(1024, uint64(si.Totalram)*uint64(si.Unit)>>20/16))
}

// keepBootFiles keeps the files that every start reads in memory: the
// VMM's binary and libraries, the guest kernels and the initramfs.
func keepBootFiles(ctx context.Context, set *resident.Set, driver *vmm.QEMU, log *slog.Logger, files ...string) {
	vmmFiles, err := driver.Files(ctx)
	if err != nil {
		log.Warn("the VMM's libraries are left to the page cache", "err", err)
	}
	kept := 0
	for _, f := range append(vmmFiles, files...) {
		if err := set.Add(f); errors.Is(err, os.ErrNotExist) {
			continue // an SMP kernel that was not built, say
		} else if err != nil {
			log.Warn("file left to the page cache", "err", err)
			continue
		}
		kept++
	}
	log.Info("start-path files kept in memory", "files", kept, "MiB", set.Bytes()>>20)
}

// listen binds the API socket, replacing a stale one but never one that a
// live daemon serves.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another flickd is serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func qemuVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(first, "QEMU emulator version ")
}
