package network

import (
	"net/netip"
	"testing"
)

func TestAllocate(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	tests := []struct {
		name   string
		subnet netip.Prefix
		want   netip.Addr
		used   []string
		got    string
		errs   bool
	}{
		{name: "first", subnet: p("10.88.0.0/24"), got: "10.88.0.2"},
		{name: "skips used", subnet: p("10.88.0.0/24"), used: []string{"10.88.0.2", "10.88.0.3"}, got: "10.88.0.4"},
		{name: "wanted and free", subnet: p("10.88.0.0/24"), want: a("10.88.0.77"), got: "10.88.0.77"},
		{name: "wanted but used", subnet: p("10.88.0.0/24"), want: a("10.88.0.2"), used: []string{"10.88.0.2"}, got: "10.88.0.3"},
		{name: "wanted is the gateway", subnet: p("10.88.0.0/24"), want: a("10.88.0.1"), got: "10.88.0.2"},
		{name: "wanted is the broadcast", subnet: p("10.88.0.0/24"), want: a("10.88.0.255"), got: "10.88.0.2"},
		{name: "wanted is elsewhere", subnet: p("10.88.0.0/24"), want: a("10.77.0.9"), got: "10.88.0.2"},
		{name: "crosses an octet", subnet: p("10.77.0.0/16"), used: rangeOf("10.77.0.2", 254), got: "10.77.1.0"},
		{name: "full /29", subnet: p("10.9.0.0/29"), used: []string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}, errs: true},
		{name: "last of a /29", subnet: p("10.9.0.0/29"), used: []string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"}, got: "10.9.0.6"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			used := map[netip.Addr]bool{}
			for _, u := range tc.used {
				used[a(u)] = true
			}
			got, err := allocate(tc.subnet, tc.want, used)
			if tc.errs {
				if err == nil {
					t.Fatalf("allocate = %v, want an error for a full subnet", got)
				}
				return
			}
			if err != nil || got.String() != tc.got {
				t.Fatalf("allocate = %v, %v; want %s", got, err, tc.got)
			}
		})
	}
}

func rangeOf(first string, n int) []string {
	a := netip.MustParseAddr(first)
	var out []string
	for range n {
		out = append(out, a.String())
		a = a.Next()
	}
	return out
}

func TestCheckSubnet(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"10.88.0.0/24", true},
		{"10.0.0.0/8", true},
		{"192.168.7.8/29", true},
		{"10.88.0.0", false},
		{"10.88.0.1/24", false}, // host bits
		{"fd00::/64", false},
		{"10.88.0.0/30", false},
		{"10.0.0.0/7", false},
		{"banana", false},
	} {
		_, err := checkSubnet(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("checkSubnet(%q) = %v, want ok=%t", tc.in, err, tc.ok)
		}
	}
}

func TestAddresses(t *testing.T) {
	p := netip.MustParsePrefix("10.77.0.0/16")
	if g := gatewayOf(p); g.String() != "10.77.0.1" {
		t.Errorf("gateway %s", g)
	}
	if b := broadcastOf(p); b.String() != "10.77.255.255" {
		t.Errorf("broadcast %s", b)
	}
	if m := macFor(netip.MustParseAddr("10.77.1.2")); m != "02:fc:0a:4d:01:02" {
		t.Errorf("mac %s", m)
	}
}
