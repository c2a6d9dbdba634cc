package nft

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The chains of flickd's table.
const (
	ChainPrerouting  = "prerouting"
	ChainPostrouting = "postrouting"
	ChainForward     = "forward"
	ChainInput       = "input"
)

// The registers the rules load into. nftables numbers the four 16-byte
// registers 1 to 4 (register 0 is the verdict), and a 16-byte interface
// name fits one whole.
const (
	reg1 = unix.NFT_REG_1
	reg2 = unix.NFT_REG_2
)

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits: the connection's
// destination was rewritten, here by a published port's DNAT.
const ipsDstNAT = 1 << 5

// plan is a Ruleset turned into the table, chains and rules to send.
type plan struct {
	table  *nftables.Table
	chains []*nftables.Chain
	rules  []*nftables.Rule // in order; each names its Table and Chain
}

// build validates rs and turns it into the objects Apply sends. It does no
// I/O.
func build(rs Ruleset) (plan, error) {
	rs, err := validate(rs)
	if err != nil {
		return plan{}, err
	}
	t := &nftables.Table{Name: rs.Table, Family: nftables.TableFamilyINet}
	accept := nftables.ChainPolicyAccept
	pre := &nftables.Chain{
		Name: ChainPrerouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	}
	post := &nftables.Chain{
		Name: ChainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	}
	fwd := &nftables.Chain{
		Name: ChainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	}
	in := &nftables.Chain{
		Name: ChainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	}
	p := plan{table: t, chains: []*nftables.Chain{pre, post, fwd, in}}
	add := func(c *nftables.Chain, comment string, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		p.rules = append(p.rules, &nftables.Rule{
			Table: t, Chain: c, Exprs: all,
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
		})
	}

	// Published ports. Traffic from this host itself never passes
	// prerouting, and a loopback HostIP can only be reached from it, so
	// flickd serves those with a proxy instead.
	for _, f := range rs.Forwards {
		if r := forwardRule(t, pre, f); r != nil {
			p.rules = append(p.rules, r)
		}
	}

	for _, n := range rs.Networks {
		sub := n.Subnet.Masked()
		add(post, "egress of "+n.Bridge,
			nfprotoIPv4(), ipSaddrIn(sub), ifnameIs(expr.MetaKeyOIFNAME, expr.CmpOpNeq, n.Bridge), masquerade())
		// A guest reaching a port published by a guest of the same bridge
		// through a host address: without this the answer would come
		// straight from the other guest's address and be dropped.
		add(post, "hairpin on "+n.Bridge,
			ifnameIs(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Bridge), nfprotoIPv4(), ipSaddrIn(sub),
			ctHasBits(expr.CtKeySTATUS, ipsDstNAT), masquerade())
	}

	add(fwd, "replies", ctHasBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	add(fwd, "published ports", ctHasBits(expr.CtKeySTATUS, ipsDstNAT), verdict(expr.VerdictAccept))
	for _, a := range rs.Networks {
		for _, b := range rs.Networks {
			if a.Bridge == b.Bridge {
				continue
			}
			add(fwd, fmt.Sprintf("isolate %s from %s", a.Bridge, b.Bridge),
				ifnameIs(expr.MetaKeyIIFNAME, expr.CmpOpEq, a.Bridge),
				ifnameIs(expr.MetaKeyOIFNAME, expr.CmpOpEq, b.Bridge), verdict(expr.VerdictDrop))
		}
	}

	for _, a := range rs.Networks {
		for _, b := range rs.Networks {
			if a.Bridge == b.Bridge {
				continue
			}
			add(in, fmt.Sprintf("keep %s off the gateway of %s", a.Bridge, b.Bridge),
				ifnameIs(expr.MetaKeyIIFNAME, expr.CmpOpEq, a.Bridge),
				nfprotoIPv4(), ipDaddrIs(b.Gateway), verdict(expr.VerdictDrop))
		}
	}
	return p, nil
}

// forwardRule is the DNAT rule of a validated f in chain pre, or nil for
// a loopback HostIP. Its comment ends with " for TAG" when f has a tag.
func forwardRule(t *nftables.Table, pre *nftables.Chain, f Forward) *nftables.Rule {
	if f.HostIP.IsLoopback() {
		return nil
	}
	proto, _ := l4proto(f.Proto) // validated
	match := []expr.Any{}
	match = append(match, nfprotoIPv4()...)
	match = append(match, l4protoIs(proto)...)
	match = append(match, dportIs(f.HostPort)...)
	if !anyHost(f.HostIP) {
		match = append(match, ipDaddrIs(f.HostIP)...)
	}
	// The route lookup last: it is the dearest test.
	match = append(match, fibDaddrLocal()...)
	match = append(match, dnat(f.GuestIP, f.GuestPort)...)
	comment := fmt.Sprintf("publish %s %s to %s", f.Proto, hostAddr(f), netip.AddrPortFrom(f.GuestIP, f.GuestPort))
	if f.Tag != "" {
		comment += tagSep + f.Tag
	}
	return &nftables.Rule{
		Table: t, Chain: pre, Exprs: match,
		UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
	}
}

// tagSep ends a forward's comment before its tag.
const tagSep = " for "

// ifname is an interface name as the kernel compares it: IFNAMSIZ bytes,
// NUL padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ifnameIs is `iifname NAME` or `oifname [!=] NAME`.
func ifnameIs(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: ifname(name)},
	}
}

// nfprotoIPv4 is `meta nfproto ipv4`: in an inet table it must guard every
// match on the IPv4 header, which would read the wrong bytes of an IPv6
// one.
func nfprotoIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// Offsets of the addresses in the IPv4 header.
const (
	ipv4SaddrOffset = 12
	ipv4DaddrOffset = 16
)

// ipSaddrIn is `ip saddr PREFIX`.
func ipSaddrIn(p netip.Prefix) []expr.Any { return ipAddrIn(ipv4SaddrOffset, p) }

// ipDaddrIs is `ip daddr ADDR`.
func ipDaddrIs(a netip.Addr) []expr.Any {
	return ipAddrIn(ipv4DaddrOffset, netip.PrefixFrom(a, 32))
}

func ipAddrIn(offset uint32, p netip.Prefix) []expr.Any {
	p = p.Masked()
	e := []expr.Any{&expr.Payload{
		DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4,
	}}
	if p.Bits() < 32 {
		mask := binaryutil.BigEndian.PutUint32(^uint32(0) << (32 - p.Bits()))
		e = append(e, &expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: mask, Xor: make([]byte, 4),
		})
	}
	addr := p.Addr().As4()
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr[:]})
}

// l4protoIs is `meta l4proto PROTO`.
func l4protoIs(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// dportIs is `th dport PORT`: the destination port sits at the same place
// in TCP and UDP headers, so it needs a `meta l4proto` before it.
func dportIs(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// fibDaddrLocal is `fib daddr type local`: the packet is addressed to this
// host. The address type comes back as a host-endian 32-bit RTN_* value.
func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// ctHasBits is `ct state|status BITS`: any of bits is set. Both keys load
// a host-endian 32-bit word.
func ctHasBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg1},
		&expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}

// dnat is `dnat ip to ADDR:PORT`, the address in register 1 and the port
// in register 2.
func dnat(addr netip.Addr, port uint16) []expr.Any {
	a := addr.As4()
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: a[:]},
		&expr.Immediate{Register: reg2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: reg1, RegProtoMin: reg2,
		},
	}
}

func masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }

func verdict(kind expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: kind}} }
