package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/flick-vm/flick/internal/errdefs"
)

var (
	net0 = Network{Bridge: "flick0", Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1")}
	net1 = Network{Bridge: "flick1", Subnet: netip.MustParsePrefix("10.78.0.0/24"), Gateway: netip.MustParseAddr("10.78.0.1")}
	net2 = Network{Bridge: "flick2", Subnet: netip.MustParsePrefix("10.79.0.0/24"), Gateway: netip.MustParseAddr("10.79.0.254")}
	web  = Forward{Proto: "tcp", HostPort: 8080, GuestIP: netip.MustParseAddr("10.77.0.2"), GuestPort: 80}
)

// rendered is a plan as text, chain by chain.
func rendered(t *testing.T, p plan) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	for _, c := range p.chains {
		got[c.Name] = []string{}
	}
	for _, r := range p.rules {
		if r.Table != p.table {
			t.Fatalf("rule in chain %s names table %v, want %v", r.Chain.Name, r.Table, p.table)
		}
		if !slices.Contains(p.chains, r.Chain) {
			t.Fatalf("rule names chain %s, which the plan does not add", r.Chain.Name)
		}
		s, err := renderRule(r)
		if err != nil {
			t.Fatalf("chain %s: %v", r.Chain.Name, err)
		}
		got[r.Chain.Name] = append(got[r.Chain.Name], s)
	}
	return got
}

func TestBuildRules(t *testing.T) {
	tests := []struct {
		name string
		rs   Ruleset
		want map[string][]string
	}{
		{
			name: "empty",
			rs:   Ruleset{},
			want: map[string][]string{
				"prerouting":  {},
				"postrouting": {},
				"forward": {
					`ct state established,related accept comment "replies"`,
					`ct status dnat accept comment "published ports"`,
				},
				"input": {},
			},
		},
		{
			name: "one network and its forwards",
			rs: Ruleset{
				Networks: []Network{net0},
				Forwards: []Forward{
					web,
					{Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.10"), HostPort: 5353, GuestIP: netip.MustParseAddr("10.77.0.3"), GuestPort: 53},
					// Served by flickd's proxy: no rule.
					{Proto: "tcp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 9000, GuestIP: netip.MustParseAddr("10.77.0.2"), GuestPort: 9000},
					{Proto: "tcp", HostIP: netip.MustParseAddr("127.3.2.1"), HostPort: 9001, GuestIP: netip.MustParseAddr("10.77.0.2"), GuestPort: 9001},
					// 0.0.0.0 is every address, like the zero Addr.
					{Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 8443, GuestIP: netip.MustParseAddr("10.77.0.2"), GuestPort: 443},
				},
			},
			want: map[string][]string{
				"prerouting": {
					`meta nfproto ipv4 meta l4proto tcp th dport 8080 fib daddr type local dnat ip to 10.77.0.2:80 comment "publish tcp *:8080 to 10.77.0.2:80"`,
					`meta nfproto ipv4 meta l4proto udp th dport 5353 ip daddr 192.0.2.10 fib daddr type local dnat ip to 10.77.0.3:53 comment "publish udp 192.0.2.10:5353 to 10.77.0.3:53"`,
					`meta nfproto ipv4 meta l4proto tcp th dport 8443 fib daddr type local dnat ip to 10.77.0.2:443 comment "publish tcp *:8443 to 10.77.0.2:443"`,
				},
				"postrouting": {
					`meta nfproto ipv4 ip saddr 10.77.0.0/16 oifname != flick0 masquerade comment "egress of flick0"`,
					`oifname flick0 meta nfproto ipv4 ip saddr 10.77.0.0/16 ct status dnat masquerade comment "hairpin on flick0"`,
				},
				"forward": {
					`ct state established,related accept comment "replies"`,
					`ct status dnat accept comment "published ports"`,
				},
				"input": {},
			},
		},
		{
			name: "three networks isolated pairwise",
			rs:   Ruleset{Networks: []Network{net0, net1, net2}},
			want: map[string][]string{
				"prerouting": {},
				"postrouting": {
					`meta nfproto ipv4 ip saddr 10.77.0.0/16 oifname != flick0 masquerade comment "egress of flick0"`,
					`oifname flick0 meta nfproto ipv4 ip saddr 10.77.0.0/16 ct status dnat masquerade comment "hairpin on flick0"`,
					`meta nfproto ipv4 ip saddr 10.78.0.0/24 oifname != flick1 masquerade comment "egress of flick1"`,
					`oifname flick1 meta nfproto ipv4 ip saddr 10.78.0.0/24 ct status dnat masquerade comment "hairpin on flick1"`,
					`meta nfproto ipv4 ip saddr 10.79.0.0/24 oifname != flick2 masquerade comment "egress of flick2"`,
					`oifname flick2 meta nfproto ipv4 ip saddr 10.79.0.0/24 ct status dnat masquerade comment "hairpin on flick2"`,
				},
				"forward": {
					`ct state established,related accept comment "replies"`,
					`ct status dnat accept comment "published ports"`,
					`iifname flick0 oifname flick1 drop comment "isolate flick0 from flick1"`,
					`iifname flick0 oifname flick2 drop comment "isolate flick0 from flick2"`,
					`iifname flick1 oifname flick0 drop comment "isolate flick1 from flick0"`,
					`iifname flick1 oifname flick2 drop comment "isolate flick1 from flick2"`,
					`iifname flick2 oifname flick0 drop comment "isolate flick2 from flick0"`,
					`iifname flick2 oifname flick1 drop comment "isolate flick2 from flick1"`,
				},
				"input": {
					`iifname flick0 meta nfproto ipv4 ip daddr 10.78.0.1 drop comment "keep flick0 off the gateway of flick1"`,
					`iifname flick0 meta nfproto ipv4 ip daddr 10.79.0.254 drop comment "keep flick0 off the gateway of flick2"`,
					`iifname flick1 meta nfproto ipv4 ip daddr 10.77.0.1 drop comment "keep flick1 off the gateway of flick0"`,
					`iifname flick1 meta nfproto ipv4 ip daddr 10.79.0.254 drop comment "keep flick1 off the gateway of flick2"`,
					`iifname flick2 meta nfproto ipv4 ip daddr 10.77.0.1 drop comment "keep flick2 off the gateway of flick0"`,
					`iifname flick2 meta nfproto ipv4 ip daddr 10.78.0.1 drop comment "keep flick2 off the gateway of flick1"`,
				},
			},
		},
		{
			name: "subnet with host bits and a 15-byte bridge name",
			rs: Ruleset{Networks: []Network{{
				Bridge: "abcdefghijklmno", Subnet: netip.MustParsePrefix("172.16.5.9/12"), Gateway: netip.MustParseAddr("172.16.0.1"),
			}}},
			want: map[string][]string{
				"prerouting": {},
				"postrouting": {
					`meta nfproto ipv4 ip saddr 172.16.0.0/12 oifname != abcdefghijklmno masquerade comment "egress of abcdefghijklmno"`,
					`oifname abcdefghijklmno meta nfproto ipv4 ip saddr 172.16.0.0/12 ct status dnat masquerade comment "hairpin on abcdefghijklmno"`,
				},
				"forward": {
					`ct state established,related accept comment "replies"`,
					`ct status dnat accept comment "published ports"`,
				},
				"input": {},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := build(tt.rs)
			if err != nil {
				t.Fatal(err)
			}
			got := rendered(t, p)
			for chain, want := range tt.want {
				if !slices.Equal(got[chain], want) {
					t.Errorf("chain %s:\n got %s\nwant %s", chain, strings.Join(got[chain], "\n     "), strings.Join(want, "\n     "))
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("chains %v, want those of %v", got, tt.want)
			}
		})
	}
}

func TestBuildTableAndChains(t *testing.T) {
	tests := []struct {
		name      string
		table     string
		wantTable string
	}{
		{name: "default name", table: "", wantTable: "flick"},
		{name: "given name", table: "flick-test", wantTable: "flick-test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := build(Ruleset{Table: tt.table, Networks: []Network{net0}})
			if err != nil {
				t.Fatal(err)
			}
			if p.table.Name != tt.wantTable || p.table.Family != nftables.TableFamilyINet {
				t.Errorf("table %s family %d, want %s inet", p.table.Name, p.table.Family, tt.wantTable)
			}
			if got := chainSummaries(p.chains); !slices.Equal(got, wantChains) {
				t.Errorf("chains\n got %v\nwant %v", got, wantChains)
			}
		})
	}
}

// wantChains are the base chains of flickd's table as chainSummaries
// spells them.
var wantChains = []string{
	"prerouting type nat hook 0 priority -100 policy accept",
	"postrouting type nat hook 4 priority 100 policy accept",
	"forward type filter hook 2 priority 0 policy accept",
	"input type filter hook 1 priority 0 policy accept",
}

// chainSummaries spells chains as text. A base chain without a policy has
// the kernel's default, accept, and is spelled so: the kernel reports it.
func chainSummaries(cs []*nftables.Chain) []string {
	var out []string
	for _, c := range cs {
		s := fmt.Sprintf("%s type %s", c.Name, c.Type)
		if c.Hooknum != nil {
			s += fmt.Sprintf(" hook %d", *c.Hooknum)
		}
		if c.Priority != nil {
			s += fmt.Sprintf(" priority %d", *c.Priority)
		}
		if c.Policy == nil || *c.Policy == nftables.ChainPolicyAccept {
			s += " policy accept"
		} else {
			s += " policy drop"
		}
		out = append(out, s)
	}
	return out
}

func TestBuildRejects(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::1")
	withNet := func(f func(n *Network)) Ruleset {
		n := net0
		f(&n)
		return Ruleset{Networks: []Network{n}}
	}
	withFwd := func(f func(f *Forward)) Ruleset {
		fw := web
		f(&fw)
		return Ruleset{Networks: []Network{net0}, Forwards: []Forward{fw}}
	}
	tests := []struct {
		name    string
		rs      Ruleset
		class   error
		wantMsg string
	}{
		{"table name too long", Ruleset{Table: strings.Repeat("t", 256)}, errdefs.ErrInvalidArgument, "table name"},
		{"table name with NUL", Ruleset{Table: "fl\x00ick"}, errdefs.ErrInvalidArgument, "table name"},
		{"empty bridge", withNet(func(n *Network) { n.Bridge = "" }), errdefs.ErrInvalidArgument, "network 0: bridge name is empty"},
		{"bridge name of 16 bytes", withNet(func(n *Network) { n.Bridge = "abcdefghijklmnop" }), errdefs.ErrInvalidArgument, "longer than 15 bytes"},
		{"bridge name with a slash", withNet(func(n *Network) { n.Bridge = "br/0" }), errdefs.ErrInvalidArgument, "not a valid interface name"},
		{"bridge name with a space", withNet(func(n *Network) { n.Bridge = "br 0" }), errdefs.ErrInvalidArgument, "not a valid interface name"},
		{"zero subnet", withNet(func(n *Network) { n.Subnet = netip.Prefix{} }), errdefs.ErrInvalidArgument, "not an IPv4 prefix"},
		{"IPv6 subnet", withNet(func(n *Network) { n.Subnet = netip.MustParsePrefix("2001:db8::/64") }), errdefs.ErrInvalidArgument, "not an IPv4 prefix"},
		{"subnet /0", withNet(func(n *Network) { n.Subnet = netip.MustParsePrefix("0.0.0.0/0") }), errdefs.ErrInvalidArgument, "covers every address"},
		{"zero gateway", withNet(func(n *Network) { n.Gateway = netip.Addr{} }), errdefs.ErrInvalidArgument, "gateway invalid IP is not an IPv4 address"},
		{"IPv6 gateway", withNet(func(n *Network) { n.Gateway = v6 }), errdefs.ErrInvalidArgument, "not an IPv4 address"},
		{"IPv4-mapped gateway", withNet(func(n *Network) { n.Gateway = netip.MustParseAddr("::ffff:10.77.0.1") }), errdefs.ErrInvalidArgument, "not an IPv4 address"},
		{"gateway outside subnet", withNet(func(n *Network) { n.Gateway = netip.MustParseAddr("10.78.0.1") }), errdefs.ErrInvalidArgument, "outside subnet 10.77.0.0/16"},
		{"same bridge twice", Ruleset{Networks: []Network{net0, net0}}, errdefs.ErrConflict, "network 1: bridge flick0 is already network 0"},
		{"overlapping subnets", Ruleset{Networks: []Network{net0, {Bridge: "flick9", Subnet: netip.MustParsePrefix("10.77.9.0/24"), Gateway: netip.MustParseAddr("10.77.9.1")}}}, errdefs.ErrConflict, "overlaps 10.77.0.0/16"},
		{"no proto", withFwd(func(f *Forward) { f.Proto = "" }), errdefs.ErrInvalidArgument, `protocol "": want tcp or udp`},
		{"sctp", withFwd(func(f *Forward) { f.Proto = "sctp" }), errdefs.ErrInvalidArgument, `protocol "sctp"`},
		{"upper-case TCP", withFwd(func(f *Forward) { f.Proto = "TCP" }), errdefs.ErrInvalidArgument, `protocol "TCP"`},
		{"host port 0", withFwd(func(f *Forward) { f.HostPort = 0 }), errdefs.ErrInvalidArgument, "forward 0: host port is 0"},
		{"guest port 0", withFwd(func(f *Forward) { f.GuestPort = 0 }), errdefs.ErrInvalidArgument, "forward 0: guest port is 0"},
		{"IPv6 host address", withFwd(func(f *Forward) { f.HostIP = v6 }), errdefs.ErrInvalidArgument, "host address 2001:db8::1 is not IPv4"},
		{"no guest address", withFwd(func(f *Forward) { f.GuestIP = netip.Addr{} }), errdefs.ErrInvalidArgument, "guest address invalid IP"},
		{"IPv6 guest address", withFwd(func(f *Forward) { f.GuestIP = v6 }), errdefs.ErrInvalidArgument, "guest address 2001:db8::1"},
		{"guest address 0.0.0.0", withFwd(func(f *Forward) { f.GuestIP = netip.IPv4Unspecified() }), errdefs.ErrInvalidArgument, "guest address 0.0.0.0"},
		{
			"same port on every address and one", Ruleset{Forwards: []Forward{web, func() Forward {
				f := web
				f.HostIP = netip.MustParseAddr("192.0.2.1")
				return f
			}()}},
			errdefs.ErrConflict, "forward 1: tcp 192.0.2.1:8080 is already published by forward 0",
		},
		{"same port twice", Ruleset{Forwards: []Forward{web, web}}, errdefs.ErrConflict, "forward 1: tcp *:8080 is already published"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := build(tt.rs)
			if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("build: %v, want %v containing %q", err, tt.class, tt.wantMsg)
			}
		})
	}
}

func TestBuildAccepts(t *testing.T) {
	udp := web
	udp.Proto = "udp"
	other := web
	other.HostIP = netip.MustParseAddr("192.0.2.1")
	other2 := other
	other2.HostIP = netip.MustParseAddr("192.0.2.2")
	tests := []struct {
		name string
		rs   Ruleset
	}{
		{"tcp and udp on one port", Ruleset{Forwards: []Forward{web, udp}}},
		{"one port on two host addresses", Ruleset{Forwards: []Forward{other, other2}}},
		{"adjacent subnets", Ruleset{Networks: []Network{
			{Bridge: "a", Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1")},
			{Bridge: "b", Subnet: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("10.0.1.1")},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := build(tt.rs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestApplyBadNamespaceFD(t *testing.T) {
	for _, fd := range []int{-2, -100} {
		if err := Apply(fd, Ruleset{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Apply(%d): %v, want an invalid argument", fd, err)
		}
		if err := Delete(fd, ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%d): %v, want an invalid argument", fd, err)
		}
	}
}
