package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Interface names. Bridges of user networks and TAPs carry a prefix so
// that a restarted daemon can tell its own links from the host's.
const (
	defaultBridge = "flick0"
	bridgePrefix  = "flkbr-"
	tapPrefix     = "fk"
)

// tapName is the TAP of instance (or zygote) id.
func tapName(id string) string {
	if len(id) > 12 {
		id = id[:12]
	}
	return tapPrefix + id
}

// ensureBridge makes the bridge with the gateway's address and brings it
// up; one that exists is fixed up, not recreated, so that live TAPs stay
// plugged in.
func (m *Manager) ensureBridge(name string, gw netip.Addr, subnet netip.Prefix) error {
	h := m.nl
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	} else if link.Type() != "bridge" {
		return fmt.Errorf("interface %s exists and is a %s, not a bridge: remove it or choose another network", name, link.Type())
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("bridge %s: list addresses: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet.String() == want.IPNet.String() {
			have = true
		}
	}
	if !have {
		if err := h.AddrAdd(link, want); err != nil {
			return fmt.Errorf("bridge %s: add %s: %w", name, want.IPNet, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bridge %s up: %w", name, err)
	}
	return nil
}

// deleteLink removes an interface; a missing one is not an error.
func (m *Manager) deleteLink(name string) error {
	link, err := m.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return m.nl.LinkDel(link)
}

// bridges lists flick's bridges: the default one and those of user
// networks.
func (m *Manager) bridges() ([]string, error) {
	all, err := m.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []string
	for _, l := range all {
		n := l.Attrs().Name
		if l.Type() == "bridge" && (n == defaultBridge || strings.HasPrefix(n, bridgePrefix)) {
			out = append(out, n)
		}
	}
	return out, nil
}

// ifreqFlags is struct ifreq with the flags member of its union.
type ifreqFlags struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// openTAP makes a TAP named name in the manager's namespace and returns
// its queue: the TAP lives as long as some process holds that file open,
// so it goes away by itself with the VMM that it is handed to. It carries
// virtio-net headers, so QEMU can pass offloads through.
func (m *Manager) openTAP(name string) (*os.File, error) {
	var f *os.File
	err := m.cfg.NS.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req ifreqFlags
		copy(req.name[:], name)
		req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
			unix.Close(fd)
			return fmt.Errorf("create tap %s: %w", name, errno)
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
		return nil
	})
	return f, err
}

// plugTAP attaches a TAP to a bridge and brings it up.
func (m *Manager) plugTAP(name, bridge string) error {
	tap, err := m.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	br, err := m.nl.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.nl.LinkSetMasterByIndex(tap, br.Attrs().Index); err != nil {
			return fmt.Errorf("plug tap %s into %s: %w", name, bridge, err)
		}
	}
	if err := m.nl.LinkSetUp(tap); err != nil {
		return fmt.Errorf("tap %s up: %w", name, err)
	}
	return nil
}

// hostRoutes lists the IPv4 destinations the namespace routes that are not
// flick's own, to keep new subnets clear of them.
func (m *Manager) hostRoutes(ours map[string]bool) ([]netip.Prefix, error) {
	routes, err := m.nl.RouteList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if l, err := m.nl.LinkByIndex(r.LinkIndex); err == nil && ours[l.Attrs().Name] {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || ones == 0 {
			continue // a default route overlaps everything by design
		}
		out = append(out, netip.PrefixFrom(a, ones).Masked())
	}
	return out, nil
}
