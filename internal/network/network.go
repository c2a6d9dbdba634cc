// Package network gives flick's instances their networks: a Linux bridge
// per network with the host's gateway address on it, a TAP per VM plugged
// into it, addresses handed out from the network's subnet and kept in the
// store, egress NAT, published ports (nftables DNAT for traffic from other
// hosts, a userspace proxy for traffic from the host itself), isolation
// between networks, and a DNS server per network that answers
// NAME.flick.internal. Everything it makes lives in one network namespace
// (the daemon's own unless flickd --netns names another), and a restarted
// daemon reconciles what it finds there with its store.
package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/netns"
	"github.com/flick-vm/flick/internal/network/dns"
	"github.com/flick-vm/flick/internal/store"
)

const (
	netBucket = "networks"
	attBucket = "attachments"
)

// DefaultSubnets are the default network's subnets, the first that is
// free of the host's routes, unless flickd is told one.
var DefaultSubnets = []string{"10.77.0.0/16", "172.30.0.0/16", "192.168.177.0/24"}

// Config configures a Manager.
type Config struct {
	DB     *store.DB
	NS     *netns.NS // where bridges, TAPs, rules and port sockets live; nil: the daemon's own
	Logger *slog.Logger
	// DefaultSubnet is the subnet of the network "default", made at the
	// first start; default the first of DefaultSubnets that the host does
	// not route elsewhere.
	DefaultSubnet string
	// Table is flick's nftables table; default "flick".
	Table string
	// Upstreams are the DNS servers that names outside flick.internal go
	// to; default the host's /etc/resolv.conf.
	Upstreams []string
	// Users names the instances, any state, configured to join a
	// network; a network with users cannot be removed.
	Users func(network string) []string
	// Wake resumes an instance standing by, for a connection to one of
	// its published ports, and returns once it runs; nil refuses such
	// connections.
	Wake func(ctx context.Context, id string) error
}

// Manager owns flick's networks.
type Manager struct {
	cfg Config
	log *slog.Logger
	nl  *netlink.Handle

	mu   sync.Mutex
	nets map[string]*netState // by name
	atts map[string]*attState // by instance id
	// held is the addresses reserved for zygotes (Reserve), by holder:
	// in memory only, as zygotes die with the daemon.
	held map[string]reservation
}

type netState struct {
	api.Network
	subnet netip.Prefix
	gw     netip.Addr
	dns    *dns.Server
}

// New opens the networks in the store, makes the default one at the first
// start, and brings every bridge and DNS server up. Attachments found in
// the store wait for Reconcile.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NS == nil {
		cfg.NS = netns.Host()
	}
	if cfg.Table == "" {
		cfg.Table = "flick"
	}
	if cfg.Users == nil {
		cfg.Users = func(string) []string { return nil }
	}
	if len(cfg.Upstreams) == 0 {
		up, err := dns.ResolvConf("/etc/resolv.conf")
		if err != nil {
			cfg.Logger.Warn("no upstream DNS servers: names outside "+api.NetworkDomain+" will not resolve in guests", "err", err)
		}
		cfg.Upstreams = up
	}
	var nl *netlink.Handle
	var err error
	if cfg.NS.IsHost() {
		nl, err = netlink.NewHandle()
	} else {
		nl, err = netlink.NewHandleAt(vnetns.NsHandle(cfg.NS.FD()))
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	m := &Manager{
		cfg:  cfg,
		log:  cfg.Logger.With("op", "network"),
		nl:   nl,
		nets: map[string]*netState{},
		atts: map[string]*attState{},
		held: map[string]reservation{},
	}
	if err := m.cfg.NS.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		nl.Close()
		return nil, fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if err := m.load(); err != nil {
		m.Close()
		return nil, err
	}
	if _, ok := m.nets[api.NetworkDefault]; !ok {
		subnets := DefaultSubnets
		if cfg.DefaultSubnet != "" {
			subnets = []string{cfg.DefaultSubnet}
		}
		var err error
		for _, sub := range subnets {
			if _, err = m.create(ctx, api.NetworkCreateRequest{Name: api.NetworkDefault, Subnet: sub}); err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) {
				break
			}
			m.log.Info("default subnet taken by the host; trying the next", "subnet", sub, "err", err)
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("default network: %w", err)
		}
	}
	return m, nil
}

// load brings up the stored networks and removes bridges of networks that
// are gone.
func (m *Manager) load() error {
	var recs []api.Network
	var atts []Attachment
	err := m.cfg.DB.View(func(tx *store.Tx) error {
		var err error
		if recs, err = store.All[api.Network](tx, netBucket); err != nil {
			return err
		}
		atts, err = store.All[Attachment](tx, attBucket)
		return err
	})
	if err != nil {
		return fmt.Errorf("load networks: %w", err)
	}
	for _, n := range recs {
		ns, err := m.up(n)
		if err != nil {
			return err
		}
		m.nets[n.Name] = ns
	}
	for _, a := range atts {
		m.atts[a.ID] = &attState{Attachment: a}
	}
	bridges, err := m.bridges()
	if err != nil {
		return err
	}
	for _, b := range bridges {
		if !m.ownBridge(b) {
			m.log.Info("removing the bridge of a network that is gone", "bridge", b)
			if err := m.deleteLink(b); err != nil {
				m.log.Warn("remove stale bridge", "bridge", b, "err", err)
			}
		}
	}
	return nil
}

func (m *Manager) ownBridge(name string) bool {
	for _, n := range m.nets {
		if n.Bridge == name {
			return true
		}
	}
	return false
}

// up brings a stored network's bridge and DNS server up.
func (m *Manager) up(n api.Network) (*netState, error) {
	subnet, err := netip.ParsePrefix(n.Subnet)
	if err != nil {
		return nil, fmt.Errorf("network %s: subnet %q: %w", n.Name, n.Subnet, err)
	}
	gw := gatewayOf(subnet)
	if err := m.ensureBridge(n.Bridge, gw, subnet); err != nil {
		return nil, fmt.Errorf("network %s: %w", n.Name, err)
	}
	ns := &netState{Network: n, subnet: subnet, gw: gw}
	name := n.Name
	srv, err := dns.Start(netip.AddrPortFrom(gw, 53).String(), dns.Config{
		Lookup:       func(host string) (netip.Addr, bool) { return m.lookupName(name, host) },
		Reverse:      func(a netip.Addr) (string, bool) { return m.reverseName(name, a) },
		Upstreams:    m.cfg.Upstreams,
		Logger:       m.log.With("network", n.Name),
		ListenPacket: m.listenPacket,
		Listen:       m.listen,
	})
	if err != nil {
		return nil, fmt.Errorf("network %s: DNS server: %w", n.Name, err)
	}
	ns.dns = srv
	return ns, nil
}

var netNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// Create makes a network.
func (m *Manager) Create(ctx context.Context, req api.NetworkCreateRequest) (api.Network, error) {
	if req.Name == api.NetworkNone {
		return api.Network{}, errdefs.InvalidArgument("network name %q is reserved: it means no network", req.Name)
	}
	return m.create(ctx, req)
}

func (m *Manager) create(_ context.Context, req api.NetworkCreateRequest) (api.Network, error) {
	if !netNameRE.MatchString(req.Name) {
		return api.Network{}, errdefs.InvalidArgument("invalid network name %q: use letters, digits, '_', '.' and '-', starting with a letter or digit", req.Name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.nets[req.Name]; ok {
		return api.Network{}, errdefs.AlreadyExists("network %s already exists", req.Name)
	}
	ours := map[string]bool{}
	for _, n := range m.nets {
		ours[n.Bridge] = true
	}
	routes, err := m.hostRoutes(ours)
	if err != nil {
		return api.Network{}, err
	}
	var subnet netip.Prefix
	if req.Subnet != "" {
		if subnet, err = checkSubnet(req.Subnet); err != nil {
			return api.Network{}, err
		}
		if err := m.checkFree(subnet, routes); err != nil {
			if req.Name == api.NetworkDefault {
				return api.Network{}, fmt.Errorf("%w: give flickd another --default-subnet", err)
			}
			return api.Network{}, fmt.Errorf("%w: choose another --subnet", err)
		}
	} else {
		if subnet, err = m.pickSubnet(routes); err != nil {
			return api.Network{}, err
		}
	}
	id := newID()
	n := api.Network{
		ID:      id,
		Name:    req.Name,
		Subnet:  subnet.String(),
		Gateway: gatewayOf(subnet).String(),
		Bridge:  bridgePrefix + id[:8],
		Created: time.Now().UTC(),
	}
	if req.Name == api.NetworkDefault {
		n.Bridge = defaultBridge
	}
	ns, err := m.up(n)
	if err != nil {
		_ = m.deleteLink(n.Bridge)
		return api.Network{}, err
	}
	if err := m.cfg.DB.Put(netBucket, n.Name, n); err != nil {
		ns.dns.Close()
		_ = m.deleteLink(n.Bridge)
		return api.Network{}, fmt.Errorf("save network %s: %w", n.Name, err)
	}
	m.nets[n.Name] = ns
	if err := m.applyLocked(); err != nil {
		m.log.Warn("nftables", "err", err)
	}
	m.log.Info("network created", "network", n.Name, "subnet", n.Subnet, "bridge", n.Bridge)
	return n, nil
}

// checkFree refuses a subnet that overlaps another network's or a route
// of the host's.
func (m *Manager) checkFree(subnet netip.Prefix, routes []netip.Prefix) error {
	for _, n := range m.nets {
		if overlaps(n.subnet, subnet) {
			return errdefs.InvalidArgument("subnet %s overlaps network %s (%s)", subnet, n.Name, n.Subnet)
		}
	}
	for _, r := range routes {
		if overlaps(r, subnet) {
			return errdefs.InvalidArgument("subnet %s overlaps the host's route to %s", subnet, r)
		}
	}
	return nil
}

// pickSubnet finds a free /24 in 10.78.0.0 to 10.99.255.0.
func (m *Manager) pickSubnet(routes []netip.Prefix) (netip.Prefix, error) {
	for b := 78; b <= 99; b++ {
		for c := 0; c < 256; c++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(b), byte(c), 0}), 24)
			if m.checkFree(p, routes) == nil {
				return p, nil
			}
		}
	}
	return netip.Prefix{}, errdefs.Conflict("no free /24 left in 10.78.0.0-10.99.255.0: give one with --subnet")
}

// Remove deletes a network no instance uses.
func (m *Manager) Remove(_ context.Context, name string) error {
	if name == api.NetworkDefault {
		return errdefs.Forbidden("the default network cannot be removed")
	}
	if users := m.cfg.Users(name); len(users) > 0 {
		return errdefs.Conflict("network %s is in use by instance %s: remove the instance first", name, strings.Join(users, ", "))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.nets[name]
	if !ok {
		return errdefs.NotFound("network %s not found: see flick network ls", name)
	}
	for _, a := range m.atts {
		if a.Network == name {
			return errdefs.Conflict("network %s is in use by instance %s: remove the instance first", name, a.Name)
		}
	}
	if err := m.cfg.DB.Delete(netBucket, name); err != nil {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	delete(m.nets, name)
	n.dns.Close()
	if err := m.deleteLink(n.Bridge); err != nil {
		m.log.Warn("remove bridge", "bridge", n.Bridge, "err", err)
	}
	if err := m.applyLocked(); err != nil {
		m.log.Warn("nftables", "err", err)
	}
	m.log.Info("network removed", "network", name)
	return nil
}

// Get returns a network by name or id.
func (m *Manager) Get(_ context.Context, ref string) (api.Network, error) {
	m.mu.Lock()
	n, err := m.lookupLocked(ref)
	var v api.Network
	if err == nil {
		v = n.Network
	}
	m.mu.Unlock()
	if err != nil {
		return api.Network{}, err
	}
	return m.counted(v), nil
}

func (m *Manager) lookupLocked(ref string) (*netState, error) {
	if n, ok := m.nets[ref]; ok {
		return n, nil
	}
	for _, n := range m.nets {
		if n.ID == ref {
			return n, nil
		}
	}
	return nil, errdefs.NotFound("network %s not found: see flick network ls, or make it with flick network create %s", ref, ref)
}

// counted fills in how many instances use v; it asks the engine, so it
// runs without m.mu.
func (m *Manager) counted(v api.Network) api.Network {
	v.Instances = len(m.cfg.Users(v.Name))
	return v
}

// List returns every network, by name.
func (m *Manager) List(context.Context) []api.Network {
	m.mu.Lock()
	out := make([]api.Network, 0, len(m.nets))
	for _, n := range m.nets {
		out = append(out, n.Network)
	}
	m.mu.Unlock()
	for i := range out {
		out[i] = m.counted(out[i])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Check says whether an instance may be configured to join network: it
// exists, or is "none".
func (m *Manager) Check(network string) error {
	if network == api.NetworkNone {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.lookupLocked(network)
	return err
}

// Close stops the DNS servers and port proxies; bridges, rules and TAPs
// stay for the VMs that outlive the daemon.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range m.atts {
		a.closeProxies()
	}
	for _, n := range m.nets {
		if n.dns != nil {
			n.dns.Close()
		}
	}
	m.nl.Close()
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
