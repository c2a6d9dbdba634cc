package portspec

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
)

func tcp(hostIP string, host, guest int) api.PortMapping {
	return api.PortMapping{HostIP: hostIP, HostPort: host, GuestPort: guest, Protocol: "tcp"}
}

func udp(hostIP string, host, guest int) api.PortMapping {
	return api.PortMapping{HostIP: hostIP, HostPort: host, GuestPort: guest, Protocol: "udp"}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want []api.PortMapping
	}{
		{"guest port only", "80", []api.PortMapping{tcp("", 0, 80)}},
		{"host and guest", "8080:80", []api.PortMapping{tcp("", 8080, 80)}},
		{"host port 0 picks", "0:80", []api.PortMapping{tcp("", 0, 80)}},
		{"ipv4 address", "127.0.0.1:8080:80", []api.PortMapping{tcp("127.0.0.1", 8080, 80)}},
		{"ipv4 address, picked port", "127.0.0.1::80", []api.PortMapping{tcp("127.0.0.1", 0, 80)}},
		{"all ipv4 addresses", "0.0.0.0:8080:80", []api.PortMapping{tcp("0.0.0.0", 8080, 80)}},
		{"empty address", ":8080:80", []api.PortMapping{tcp("", 8080, 80)}},
		{"ipv6 address", "[::1]:8080:80", []api.PortMapping{tcp("::1", 8080, 80)}},
		{"ipv6 address, picked port", "[::1]::80", []api.PortMapping{tcp("::1", 0, 80)}},
		{"ipv6 address made canonical", "[0:0::0001]:8080:80", []api.PortMapping{tcp("::1", 8080, 80)}},
		{"ipv6 with zone", "[fe80::1%eth0]:8080:80", []api.PortMapping{tcp("fe80::1%eth0", 8080, 80)}},
		{"udp", "8080:80/udp", []api.PortMapping{udp("", 8080, 80)}},
		{"explicit tcp", "80/tcp", []api.PortMapping{tcp("", 0, 80)}},
		{"protocol upper case", "53:53/UDP", []api.PortMapping{udp("", 53, 53)}},
		{"protocol mixed case", "53/Udp", []api.PortMapping{udp("", 0, 53)}},
		{"ipv6 udp", "[::1]:5353:53/udp", []api.PortMapping{udp("::1", 5353, 53)}},
		{"port bounds", "65535:1", []api.PortMapping{tcp("", 65535, 1)}},
		{"leading zeros", "08080:080", []api.PortMapping{tcp("", 8080, 80)}},
		{"ranges", "8000-8002:80-82", []api.PortMapping{tcp("", 8000, 80), tcp("", 8001, 81), tcp("", 8002, 82)}},
		{"ranges with address and protocol", "127.0.0.1:8000-8001:80-81/udp", []api.PortMapping{udp("127.0.0.1", 8000, 80), udp("127.0.0.1", 8001, 81)}},
		{"guest range alone", "8000-8002", []api.PortMapping{tcp("", 0, 8000), tcp("", 0, 8001), tcp("", 0, 8002)}},
		{"guest range, picked ports on an address", "[::1]::80-81", []api.PortMapping{tcp("::1", 0, 80), tcp("::1", 0, 81)}},
		{"one-port range", "8080-8080:80-80", []api.PortMapping{tcp("", 8080, 80)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.spec)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.spec, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.spec, got, tt.want)
			}
		})
	}
}

func TestParseLargestRange(t *testing.T) {
	got, err := Parse("10000-10999:20000-20999")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxRange {
		t.Fatalf("got %d mappings, want %d", len(got), MaxRange)
	}
	if last := got[len(got)-1]; last != tcp("", 10999, 20999) {
		t.Errorf("last mapping = %+v, want 10999->20999", last)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want string // the whole message
	}{
		{"empty", "", `invalid port spec "": it is empty: ` + usage},
		{"guest not a number", "8080:abc", `invalid port spec "8080:abc": guest port "abc" is not a number (1-65535)`},
		{"host not a number", "abc:80", `invalid port spec "abc:80": host port "abc" is not a number (0-65535)`},
		{"signed port", "+80", `invalid port spec "+80": guest port "+80" is not a number (1-65535)`},
		{"space", " 80", `invalid port spec " 80": guest port " 80" is not a number (1-65535)`},
		{"guest port 0", "0", `invalid port spec "0": guest port 0 is out of range (1-65535)`},
		{"guest port too big", "8080:65536", `invalid port spec "8080:65536": guest port 65536 is out of range (1-65535)`},
		{"host port too big", "70000:80", `invalid port spec "70000:80": host port 70000 is out of range (0-65535)`},
		{"huge number", "99999999999999999999", `invalid port spec "99999999999999999999": guest port 99999999999999999999 is out of range (1-65535)`},
		{"empty guest", "8080:", `invalid port spec "8080:": guest port is empty: ` + usage},
		{"empty guest with address", "127.0.0.1:8080:", `invalid port spec "127.0.0.1:8080:": guest port is empty: ` + usage},
		{"sctp", "80/sctp", `invalid port spec "80/sctp": protocol sctp is not supported: use tcp or udp`},
		{"sctp upper case", "80/SCTP", `invalid port spec "80/SCTP": protocol sctp is not supported: use tcp or udp`},
		{"empty protocol", "80/", `invalid port spec "80/": protocol is empty after /: use tcp or udp, or leave out /PROTO for tcp`},
		{"two protocols", "80/tcp/udp", `invalid port spec "80/tcp/udp": guest port "80/tcp" is not a number (1-65535)`},
		{"bad ipv4", "127.0.0.256:8080:80", `invalid port spec "127.0.0.256:8080:80": host IP "127.0.0.256" is not an IP address: give one like 127.0.0.1 or [::1], or leave it out for all addresses`},
		{"host name", "localhost:8080:80", `invalid port spec "localhost:8080:80": host IP "localhost" is not an IP address: give one like 127.0.0.1 or [::1], or leave it out for all addresses`},
		{"bad ipv6", "[::g]:8080:80", `invalid port spec "[::g]:8080:80": host IP "::g" is not an IP address: give one like 127.0.0.1 or [::1], or leave it out for all addresses`},
		{"ipv6 without brackets", "::1:8080:80", `invalid port spec "::1:8080:80": IPv6 address ::1 must be in brackets: write [::1]:8080:80`},
		{"ipv6 without brackets, picked port", "fe80::1::80", `invalid port spec "fe80::1::80": IPv6 address fe80::1 must be in brackets: write [fe80::1]::80`},
		{"ipv6-like, too many colons", "1:2:3:4:5", `invalid port spec "1:2:3:4:5": too many colons: IPv6 addresses go in brackets, e.g. [::1]:8080:80`},
		{"too many colons", "x:y:z:w", `invalid port spec "x:y:z:w": too many colons: ` + usage},
		{"unclosed bracket", "[::1:8080:80", `invalid port spec "[::1:8080:80": IPv6 address has no closing ]: write it as [::1]:8080:80`},
		{"bracket without ports", "[::1]", `invalid port spec "[::1]": address [::1] must be followed by :HOSTPORT:GUESTPORT, e.g. [::1]:8080:80 or [::1]::80`},
		{"bracket with guest only", "[::1]:80", `invalid port spec "[::1]:80": after the address [::1] give HOSTPORT:GUESTPORT, e.g. [::1]:8080:80 or [::1]::80`},
		{"ipv4 in brackets", "[127.0.0.1]:8080:80", `invalid port spec "[127.0.0.1]:8080:80": address 127.0.0.1 in brackets is not IPv6: write IPv4 addresses without brackets, e.g. 127.0.0.1:8080:80`},
		{"host range, one guest port", "8000-8002:80", `invalid port spec "8000-8002:80": host port range 8000-8002 has 3 ports but guest port 80 is one: give a guest range of the same length, e.g. 8000-8002:80-82`},
		{"one host port, guest range", "8080:80-82", `invalid port spec "8080:80-82": host port range 8080 has 1 ports but guest port range 80-82 has 3: make them the same length`},
		{"unequal ranges", "8000-8003:80-82", `invalid port spec "8000-8003:80-82": host port range 8000-8003 has 4 ports but guest port range 80-82 has 3: make them the same length`},
		{"backwards range", "82-80", `invalid port spec "82-80": guest port range 82-80 runs backwards: write 80-82`},
		{"range too long", "1-1001", `invalid port spec "1-1001": guest port range 1-1001 has 1001 ports, more than 1000: split it into several -p values`},
		{"range with open end", "8000-", `invalid port spec "8000-": guest port range has an empty end: write it as FIRST-LAST, e.g. 8000-8010`},
		{"range with three ends", "1-2-3", `invalid port spec "1-2-3": guest port "2-3" is not a number (1-65535)`},
		{"host range from 0", "0-2:80-82", `invalid port spec "0-2:80-82": host port range 0-2 includes 0: ports run from 1 to 65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.spec)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error %q", tt.spec, got, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Parse(%q) error:\n got %s\nwant %s", tt.spec, err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Parse(%q) error is not ErrInvalidArgument: %v", tt.spec, err)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		name string
		m    api.PortMapping
		want string
	}{
		{"ipv4", tcp("127.0.0.1", 8080, 80), "127.0.0.1:8080->80/tcp"},
		{"all addresses", tcp("", 8080, 80), "0.0.0.0:8080->80/tcp"},
		{"ipv6", udp("::1", 8080, 80), "[::1]:8080->80/udp"},
		{"ipv6 all addresses", tcp("::", 8080, 80), "[::]:8080->80/tcp"},
		{"port not picked yet", tcp("", 0, 80), "0.0.0.0:0->80/tcp"},
		{"protocol defaults to tcp", api.PortMapping{HostPort: 1, GuestPort: 2}, "0.0.0.0:1->2/tcp"},
		{"protocol in lower case", api.PortMapping{HostPort: 1, GuestPort: 2, Protocol: "UDP"}, "0.0.0.0:1->2/udp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Format(tt.m); got != tt.want {
				t.Errorf("Format(%+v) = %q, want %q", tt.m, got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		m    api.PortMapping
		want string // "" for valid
	}{
		{"valid", tcp("", 8080, 80), ""},
		{"valid udp on ipv6", udp("::1", 53, 53), ""},
		{"valid picked port", tcp("127.0.0.1", 0, 80), ""},
		{"valid bounds", tcp("", 65535, 65535), ""},
		{"guest port 0", tcp("", 8080, 0), `invalid port mapping 0.0.0.0:8080->0/tcp: guest_port 0 is out of range (1-65535)`},
		{"guest port too big", tcp("", 8080, 65536), `invalid port mapping 0.0.0.0:8080->65536/tcp: guest_port 65536 is out of range (1-65535)`},
		{"host port negative", tcp("", -1, 80), `invalid port mapping 0.0.0.0:-1->80/tcp: host_port -1 is out of range (0-65535, 0 lets the daemon pick)`},
		{"host port too big", tcp("", 65536, 80), `invalid port mapping 0.0.0.0:65536->80/tcp: host_port 65536 is out of range (0-65535, 0 lets the daemon pick)`},
		{"protocol empty", api.PortMapping{HostPort: 1, GuestPort: 2}, `invalid port mapping 0.0.0.0:1->2/tcp: protocol "" is not supported: use "tcp" or "udp"`},
		{"protocol sctp", api.PortMapping{HostPort: 1, GuestPort: 2, Protocol: "sctp"}, `invalid port mapping 0.0.0.0:1->2/sctp: protocol "sctp" is not supported: use "tcp" or "udp"`},
		{"protocol upper case", api.PortMapping{HostPort: 1, GuestPort: 2, Protocol: "TCP"}, `invalid port mapping 0.0.0.0:1->2/tcp: protocol "TCP" is not supported: use "tcp" or "udp"`},
		{"host ip not an address", tcp("example.com", 1, 2), `invalid port mapping example.com:1->2/tcp: host_ip "example.com" is not an IP address: give one like "127.0.0.1" or "::1" (no brackets), or leave it empty for all addresses`},
		{"host ip in brackets", tcp("[::1]", 1, 2), `invalid port mapping [[::1]]:1->2/tcp: host_ip "[::1]" is not an IP address: give one like "127.0.0.1" or "::1" (no brackets), or leave it empty for all addresses`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.m)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate(%+v): %v", tt.m, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want %q", tt.m, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Validate(%+v):\n got %s\nwant %s", tt.m, err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Validate(%+v) error is not ErrInvalidArgument: %v", tt.m, err)
			}
		})
	}
}

func TestConflicts(t *testing.T) {
	tests := []struct {
		name string
		ms   []api.PortMapping
		want string // "" for none
	}{
		{"none", nil, ""},
		{"one", []api.PortMapping{tcp("", 8080, 80)}, ""},
		{"different ports", []api.PortMapping{tcp("", 8080, 80), tcp("", 8081, 80)}, ""},
		{"same port, other protocol", []api.PortMapping{tcp("", 53, 53), udp("", 53, 53)}, ""},
		{"same port, different addresses", []api.PortMapping{tcp("127.0.0.1", 8080, 80), tcp("127.0.0.2", 8080, 81)}, ""},
		{"picked ports never conflict", []api.PortMapping{tcp("", 0, 80), tcp("", 0, 80)}, ""},
		{"ipv4 wildcard and ipv6 address", []api.PortMapping{tcp("0.0.0.0", 8080, 80), tcp("::1", 8080, 81)}, ""},
		{"same everything", []api.PortMapping{tcp("", 8080, 80), tcp("", 8080, 81)},
			"port mappings 0.0.0.0:8080->80/tcp and 0.0.0.0:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"same address", []api.PortMapping{udp("127.0.0.1", 53, 53), udp("127.0.0.1", 53, 54)},
			"port mappings 127.0.0.1:53->53/udp and 127.0.0.1:53->54/udp both bind host port 53/udp: give each its own host port, or 0 to let the daemon pick"},
		{"all addresses and one", []api.PortMapping{tcp("127.0.0.1", 8080, 80), tcp("", 8080, 81)},
			"port mappings 127.0.0.1:8080->80/tcp and 0.0.0.0:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"all addresses and ipv6", []api.PortMapping{tcp("", 8080, 80), tcp("::1", 8080, 81)},
			"port mappings 0.0.0.0:8080->80/tcp and [::1]:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"ipv4 wildcard and ipv4 address", []api.PortMapping{tcp("10.0.0.1", 8080, 80), tcp("0.0.0.0", 8080, 81)},
			"port mappings 10.0.0.1:8080->80/tcp and 0.0.0.0:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"ipv6 wildcard covers ipv4", []api.PortMapping{tcp("::", 8080, 80), tcp("127.0.0.1", 8080, 81)},
			"port mappings [::]:8080->80/tcp and 127.0.0.1:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"mapped ipv4 is the ipv4 address", []api.PortMapping{tcp("::ffff:127.0.0.1", 8080, 80), tcp("127.0.0.1", 8080, 81)},
			"port mappings [::ffff:127.0.0.1]:8080->80/tcp and 127.0.0.1:8080->81/tcp both bind host port 8080/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"first pair reported", []api.PortMapping{tcp("", 1, 1), tcp("", 2, 2), tcp("", 2, 3), tcp("", 1, 4)},
			"port mappings 0.0.0.0:1->1/tcp and 0.0.0.0:1->4/tcp both bind host port 1/tcp: give each its own host port, or 0 to let the daemon pick"},
		{"protocol case ignored", []api.PortMapping{{HostPort: 1, GuestPort: 1, Protocol: "TCP"}, tcp("", 1, 2)},
			"port mappings 0.0.0.0:1->1/tcp and 0.0.0.0:1->2/tcp both bind host port 1/tcp: give each its own host port, or 0 to let the daemon pick"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Conflicts(tt.ms)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Conflicts: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Conflicts = nil, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Conflicts:\n got %s\nwant %s", err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrConflict) {
				t.Errorf("Conflicts error is not ErrConflict: %v", err)
			}
		})
	}
}

// TestParseFormatRoundTrip checks that what Format shows can be typed back.
func TestParseFormatRoundTrip(t *testing.T) {
	for _, spec := range []string{"127.0.0.1:8080:80", "[::1]:8080:80/udp", "0.0.0.0:1:65535", "[fe80::1%eth0]:1:2/tcp"} {
		ms, err := Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(specOf(Format(ms[0])))
		if err != nil {
			t.Fatalf("Parse(specOf(Format(%+v))): %v", ms[0], err)
		}
		if !reflect.DeepEqual(got, ms) {
			t.Errorf("%q: round trip gave %+v, want %+v", spec, got, ms)
		}
	}
}

// specOf turns Format's "IP:HOST->GUEST/PROTO" back into a -p value.
func specOf(formatted string) string {
	i := strings.LastIndex(formatted, "->")
	return formatted[:i] + ":" + formatted[i+2:]
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"80", "8080:80", "127.0.0.1:8080:80", "127.0.0.1::80", "[::1]:8080:80", "8080:80/udp",
		"8000-8002:80-82", "8000-8002", "53/UDP", "80/sctp", "[fe80::1%eth0]:1:2", "::1:8080:80",
		":8080:80", "0:80", "1-1000", "[::ffff:1.2.3.4]::9/tcp",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		ms, err := Parse(spec)
		if err != nil {
			if len(ms) != 0 {
				t.Fatalf("Parse(%q) returned mappings with error %v", spec, err)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), fmt.Sprintf("invalid port spec %q: ", spec)) {
				t.Fatalf("Parse(%q) error does not name the spec or class: %v", spec, err)
			}
			return
		}
		if len(ms) == 0 || len(ms) > MaxRange {
			t.Fatalf("Parse(%q) returned %d mappings", spec, len(ms))
		}
		if err := Conflicts(ms); err != nil && ms[0].HostPort != 0 {
			t.Fatalf("Parse(%q) returned conflicting mappings: %v", spec, err)
		}
		for _, m := range ms {
			if err := Validate(m); err != nil {
				t.Fatalf("Parse(%q) returned a mapping Validate rejects: %v", spec, err)
			}
			s := Format(m)
			if m.HostPort != 0 {
				// "HOSTPORT:GUESTPORT/PROTO" alone gives the same ports and protocol.
				i := strings.LastIndex(s, ":")
				short, err := Parse(strings.Replace(s[i+1:], "->", ":", 1))
				if err != nil {
					t.Fatalf("Parse(%q) -> Format %q: its ports do not parse: %v", spec, s, err)
				}
				want := m
				want.HostIP = ""
				if len(short) != 1 || short[0] != want {
					t.Fatalf("Parse(%q) -> Format %q -> parse ports = %+v, want %+v", spec, s, short, want)
				}
			}
			// The whole of Format, typed back, gives the same mapping.
			again, err := Parse(specOf(s))
			if err != nil {
				t.Fatalf("Parse(%q) -> Format %q does not parse back: %v", spec, s, err)
			}
			want := m
			if want.HostIP == "" {
				want.HostIP = "0.0.0.0" // Format shows all addresses so
			}
			if len(again) != 1 || again[0] != want {
				t.Fatalf("Parse(%q) -> Format %q -> Parse = %+v, want %+v", spec, s, again, want)
			}
		}
	})
}
