package dns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf returns the nameservers listed in a resolv.conf file, in
// order, as "ip:53" ("[v6]:53"). Loopback stub resolvers are kept: the
// upstream sockets are dialed in flickd's own namespace, where they work.
// Lines that are not valid nameserver entries are skipped; a missing file
// or one without any nameserver is an error naming the file.
func ResolvConf(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read nameservers: %w", err)
	}
	var out []string
	for line := range strings.Lines(string(data)) {
		// Comments need no stripping: a comment line's first field is not
		// "nameserver", and anything after the address is ignored.
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, net.JoinHostPort(addr.String(), "53"))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read nameservers: %s has none", path)
	}
	return out, nil
}
