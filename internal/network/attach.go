package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/network/nft"
	"github.com/flick-vm/flick/internal/network/portspec"
	"github.com/flick-vm/flick/internal/network/proxy"
)

// Attachment is an instance's place on a network, kept in the store from
// its start until it stops: its address and its published ports.
type Attachment struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Network string            `json:"network"`
	IP      string            `json:"ip"`
	Prefix  int               `json:"prefix"`
	Gateway string            `json:"gateway"`
	MAC     string            `json:"mac"`
	Ports   []api.PortMapping `json:"ports,omitempty"`
	// Standby is set while the instance's VM is saved: its address and
	// ports stay its own, and connections to the ports are held by the
	// proxy rather than forwarded by the kernel.
	Standby bool `json:"standby,omitempty"`
	// ProxyOnly serves the ports with the proxy alone, never the kernel's
	// DNAT, so that every connection is seen: for instances that stand
	// by when idle.
	ProxyOnly bool `json:"proxy_only,omitempty"`
}

// Guest is the network config flick-init applies in the guest.
func (a Attachment) Guest() *wire.Net {
	return &wire.Net{
		MAC:     a.MAC,
		Address: a.IP + "/" + strconv.Itoa(a.Prefix),
		Gateway: a.Gateway,
		DNS:     []string{a.Gateway},
		Search:  api.NetworkDomain,
	}
}

type attState struct {
	Attachment
	proxies []*proxy.Proxy
}

func (a *attState) closeProxies() {
	for _, p := range a.proxies {
		p.Close()
	}
	a.proxies = nil
}

// AttachRequest asks for an instance's place on a network.
type AttachRequest struct {
	ID      string
	Name    string // the DNS name
	Network string // "" means the default network
	Ports   []api.PortMapping
	// PrevIP is the address the instance had last time, which it gets
	// again when it is free.
	PrevIP string
	// ProxyOnly: see Attachment.
	ProxyOnly bool
	// Reservation names the holder of an address from Reserve (a zygote
	// the instance starts in), which the instance takes when it has no
	// PrevIP and the reservation is on its network. The reservation ends
	// either way.
	Reservation string
}

// reservation is an address held for a zygote.
type reservation struct {
	network string
	ip      netip.Addr
}

// Reserve holds a free address of network for holder, a zygote that is
// not an instance yet, and returns the guest config of it, so that the
// zygote can set its link up ahead of its start. The instance that starts
// in the zygote takes the address through AttachRequest.Reservation;
// Release gives it back. Reservations are not stored: they end with the
// daemon, as zygotes do.
func (m *Manager) Reserve(network, holder string) (*wire.Net, error) {
	if network == "" {
		network = api.NetworkDefault
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupLocked(network)
	if err != nil {
		return nil, err
	}
	ip, err := allocate(n.subnet, netip.Addr{}, m.usedLocked(n.Name))
	if err != nil {
		return nil, err
	}
	m.held[holder] = reservation{network: n.Name, ip: ip}
	a := Attachment{IP: ip.String(), Prefix: n.subnet.Bits(), Gateway: n.gw.String(), MAC: macFor(ip)}
	return a.Guest(), nil
}

// Release gives back holder's reserved address, if it still has one.
func (m *Manager) Release(holder string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.held, holder)
}

// usedLocked is the addresses of network that instances have or zygotes
// hold.
func (m *Manager) usedLocked(network string) map[netip.Addr]bool {
	used := map[netip.Addr]bool{}
	for _, a := range m.atts {
		if a.Network == network {
			if ip, err := netip.ParseAddr(a.IP); err == nil {
				used[ip] = true
			}
		}
	}
	for _, r := range m.held {
		if r.network == network {
			used[r.ip] = true
		}
	}
	return used
}

// Attach gives an instance an address on its network and binds its
// published ports, which the caller has checked (portspec.Validate and
// Conflicts, at create); an instance that has one keeps it. A host port
// taken by anyone gives a conflict that names the holder when it can.
func (m *Manager) Attach(_ context.Context, req AttachRequest) (Attachment, error) {
	if req.Network == "" {
		req.Network = api.NetworkDefault
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.atts[req.ID]; ok {
		if a.proxies == nil && len(a.Ports) > 0 {
			if err := m.bindLocked(a); err != nil {
				return Attachment{}, err
			}
		}
		if a.Standby {
			a.Standby = false
			if err := m.saveLocked(a); err != nil {
				return Attachment{}, err
			}
			if err := m.addForwardsLocked(a); err != nil {
				return Attachment{}, err
			}
		}
		return a.Attachment, nil
	}
	n, err := m.lookupLocked(req.Network)
	if err != nil {
		return Attachment{}, err
	}
	want, _ := netip.ParseAddr(req.PrevIP)
	if r, ok := m.held[req.Reservation]; ok {
		delete(m.held, req.Reservation)
		if !want.IsValid() && r.network == n.Name {
			want = r.ip
		}
	}
	ip, err := allocate(n.subnet, want, m.usedLocked(n.Name))
	if err != nil {
		return Attachment{}, err
	}
	a := &attState{Attachment: Attachment{
		ID:        req.ID,
		Name:      strings.ToLower(req.Name),
		Network:   n.Name,
		IP:        ip.String(),
		Prefix:    n.subnet.Bits(),
		Gateway:   n.gw.String(),
		MAC:       macFor(ip),
		Ports:     append([]api.PortMapping(nil), req.Ports...),
		ProxyOnly: req.ProxyOnly,
	}}
	if err := m.bindLocked(a); err != nil {
		return Attachment{}, err
	}
	m.atts[a.ID] = a
	if err := m.saveLocked(a); err != nil {
		m.dropLocked(a)
		return Attachment{}, err
	}
	if err := m.addForwardsLocked(a); err != nil {
		m.dropLocked(a)
		_ = m.cfg.DB.Delete(attBucket, a.ID)
		return Attachment{}, err
	}
	return a.Attachment, nil
}

// forwardsOf is the DNAT rules of a's published ports: none for a loopback
// or IPv6 host address, which only the proxy serves.
func forwardsOf(a *attState) []nft.Forward {
	ip, err := netip.ParseAddr(a.IP)
	if err != nil || a.ProxyOnly {
		return nil
	}
	var out []nft.Forward
	for _, p := range a.Ports {
		var host netip.Addr
		if p.HostIP != "" {
			h, err := netip.ParseAddr(p.HostIP)
			if err != nil || !h.Is4() || h.IsLoopback() {
				continue
			}
			if !h.IsUnspecified() {
				host = h
			}
		}
		out = append(out, nft.Forward{
			Proto: p.Protocol, HostIP: host, HostPort: uint16(p.HostPort),
			GuestIP: ip, GuestPort: uint16(p.GuestPort), Tag: a.ID,
		})
	}
	return out
}

// addForwardsLocked adds the DNAT rules of a's ports, without rewriting
// the table: a start costs no RCU grace period in the kernel.
func (m *Manager) addForwardsLocked(a *attState) error {
	fs := forwardsOf(a)
	if len(fs) == 0 {
		return nil
	}
	if err := nft.AddForwards(m.cfg.NS.FD(), m.cfg.Table, fs); err != nil {
		return fmt.Errorf("publish the ports of %s: %w", a.Name, err)
	}
	return nil
}

// deleteForwardsLocked removes the DNAT rules of a's ports.
func (m *Manager) deleteForwardsLocked(a *attState) {
	if len(forwardsOf(a)) == 0 {
		return
	}
	if err := nft.DeleteForwards(m.cfg.NS.FD(), m.cfg.Table, a.ID); err != nil {
		m.log.Warn("unpublish ports", "instance", a.Name, "err", err)
	}
}

func (m *Manager) saveLocked(a *attState) error {
	if err := m.cfg.DB.Put(attBucket, a.ID, a.Attachment); err != nil {
		return fmt.Errorf("save the network attachment of %s: %w", a.Name, err)
	}
	return nil
}

func (m *Manager) dropLocked(a *attState) {
	a.closeProxies()
	delete(m.atts, a.ID)
}

// bindLocked starts a proxy for every published port of a; host port 0
// becomes the port the proxy got. Nothing stays bound when it fails.
func (m *Manager) bindLocked(a *attState) error {
	for i := range a.Ports {
		p := &a.Ports[i]
		host := p.HostIP
		if host == "" {
			host = "0.0.0.0"
		}
		guestPort := uint16(p.GuestPort)
		id := a.ID
		px, err := proxy.Start(proxy.Config{
			Proto:     p.Protocol,
			Listen:    net.JoinHostPort(host, strconv.Itoa(p.HostPort)),
			Target:    func(ctx context.Context) (netip.AddrPort, error) { return m.target(ctx, id, guestPort) },
			ListenTCP: m.listen,
			ListenUDP: m.listenPacket,
			Dial:      m.dial,
			Logger:    m.log.With("instance", a.Name),
		})
		if err != nil {
			a.closeProxies()
			if errors.Is(err, syscall.EADDRINUSE) {
				return errdefs.Conflict("host port %s:%d/%s is already in use%s: choose another host port", host, p.HostPort, p.Protocol, m.holder(a.ID, *p))
			}
			return fmt.Errorf("publish %s: %w", portspec.Format(*p), err)
		}
		if p.HostPort == 0 {
			if ap, err := netip.ParseAddrPort(px.Addr().String()); err == nil {
				p.HostPort = int(ap.Port())
			}
		}
		a.proxies = append(a.proxies, px)
	}
	return nil
}

// target is where a proxied connection to instance id's guestPort goes.
// An instance standing by is woken first, when the daemon wakes
// instances (Config.Wake); the connection waits meanwhile.
func (m *Manager) target(ctx context.Context, id string, guestPort uint16) (netip.AddrPort, error) {
	m.mu.Lock()
	a, ok := m.atts[id]
	var ip netip.Addr
	standby := false
	if ok {
		ip, _ = netip.ParseAddr(a.IP)
		standby = a.Standby
	}
	m.mu.Unlock()
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("instance %s has no network", id)
	}
	if standby {
		if m.cfg.Wake == nil {
			return netip.AddrPort{}, fmt.Errorf("instance %s is standing by", id)
		}
		if err := m.cfg.Wake(ctx, id); err != nil {
			return netip.AddrPort{}, fmt.Errorf("wake instance %s: %w", id, err)
		}
	}
	return netip.AddrPortFrom(ip, guestPort), nil
}

// Activity says how many connections an instance's published ports hold
// now and when a byte last moved through them.
func (m *Manager) Activity(id string) (conns int, last time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.atts[id]
	if !ok {
		return 0, time.Time{}
	}
	for _, p := range a.proxies {
		conns += p.Conns()
		if t := p.LastActive(); t.After(last) {
			last = t
		}
	}
	return conns, last
}

// holder names who holds a host port, when that can be found: another
// instance, or a process of the host.
func (m *Manager) holder(self string, p api.PortMapping) string {
	for _, a := range m.atts {
		if a.ID == self {
			continue
		}
		for _, q := range a.Ports {
			if q.HostPort == p.HostPort && q.Protocol == p.Protocol {
				return " by instance " + a.Name
			}
		}
	}
	var who string
	_ = m.cfg.NS.Do(func() error {
		who = processHolding(p.Protocol, p.HostPort)
		return nil
	})
	if who != "" {
		return " by " + who
	}
	return ""
}

// processHolding finds the process with a socket bound to port, from the
// calling thread's network namespace: "nginx (pid 123)" or "".
func processHolding(proto string, port int) string {
	inodes := map[string]bool{}
	for _, f := range []string{proto, proto + "6"} {
		fh, err := os.Open("/proc/thread-self/net/" + f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil || int(n) != port {
				continue
			}
			if proto == "tcp" && fields[3] != "0A" { // LISTEN
				continue
			}
			inodes["socket:["+fields[9]+"]"] = true
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return ""
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range procs {
		target, err := os.Readlink(fd)
		if err != nil || !inodes[target] {
			continue
		}
		pid := strings.Split(fd, "/")[2]
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		return fmt.Sprintf("%s (pid %s)", strings.TrimSpace(string(comm)), pid)
	}
	return ""
}

// Standby marks an instance's VM as saved: its ports stay bound, and the
// kernel stops forwarding to it so that every new connection reaches the
// proxy.
func (m *Manager) Standby(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.atts[id]
	if !ok || a.Standby {
		return nil
	}
	a.Standby = true
	if err := m.saveLocked(a); err != nil {
		return err
	}
	m.deleteForwardsLocked(a)
	return nil
}

// Detach gives back an instance's address and ports.
func (m *Manager) Detach(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.atts[id]
	if !ok {
		return
	}
	m.dropLocked(a)
	if err := m.cfg.DB.Delete(attBucket, id); err != nil {
		m.log.Warn("forget attachment", "instance", a.Name, "err", err)
	}
	if !a.Standby {
		m.deleteForwardsLocked(a)
	}
}

// Attachment returns an instance's current attachment.
func (m *Manager) Attachment(id string) (Attachment, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.atts[id]
	if !ok {
		return Attachment{}, false
	}
	return a.Attachment, true
}

// Reconcile settles the store with the instances a restarted daemon found:
// attachments of instances that keep says are gone are given back, the
// ports of the rest are bound again and the rules rewritten. TAPs need no
// sweep: each lives only as long as the VMM holding it.
func (m *Manager) Reconcile(keep func(id string) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, a := range m.atts {
		if !keep(id) {
			m.log.Info("giving back the address of an instance that is gone", "instance", a.Name, "ip", a.IP)
			m.dropLocked(a)
			if err := m.cfg.DB.Delete(attBucket, id); err != nil {
				m.log.Warn("forget attachment", "instance", a.Name, "err", err)
			}
			continue
		}
		if a.proxies == nil && len(a.Ports) > 0 {
			if err := m.bindLocked(a); err != nil {
				m.log.Warn("publish ports again", "instance", a.Name, "err", err)
			}
		}
	}
	if err := m.applyLocked(); err != nil {
		m.log.Warn("nftables", "err", err)
	}
}

// applyLocked rewrites flick's nftables table from the networks and
// attachments.
func (m *Manager) applyLocked() error {
	rs := nft.Ruleset{Table: m.cfg.Table}
	for _, n := range m.nets {
		rs.Networks = append(rs.Networks, nft.Network{Bridge: n.Bridge, Subnet: n.subnet, Gateway: n.gw})
	}
	for _, a := range m.atts {
		if !a.Standby {
			rs.Forwards = append(rs.Forwards, forwardsOf(a)...)
		}
	}
	if err := nft.Apply(m.cfg.NS.FD(), rs); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return nil
}

// OpenTAP makes the TAP for instance or zygote id, not yet plugged into
// any bridge, and returns its queue for the VMM: the TAP goes away when
// the last holder of that file does.
func (m *Manager) OpenTAP(id string) (*os.File, string, error) {
	name := tapName(id)
	f, err := m.openTAP(name)
	return f, name, err
}

// Plug puts a TAP on instance id's network.
func (m *Manager) Plug(id, tap string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.atts[id]
	if !ok {
		return fmt.Errorf("plug %s: instance %s has no network attachment", tap, id)
	}
	n, ok := m.nets[a.Network]
	if !ok {
		return errdefs.NotFound("network %s not found", a.Network)
	}
	return m.plugTAP(tap, n.Bridge)
}

// lookupName answers DNS for an instance name on a network.
func (m *Manager) lookupName(network, name string) (netip.Addr, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range m.atts {
		if a.Network == network && a.Name == name {
			ip, err := netip.ParseAddr(a.IP)
			return ip, err == nil
		}
	}
	return netip.Addr{}, false
}

func (m *Manager) reverseName(network string, ip netip.Addr) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := ip.String()
	for _, a := range m.atts {
		if a.Network == network && a.IP == s {
			return a.Name, true
		}
	}
	return "", false
}

// Sockets in the manager's namespace.

func (m *Manager) listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := m.cfg.NS.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

func (m *Manager) listenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := m.cfg.NS.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

func (m *Manager) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := m.cfg.NS.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
