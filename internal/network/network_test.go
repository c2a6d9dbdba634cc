package network

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/netns"
	"github.com/flick-vm/flick/internal/store"
	"github.com/flick-vm/flick/internal/testenv"
)

// newNS makes a throwaway network namespace with loopback up.
func newNS(t *testing.T) *netns.NS {
	t.Helper()
	testenv.RequireRoot(t)
	name := fmt.Sprintf("flnet%d", testNSCounter.Add(1))
	name = name + filepath.Base(t.TempDir())
	if len(name) > 30 {
		name = name[:30]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	ns, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func links(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns.Name(), "-br", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr: %v: %s", err, out)
	}
	return string(out)
}

// TestManager drives the manager in a namespace of its own: the default
// network, a user network, addresses that survive a restart without
// colliding, published ports, reconcile and removal.
func TestManager(t *testing.T) {
	ns := newNS(t)
	db, err := store.Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users := map[string][]string{}
	cfg := Config{DB: db, NS: ns, Upstreams: []string{"127.0.0.1:1"}, Users: func(n string) []string { return users[n] }}
	m, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l := links(t, ns); !strings.Contains(l, "flick0") || !strings.Contains(l, "10.77.0.1/16") {
		t.Fatalf("no default bridge with 10.77.0.1/16:\n%s", l)
	}

	n, err := m.Create(t.Context(), api.NetworkCreateRequest{Name: "team"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet != "10.78.0.0/24" || n.Gateway != "10.78.0.1" {
		t.Errorf("team: subnet %s gateway %s, want the first free /24 10.78.0.0/24", n.Subnet, n.Gateway)
	}
	if _, err := m.Create(t.Context(), api.NetworkCreateRequest{Name: "x", Subnet: "10.77.128.0/24"}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "overlaps network default") {
		t.Errorf("overlapping subnet: %v", err)
	}

	a1, err := m.Attach(t.Context(), AttachRequest{ID: "id1", Name: "One", Network: "team", Ports: []api.PortMapping{{HostPort: 0, GuestPort: 80, Protocol: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	if a1.IP != "10.78.0.2" || a1.Name != "one" || a1.Ports[0].HostPort == 0 || a1.MAC != "02:fc:0a:4e:00:02" {
		t.Errorf("attachment %+v", a1)
	}
	g := a1.Guest()
	if g.Address != "10.78.0.2/24" || g.Gateway != "10.78.0.1" || g.DNS[0] != "10.78.0.1" {
		t.Errorf("guest config %+v", g)
	}
	if ip, ok := m.lookupName("team", "one"); !ok || ip.String() != "10.78.0.2" {
		t.Errorf("DNS lookup of one: %v %v", ip, ok)
	}
	if _, ok := m.lookupName("default", "one"); ok {
		t.Errorf("one resolves on the default network")
	}
	// The same host port again is refused, naming the holder.
	_, err = m.Attach(t.Context(), AttachRequest{ID: "id2", Name: "two", Network: "team", Ports: []api.PortMapping{{HostPort: a1.Ports[0].HostPort, GuestPort: 80, Protocol: "tcp"}}})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "by instance one") {
		t.Errorf("taken host port: %v", err)
	}
	a2, err := m.Attach(t.Context(), AttachRequest{ID: "id2", Name: "two", Network: "team"})
	if err != nil || a2.IP != "10.78.0.3" {
		t.Fatalf("second attachment: %+v, %v", a2, err)
	}
	tap, name, err := m.OpenTAP("id2")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Plug("id2", name); err != nil {
		t.Fatal(err)
	}
	if l := links(t, ns); !strings.Contains(l, name) {
		t.Errorf("no TAP %s:\n%s", name, l)
	}
	tap.Close()
	if l := links(t, ns); strings.Contains(l, name) {
		t.Errorf("TAP %s outlived its last holder:\n%s", name, l)
	}

	// A restarted daemon: attachments come back from the store; id1's is
	// kept, id2's instance is gone.
	m.Close()
	m, err = New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Reconcile(func(id string) bool { return id == "id1" })
	if a, ok := m.Attachment("id1"); !ok || a.IP != "10.78.0.2" || a.Ports[0].HostPort != a1.Ports[0].HostPort {
		t.Errorf("id1 after restart: %+v %v", a, ok)
	}
	if _, ok := m.Attachment("id2"); ok {
		t.Errorf("id2 kept after reconcile")
	}
	a3, err := m.Attach(t.Context(), AttachRequest{ID: "id3", Name: "three", Network: "team"})
	if err != nil || a3.IP != "10.78.0.3" {
		t.Errorf("attachment after restart: %+v, %v; want 10.78.0.3, the one given back", a3, err)
	}

	// A zygote's reserved address is given to nobody else, and the
	// instance that starts in the zygote takes it; the reservation ends
	// there.
	z, err := m.Reserve("team", "zyg1")
	if err != nil || z.Address != "10.78.0.4/24" || z.MAC != "02:fc:0a:4e:00:04" || z.Gateway != "10.78.0.1" {
		t.Fatalf("reserve: %+v, %v; want 10.78.0.4/24, the first free address", z, err)
	}
	if a, err := m.Attach(t.Context(), AttachRequest{ID: "id4", Name: "four", Network: "team"}); err != nil || a.IP != "10.78.0.5" {
		t.Errorf("attachment beside a reservation: %+v, %v; want 10.78.0.5", a, err)
	}
	if a, err := m.Attach(t.Context(), AttachRequest{ID: "id5", Name: "five", Network: "team", Reservation: "zyg1"}); err != nil || a.IP != "10.78.0.4" {
		t.Errorf("attachment in the zygote: %+v, %v; want its 10.78.0.4", a, err)
	}
	// A reservation on another network only ends.
	if z, err = m.Reserve("", "zyg2"); err != nil || z.Address != "10.77.0.2/16" {
		t.Fatalf("reserve on default: %+v, %v", z, err)
	}
	if a, err := m.Attach(t.Context(), AttachRequest{ID: "id6", Name: "six", Network: "team", Reservation: "zyg2"}); err != nil || a.IP != "10.78.0.6" {
		t.Errorf("attachment on team in a zygote of default: %+v, %v; want 10.78.0.6", a, err)
	}
	m.Release("zyg2") // no longer held: nothing to do
	if z, err = m.Reserve("", "zyg3"); err != nil || z.Address != "10.77.0.2/16" {
		t.Errorf("reserve after the other ended: %+v, %v; want 10.77.0.2 again", z, err)
	}
	m.Release("zyg3")
	for _, id := range []string{"id4", "id5", "id6"} {
		m.Detach(id)
	}

	users["team"] = []string{"one"}
	if err := m.Remove(t.Context(), "team"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("remove a network in use: %v", err)
	}
	delete(users, "team")
	if err := m.Remove(t.Context(), "team"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("remove a network with attachments: %v", err)
	}
	m.Detach("id1")
	m.Detach("id3")
	if err := m.Remove(t.Context(), "team"); err != nil {
		t.Fatal(err)
	}
	if l := links(t, ns); strings.Contains(l, "10.78.0.1") {
		t.Errorf("team's bridge left behind:\n%s", l)
	}
	if err := m.Remove(t.Context(), "default"); !errors.Is(err, errdefs.ErrForbidden) {
		t.Errorf("remove default: %v", err)
	}
}

var testNSCounter atomic.Int64

// BenchmarkAttach measures what a start on a network costs the daemon: an
// address (no published port) and a TAP plugged into the bridge. Giving
// them back happens at stop, and a TAP goes with its VMM, so neither is
// timed.
func BenchmarkAttach(b *testing.B) {
	testenv.RequireRoot(b)
	name := fmt.Sprintf("flbench%d", testNSCounter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	ns, err := netns.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	db, err := store.Open(filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	m, err := New(b.Context(), Config{DB: db, NS: ns, Upstreams: []string{"127.0.0.1:1"}})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var ids []string
	var taps []*os.File
	for b.Loop() {
		id := fmt.Sprintf("%012x0000", len(ids))
		a, err := m.Attach(b.Context(), AttachRequest{ID: id, Name: "x" + id})
		if err != nil {
			b.Fatal(err)
		}
		f, tap, err := m.OpenTAP(a.ID)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Plug(a.ID, tap); err != nil {
			b.Fatal(err)
		}
		ids, taps = append(ids, id), append(taps, f)
	}
	b.StopTimer()
	for i, id := range ids {
		taps[i].Close()
		m.Detach(id)
	}
}

// TestDefaultSubnetAvoidsHostRoutes makes the default network in a
// namespace that routes 10.77.0.0/16 elsewhere: it takes the next subnet.
func TestDefaultSubnetAvoidsHostRoutes(t *testing.T) {
	ns := newNS(t)
	if out, err := exec.Command("ip", "-n", ns.Name(), "route", "add", "blackhole", "10.77.0.0/16").CombinedOutput(); err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	m, err := New(t.Context(), Config{DB: db, NS: ns, Upstreams: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	n, err := m.Get(t.Context(), api.NetworkDefault)
	if err != nil || n.Subnet != "172.30.0.0/16" {
		t.Errorf("default network: %+v, %v; want 172.30.0.0/16, the next free one", n, err)
	}
	// Told a taken subnet, it says so.
	db2, err := store.Open(filepath.Join(t.TempDir(), "db2"))
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	ns2 := newNS(t)
	if out, err := exec.Command("ip", "-n", ns2.Name(), "route", "add", "blackhole", "10.5.0.0/16").CombinedOutput(); err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	_, err = New(t.Context(), Config{DB: db2, NS: ns2, DefaultSubnet: "10.5.0.0/24", Upstreams: []string{"127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "overlaps the host's route to 10.5.0.0/16") || !strings.Contains(err.Error(), "--default-subnet") {
		t.Errorf("a taken --default-subnet: %v", err)
	}
}
