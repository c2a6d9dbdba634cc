package nft

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/testenv"
)

// TestRulesMovePackets builds a small host in namespaces and checks the
// rules do to packets what they promise:
//
//	c (client) 192.0.2.2 ---veth--- 192.0.2.1 h (host) 10.99.0.1 br0 --- g  (guest) 10.99.0.2
//	                                                                  \-- g2 (guest) 10.99.0.3
//	                                          10.98.0.1 br1 --- o  (guest of another network) 10.98.0.2
//
// Before any rule everything is plainly routed, which proves the topology,
// so a connection that later fails fails because of the rules.
func TestRulesMovePackets(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := uniquePrefix(t)
	h := newNS(t, prefix+"h")
	h.sysctl(t, "net.ipv4.ip_forward=1")

	c := newNS(t, prefix+"c")
	h.ip(t, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", c.name)
	h.ip(t, "addr", "add", "192.0.2.1/24", "dev", "vc")
	h.ip(t, "link", "set", "vc", "up")
	c.ip(t, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	c.ip(t, "link", "set", "eth0", "up")
	// c has no route to the guests' networks: only NAT lets them talk.

	bridge := func(name, cidr string) {
		h.ip(t, "link", "add", name, "type", "bridge")
		h.ip(t, "addr", "add", cidr, "dev", name)
		h.ip(t, "link", "set", name, "up")
	}
	bridge("br0", "10.99.0.1/24")
	bridge("br1", "10.98.0.1/24")
	guest := func(ns, port, bridge, cidr, gw string) *testNS {
		g := newNS(t, prefix+ns)
		h.ip(t, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.name)
		h.ip(t, "link", "set", port, "master", bridge, "up")
		g.ip(t, "addr", "add", cidr, "dev", "eth0")
		g.ip(t, "link", "set", "eth0", "up")
		g.ip(t, "route", "add", "default", "via", gw)
		return g
	}
	g := guest("g", "vg", "br0", "10.99.0.2/24", "10.99.0.1")
	g2 := guest("g2", "vg2", "br0", "10.99.0.3/24", "10.99.0.1")
	o := guest("o", "vo", "br1", "10.98.0.2/24", "10.98.0.1")

	g.serveTCP(t, "10.99.0.2:80")
	g.serveUDP(t, "10.99.0.2:53")
	c.serveTCP(t, "192.0.2.2:9000")
	h.serveTCP(t, "10.99.0.1:5300") // a service of br0's gateway, like DNS

	const (
		ok      = 5 * time.Second // for what must work
		dropped = time.Second     // for what must be dropped: the wait is the proof
	)
	// expect checks that a TCP connection from ns to addr is answered
	// and the server saw it come from seen ("" to not check).
	expect := func(t *testing.T, ns *testNS, addr, seen string) {
		t.Helper()
		got, err := ns.askTCP(addr, ok)
		if err != nil {
			t.Fatalf("%s -> %s: %v", ns.name, addr, err)
		}
		if seen != "" && got != seen {
			t.Errorf("%s -> %s: server saw the connection from %s, want %s", ns.name, addr, got, seen)
		}
	}
	expectDropped := func(t *testing.T, ns *testNS, addr string) {
		t.Helper()
		got, err := ns.askTCP(addr, dropped)
		if err == nil {
			t.Fatalf("%s -> %s: answered (server saw %s), want dropped", ns.name, addr, got)
		}
		if !isTimeout(err) {
			t.Fatalf("%s -> %s: %v, want a timeout as when packets are dropped", ns.name, addr, err)
		}
	}
	expectRefused := func(t *testing.T, ns *testNS, addr string) {
		t.Helper()
		got, err := ns.askTCP(addr, ok)
		if err == nil {
			t.Fatalf("%s -> %s: answered (server saw %s), want refused: nothing listens there", ns.name, addr, got)
		}
		if isTimeout(err) {
			t.Fatalf("%s -> %s: %v, want refused", ns.name, addr, err)
		}
	}

	t.Run("without rules", func(t *testing.T) {
		expect(t, o, "10.99.0.2:80", "10.98.0.2")
		expect(t, o, "10.99.0.1:5300", "10.98.0.2")
		expectRefused(t, c, "192.0.2.1:8080")
	})

	rs := Ruleset{
		Networks: []Network{
			{Bridge: "br0", Subnet: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1")},
			{Bridge: "br1", Subnet: netip.MustParsePrefix("10.98.0.0/24"), Gateway: netip.MustParseAddr("10.98.0.1")},
		},
		Forwards: []Forward{
			{Proto: "tcp", HostPort: 8080, GuestIP: netip.MustParseAddr("10.99.0.2"), GuestPort: 80},
			{Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 5353, GuestIP: netip.MustParseAddr("10.99.0.2"), GuestPort: 53},
		},
	}
	if err := Apply(h.fd(), rs); err != nil {
		t.Fatal(err)
	}

	t.Run("published port keeps the client's address", func(t *testing.T) {
		expect(t, c, "192.0.2.1:8080", "192.0.2.2")
	})
	t.Run("published udp port", func(t *testing.T) {
		got, err := c.askUDP("192.0.2.1:5353", ok)
		if err != nil {
			t.Fatal(err)
		}
		if got != "192.0.2.2" {
			t.Errorf("server saw the datagram from %s, want 192.0.2.2", got)
		}
	})
	t.Run("egress is masqueraded", func(t *testing.T) {
		expect(t, g, "192.0.2.2:9000", "192.0.2.1")
	})
	t.Run("hairpin to a published port on the same bridge", func(t *testing.T) {
		expect(t, g2, "192.0.2.1:8080", "10.99.0.1")
	})
	t.Run("published port from another network", func(t *testing.T) {
		expect(t, o, "192.0.2.1:8080", "")
	})
	t.Run("networks are isolated", func(t *testing.T) {
		expectDropped(t, o, "10.99.0.2:80")
	})
	t.Run("another network's gateway is closed", func(t *testing.T) {
		expectDropped(t, o, "10.99.0.1:5300")
		expect(t, g, "10.99.0.1:5300", "10.99.0.2")
	})

	// A Ruleset without the forward takes the port away.
	rs.Forwards = nil
	if err := Apply(h.fd(), rs); err != nil {
		t.Fatal(err)
	}
	t.Run("unpublished port", func(t *testing.T) {
		expectRefused(t, c, "192.0.2.1:8080")
		expect(t, g, "192.0.2.2:9000", "192.0.2.1")
	})

	if err := Delete(h.fd(), ""); err != nil {
		t.Fatal(err)
	}
	t.Run("after Delete", func(t *testing.T) {
		expect(t, o, "10.99.0.2:80", "10.98.0.2")
		expect(t, o, "10.99.0.1:5300", "10.98.0.2")
	})
}
