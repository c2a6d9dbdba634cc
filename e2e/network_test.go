package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/flick-vm/flick/internal/netns"
	"github.com/flick-vm/flick/internal/testenv"
)

// probeSource is the app of the network tests. "serve" answers HTTP on :80
// with its hostname and the client's address, and echoes UDP on :7000;
// "get URL [SECONDS]" fetches a URL, retrying for SECONDS (default 6), and
// prints the body;
// "cat FILE" prints a file; "lookup NAME" resolves a name; "ifaces" lists
// the network interfaces.
const probeSource = `package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		go func() {
			c, err := net.ListenPacket("udp", ":7000")
			if err != nil {
				panic(err)
			}
			buf := make([]byte, 1500)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo([]byte(fmt.Sprintf("udp %s from %s", buf[:n], from.(*net.UDPAddr).IP)), from)
			}
		}()
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			ip, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "host=%s remote=%s\n", host, ip)
		})
		panic(http.ListenAndServe(":80", nil))
	case "get":
		client := http.Client{Timeout: 2 * time.Second}
		secs := 6
		if len(os.Args) > 3 {
			fmt.Sscan(os.Args[3], &secs)
		}
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		for {
			resp, err := client.Get(os.Args[2])
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				os.Stdout.Write(b)
				return
			}
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			time.Sleep(200 * time.Millisecond)
		}
	case "cat":
		b, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
	case "lookup":
		addrs, err := net.LookupHost(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(addrs[0])
	case "ifaces":
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			fmt.Println(i.Name)
		}
	}
}
`

const probe = "flick/probe:1"

// peer is a network namespace standing for another host, joined to the
// daemon's namespace by a veth pair.
type peer struct {
	name string
	ns   *netns.NS
}

// addPeer makes namespace NAME joined to the daemon's namespace: the
// daemon's side gets hostAddr, the peer peerAddr (both CIDRs), and the peer
// routes everything through the daemon's side.
func (e *env) addPeer(suffix, hostAddr, peerAddr string) *peer {
	t := e.t
	t.Helper()
	name := e.netns + suffix
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	sh("ip", "link", "add", "v"+suffix, "netns", e.netns, "type", "veth", "peer", "name", "eth0", "netns", name)
	sh("ip", "-n", e.netns, "addr", "add", hostAddr, "dev", "v"+suffix)
	sh("ip", "-n", e.netns, "link", "set", "v"+suffix, "up")
	sh("ip", "-n", name, "addr", "add", peerAddr, "dev", "eth0")
	sh("ip", "-n", name, "link", "set", "eth0", "up")
	sh("ip", "-n", name, "link", "set", "lo", "up")
	gw, _, _ := strings.Cut(hostAddr, "/")
	sh("ip", "-n", name, "route", "add", "default", "via", gw)
	ns, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return &peer{name: name, ns: ns}
}

// dial connects from inside the peer.
func (p *peer) dial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	err := p.ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, addr, p.name, err)
	}
	return c
}

// get fetches url from inside the peer.
func (p *peer) get(t *testing.T, url string) (string, error) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// An idle kept-alive connection would count as a connection
		// to an instance that stands by when idle.
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := p.ns.Do(func() error {
				var err error
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// serve answers HTTP inside the peer with the client's address.
func (p *peer) serve(t *testing.T, addr string) {
	t.Helper()
	var l net.Listener
	if err := p.ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "outside sees %s\n", ip)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func udpExchange(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	buf := make([]byte, 1500)
	for i := 0; i < 5; i++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	t.Fatalf("no UDP answer to %q from %s", msg, c.RemoteAddr())
	return ""
}

// TestPublishedPorts publishes a VM's ports and reaches them the three
// ways: from another host (a namespace) through the host's address, from
// the host itself through 127.0.0.1, and over UDP; the VM reaches an
// outside host through NAT. A taken port is refused, and a VM killed with
// -9 gives back its TAP, address and ports.
func TestPublishedPorts(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.ScratchGoImage(t, probeSource), probe)
	client := e.addPeer("c", "192.0.2.1/24", "192.0.2.2/24")
	outside := e.addPeer("o", "198.51.100.1/24", "198.51.100.2/24")
	outside.serve(t, "198.51.100.2:80")

	r := e.must("run", "-d", "--name", "web", "-p", "8080:80", "-p", "7000:7000/udp", "--ready", "http://:80/", probe, "serve")
	for _, want := range []string{"ip:         10.77.", "0.0.0.0:8080->80/tcp", "0.0.0.0:7000->7000/udp"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("run -d output lacks %q:\n%s", want, r.stdout)
		}
	}
	inst, raw := e.inspect("web")
	if _, ok := raw["ip"]; !ok || !strings.HasPrefix(inst.IP, "10.77.") {
		t.Errorf("inspect: ip %q, want an address in 10.77.0.0/16", inst.IP)
	}
	if len(inst.Ports) != 2 || inst.Ports[0].HostPort != 8080 || inst.Ports[0].GuestPort != 80 || inst.Ports[1].Protocol != "udp" {
		t.Errorf("inspect: ports %+v", inst.Ports)
	}
	if inst.Phases["network"] <= 0 {
		t.Errorf("no network phase in %v", inst.Phases)
	}

	t.Run("from another host", func(t *testing.T) {
		body, err := client.get(t, "http://192.0.2.1:8080/")
		if err != nil || body != "host=web remote=192.0.2.2\n" {
			t.Errorf("GET from the client host: %q, %v; want the VM to see the client's own address", body, err)
		}
	})
	t.Run("from the host itself", func(t *testing.T) {
		out := e.inNS("curl", "-sS", "-m", "5", "http://127.0.0.1:8080/")
		if !strings.HasPrefix(out, "host=web remote=") {
			t.Errorf("GET 127.0.0.1:8080 on the host: %q", out)
		}
	})
	t.Run("udp", func(t *testing.T) {
		c := client.dial(t, "udp", "192.0.2.1:7000")
		defer c.Close()
		if got := udpExchange(t, c, "ping"); got != "udp ping from 192.0.2.2" {
			t.Errorf("UDP through the published port: %q", got)
		}
	})
	t.Run("egress through NAT", func(t *testing.T) {
		r := e.must("run", "--rm", probe, "get", "http://198.51.100.2/")
		if r.stdout != "outside sees 198.51.100.1\n" {
			t.Errorf("the outside host saw %q, want the host's own address (masquerade)", r.stdout)
		}
	})
	t.Run("port in use", func(t *testing.T) {
		e.fails(125, []string{"run", "-d", "--name", "web2", "-p", "8080:80", probe, "serve"}, "8080", "already in use", "by instance web")
		if _, ok := e.ps(true)["web2"]; ok {
			in, _ := e.inspect("web2")
			if in.IP != "" || len(in.Ports) > 0 {
				t.Errorf("a start refused for its port kept ip %q, ports %v", in.IP, in.Ports)
			}
			e.must("rm", "web2")
		}
		var l net.Listener
		ns, _ := netns.Open(e.netns)
		defer ns.Close()
		if err := ns.Do(func() error {
			var err error
			l, err = net.Listen("tcp", "0.0.0.0:9090")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		e.fails(125, []string{"run", "-d", "-p", "9090:80", probe, "serve"}, "9090", "already in use")
	})
	t.Run("bad -p", func(t *testing.T) {
		e.fails(125, []string{"run", "-d", "-p", "8080:abc", probe, "serve"}, "abc")
		e.fails(125, []string{"run", "-d", "-p", "70000:80", probe, "serve"}, "70000")
	})

	t.Run("daemon restart", func(t *testing.T) {
		e.killDaemon()
		e.startDaemon()
		if body, err := client.get(t, "http://192.0.2.1:8080/"); err != nil || !strings.HasPrefix(body, "host=web") {
			t.Errorf("GET from the client host after a daemon restart: %q, %v", body, err)
		}
		if out := e.inNS("curl", "-sS", "-m", "5", "http://127.0.0.1:8080/"); !strings.HasPrefix(out, "host=web") {
			t.Errorf("GET 127.0.0.1:8080 after a daemon restart: %q", out)
		}
	})

	t.Run("kill -9 frees everything", func(t *testing.T) {
		inst, _ := e.inspect("web")
		tap := "fk" + inst.ID[:12]
		if !strings.Contains(e.inNS("ip", "link"), tap) {
			t.Fatalf("no TAP %s for the running instance", tap)
		}
		if err := syscall.Kill(inst.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the killed instance to exit", func() bool {
			in, _ := e.inspect("web")
			return in.State == "exited" || in.State == "failed"
		})
		after, _ := e.inspect("web")
		if after.IP != "" || len(after.Ports) != 0 {
			t.Errorf("after kill -9: ip %q, ports %v; want both given back", after.IP, after.Ports)
		}
		if strings.Contains(e.inNS("ip", "link"), tap) {
			t.Errorf("TAP %s still there after its VMM was killed", tap)
		}
		// The host port is free again, and the address is handed out anew.
		e.must("run", "-d", "--name", "web3", "-p", "8080:80", "--ready", "http://:80/", probe, "serve")
		if body, err := client.get(t, "http://192.0.2.1:8080/"); err != nil || body != "host=web3 remote=192.0.2.2\n" {
			t.Errorf("GET after the port changed hands: %q, %v", body, err)
		}
		w3, _ := e.inspect("web3")
		if w3.IP != inst.IP {
			t.Logf("web3 got %s, web had %s", w3.IP, inst.IP)
		}
	})
}

// TestNetworks makes two networks: instances of one resolve and reach each
// other by name and cannot reach the other's; --network none has loopback
// only; bad input gets the right errors.
func TestNetworks(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.ScratchGoImage(t, probeSource), probe)

	e.must("network", "create", "team-a", "--subnet", "10.88.0.0/24")
	e.must("network", "create", "team-b")
	e.fails(125, []string{"network", "create", "team-c", "--subnet", "10.88.0.128/25"}, "overlaps network team-a")
	e.fails(125, []string{"network", "create", "team-a"}, "already exists")
	e.fails(125, []string{"network", "create", "bad", "--subnet", "10.88.0.0"}, "not a CIDR")
	e.fails(125, []string{"run", "-d", "--network", "nope", probe, "serve"}, "network nope not found")

	ls := e.must("network", "ls").stdout
	for _, want := range []string{"default", "team-a", "10.88.0.0/24", "team-b"} {
		if !strings.Contains(ls, want) {
			t.Errorf("network ls lacks %q:\n%s", want, ls)
		}
	}

	e.must("run", "-d", "--name", "api", "--network", "team-a", "--ready", "http://:80/", probe, "serve")
	e.must("run", "-d", "--name", "other", "--network", "team-b", "--ready", "http://:80/", probe, "serve")
	api, _ := e.inspect("api")
	other, _ := e.inspect("other")
	if !strings.HasPrefix(api.IP, "10.88.0.") {
		t.Errorf("api on team-a got %q, want an address in 10.88.0.0/24", api.IP)
	}

	t.Run("by name", func(t *testing.T) {
		r := e.must("run", "--rm", "--network", "team-a", "--name", "client", probe, "get", "http://api.flick.internal/")
		if !strings.HasPrefix(r.stdout, "host=api remote=10.88.0.") {
			t.Errorf("GET api.flick.internal from team-a: %q", r.stdout)
		}
		r = e.must("run", "--rm", "--network", "team-a", "--name", "client", probe, "cat", "/etc/resolv.conf")
		if r.stdout != "nameserver 10.88.0.1\nsearch flick.internal\n" {
			t.Errorf("resolv.conf on team-a: %q", r.stdout)
		}
		r = e.must("exec", "api", "/app", "cat", "/etc/hosts")
		if !strings.Contains(r.stdout, api.IP+"\tapi\n") {
			t.Errorf("/etc/hosts of api does not map its name to %s:\n%s", api.IP, r.stdout)
		}
		// The search domain makes the bare name work too.
		r = e.must("run", "--rm", "--network", "team-a", probe, "get", "http://api/")
		if !strings.HasPrefix(r.stdout, "host=api") {
			t.Errorf("GET api from team-a: %q", r.stdout)
		}
	})
	t.Run("other names go upstream", func(t *testing.T) {
		// A resolver standing for the host's: flickd --dns sends it what
		// is not an instance's name.
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(req)
			if q := req.Question[0]; q.Name == "outside.test." && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("203.0.113.7")})
			} else {
				m.Rcode = dns.RcodeNameError
			}
			_ = w.WriteMsg(m)
		})}
		go srv.ActivateAndServe()
		defer srv.Shutdown()
		e.restartWith("--dns", pc.LocalAddr().String())
		r := e.must("run", "--rm", "--network", "team-a", probe, "lookup", "outside.test")
		if r.stdout != "203.0.113.7\n" {
			t.Errorf("lookup outside.test through the network's resolver: %q", r.stdout)
		}
		if r := e.must("run", "--rm", "--network", "team-a", probe, "lookup", "api.flick.internal"); r.stdout != api.IP+"\n" {
			t.Errorf("lookup api.flick.internal after a daemon restart: %q, want %s", r.stdout, api.IP)
		}
	})
	t.Run("isolated", func(t *testing.T) {
		e.fails(1, []string{"run", "--rm", "--network", "team-a", probe, "get", "http://" + other.IP + "/", "0"}, "deadline exceeded")
		// Names of another network do not resolve.
		e.fails(1, []string{"run", "--rm", "--network", "team-a", probe, "get", "http://other.flick.internal/", "0"}, "no such host")
	})
	t.Run("none", func(t *testing.T) {
		r := e.must("run", "--rm", "--network", "none", probe, "ifaces")
		if r.stdout != "lo\n" {
			t.Errorf("--network none: interfaces %q, want lo only", r.stdout)
		}
		e.fails(125, []string{"run", "--rm", "--network", "none", "-p", "80", probe, "serve"}, "--network none")
	})
	t.Run("remove", func(t *testing.T) {
		e.fails(125, []string{"network", "rm", "team-a"}, "in use by instance api")
		e.fails(125, []string{"network", "rm", "default"}, "cannot be removed")
		e.must("rm", "-f", "api")
		e.must("network", "rm", "team-a")
		if strings.Contains(e.must("network", "ls").stdout, "team-a") {
			t.Errorf("team-a still listed after rm")
		}
		if strings.Contains(e.inNS("ip", "-br", "addr"), "10.88.0.1/24") {
			t.Errorf("team-a's bridge is still there after rm:\n%s", e.inNS("ip", "-br", "addr"))
		}
		e.fails(125, []string{"network", "rm", "team-a"}, "not found")
	})
}

// TestWakeOnRequest stands an idle instance by and wakes it with the next
// connections to its published port: every one of them is served. With a
// hot standby the wake continues the paused VMM; without, it restores the
// save into a new one.
func TestWakeOnRequest(t *testing.T) {
	for _, hot := range []bool{false, true} {
		t.Run(fmt.Sprintf("hot=%v", hot), func(t *testing.T) { testWakeOnRequest(t, hot) })
	}
}

func testWakeOnRequest(t *testing.T, hot bool) {
	e := newEnv(t)
	if !hot {
		e.restartWith("--hot-standby", "0")
	}
	e.load(testenv.ScratchGoImage(t, probeSource), probe)
	client := e.addPeer("c", "192.0.2.1/24", "192.0.2.2/24")

	e.fails(125, []string{"run", "-d", "--idle-standby", "1s", probe, "serve"}, "needs a published port")
	e.must("run", "-d", "--name", "lazy", "-p", "8090:80", "--idle-standby", "1s", "--ready", "http://:80/", probe, "serve")
	standing := func() bool {
		in, _ := e.inspect("lazy")
		return in.State == "standby"
	}
	waitFor(t, 30*time.Second, "the idle instance to stand by", standing)
	before, _ := e.inspect("lazy")
	if alive(before.PID) != hot {
		t.Errorf("standing by, the VMM %d is alive: %v; want %v", before.PID, alive(before.PID), hot)
	}

	// Several connections at once while it stands by: the first wakes it,
	// all are held, none is dropped.
	const n = 5
	errs := make(chan error, n)
	for range n {
		go func() {
			body, err := client.get(t, "http://192.0.2.1:8090/")
			if err == nil && !strings.HasPrefix(body, "host=lazy remote=") {
				err = fmt.Errorf("unexpected answer %q", body)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("GET while standing by: %v", err)
		}
	}
	in, _ := e.inspect("lazy")
	if in.State != "running" || in.StartMode != "resume" {
		t.Errorf("after the wake: state %s, start_mode %s; want running, resume", in.State, in.StartMode)
	}
	if hot && in.PID != before.PID {
		t.Errorf("after a hot wake the VMM is %d, want the paused %d continued", in.PID, before.PID)
	}
	if !e.logged("woken by a connection") {
		t.Errorf("flickd did not log the wake")
	}

	// Idle again, it stands by again, and the host's own connection wakes
	// it as well.
	waitFor(t, 30*time.Second, "the instance to stand by again", standing)
	if out := e.inNS("curl", "-sS", "-m", "10", "http://127.0.0.1:8090/"); !strings.HasPrefix(out, "host=lazy") {
		t.Errorf("GET 127.0.0.1:8090 while standing by: %q", out)
	}
}
