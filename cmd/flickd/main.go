// Command flickd is flick's daemon: it serves the REST API on a unix socket
// and owns every microVM of the host.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flick-vm/flick/internal/daemon"
	"github.com/flick-vm/flick/internal/guest"
	"github.com/flick-vm/flick/internal/vmm"
)

func main() {
	var cfg daemon.RunConfig
	flag.StringVar(&cfg.Root, "root", "/var/lib/flick", "directory for images, instances and the store")
	flag.StringVar(&cfg.Socket, "socket", "/run/flick/flickd.sock", "unix socket to serve the API on")
	flag.StringVar(&cfg.Kernel, "kernel", guest.DefaultKernelPath(), "guest kernel (uncompressed vmlinux with a PVH entry) for guests of one vCPU")
	flag.StringVar(&cfg.KernelSMP, "kernel-smp", "", "guest kernel for guests of more than one vCPU (default the kernel's -smp sibling, as make kernel builds it, else --kernel)")
	flag.StringVar(&cfg.Init, "init", defaultInit(), "flick-init binary, the guest's PID 1")
	flag.StringVar(&cfg.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	flag.Func("kernel-args", "parameters to append to the guest kernel's command line (space-separated; e.g. printk.time=1 initcall_debug); a change boots every image cold once", func(v string) error {
		cfg.KernelArgs = append(cfg.KernelArgs, strings.Fields(v)...)
		return nil
	})
	flag.StringVar(&cfg.TCGCPU, "tcg-cpu", vmm.DefaultTCGCPU, "QEMU CPU model for guests under TCG (e.g. max for every feature QEMU emulates)")
	flag.DurationVar(&cfg.BootTimeout, "boot-timeout", 30*time.Second, "how long a guest may take to start its app")
	flag.BoolVar(&cfg.NoSnapshots, "no-snapshots", false, "boot every instance cold: take and restore no boot snapshots")
	flag.IntVar(&cfg.BootSlots, "boot-slots", 0, "VMs that may be starting at once, further starts queue (default twice the CPUs)")
	flag.IntVar(&cfg.PoolSize, "pool-size", 1, "zygotes (VMs restored ahead of time, idle) to keep per boot snapshot in use, for starts with a layer in memory and first starts with a disk layer, unless the image's label flick.pool says otherwise; 0 for none")
	flag.DurationVar(&cfg.HotStandby, "hot-standby", time.Minute, "how long a standing-by instance keeps its VMM paused, with its memory, after the save: a resume within it takes milliseconds; 0 frees the memory at once")
	flag.IntVar(&cfg.SpareVMMs, "spare-vmms", 1, "VMMs to keep spawned and paused, per shape of VM (kernel, vCPUs, memory, writable layer, network) among the two that cold-booted last, for cold boots that take no boot snapshot; 0 for none")
	flag.IntVar(&cfg.PoolSnapshots, "pool-images", 4, "boot snapshots (the most recently started) that keep zygotes; the zygotes of others are ended")
	flag.BoolVar(&cfg.NoNetwork, "no-network", false, "give instances loopback only: no bridge, NAT, published ports or DNS")
	flag.StringVar(&cfg.NetNS, "netns", "", "network namespace (name from ip netns, or a path) for the VMs' bridges, TAPs, rules and published ports; default flickd's own")
	flag.StringVar(&cfg.DefaultSubnet, "default-subnet", "", "subnet of the network \"default\", when flickd first makes it (default the first of 10.77.0.0/16, 172.30.0.0/16, 192.168.177.0/24 that the host does not route)")
	flag.Func("dns", "DNS server (IP or IP:PORT) for guests' names outside flick.internal; repeat for more (default the host's /etc/resolv.conf)", func(v string) error {
		cfg.DNS = append(cfg.DNS, v)
		return nil
	})
	flag.IntVar(&cfg.ResidentMiB, "resident-mb", -1, "MiB of memory that may be locked to keep the files of the start path in memory (QEMU and its libraries, the kernels, the initramfs, boot snapshots), which the host could otherwise evict from its page cache; 0 for none (default 1024, or a sixteenth of the host's memory if that is less)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("flickd", daemon.Version)
		return
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "flickd: bad --log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flickd:", err)
		os.Exit(1)
	}
}

// defaultInit is flick-init beside the flickd binary, else in PATH.
func defaultInit() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "flick-init")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/usr/local/bin/flick-init"
}
