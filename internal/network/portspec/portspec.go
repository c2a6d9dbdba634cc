// Package portspec reads, checks and shows published ports: the -p values of
// `flick run` (Docker's syntax) and the api.PortMapping values they become.
package portspec

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
)

// MaxRange is the most ports one -p value may publish.
const MaxRange = 1000

// The protocols a mapping may use.
const (
	TCP = "tcp"
	UDP = "udp"
)

// usage is appended to errors about the overall shape of a spec.
const usage = "use [IP:][HOSTPORT:]GUESTPORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/udp"

// Parse parses one -p value in Docker's syntax,
// [IP:][HOSTPORT:]GUESTPORT[/PROTO], into the mappings it stands for:
//
//	80                   guest port 80 on a host port the daemon picks
//	8080:80              host port 8080 to guest port 80, all addresses
//	127.0.0.1:8080:80    the same on one address
//	127.0.0.1::80        one address, the daemon picks the port
//	[::1]:8080:80        IPv6 addresses go in brackets
//	8080:80/udp          protocol tcp (the default) or udp, any case
//	8000-8002:80-82      ranges of equal length, port by port
//	8000-8002            three guest ports on host ports the daemon picks
//
// A host port of 0 also asks the daemon to pick one. Errors are of class
// errdefs.ErrInvalidArgument and name the spec, the fault and the fix.
func Parse(spec string) ([]api.PortMapping, error) {
	ms, err := parse(spec)
	if err != nil {
		return nil, errdefs.InvalidArgument("invalid port spec %q: %s", spec, err)
	}
	return ms, nil
}

func parse(spec string) ([]api.PortMapping, error) {
	if spec == "" {
		return nil, fmt.Errorf("it is empty: %s", usage)
	}
	rest, proto := spec, TCP
	if i := strings.LastIndexByte(spec, '/'); i >= 0 {
		rest, proto = spec[:i], strings.ToLower(spec[i+1:])
		switch proto {
		case TCP, UDP:
		case "":
			return nil, fmt.Errorf("protocol is empty after /: use tcp or udp, or leave out /PROTO for tcp")
		default:
			return nil, fmt.Errorf("protocol %s is not supported: use tcp or udp", proto)
		}
	}

	hostIP, hostPart, guestPart, err := split(rest)
	if err != nil {
		return nil, err
	}
	guest, err := parseRange("guest port", guestPart, 1)
	if err != nil {
		return nil, err
	}
	host := portRange{} // 0-0: the daemon picks
	if hostPart != "" {
		if host, err = parseRange("host port", hostPart, 0); err != nil {
			return nil, err
		}
	}
	switch {
	case hostPart == "":
	case host.first == 0 && host.len() == 1:
		// "0:80" asks for a picked port, like an empty host port.
	case host.first == 0:
		return nil, fmt.Errorf("host port range %s includes 0: ports run from 1 to 65535", hostPart)
	case host.len() != guest.len():
		if guest.len() == 1 {
			return nil, fmt.Errorf("host port range %s has %d ports but guest port %s is one: give a guest range of the same length, e.g. %s",
				hostPart, host.len(), guestPart, exampleRange(host, guest.first))
		}
		return nil, fmt.Errorf("host port range %s has %d ports but guest port range %s has %d: make them the same length",
			hostPart, host.len(), guestPart, guest.len())
	}

	ms := make([]api.PortMapping, 0, guest.len())
	for i := range guest.len() {
		m := api.PortMapping{HostIP: hostIP, GuestPort: guest.first + i, Protocol: proto}
		if host.first != 0 {
			m.HostPort = host.first + i
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// split cuts rest (a spec without its /PROTO) into its address, host port
// and guest port parts. The address comes back in canonical form.
func split(rest string) (hostIP, host, guest string, err error) {
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return "", "", "", fmt.Errorf("IPv6 address has no closing ]: write it as [::1]:8080:80")
		}
		ipText, after := rest[1:end], rest[end+1:]
		if !strings.HasPrefix(after, ":") {
			return "", "", "", fmt.Errorf("address [%s] must be followed by :HOSTPORT:GUESTPORT, e.g. [%s]:8080:80 or [%s]::80", ipText, ipText, ipText)
		}
		ports := strings.Split(after[1:], ":")
		if len(ports) != 2 {
			return "", "", "", fmt.Errorf("after the address [%s] give HOSTPORT:GUESTPORT, e.g. [%s]:8080:80 or [%s]::80", ipText, ipText, ipText)
		}
		ip, err := parseIP(ipText)
		if err != nil {
			return "", "", "", err
		}
		if !ip.Is6() {
			return "", "", "", fmt.Errorf("address %s in brackets is not IPv6: write IPv4 addresses without brackets, e.g. %s:8080:80", ipText, ipText)
		}
		return ip.String(), ports[0], ports[1], nil
	}

	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 1:
		return "", "", parts[0], nil
	case 2:
		return "", parts[0], parts[1], nil
	case 3:
		if parts[0] == "" {
			return "", parts[1], parts[2], nil
		}
		ip, err := parseIP(parts[0])
		if err != nil {
			return "", "", "", err
		}
		return ip.String(), parts[1], parts[2], nil
	default:
		ipText := strings.Join(parts[:len(parts)-2], ":")
		if _, err := netip.ParseAddr(ipText); err == nil {
			return "", "", "", fmt.Errorf("IPv6 address %s must be in brackets: write [%s]:%s:%s", ipText, ipText, parts[len(parts)-2], parts[len(parts)-1])
		}
		if looksIPv6(rest) {
			return "", "", "", fmt.Errorf("too many colons: IPv6 addresses go in brackets, e.g. [::1]:8080:80")
		}
		return "", "", "", fmt.Errorf("too many colons: %s", usage)
	}
}

// looksIPv6 reports whether s is made only of what IPv6 addresses and ports
// are written with, so the bracket hint beats the generic one.
func looksIPv6(s string) bool {
	for _, c := range s {
		if !(c == ':' || c == '.' || c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func parseIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("host IP %q is not an IP address: give one like 127.0.0.1 or [::1], or leave it out for all addresses", s)
	}
	return ip, nil
}

// portRange is the ports first to last, inclusive.
type portRange struct{ first, last int }

func (r portRange) len() int { return r.last - r.first + 1 }

// parseRange parses "N" or "N-M" where each port is at least min.
func parseRange(what, s string, minPort int) (portRange, error) {
	if s == "" {
		return portRange{}, fmt.Errorf("%s is empty: %s", what, usage)
	}
	firstText, lastText, isRange := strings.Cut(s, "-")
	first, err := parsePort(what, firstText, minPort)
	if err != nil {
		return portRange{}, err
	}
	if !isRange {
		return portRange{first, first}, nil
	}
	last, err := parsePort(what, lastText, minPort)
	if err != nil {
		return portRange{}, err
	}
	r := portRange{first, last}
	switch {
	case last < first:
		return portRange{}, fmt.Errorf("%s range %s runs backwards: write %d-%d", what, s, last, first)
	case r.len() > MaxRange:
		return portRange{}, fmt.Errorf("%s range %s has %d ports, more than %d: split it into several -p values", what, s, r.len(), MaxRange)
	}
	return r, nil
}

func parsePort(what, s string, minPort int) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("%s range has an empty end: write it as FIRST-LAST, e.g. 8000-8010", what)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%s %q is not a number (%d-65535)", what, s, minPort)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < minPort || n > 65535 {
		return 0, fmt.Errorf("%s %s is out of range (%d-65535)", what, s, minPort)
	}
	return n, nil
}

// exampleRange suggests a guest range as long as host, starting at first.
func exampleRange(host portRange, first int) string {
	last := first + host.len() - 1
	if last > 65535 {
		return fmt.Sprintf("%d-%d:%d", host.first, host.last, first)
	}
	return fmt.Sprintf("%d-%d:%d-%d", host.first, host.last, first, last)
}

// Format renders a mapping the way `flick ps` and inspect show it:
// "127.0.0.1:8080->80/tcp", "0.0.0.0:8080->80/tcp" (all addresses),
// "[::1]:8080->80/udp". A host port the daemon is still to pick shows as 0.
func Format(m api.PortMapping) string {
	host := m.HostIP
	switch {
	case host == "":
		host = "0.0.0.0"
	case strings.IndexByte(host, ':') >= 0:
		host = "[" + host + "]"
	}
	proto := strings.ToLower(m.Protocol)
	if proto == "" {
		proto = TCP
	}
	return host + ":" + strconv.Itoa(m.HostPort) + "->" + strconv.Itoa(m.GuestPort) + "/" + proto
}

// Validate checks a mapping that arrived over the API. Errors are of class
// errdefs.ErrInvalidArgument and name the field and its value.
func Validate(m api.PortMapping) error {
	if err := validate(m); err != nil {
		return errdefs.InvalidArgument("invalid port mapping %s: %s", Format(m), err)
	}
	return nil
}

func validate(m api.PortMapping) error {
	if m.GuestPort < 1 || m.GuestPort > 65535 {
		return fmt.Errorf("guest_port %d is out of range (1-65535)", m.GuestPort)
	}
	if m.HostPort < 0 || m.HostPort > 65535 {
		return fmt.Errorf("host_port %d is out of range (0-65535, 0 lets the daemon pick)", m.HostPort)
	}
	if m.Protocol != TCP && m.Protocol != UDP {
		return fmt.Errorf("protocol %q is not supported: use \"tcp\" or \"udp\"", m.Protocol)
	}
	if m.HostIP != "" {
		if _, err := netip.ParseAddr(m.HostIP); err != nil {
			return fmt.Errorf("host_ip %q is not an IP address: give one like \"127.0.0.1\" or \"::1\" (no brackets), or leave it empty for all addresses", m.HostIP)
		}
	}
	return nil
}

// Conflicts reports the first pair in ms that would bind the same host port
// and protocol, as an error of class errdefs.ErrConflict. Addresses overlap
// when equal or when either is all addresses: an empty HostIP or "::" (which
// covers IPv4 too), or "0.0.0.0" against any IPv4 address. A host port of 0
// never conflicts: the daemon picks a free one. Mappings that fail Validate
// are compared as well as they can be.
func Conflicts(ms []api.PortMapping) error {
	for i, a := range ms {
		if a.HostPort == 0 {
			continue
		}
		for _, b := range ms[i+1:] {
			if a.HostPort != b.HostPort || protocol(a) != protocol(b) || !overlap(a.HostIP, b.HostIP) {
				continue
			}
			return errdefs.Conflict("port mappings %s and %s both bind host port %d/%s: give each its own host port, or 0 to let the daemon pick",
				Format(a), Format(b), a.HostPort, protocol(a))
		}
	}
	return nil
}

func protocol(m api.PortMapping) string {
	if m.Protocol == "" {
		return TCP
	}
	return strings.ToLower(m.Protocol)
}

// overlap reports whether listening on a and on b, as host addresses of the
// same port, collide.
func overlap(a, b string) bool {
	if a == "" || b == "" {
		return true
	}
	ipA, errA := netip.ParseAddr(a)
	ipB, errB := netip.ParseAddr(b)
	if errA != nil || errB != nil {
		return a == b
	}
	ipA, ipB = ipA.Unmap(), ipB.Unmap()
	switch {
	case ipA == ipB:
		return true
	case ipA.IsUnspecified() && ipA.Is6(), ipB.IsUnspecified() && ipB.Is6():
		return true // "::" is dual-stack on Linux
	case ipA.IsUnspecified(), ipB.IsUnspecified():
		return ipA.Is4() == ipB.Is4() // 0.0.0.0 covers IPv4 only
	}
	return false
}
