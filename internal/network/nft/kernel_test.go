package nft

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/testenv"
)

func nftConn(t *testing.T, ns *testNS) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.fd()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tableState is a table as read back from the kernel.
type tableState struct {
	chains []string            // chainSummaries, sorted
	rules  map[string][]string // chain name -> rendered rules, in order
}

// readTable reads the inet table name back from the namespace; nil when
// there is none.
func readTable(t *testing.T, ns *testNS, name string) *tableState {
	t.Helper()
	c := nftConn(t, ns)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == name })
	if i < 0 {
		return nil
	}
	table := tables[i]
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name != name })
	st := &tableState{chains: chainSummaries(chains), rules: map[string][]string{}}
	slices.Sort(st.chains)
	for _, ch := range chains {
		rules, err := c.GetRules(table, ch)
		if err != nil {
			t.Fatalf("rules of chain %s: %v", ch.Name, err)
		}
		st.rules[ch.Name] = []string{}
		for _, r := range rules {
			s, err := renderRule(r)
			if err != nil {
				t.Fatalf("chain %s: %v", ch.Name, err)
			}
			st.rules[ch.Name] = append(st.rules[ch.Name], s)
		}
	}
	return st
}

// checkTable fails the test unless the kernel holds exactly rs.
func checkTable(t *testing.T, ns *testNS, rs Ruleset) {
	t.Helper()
	p, err := build(rs)
	if err != nil {
		t.Fatal(err)
	}
	got := readTable(t, ns, p.table.Name)
	if got == nil {
		t.Fatalf("table inet %s is missing", p.table.Name)
	}
	wantChains := chainSummaries(p.chains)
	slices.Sort(wantChains)
	if !slices.Equal(got.chains, wantChains) {
		t.Errorf("chains\n got %v\nwant %v", got.chains, wantChains)
	}
	want := rendered(t, p)
	for chain, rules := range want {
		if !slices.Equal(got.rules[chain], rules) {
			t.Errorf("chain %s in the kernel:\n got %s\nwant %s", chain,
				strings.Join(got.rules[chain], "\n     "), strings.Join(rules, "\n     "))
		}
	}
}

// dnatTargets reads the DNAT targets of the prerouting chain straight
// from the expressions the kernel returns.
func dnatTargets(t *testing.T, ns *testNS, table string) []netip.AddrPort {
	t.Helper()
	c := nftConn(t, ns)
	tb := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(tb, &nftables.Chain{Name: ChainPrerouting, Table: tb})
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.AddrPort
	for _, r := range rules {
		imm := map[uint32][]byte{}
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Immediate:
				imm[e.Register] = e.Data
			case *expr.NAT:
				if e.Type != expr.NATTypeDestNAT {
					t.Fatalf("nat type %d in prerouting", e.Type)
				}
				a, p := imm[e.RegAddrMin], imm[e.RegProtoMin]
				if len(a) != 4 || len(p) != 2 {
					t.Fatalf("dnat registers hold %x and %x", a, p)
				}
				out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte(a)), binary.BigEndian.Uint16(p)))
			}
		}
	}
	return out
}

func TestApplyInKernel(t *testing.T) {
	testenv.RequireRoot(t)
	ns := newNS(t, uniquePrefix(t)+"k")

	// Tables that are not flickd's: another inet table and an ip table
	// of flickd's name. Neither may be touched.
	c := nftConn(t, ns)
	other := c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet})
	c.AddChain(&nftables.Chain{Name: "keep", Table: other})
	sameName := c.AddTable(&nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyIPv4})
	c.AddChain(&nftables.Chain{Name: "keep", Table: sameName})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	if err := Delete(ns.fd(), ""); err != nil {
		t.Fatalf("Delete before any Apply: %v", err)
	}

	first := Ruleset{
		Networks: []Network{net0, net1},
		Forwards: []Forward{
			web,
			{Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.10"), HostPort: 5353, GuestIP: netip.MustParseAddr("10.78.0.3"), GuestPort: 53},
		},
	}
	if err := Apply(ns.fd(), first); err != nil {
		t.Fatal(err)
	}
	checkTable(t, ns, first)
	want := []netip.AddrPort{netip.MustParseAddrPort("10.77.0.2:80"), netip.MustParseAddrPort("10.78.0.3:53")}
	if got := dnatTargets(t, ns, DefaultTable); !slices.Equal(got, want) {
		t.Errorf("dnat targets %v, want %v", got, want)
	}

	// Somebody adds a chain to flickd's table: the next Apply drops it,
	// since the table holds exactly the Ruleset.
	stray := &nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyINet}
	c.AddChain(&nftables.Chain{Name: "stray", Table: stray})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	second := Ruleset{
		Networks: []Network{net2},
		Forwards: []Forward{{Proto: "tcp", HostPort: 2222, GuestIP: netip.MustParseAddr("10.79.0.7"), GuestPort: 22}},
	}
	if err := Apply(ns.fd(), second); err != nil {
		t.Fatal(err)
	}
	checkTable(t, ns, second)
	want = []netip.AddrPort{netip.MustParseAddrPort("10.79.0.7:22")}
	if got := dnatTargets(t, ns, DefaultTable); !slices.Equal(got, want) {
		t.Errorf("dnat targets after the second Apply %v, want %v", got, want)
	}

	// A bad Ruleset is refused before anything is sent.
	bad := second
	bad.Forwards = append(slices.Clone(second.Forwards), Forward{Proto: "icmp", HostPort: 1, GuestIP: web.GuestIP, GuestPort: 1})
	if err := Apply(ns.fd(), bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Apply of a bad ruleset: %v, want an invalid argument", err)
	}
	checkTable(t, ns, second)

	for i := range 2 {
		if err := Delete(ns.fd(), ""); err != nil {
			t.Fatalf("Delete %d: %v", i+1, err)
		}
		if st := readTable(t, ns, DefaultTable); st != nil {
			t.Fatalf("after Delete %d the table is still there: %+v", i+1, st)
		}
	}

	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, tb := range tables {
		left = append(left, tb.Name+"/"+familyName(tb.Family))
	}
	slices.Sort(left)
	if want := []string{"flick/ip", "other/inet"}; !slices.Equal(left, want) {
		t.Errorf("tables left %v, want %v", left, want)
	}
}

func TestApplyCustomTableName(t *testing.T) {
	testenv.RequireRoot(t)
	ns := newNS(t, uniquePrefix(t)+"n")
	rs := Ruleset{Table: "flick-custom", Networks: []Network{net0}, Forwards: []Forward{web}}
	if err := Apply(ns.fd(), rs); err != nil {
		t.Fatal(err)
	}
	checkTable(t, ns, rs)
	if st := readTable(t, ns, DefaultTable); st != nil {
		t.Errorf("Apply of table flick-custom made table %s too", DefaultTable)
	}
	if err := Delete(ns.fd(), DefaultTable); err != nil {
		t.Fatal(err)
	}
	if st := readTable(t, ns, "flick-custom"); st == nil {
		t.Errorf("Delete of table %s removed flick-custom", DefaultTable)
	}
	if err := Delete(ns.fd(), "flick-custom"); err != nil {
		t.Fatal(err)
	}
	if st := readTable(t, ns, "flick-custom"); st != nil {
		t.Errorf("table flick-custom still there after Delete")
	}
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	}
	return "family" + string(rune('0'+f))
}

// The netlink library takes namespace fd 0 for "none" and would work in
// the caller's namespace; a daemon whose stdin is closed can well get its
// namespace file as fd 0.
func TestApplyNamespaceOnFD0(t *testing.T) {
	testenv.RequireRoot(t)
	ns := newNS(t, uniquePrefix(t)+"z")
	table := "fd0-" + strings.TrimPrefix(ns.name, "flicknft-")
	// Should the rules land in the test's own namespace, take them away.
	t.Cleanup(func() {
		if err := Delete(-1, table); err != nil {
			t.Error(err)
		}
	})

	stdin, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(ns.fd(), 0); err != nil {
		t.Fatal(err)
	}
	applyErr := Apply(0, Ruleset{Table: table, Networks: []Network{net0}})
	if err := unix.Dup2(stdin, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(stdin)
	if applyErr != nil {
		t.Fatal(applyErr)
	}
	if readTable(t, ns, table) == nil {
		t.Errorf("Apply(0, ...) did not make table %s in the namespace on fd 0", table)
	}
}

// TestForwardsInKernel adds published ports to a table without replacing
// it and removes those of one owner only; Apply again keeps them.
func TestForwardsInKernel(t *testing.T) {
	testenv.RequireRoot(t)
	ns := newNS(t, uniquePrefix(t)+"f")
	base := Ruleset{Networks: []Network{{Bridge: "br0", Subnet: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1")}}}
	if err := Apply(ns.fd(), base); err != nil {
		t.Fatal(err)
	}
	fwd := func(port uint16, tag string) Forward {
		return Forward{Proto: "tcp", HostPort: port, GuestIP: netip.MustParseAddr("10.99.0.2"), GuestPort: 80, Tag: tag}
	}
	if err := AddForwards(ns.fd(), "", []Forward{fwd(8080, "a"), fwd(8081, "a")}); err != nil {
		t.Fatal(err)
	}
	if err := AddForwards(ns.fd(), "", []Forward{fwd(9090, "ab")}); err != nil {
		t.Fatal(err)
	}
	if got := dnatTargets(t, ns, DefaultTable); len(got) != 3 {
		t.Fatalf("after adding: %d DNAT rules, want 3", len(got))
	}
	if err := DeleteForwards(ns.fd(), "", "a"); err != nil {
		t.Fatal(err)
	}
	// "ab" is another owner, not one whose tag merely ends in "a"'s.
	if got := dnatTargets(t, ns, DefaultTable); len(got) != 1 {
		t.Fatalf("after deleting a's: %d DNAT rules, want ab's one", len(got))
	}
	if err := DeleteForwards(ns.fd(), "", "nobody"); err != nil {
		t.Errorf("delete of an owner with no rules: %v", err)
	}
	if err := DeleteForwards(ns.fd(), "", "two words"); err == nil {
		t.Errorf("a tag with a space was taken")
	}
	if err := AddForwards(ns.fd(), "", []Forward{{Proto: "sctp", HostPort: 1, GuestIP: netip.MustParseAddr("10.99.0.2"), GuestPort: 1}}); err == nil {
		t.Errorf("a bad forward was added")
	}
	// Apply with the full set leaves exactly it.
	full := base
	full.Forwards = []Forward{fwd(7000, "c")}
	if err := Apply(ns.fd(), full); err != nil {
		t.Fatal(err)
	}
	if got := dnatTargets(t, ns, DefaultTable); len(got) != 1 {
		t.Fatalf("after Apply: %d DNAT rules, want 1", len(got))
	}
	checkTable(t, ns, full)
}
