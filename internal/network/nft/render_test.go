package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// renderRule spells a rule the way `nft list ruleset` would, closely enough
// for tests to compare rules as text. It knows only the expressions this
// package emits and fails on anything else: a compare must read a register
// that a load wrote, with a value of that load's size, and a NAT must find
// an address and a port in the registers it names.
func renderRule(r *nftables.Rule) (string, error) {
	s, err := renderExprs(r.Exprs)
	if err != nil {
		return "", err
	}
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		s += fmt.Sprintf(" comment %q", c)
	}
	return s, nil
}

// loaded is what a register holds.
type loaded struct {
	what string // the load as nft spells it, "" for an immediate
	size int    // bytes the load writes
	mask []byte // set once a bitwise AND was applied
	data []byte // an immediate's value
}

func renderExprs(exprs []expr.Any) (string, error) {
	regs := map[uint32]loaded{}
	read := func(r uint32) (loaded, error) {
		v, ok := regs[r]
		if !ok {
			return v, fmt.Errorf("register %d read before it was written", r)
		}
		return v, nil
	}
	var out []string
	for i, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			names := map[expr.MetaKey]loaded{
				expr.MetaKeyNFPROTO: {what: "meta nfproto", size: 1},
				expr.MetaKeyL4PROTO: {what: "meta l4proto", size: 1},
				expr.MetaKeyIIFNAME: {what: "iifname", size: unix.IFNAMSIZ},
				expr.MetaKeyOIFNAME: {what: "oifname", size: unix.IFNAMSIZ},
			}
			v, ok := names[e.Key]
			if !ok || e.SourceRegister {
				return "", fmt.Errorf("expr %d: meta key %d not expected", i, e.Key)
			}
			regs[e.Register] = v
		case *expr.Payload:
			var what string
			switch {
			case e.OperationType != expr.PayloadLoad:
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == ipv4SaddrOffset && e.Len == 4:
				what = "ip saddr"
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == ipv4DaddrOffset && e.Len == 4:
				what = "ip daddr"
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				what = "th dport"
			}
			if what == "" {
				return "", fmt.Errorf("expr %d: payload %+v not expected", i, *e)
			}
			regs[e.DestRegister] = loaded{what: what, size: int(e.Len)}
		case *expr.Fib:
			want := expr.Fib{Register: e.Register, FlagDADDR: true, ResultADDRTYPE: true}
			if *e != want {
				return "", fmt.Errorf("expr %d: fib %+v not expected", i, *e)
			}
			regs[e.Register] = loaded{what: "fib daddr type", size: 4}
		case *expr.Ct:
			var what string
			switch e.Key {
			case expr.CtKeySTATE:
				what = "ct state"
			case expr.CtKeySTATUS:
				what = "ct status"
			}
			if what == "" || e.SourceRegister {
				return "", fmt.Errorf("expr %d: ct key %d not expected", i, e.Key)
			}
			regs[e.Register] = loaded{what: what, size: 4}
		case *expr.Bitwise:
			v, err := read(e.SourceRegister)
			if err != nil {
				return "", fmt.Errorf("expr %d: bitwise: %w", i, err)
			}
			if int(e.Len) != v.size || len(e.Mask) != v.size || !bytes.Equal(e.Xor, make([]byte, v.size)) || v.mask != nil {
				return "", fmt.Errorf("expr %d: bitwise %+v on %s is not a plain AND", i, *e, v.what)
			}
			v.mask = e.Mask
			regs[e.DestRegister] = v
		case *expr.Cmp:
			v, err := read(e.Register)
			if err != nil {
				return "", fmt.Errorf("expr %d: cmp: %w", i, err)
			}
			s, err := renderCmp(v, e.Op, e.Data)
			if err != nil {
				return "", fmt.Errorf("expr %d: %w", i, err)
			}
			out = append(out, s)
		case *expr.Immediate:
			regs[e.Register] = loaded{size: len(e.Data), data: e.Data}
		case *expr.NAT:
			addr, err1 := read(e.RegAddrMin)
			port, err2 := read(e.RegProtoMin)
			// The kernel reports what it derives itself: the max registers
			// equal to the min ones and NF_NAT_RANGE_PROTO_SPECIFIED, so
			// those are allowed and Specified is not checked.
			if err1 != nil || err2 != nil || e.Type != expr.NATTypeDestNAT || e.Family != unix.NFPROTO_IPV4 ||
				addr.what != "" || len(addr.data) != 4 || port.what != "" || len(port.data) != 2 ||
				(e.RegAddrMax != 0 && e.RegAddrMax != e.RegAddrMin) ||
				(e.RegProtoMax != 0 && e.RegProtoMax != e.RegProtoMin) || e.Random || e.FullyRandom || e.Persistent || e.Prefix {
				return "", fmt.Errorf("expr %d: nat %+v not expected", i, *e)
			}
			out = append(out, fmt.Sprintf("dnat ip to %s", netip.AddrPortFrom(
				netip.AddrFrom4([4]byte(addr.data)), binary.BigEndian.Uint16(port.data))))
		case *expr.Masq:
			if *e != (expr.Masq{}) {
				return "", fmt.Errorf("expr %d: masq %+v not expected", i, *e)
			}
			out = append(out, "masquerade")
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				out = append(out, "accept")
			case expr.VerdictDrop:
				out = append(out, "drop")
			default:
				return "", fmt.Errorf("expr %d: verdict %d not expected", i, e.Kind)
			}
		default:
			return "", fmt.Errorf("expr %d: %T not expected", i, e)
		}
	}
	return strings.Join(out, " "), nil
}

func renderCmp(v loaded, op expr.CmpOp, data []byte) (string, error) {
	if v.what == "" {
		return "", fmt.Errorf("cmp on an immediate")
	}
	if len(data) != v.size {
		return "", fmt.Errorf("cmp of %s: %d bytes against a %d-byte load", v.what, len(data), v.size)
	}
	var not string
	switch op {
	case expr.CmpOpEq:
	case expr.CmpOpNeq:
		not = "!= "
	default:
		return "", fmt.Errorf("cmp of %s: op %d not expected", v.what, op)
	}

	// ct state and ct status are tests of bits: (x & mask) != 0.
	if v.what == "ct state" || v.what == "ct status" {
		if v.mask == nil || op != expr.CmpOpNeq || !bytes.Equal(data, make([]byte, 4)) {
			return "", fmt.Errorf("cmp of %s is not a test of bits", v.what)
		}
		names := map[string][]string{
			"ct state":  {0: "invalid", 1: "established", 2: "related", 3: "new"},
			"ct status": {5: "dnat"},
		}[v.what]
		var set []string
		mask := binaryutil.NativeEndian.Uint32(v.mask)
		for b := range 32 {
			if mask&(1<<b) == 0 {
				continue
			}
			if b >= len(names) || names[b] == "" {
				return "", fmt.Errorf("%s bit %d not expected", v.what, b)
			}
			set = append(set, names[b])
		}
		return v.what + " " + strings.Join(set, ","), nil
	}

	var val string
	switch v.what {
	case "meta nfproto":
		if data[0] != unix.NFPROTO_IPV4 {
			return "", fmt.Errorf("meta nfproto %d not expected", data[0])
		}
		val = "ipv4"
	case "meta l4proto":
		switch data[0] {
		case unix.IPPROTO_TCP:
			val = "tcp"
		case unix.IPPROTO_UDP:
			val = "udp"
		default:
			return "", fmt.Errorf("meta l4proto %d not expected", data[0])
		}
	case "iifname", "oifname":
		name, pad, _ := bytes.Cut(data, []byte{0})
		if len(name) == 0 || !bytes.Equal(pad, make([]byte, len(pad))) {
			return "", fmt.Errorf("%s %q is not a NUL-padded name", v.what, data)
		}
		val = string(name)
	case "ip saddr", "ip daddr":
		addr := netip.AddrFrom4([4]byte(data))
		val = addr.String()
		if v.mask != nil {
			m := binary.BigEndian.Uint32(v.mask)
			ones := bits.LeadingZeros32(^m)
			if m != ^uint32(0)<<(32-ones) || ones == 32 {
				return "", fmt.Errorf("%s mask %x is not a prefix", v.what, v.mask)
			}
			p := netip.PrefixFrom(addr, ones)
			if p.Masked() != p {
				return "", fmt.Errorf("%s %s has bits outside its mask", v.what, p)
			}
			val = p.String()
		}
	case "th dport":
		val = fmt.Sprint(binary.BigEndian.Uint16(data))
	case "fib daddr type":
		if binaryutil.NativeEndian.Uint32(data) != unix.RTN_LOCAL {
			return "", fmt.Errorf("fib type %x not expected", data)
		}
		val = "local"
	}
	if v.mask != nil && !strings.HasPrefix(v.what, "ip ") {
		return "", fmt.Errorf("mask on %s not expected", v.what)
	}
	return v.what + " " + not + val, nil
}
