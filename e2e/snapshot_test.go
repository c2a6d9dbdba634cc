package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/testenv"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestBootSnapshot(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	snaps := filepath.Join(e.root, "snapshots")

	// The first start boots cold and leaves the snapshot.
	e.must("run", "-d", "--name", "first", "-e", "TOKEN=first-secret", busybox, "sleep", "1000")
	first, _ := e.inspect("first")
	if first.StartMode != api.StartCold || first.Phases[api.PhaseSnapshot] <= 0 {
		t.Fatalf("first start: mode %q, phases %v; want cold with a snapshot phase", first.StartMode, first.Phases)
	}
	ents, _ := os.ReadDir(snaps)
	if len(ents) != 1 {
		t.Fatalf("after the first start %s holds %d entries, want one snapshot", snaps, len(ents))
	}

	// Later starts restore it, each with its own config, clock and RNG.
	e.must("run", "-d", "--name", "a", "-e", "WHO=a", busybox, "sleep", "1000")
	e.must("run", "-d", "--name", "b", "-e", "WHO=b", busybox, "sleep", "1000")
	var random []string
	for _, name := range []string{"a", "b"} {
		in, _ := e.inspect(name)
		if in.StartMode != api.StartSnapshot || in.Phases[api.PhaseRestore] <= 0 || in.Phases[api.PhaseKernel] != 0 {
			t.Errorf("%s: mode %q, phases %v; want a restore and no kernel boot", name, in.StartMode, in.Phases)
		}
		r := e.must("exec", name, "sh", "-c", `echo "$WHO $(hostname) $(date +%s)"; head -c 16 /dev/urandom`)
		line, rnd, _ := strings.Cut(r.stdout, "\n")
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != name || f[1] != name {
			t.Errorf("%s: env and hostname %q, want %s %s", name, line, name, name)
			continue
		}
		if sec, _ := strconv.ParseInt(f[2], 10, 64); time.Since(time.Unix(sec, 0)).Abs() > 30*time.Second {
			t.Errorf("%s: guest clock %s is not the host's %d", name, f[2], time.Now().Unix())
		}
		random = append(random, rnd)
		// The snapshot's boot config, which a restored guest can
		// read, holds nothing of the start that booted it.
		if r := e.must("exec", name, "cat", "/sys/firmware/qemu_fw_cfg/by_name/opt/flick/config/raw"); strings.Contains(r.stdout, "first-secret") || !strings.Contains(r.stdout, `"await_config":true`) {
			t.Errorf("%s: its fw_cfg config is %q: want the boot snapshot's, without the first start's env", name, r.stdout)
		}
	}
	if len(random) == 2 && random[0] == random[1] {
		t.Error("two restores of one snapshot read the same bytes from /dev/urandom")
	}

	// A corrupt snapshot is found, removed and taken again by a cold boot.
	e.must("rm", "-f", "a", "b", "first")
	state := filepath.Join(snaps, ents[0].Name(), "state")
	if err := os.WriteFile(state, []byte("not a device state"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("run", "-d", "--name", "c", busybox, "sleep", "1000")
	if c, _ := e.inspect("c"); c.StartMode != api.StartCold || c.Phases[api.PhaseSnapshot] <= 0 {
		t.Errorf("after corruption: mode %q, phases %v; want a cold boot taking a new snapshot", c.StartMode, c.Phases)
	}
	e.must("run", "-d", "--name", "d", busybox, "sleep", "1000")
	if d, _ := e.inspect("d"); d.StartMode != api.StartSnapshot {
		t.Errorf("the retaken snapshot is not used: mode %q", d.StartMode)
	}

	// --cold never touches snapshots; rmi removes them with the image.
	e.must("run", "-d", "--name", "cold", "--cold", busybox, "sleep", "1000")
	if in, _ := e.inspect("cold"); in.StartMode != api.StartCold || in.Phases[api.PhaseSnapshot] != 0 {
		t.Errorf("--cold: mode %q, phases %v", in.StartMode, in.Phases)
	}
	e.must("rm", "-f", "c", "d", "cold")
	e.must("rmi", busybox)
	if ents, _ := os.ReadDir(snaps); len(ents) != 0 {
		t.Errorf("rmi left %d snapshots in %s", len(ents), snaps)
	}
}

// TestRestoreNetwork: a start that restores the boot snapshot itself (no
// zygote) finds the link that the snapshot's boot brought up with a
// stand-in address, and leaves it with the instance's own: MAC, address and
// default route, with the host's side answering. The VM that booted the
// snapshot runs on, and its MAC stays on its own TAP: a restore announces
// nothing (QEMU would broadcast RARPs from the snapshot's MAC, which the
// bridge would then send to the restored VM). For both layers.
func TestRestoreNetwork(t *testing.T) {
	e := newEnv(t)
	e.restartWith("--pool-size", "0")
	e.load(testenv.BusyboxImage(t), busybox)
	for _, layer := range []string{"memory", "disk"} {
		boot := "boot-" + layer
		e.must("run", "-d", "--layer", layer, "--name", boot, busybox, "sleep", "1000") // takes the snapshot
		name := "r-" + layer
		e.must("run", "-d", "--layer", layer, "--name", name, busybox, "sleep", "1000")
		in, _ := e.inspect(name)
		if in.StartMode != api.StartSnapshot {
			t.Errorf("%s: start mode %q, want a restore of the boot snapshot", name, in.StartMode)
		}
		ip := net.ParseIP(in.IP).To4()
		if ip == nil {
			t.Fatalf("inspect %s: ip %q", name, in.IP)
		}
		mac := fmt.Sprintf("02:fc:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3])
		r := e.must("exec", name, "sh", "-c", "cat /sys/class/net/eth0/address /proc/net/fib_trie; ip route")
		if !strings.HasPrefix(r.stdout, mac+"\n") || !strings.Contains(r.stdout, "|-- "+in.IP+"\n") || strings.Contains(r.stdout, "169.254.") {
			t.Errorf("%s's link, want MAC %s and address %s only:\n%s", name, mac, in.IP, r.stdout)
		}
		_, route, _ := strings.Cut(r.stdout, "default via ")
		gw, _, _ := strings.Cut(route, " ")
		if net.ParseIP(gw) == nil {
			t.Fatalf("%s has no default route:\n%s", name, r.stdout)
		}
		e.must("exec", name, "sh", "-c", "ping -c 1 -W 5 "+gw)

		b, _ := e.inspect(boot)
		for _, l := range strings.Split(e.inNS("bridge", "fdb", "show"), "\n") {
			if strings.HasPrefix(l, b.MAC+" ") && !strings.Contains(l, " dev fk"+b.ID[:12]+" ") {
				t.Errorf("after %s's restore the bridge sends %s's MAC elsewhere: %s", name, boot, l)
			}
		}
	}
}

func TestZygotes(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	pool := filepath.Join(e.root, "pool")

	// The first start with a layer in memory takes the snapshot, and the
	// daemon restores a zygote of it in the background.
	e.must("run", "--rm", "--layer", "memory", busybox, "true")
	var zygote []int
	waitFor(t, 30*time.Second, "no zygote was ready after the snapshot's first use", func() bool {
		// A zygote is ready once it has rehearsed, which the daemon logs.
		zygote = qemuUnder(pool)
		return len(zygote) == 1 && e.logged(fmt.Sprintf("zygote ready.*pid=%d", zygote[0]))
	})

	// The next start claims it: its VMM is the zygote's.
	e.must("run", "-d", "--layer", "memory", "--name", "z", "-e", "WHO=z", busybox, "sleep", "1000")
	in, _ := e.inspect("z")
	if in.PID != zygote[0] || in.StartMode != api.StartSnapshot {
		t.Errorf("start after a zygote was ready: pid %d mode %q, want the zygote's pid %d", in.PID, in.StartMode, zygote[0])
	}
	if r := e.must("exec", "z", "sh", "-c", "echo $WHO $(hostname)"); r.stdout != "z z\n" {
		t.Errorf("the claimed zygote runs with %q, want its instance's env and hostname", r.stdout)
	}
	// Its address is the one held for the zygote, whose link the rehearsal
	// set up with it: the guest has the instance's address and MAC.
	if !e.logged(fmt.Sprintf(`zygote ready.*pid=%d addr=%s/`, zygote[0], regexp.QuoteMeta(in.IP))) {
		t.Errorf("instance z got %s, not the address held for its zygote (pid %d)", in.IP, zygote[0])
	}
	ip := net.ParseIP(in.IP).To4()
	if ip == nil {
		t.Fatalf("inspect z: ip %q", in.IP)
	}
	mac := fmt.Sprintf("02:fc:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3])
	if r := e.must("exec", "z", "cat", "/sys/class/net/eth0/address", "/proc/net/fib_trie"); !strings.HasPrefix(r.stdout, mac+"\n") || !strings.Contains(r.stdout, "|-- "+in.IP+"\n") {
		t.Errorf("z's link, want MAC %s and address %s:\n%s", mac, in.IP, r.stdout)
	}
	// And the pool refills. (The claimed VM's command line still names
	// the pool; it is told apart by its pid.)
	refilled := func(not ...int) int {
		idle := 0
		waitFor(t, 30*time.Second, "the pool did not refill after a claim", func() bool {
			for _, pid := range qemuUnder(pool) {
				if !slices.Contains(not, pid) && e.logged(fmt.Sprintf("zygote ready.*pid=%d", pid)) {
					idle = pid
				}
			}
			return idle != 0
		})
		return idle
	}
	idle := refilled(in.PID)

	// A start that claims it streams its app's output and exit code
	// through the /dev/null and pipes that the rehearsal made for it.
	if r := e.run("run", "--rm", "--layer", "memory", busybox, "sh", "-c", "read x; echo out $x; echo err >&2; exit 3"); r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Errorf("run --rm from a zygote: want exit 3, stdout \"out\\n\" and err on stderr:\n%s", r)
	}
	waitFor(t, 10*time.Second, "the run --rm did not claim the ready zygote", func() bool { return !alive(idle) })
	idle = refilled(in.PID, idle)

	// A daemon restart adopts the claimed zygote like any VM, and ends the
	// idle one (the cleanup checks that none is left).
	e.killDaemon()
	e.startDaemon()
	if r := e.must("exec", "z", "echo", "adopted"); r.stdout != "adopted\n" {
		t.Errorf("exec in the adopted zygote after a daemon restart: %q", r.stdout)
	}
	waitFor(t, 10*time.Second, "the last daemon's idle zygote still runs", func() bool { return !alive(idle) })
	if !alive(in.PID) {
		t.Error("the daemon restart ended the claimed zygote's VM")
	}
}

// TestDiskLayerZygote: the first start of an instance with a disk layer
// (the default of run -d) claims a zygote too, whose data disk becomes the
// instance's: what the app writes is there after a stop and a start.
func TestDiskLayerZygote(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	pool := filepath.Join(e.root, "pool")

	// The image's first disk-layer start saves the snapshot; a zygote of
	// it follows.
	e.must("run", "-d", "--name", "first", busybox, "sleep", "1000")
	var zygote []int
	waitFor(t, 30*time.Second, "no zygote was ready after the disk-layer snapshot's first use", func() bool {
		zygote = qemuUnder(pool)
		return len(zygote) == 1 && e.logged(fmt.Sprintf("zygote ready.*pid=%d", zygote[0]))
	})

	e.must("run", "-d", "--name", "d", busybox, "sleep", "1000")
	in, _ := e.inspect("d")
	if in.PID != zygote[0] || in.StartMode != api.StartSnapshot {
		t.Fatalf("disk-layer start after a zygote was ready: pid %d mode %q, want the zygote's pid %d", in.PID, in.StartMode, zygote[0])
	}
	if r := e.must("exec", "d", "sh", "-c", "echo kept > /note; sync; hostname"); r.stdout != "d\n" {
		t.Errorf("hostname in the claimed zygote: %q, want d", r.stdout)
	}
	if _, err := os.Stat(filepath.Join(e.root, "instances", in.ID, "data.ext4")); err != nil {
		t.Errorf("the instance's disk layer: %v", err)
	}
	e.must("stop", "-t", "5", "d")
	e.must("start", "d")
	if r := e.must("exec", "d", "cat", "/note"); r.stdout != "kept\n" {
		t.Errorf("after stop and start, /note is %q, want the zygote-started app's write", r.stdout)
	}
	// A later start of the same instance has its disk: no zygote for it.
	after, _ := e.inspect("d")
	if after.PID == zygote[0] || alive(zygote[0]) {
		t.Errorf("restart ran in pid %d; the claimed zygote %d should have ended with the stop", after.PID, zygote[0])
	}
}

// logged reports whether flickd's log has a line matching pattern.
func (e *env) logged(pattern string) bool {
	b, err := os.ReadFile(e.log)
	return err == nil && regexp.MustCompile(pattern).Match(b)
}

// runCounter runs an instance of busybox, its writable layer in layer,
// that keeps a note in /tmp and counts in a process five times a second:
// with the layer in memory both live only in the VM's memory. It returns a
// reader of the count once that has passed 3. Each count replaces the file
// by a rename: written in place, a save that fell between the truncation
// and the write left it empty, and a read right after the resume, before
// the shell's write, saw no count at all.
func (e *env) runCounter(t *testing.T, name, layer string) func() int {
	t.Helper()
	e.must("run", "-d", "--layer", layer, "--name", name, busybox, "sh", "-c",
		`echo kept > /tmp/note; i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done`)
	count := func() int { return e.counter(name) }
	waitFor(t, 20*time.Second, "the counter of "+name+" to pass 3", func() bool { return count() > 3 })
	return count
}

// counter reads the count of an instance runCounter started; 0 when it
// cannot.
func (e *env) counter(name string) int {
	r := e.run("exec", name, "cat", "/tmp/count")
	n, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
	return n
}

func TestStandbyResume(t *testing.T) {
	e := newEnv(t)
	// The standby that ends its VMM at once (TestHotStandby keeps it).
	e.restartWith("--hot-standby", "0")
	e.load(testenv.BusyboxImage(t), busybox)
	count := e.runCounter(t, "c", "memory")
	before, _ := e.inspect("c")
	saved := count()
	e.must("standby", "c")
	if in, _ := e.inspect("c"); in.State != api.StateStandby || alive(before.PID) {
		t.Fatalf("after standby: state %q, VMM %d alive %v; want standby and no VMM", in.State, before.PID, alive(before.PID))
	}
	e.fails(125, []string{"exec", "c", "true"}, "not running")
	e.fails(125, []string{"standby", "c"}, "not running")
	// Its memory is on disk now, and counted as the instance's.
	if st, err := os.Stat(filepath.Join(e.root, "instances", before.ID, "standby.state")); err != nil {
		t.Errorf("no standby save: %v", err)
	} else if in, _ := e.inspect("c"); in.SizeBytes < st.Size() {
		t.Errorf("inspect size_bytes %d, less than the standby save's %d", in.SizeBytes, st.Size())
	}
	if r := e.must("ps", "-a", "--size"); !strings.Contains(r.stdout, "SIZE") || !regexp.MustCompile(`\d+(\.\d+)?MB`).MatchString(r.stdout) {
		t.Errorf("ps --size shows no size in MB:\n%s", r.stdout)
	}

	// It stands by across a daemon restart, then resumes where it was.
	e.killDaemon()
	e.startDaemon()
	if in, _ := e.inspect("c"); in.State != api.StateStandby {
		t.Fatalf("after a daemon restart: state %q, want standby", in.State)
	}
	e.must("resume", "c")
	in, _ := e.inspect("c")
	if in.State != api.StateRunning || in.StartMode != api.StartResume {
		t.Errorf("after resume: state %q mode %q, want running and resume", in.State, in.StartMode)
	}
	r := e.must("exec", "c", "sh", "-c", "cat /tmp/note; date +%s")
	f := strings.Fields(r.stdout)
	if len(f) != 2 || f[0] != "kept" {
		t.Errorf("after resume the memory layer holds %q, want kept", r.stdout)
	} else if sec, _ := strconv.ParseInt(f[1], 10, 64); time.Since(time.Unix(sec, 0)).Abs() > 30*time.Second {
		t.Errorf("after resume the guest clock says %s, the host %d", f[1], time.Now().Unix())
	}
	// The same counter goes on from where it stood, not from 0.
	if n := count(); n < saved {
		t.Errorf("after resume the counter is %d, below the %d it had at standby", n, saved)
	}
	waitFor(t, 20*time.Second, "the counter does not go on after resume", func() bool { return count() > saved+3 })
}

// TestHotStandby stands an instance by with its VMM kept paused: a resume
// continues that VMM, memory and all. A stop, a daemon's crash or the end of
// the hot time ends the VMM instead, and the instance resumes from its save.
func TestHotStandby(t *testing.T) {
	e := newEnv(t)
	e.restartWith("--hot-standby", "20s")
	e.load(testenv.BusyboxImage(t), busybox)
	count := e.runCounter(t, "c", "memory")
	saves := filepath.Join(e.root, "instances", "*", "standby.state*")
	// standBy stands c by and returns its paused VMM's pid.
	standBy := func(what string) (pid, saved int) {
		t.Helper()
		saved = count()
		e.must("standby", "c")
		in, _ := e.inspect("c")
		if in.State != api.StateStandby || !alive(in.PID) {
			t.Fatalf("%s: after standby state %q, VMM %d alive %v; want standby and the VMM paused", what, in.State, in.PID, alive(in.PID))
		}
		if ents, _ := filepath.Glob(saves); len(ents) != 1 {
			t.Errorf("%s: standing by, the saves are %v; want one", what, ents)
		}
		return in.PID, saved
	}
	// resumed checks that c runs again with its memory, in the VMM
	// samePID unless that is 0.
	resumed := func(what string, saved, samePID int) {
		t.Helper()
		e.must("resume", "c")
		in, _ := e.inspect("c")
		if in.State != api.StateRunning || in.StartMode != api.StartResume {
			t.Errorf("%s: after resume state %q mode %q, want running and resume", what, in.State, in.StartMode)
		}
		if samePID != 0 && in.PID != samePID {
			t.Errorf("%s: resumed in VMM %d, want the paused %d continued", what, in.PID, samePID)
		}
		if r := e.must("exec", "c", "cat", "/tmp/note"); r.stdout != "kept\n" {
			t.Errorf("%s: after resume the memory layer holds %q, want kept", what, r.stdout)
		}
		if n := count(); n < saved {
			t.Errorf("%s: after resume the counter is %d, below the %d it had at standby", what, n, saved)
		}
		waitFor(t, 10*time.Second, what+": the stale save to go", func() bool {
			ents, _ := filepath.Glob(saves)
			return len(ents) == 0
		})
	}

	pid, saved := standBy("hot")
	e.fails(125, []string{"exec", "c", "true"}, "not running")
	e.fails(125, []string{"kill", "c"}, "not running")
	resumed("hot", saved, pid)

	// A stop ends the paused VMM; the instance stands by from its save.
	pid, saved = standBy("stop")
	e.must("stop", "c")
	if in, _ := e.inspect("c"); in.State != api.StateStandby || alive(pid) {
		t.Errorf("after stop: state %q, VMM %d alive %v; want standby and no VMM", in.State, pid, alive(pid))
	}
	resumed("stop", saved, 0)

	// A daemon killed while the VMM is paused: the next one ends that VMM.
	pid, saved = standBy("crash")
	e.killDaemon()
	e.startDaemon()
	if in, _ := e.inspect("c"); in.State != api.StateStandby {
		t.Errorf("after a daemon crash: state %q, want standby", in.State)
	}
	waitFor(t, 10*time.Second, "the orphaned paused VMM to be ended", func() bool { return !alive(pid) })
	resumed("crash", saved, 0)

	// The hot time ends the VMM by itself.
	e.restartWith("--hot-standby", "1s")
	pid, saved = standBy("expiry")
	waitFor(t, 15*time.Second, "the paused VMM to end after the hot time", func() bool { return !alive(pid) })
	if in, _ := e.inspect("c"); in.State != api.StateStandby {
		t.Errorf("after the hot time: state %q, want standby", in.State)
	}
	resumed("expiry", saved, 0)
}

// TestFork clones a running instance: each clone goes on from the parent's
// state (its counter and its files, in memory or on disk) with a hostname,
// address, machine-id and RNG of its own, and the parent runs on.
func TestFork(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	for _, layer := range []string{"memory", "disk"} {
		t.Run(layer, func(t *testing.T) {
			e := e.sub(t)
			p := "p" + layer
			e.runCounter(t, p, layer)
			count := e.counter
			r := e.must("fork", "-n", "2", p)
			for _, c := range []string{p + "-1", p + "-2"} {
				if !strings.Contains(r.stdout, c+"\t10.77.") {
					t.Errorf("fork output lacks clone %s with an address:\n%s", c, r.stdout)
				}
			}
			type id struct{ host, ip, machine, rnd string }
			ids := map[string]id{}
			for _, n := range []string{p, p + "-1", p + "-2"} {
				in, _ := e.inspect(n)
				if in.State != "running" {
					t.Fatalf("%s is %s after the fork", n, in.State)
				}
				if n != p && in.StartMode != "fork" {
					t.Errorf("%s: start_mode %q, want fork", n, in.StartMode)
				}
				if got := count(n); got < 3 {
					t.Errorf("%s: counter at %d, want the parent's count carried on", n, got)
				}
				if r := e.must("exec", n, "cat", "/tmp/note"); r.stdout != "kept\n" {
					t.Errorf("%s: /tmp/note %q", n, r.stdout)
				}
				ids[n] = id{
					host:    strings.TrimSpace(e.must("exec", n, "hostname").stdout),
					ip:      in.IP,
					machine: strings.TrimSpace(e.run("exec", n, "cat", "/etc/machine-id").stdout),
					rnd:     e.must("exec", n, "busybox", "hexdump", "-n", "16", "-e", `16/1 "%02x"`, "/dev/urandom").stdout,
				}
				if n != p && ids[n].host != n {
					t.Errorf("%s: hostname %q", n, ids[n].host)
				}
			}
			seen := map[string]string{}
			for n, v := range ids {
				for _, f := range []string{"host " + v.host, "ip " + v.ip, "rng " + v.rnd} {
					if other, dup := seen[f]; dup {
						t.Errorf("%s and %s share %s", n, other, f)
					}
					seen[f] = n
				}
				if n != p && (v.machine == "" || seen["machine "+v.machine] != "") {
					t.Errorf("%s: machine-id %q missing or shared", n, v.machine)
				}
				seen["machine "+v.machine] = n
			}
			// Clones reach each other and the parent on the network.
			if r := e.run("exec", p+"-1", "busybox", "ping", "-c", "1", "-W", "5", ids[p+"-2"].ip); r.code != 0 {
				t.Errorf("clone 1 cannot reach clone 2 at %s:\n%s", ids[p+"-2"].ip, r)
			}
			// The parent goes on counting.
			before := count(p)
			waitFor(t, 20*time.Second, "the parent's counter to move on", func() bool { return count(p) > before })
		})
	}
	e.fails(125, []string{"fork", "-n", "0", "pmemory"}, "1 to 64")
	e.must("stop", "-t", "0", "pmemory")
	e.fails(125, []string{"fork", "pmemory"}, "not running")
	if ents, _ := os.ReadDir(filepath.Join(e.root, "forks")); len(ents) != 0 {
		t.Errorf("fork files left behind: %v", ents)
	}
}

// TestDaemonKilledDuringStandby crashes flickd (SIGKILL, through a
// failpoint) at each step of a standby and of a resume: after the restart
// the instance is standing by or running, and usable either way, with its
// memory.
func TestDaemonKilledDuringStandby(t *testing.T) {
	e := newEnv(t)
	e.restartWith("--hot-standby", "0")
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--layer", "memory", "--name", "c", busybox, "sh", "-c",
		`echo kept > /tmp/note; while true; do sleep 1; done`)
	for _, tc := range []struct{ op, point, want string }{
		// The VM is saved to the .tmp file and paused.
		{"standby", "standby-written", api.StateRunning},
		// The save is in place; the VMM still runs.
		{"standby", "standby-saved", api.StateStandby},
		// The resumed VM runs; nothing is recorded yet.
		{"resume", "resume-running", api.StateStandby},
	} {
		// No subtests: they would each hold a copy of the daemon's handle.
		func() {
			t.Logf("--- crash at %s", tc.point)
			if in, _ := e.inspect("c"); tc.op == "standby" && in.State != api.StateRunning {
				e.must("resume", "c")
			} else if tc.op == "resume" && in.State != api.StateStandby {
				e.must("standby", "c")
			}
			e.stopDaemon()
			e.env = []string{"FLICK_FAILPOINT=" + tc.point}
			e.startDaemon()
			e.env = nil
			if r := e.run(tc.op, "c"); r.code == 0 {
				t.Fatalf("%s went through: the failpoint %s did not kill flickd", tc.op, tc.point)
			}
			// The CLI saw the daemon die; reap it.
			select {
			case <-e.done:
				e.cmd = nil
			case <-time.After(10 * time.Second):
				t.Fatalf("flickd still runs after failpoint %s", tc.point)
			}
			e.startDaemon()
			in, _ := e.inspect("c")
			if in.State != tc.want {
				t.Errorf("after a crash at %s: state %q (%s), want %s", tc.point, in.State, in.Error, tc.want)
			}
			// The memory survived either way.
			if in.State == api.StateStandby {
				e.must("resume", "c")
			}
			if r := e.must("exec", "c", "cat", "/tmp/note"); r.stdout != "kept\n" {
				t.Errorf("after a crash at %s: the memory layer holds %q, want kept", tc.point, r.stdout)
			}
			if ents, _ := filepath.Glob(filepath.Join(e.root, "instances", "*", "*.tmp")); len(ents) != 0 {
				t.Errorf("half-written saves left: %v", ents)
			}
		}()
	}
}

// TestDiskFull saves onto a full disk: a standby fails and the instance
// goes on running; a boot snapshot is not taken and the start goes on;
// neither leaves a partial file, and an earlier snapshot stays whole.
func TestDiskFull(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	full := func(t *testing.T, dir string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16k", "flick-full", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount a full disk on %s: %v: %s", dir, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	}

	// An image whose boot snapshot exists, before the disk fills.
	e.must("run", "--rm", busybox, "true")
	snaps, _ := filepath.Glob(filepath.Join(e.root, "snapshots", "*", "meta.json"))
	if len(snaps) != 1 {
		t.Fatalf("want one boot snapshot, have %v", snaps)
	}
	before, err := os.ReadFile(snaps[0])
	if err != nil {
		t.Fatal(err)
	}

	t.Run("standby", func(t *testing.T) {
		e := e.sub(t)
		e.must("run", "-d", "--layer", "memory", "--name", "c", busybox, "sh", "-c", "echo kept > /tmp/note; sleep 100000")
		in, _ := e.inspect("c")
		full(t, filepath.Join(e.root, "instances", in.ID))
		e.fails(125, []string{"standby", "c"}, "standby c", "is full", "goes on running")
		if after, _ := e.inspect("c"); after.State != api.StateRunning {
			t.Errorf("after a failed standby: state %q, want running", after.State)
		}
		if r := e.must("exec", "c", "cat", "/tmp/note"); r.stdout != "kept\n" {
			t.Errorf("after a failed standby: %q", r.stdout)
		}
		if ents, _ := os.ReadDir(filepath.Join(e.root, "instances", in.ID)); len(ents) != 0 {
			t.Errorf("a failed standby left files: %v", ents)
		}
	})
	t.Run("boot snapshot", func(t *testing.T) {
		e := e.sub(t)
		// Another memory size is another snapshot; its save fails.
		full(t, filepath.Join(e.root, "snapshots"))
		r := e.must("run", "--rm", "--memory", "96M", busybox, "echo", "ran")
		if r.stdout != "ran\n" {
			t.Errorf("a start whose snapshot could not be saved: %q", r.stdout)
		}
		if !e.logged("boot snapshot not saved") {
			t.Errorf("flickd did not log the failed save")
		}
		if ents, _ := os.ReadDir(filepath.Join(e.root, "snapshots")); len(ents) != 0 {
			t.Errorf("a failed snapshot save left files: %v", ents)
		}
	})
	if after, err := os.ReadFile(snaps[0]); err != nil || string(after) != string(before) {
		t.Errorf("the earlier boot snapshot changed: %v", err)
	}
	e.must("rm", "-f", "c")
}

// TestSnapshotKey checks that a boot snapshot is only used by starts that
// match what it was taken with: another kernel, a kernel changed in place,
// another image under the same tag or another memory size boot cold.
func TestSnapshotKey(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	kernel := filepath.Join(e.dir, "vmlinux")
	if out, err := exec.Command("cp", e.kernel, kernel).CombinedOutput(); err != nil {
		t.Fatalf("copy the kernel: %v: %s", err, out)
	}
	mode := func(args ...string) string {
		t.Helper()
		r := e.must(append([]string{"run", "-d", "--layer", "memory"}, append(args, busybox, "sleep", "1000")...)...)
		id, _ := lineWith(r.stdout, "id:")
		id = strings.TrimSpace(strings.TrimPrefix(id, "id:"))
		in, _ := e.inspect(id)
		e.must("rm", "-f", id)
		return in.StartMode
	}
	steps := []struct {
		what string
		do   func()
		args []string
		want string
	}{
		{"first start", nil, nil, "cold"},
		{"second start", nil, nil, "snapshot"},
		{"another kernel", nil, []string{"--kernel", kernel}, "cold"},
		{"that kernel again", nil, []string{"--kernel", kernel}, "snapshot"},
		{"that kernel changed in place", func() {
			later := time.Now().Add(time.Minute)
			if err := os.Chtimes(kernel, later, later); err != nil {
				t.Fatal(err)
			}
		}, []string{"--kernel", kernel}, "cold"},
		{"another memory size", nil, []string{"--memory", "160M"}, "cold"},
		{"the first again", nil, nil, "snapshot"},
		{"another image under the tag", func() {
			img := testenv.BusyboxImage(t)
			l, err := testenv.NewLayer([]testenv.File{testenv.Reg("/etc/changed", 0o644, "yes\n")})
			if err != nil {
				t.Fatal(err)
			}
			changed, err := mutate.AppendLayers(img, l)
			if err != nil {
				t.Fatal(err)
			}
			e.load(changed, busybox)
		}, nil, "cold"},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		if got := mode(s.args...); got != s.want {
			t.Errorf("%s: start_mode %q, want %q", s.what, got, s.want)
		}
	}
}

// TestPoolPolicy keeps zygotes only for the most recently started
// snapshots (flickd --pool-images), and none for an image labelled
// flick.pool=0.
func TestPoolPolicy(t *testing.T) {
	e := newEnv(t)
	e.restartWith("--pool-images", "1", "--log-level", "debug")
	e.load(testenv.BusyboxImage(t), busybox)
	bb := testenv.BusyboxImage(t)
	nopool, err := mutate.Config(bb, withLabel(t, bb, api.PoolLabel, "0"))
	if err != nil {
		t.Fatal(err)
	}
	e.load(nopool, "e2e/nopool:1")
	pool := filepath.Join(e.root, "pool")
	ready := func(n int) func() bool {
		return func() bool {
			return len(qemuUnder(pool)) == n && strings.Count(e.logs(), "zygote ready") >= n
		}
	}

	e.must("run", "--rm", "--layer", "memory", busybox, "true")
	waitFor(t, 30*time.Second, "a zygote of the first snapshot", ready(1))
	first := qemuUnder(pool)[0]

	// Another memory size is another snapshot: its zygote replaces the
	// first snapshot's.
	e.must("run", "--rm", "--layer", "memory", "--memory", "96M", busybox, "true")
	waitFor(t, 30*time.Second, "the first snapshot's zygote ended and the second's ready", func() bool {
		pids := qemuUnder(pool)
		return !alive(first) && len(pids) == 1 && e.logged("zygote ended")
	})

	// flick.pool=0: its starts leave no zygote.
	second := qemuUnder(pool)
	e.must("run", "--rm", "--layer", "memory", "e2e/nopool:1", "true")
	e.must("run", "--rm", "--layer", "memory", "e2e/nopool:1", "true")
	waitFor(t, 10*time.Second, "the daemon to decide on the pool", func() bool { return e.logged("no zygotes kept for this key") })
	if pids := qemuUnder(pool); len(pids) != 1 || pids[0] != second[0] {
		t.Errorf("zygotes after starts of an image labelled flick.pool=0: %v, want only %v", pids, second)
	}
}

// logs is the daemon's log so far.
func (e *env) logs() string {
	b, _ := os.ReadFile(e.log)
	return string(b)
}
