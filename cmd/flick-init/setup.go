package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

const (
	newRoot  = "/newroot"
	lowerDir = "/mnt/lower"
	dataDir  = "/mnt/data"

	deviceTimeout = 10 * time.Second
)

// readConfig reads the instance config from fw_cfg, waiting for the fw_cfg
// driver to publish it.
func readConfig() (wire.Config, error) {
	var cfg wire.Config
	var raw []byte
	err := poll("config "+wire.FwCfgSysfsPath, deviceTimeout, func() (bool, error) {
		b, err := os.ReadFile(wire.FwCfgSysfsPath)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		raw = b
		return err == nil, err
	})
	if err != nil {
		return cfg, err
	}
	if cfg, err = wire.DecodeConfig(raw); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if cfg.AwaitConfig {
		// A boot to snapshot: the real config comes over the channel
		// after the host has saved the VM; prepare waits for it.
		return cfg, nil
	}
	return cfg, checkConfig(cfg)
}

// hostConfig receives the Config of a TypeConfig frame.
var hostConfig = make(chan receivedConfig, 1)

// receivedConfig is a Config from the host with the guest's boot clock
// (bootNS) when its frame was read.
type receivedConfig struct {
	cfg  wire.Config
	recv int64
}

// applyHostState sets the clock and reseeds the RNG from a Config sent to a
// guest that may be a restored snapshot: both would otherwise be the
// snapshot's.
//
// The host's clock was read before it sent the frame, which came in at
// recv (bootNS); the time spent since, decoding and setting up in code
// that may be running for the first time, is added to it.
func applyHostState(cfg wire.Config, recv int64) {
	if cfg.TimeNS > 0 {
		ts := unix.NsecToTimespec(cfg.TimeNS + max(0, bootNS()-recv))
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			logf("set clock: %v", err)
		}
	}
	if len(cfg.Seed) > 0 {
		if err := reseed(cfg.Seed); err != nil {
			logf("reseed: %v", err)
		}
	}
}

// reseed credits seed to the kernel's entropy pool and forces the CRNG to
// reseed from it.
func reseed(seed []byte) error {
	f, err := urandom()
	if err != nil {
		return err
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	b := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(b[0:], uint32(8*len(seed)))
	binary.NativeEndian.PutUint32(b[4:], uint32(len(seed)))
	copy(b[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&b[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// urandom returns /dev/urandom open for writing, kept open from the first
// reseed that opens it on: a zygote's rehearsal opens it, and the start
// that claims the zygote does not open it again.
func urandom() (*os.File, error) {
	urandomFile.Lock()
	defer urandomFile.Unlock()
	if urandomFile.f == nil {
		f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		urandomFile.f = f
	}
	return urandomFile.f, nil
}

var urandomFile struct {
	sync.Mutex
	f *os.File
}

// checkConfig validates the config flick-init is to run.
func checkConfig(cfg wire.Config) error {
	switch {
	case len(cfg.Args) == 0:
		return errors.New("config: no args")
	case cfg.WritableLayer != "" && cfg.WritableLayer != wire.LayerDisk && cfg.WritableLayer != wire.LayerMemory:
		return fmt.Errorf("config: writable_layer %q is neither disk nor memory", cfg.WritableLayer)
	case cfg.RootDevice == "" || cfg.DataDevice == "":
		return errors.New("config: root_device and data_device are required")
	case cfg.RootFSType != "erofs" && cfg.RootFSType != "ext4":
		return fmt.Errorf("config: root_fstype %q is neither erofs nor ext4", cfg.RootFSType)
	}
	return nil
}

// findDisks maps virtio-blk serial numbers to /dev paths, waiting until all
// of them have appeared.
func findDisks(serials ...string) (map[string]string, error) {
	found := make(map[string]string, len(serials))
	err := poll("disks "+strings.Join(serials, ", "), deviceTimeout, func() (bool, error) {
		for _, blk := range dirNames("/sys/block") {
			if !strings.HasPrefix(blk, "vd") {
				continue
			}
			b, err := os.ReadFile("/sys/block/" + blk + "/serial")
			if err != nil {
				continue
			}
			dev := "/dev/" + blk
			if _, err := os.Stat(dev); err == nil {
				found[strings.TrimSpace(string(b))] = dev
			}
		}
		for _, s := range serials {
			if found[s] == "" {
				return false, nil
			}
		}
		return true, nil
	})
	return found, err
}

// setupRoot builds the app's root: the image read-only, under an overlay
// whose upper layer is on the data disk or in memory, with the usual
// pseudo-filesystems.
func setupRoot(cfg wire.Config) error {
	if err := mountLower(cfg); err != nil {
		return err
	}
	return mountUpper(cfg)
}

// mountLower mounts the image's root disk read-only.
func mountLower(cfg wire.Config) error {
	disks, err := findDisks(cfg.RootDevice)
	if err != nil {
		return err
	}
	lower := mountPoint{disks[cfg.RootDevice], lowerDir, cfg.RootFSType, unix.MS_RDONLY, ""}
	return lower.mount()
}

// mountUpper mounts the writable layer, the overlay of both and the app's
// pseudo-filesystems.
func mountUpper(cfg wire.Config) error {
	inMemory := cfg.WritableLayer == wire.LayerMemory
	disks := map[string]string{}
	if !inMemory {
		var err error
		if disks, err = findDisks(cfg.DataDevice); err != nil {
			return err
		}
	}
	// noinit_itable: no ext4lazyinit thread zeroing inode tables of a
	// fresh disk (mkfs -E lazy_itable_init=1) on our one vCPU while the
	// app runs. A layer in memory skips the ext4 mount, and overlayfs's
	// work-dir checks on tmpfs are cheap: 53-71 ms from the disks to a
	// planned app against 172-176 ms on ext4 under TCG.
	upper := mountPoint{disks[cfg.DataDevice], dataDir, "ext4", unix.MS_NOATIME, "noinit_itable"}
	if inMemory {
		upper = mountPoint{"tmpfs", dataDir, "tmpfs", unix.MS_NOSUID, "mode=0755"}
	}
	if err := upper.mount(); err != nil {
		return err
	}
	for _, d := range []string{dataDir + "/upper", dataDir + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	overlay := mountPoint{"overlay", newRoot, "overlay", 0,
		"lowerdir=" + lowerDir + ",upperdir=" + dataDir + "/upper,workdir=" + dataDir + "/work"}
	if err := overlay.mount(); err != nil {
		return err
	}
	mountAll(appMounts)
	return nil
}

// setHostname names the machine and writes /etc/hostname and /etc/hosts in
// the app's root; the name resolves to the guest's address on its network
// when it has one (n), else to 127.0.1.1.
func setHostname(root rootDir, name string, n *wire.Net) error {
	if name == "" {
		return nil
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	if err := root.mkdir("etc", 0o755); err != nil {
		return fmt.Errorf("mkdir /etc: %w", err)
	}
	if err := root.writeFile("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return fmt.Errorf("write /etc/hostname: %w", err)
	}
	self := "127.0.1.1"
	if n != nil {
		if p, err := netip.ParsePrefix(n.Address); err == nil {
			self = p.Addr().String()
		}
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + self + "\t" + name + "\n"
	if err := root.writeFile("/etc/hosts", []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("write /etc/hosts: %w", err)
	}
	return nil
}

// loopbackUp brings lo up; the kernel gives it 127.0.0.1 by itself.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}
