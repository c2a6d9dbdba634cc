package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// netTimeout bounds the wait for the network interface to appear.
const netTimeout = 5 * time.Second

// netUp configures the guest's interface from the host's config: its MAC
// (a restored snapshot carries the snapshot's), address, the default route,
// and the app's /etc/resolv.conf (setHostname writes /etc/hosts). ioctls
// only: no netlink library and no DHCP.
func netUp(root rootDir, n *wire.Net) error {
	if err := linkUp(n); err != nil {
		return err
	}
	return writeResolvConf(root, n)
}

// standInAddress is the link-local address that a boot snapshot's link
// carries until the host gives it one.
const standInAddress = "169.254.0.3/16"

// linkStandIn brings the interface up, when the VM has one, with the
// stand-in address and no route. A boot to snapshot does so before the
// save: bringing virtio-net up (its receive ring filled) was the dearest
// step of a start from the snapshot, 24-50 ms of first-time code under
// TCG, and changing the address of a link that is up costs less.
func linkStandIn() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	has := ifExists(fd, "eth0") || firstInterface() != ""
	unix.Close(fd)
	if !has {
		return nil
	}
	return linkUp(&wire.Net{Address: standInAddress})
}

// linkUp configures the interface and the default route.
func linkUp(n *wire.Net) error {
	prefix, err := netip.ParsePrefix(n.Address)
	if err != nil || !prefix.Addr().Is4() {
		return fmt.Errorf("network: address %q is not an IPv4 CIDR", n.Address)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer unix.Close(fd)
	// The kernel names the one virtio-net device eth0; the listing of
	// /sys/class/net is the fallback, and dearer under TCG.
	ifname := "eth0"
	if !ifExists(fd, ifname) {
		if err := poll("network interface", netTimeout, func() (bool, error) {
			ifname = firstInterface()
			return ifname != "", nil
		}); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}

	if n.MAC != "" {
		if err := setMAC(fd, ifname, n.MAC); err != nil {
			return err
		}
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := ifr.SetInet4Addr(prefix.Addr().AsSlice()); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("network: set %s address %s: %w", ifname, prefix.Addr(), err)
	}
	mask := netip.AddrFrom4(maskOf(prefix.Bits()))
	if err := ifr.SetInet4Addr(mask.AsSlice()); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("network: set %s netmask: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network: %s flags: %w", ifname, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network: %s up: %w", ifname, err)
	}
	if n.Gateway != "" {
		gw, err := netip.ParseAddr(n.Gateway)
		if err != nil || !gw.Is4() {
			return fmt.Errorf("network: gateway %q is not an IPv4 address", n.Gateway)
		}
		if err := addDefaultRoute(fd, gw); err != nil {
			return err
		}
	}
	return nil
}

// writeResolvConf points the app's resolver at the network's DNS.
func writeResolvConf(root rootDir, n *wire.Net) error {
	// Without fmt, whose printf is not otherwise on a start's way and
	// costs ~100 translated blocks under TCG the first time.
	var rc strings.Builder
	for _, s := range n.DNS {
		rc.WriteString("nameserver " + s + "\n")
	}
	if n.Search != "" {
		rc.WriteString("search " + n.Search + "\n")
	}
	if err := root.mkdir("etc", 0o755); err != nil {
		return fmt.Errorf("mkdir /etc: %w", err)
	}
	if rc.Len() > 0 {
		if err := root.writeFile("/etc/resolv.conf", []byte(rc.String()), 0o644); err != nil {
			return fmt.Errorf("write /etc/resolv.conf: %w", err)
		}
	}
	return nil
}

// ifExists says whether the interface name is there.
func ifExists(fd int, name string) bool {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return false
	}
	return unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr) == nil
}

// firstInterface is the name of the first interface that is not loopback.
func firstInterface() string {
	ents, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return ""
	}
	for _, e := range ents {
		if e.Name() != "lo" {
			return e.Name()
		}
	}
	return ""
}

func maskOf(bits int) [4]byte {
	v := ^uint32(0) << (32 - bits)
	return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// ifreqHW is struct ifreq with a hardware address in its union.
type ifreqHW struct {
	name   [unix.IFNAMSIZ]byte
	family uint16
	data   [22]byte
}

// setMAC sets the interface's hardware address unless it has it already
// (a cold boot: the VMM gave it). An ioctl and a parser by hand: fmt's
// scanner and a sysfs read cost ~6 ms of untranslated code under TCG.
func setMAC(fd int, ifname, mac string) error {
	hw, ok := parseMAC(mac)
	if !ok {
		return fmt.Errorf("network: MAC %q is not six hex bytes joined by colons", mac)
	}
	var req ifreqHW
	copy(req.name[:], ifname)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFHWADDR, uintptr(unsafe.Pointer(&req))); errno == 0 && [6]byte(req.data[:6]) == hw {
		return nil
	}
	req.family = unix.ARPHRD_ETHER
	copy(req.data[:], hw[:])
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFHWADDR, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return fmt.Errorf("network: set %s MAC %s: %w", ifname, mac, errno)
	}
	return nil
}

// parseMAC reads "02:fc:0a:4d:00:05".
func parseMAC(s string) ([6]byte, bool) {
	var hw [6]byte
	if len(s) != 17 {
		return hw, false
	}
	nib := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	for i := range hw {
		hi, ok1 := nib(s[3*i])
		lo, ok2 := nib(s[3*i+1])
		if !ok1 || !ok2 || (i < 5 && s[3*i+2] != ':') {
			return hw, false
		}
		hw[i] = hi<<4 | lo
	}
	return hw, true
}

// rtentry is the kernel's struct rtentry (linux/route.h) on 64-bit
// machines, for SIOCADDRT.
type rtentry struct {
	pad1    uint64
	dst     unix.RawSockaddrInet4
	gateway unix.RawSockaddrInet4
	genmask unix.RawSockaddrInet4
	flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	metric  int16
	dev     uintptr
	mtu     uint64
	window  uint64
	irtt    uint16
}

// addDefaultRoute routes everything through gw, in place of any default
// route there was (a zygote's rehearsal sets one up).
func addDefaultRoute(fd int, gw netip.Addr) error {
	var old rtentry
	old.dst.Family = unix.AF_INET
	old.genmask.Family = unix.AF_INET
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCDELRT, uintptr(unsafe.Pointer(&old)))
		if errno != 0 {
			break // ESRCH: none left
		}
	}
	rt := rtentry{flags: unix.RTF_UP | unix.RTF_GATEWAY}
	rt.dst.Family = unix.AF_INET
	rt.genmask.Family = unix.AF_INET
	rt.gateway.Family = unix.AF_INET
	rt.gateway.Addr = gw.As4()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&rt)))
	if errno != 0 {
		return fmt.Errorf("network: default route via %s: %w", gw, errno)
	}
	return nil
}
