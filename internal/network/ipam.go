package network

import (
	"fmt"
	"net/netip"

	"github.com/flick-vm/flick/internal/errdefs"
)

// Addresses of a subnet: the first is the network's, the second the
// gateway's (the host's bridge), the last the broadcast; the rest are for
// instances.

// gatewayOf is a subnet's second address.
func gatewayOf(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// broadcastOf is a subnet's last address.
func broadcastOf(subnet netip.Prefix) netip.Addr {
	b := subnet.Masked().Addr().As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// checkSubnet accepts an IPv4 subnet with room for at least two instances.
func checkSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errdefs.InvalidArgument("subnet %q is not a CIDR such as 10.88.0.0/24", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, errdefs.InvalidArgument("subnet %s: only IPv4 subnets are supported", s)
	}
	if p.Bits() > 29 || p.Bits() < 8 {
		return netip.Prefix{}, errdefs.InvalidArgument("subnet %s: the prefix must be /8 to /29", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, errdefs.InvalidArgument("subnet %s has host bits set: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// allocate returns the first free instance address of subnet, trying want
// first when it is one; used says which are taken.
func allocate(subnet netip.Prefix, want netip.Addr, used map[netip.Addr]bool) (netip.Addr, error) {
	gw, bc := gatewayOf(subnet), broadcastOf(subnet)
	ok := func(a netip.Addr) bool {
		return subnet.Contains(a) && a != subnet.Masked().Addr() && a != gw && a != bc && !used[a]
	}
	if want.IsValid() && ok(want) {
		return want, nil
	}
	for a := gw.Next(); a.IsValid() && a != bc; a = a.Next() {
		if ok(a) {
			return a, nil
		}
	}
	return netip.Addr{}, errdefs.Conflict("network %s has no free address left: remove instances or use a larger --subnet", subnet)
}

// overlaps says whether two subnets share an address.
func overlaps(a, b netip.Prefix) bool {
	return a.Overlaps(b)
}

// macFor derives an instance's MAC from its address: locally administered,
// unicast, and unique on its network as the address is.
func macFor(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("02:fc:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
