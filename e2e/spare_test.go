package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/testenv"
)

// TestSpareVMMs: a cold boot leaves a QEMU spawned and paused for the next
// cold boot of its shape, which boots its kernel in it with the image's
// root disk put under it; a disk layer the spare brought is the
// instance's; flickd --spare-vmms 0 keeps none; a daemon restart ends the
// last one's spares.
func TestSpareVMMs(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	pool := filepath.Join(e.root, "pool")
	spareReady := func(not ...int) int {
		t.Helper()
		ready := 0
		waitFor(t, 30*time.Second, "no spare VMM was ready after a cold boot", func() bool {
			for _, pid := range qemuUnder(pool) {
				if !slices.Contains(not, pid) && e.logged(fmt.Sprintf("spare VMM ready.*pid=%d", pid)) {
					ready = pid
				}
			}
			return ready != 0
		})
		return ready
	}

	e.must("run", "--rm", "--cold", "--layer", "memory", busybox, "true")
	spare := spareReady()
	// Paused, the spare's guest has not run: it boots at the claim.
	time.Sleep(3 * time.Second)

	e.must("run", "-d", "--cold", "--layer", "memory", "--name", "s", "-e", "WHO=s", busybox, "sleep", "1000")
	in, raw := e.inspect("s")
	if in.PID != spare || !in.SpareVMM || in.StartMode != "cold" || raw["spare_vmm"] != true {
		t.Errorf("cold boot after a spare was ready: pid %d spare_vmm %v mode %q; want the spare's pid %d, spare_vmm true, cold", in.PID, in.SpareVMM, in.StartMode, spare)
	}
	// The guest booted from nothing, on the image's disk, with the
	// instance's env, hostname, address and MAC.
	r := e.must("exec", "s", "sh", "-c", "echo $WHO $(hostname); ls /bin/busybox; cut -d. -f1 /proc/uptime; cat /sys/class/net/eth0/address /proc/net/fib_trie")
	ip := net.ParseIP(in.IP).To4()
	if ip == nil {
		t.Fatalf("inspect s: ip %q", in.IP)
	}
	mac := fmt.Sprintf("02:fc:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3])
	if !strings.HasPrefix(r.stdout, "s s\n/bin/busybox\n") || !strings.Contains(r.stdout, "\n"+mac+"\n") || !strings.Contains(r.stdout, "|-- "+in.IP+"\n") {
		t.Errorf("instance in the spare: want env and hostname s, the image's /bin/busybox, MAC %s and address %s:\n%s", mac, in.IP, r.stdout)
	}
	if lines := strings.Split(r.stdout, "\n"); len(lines) < 3 || !slices.Contains([]string{"0", "1", "2"}, lines[2]) {
		t.Errorf("the spare's guest is up for %q s, having waited 3 s as a spare: it should have booted at the claim", lines[2])
	}

	// The claim spawned the next spare; a run --rm takes it and streams
	// its app's output and exit code.
	next := spareReady(spare)
	if r := e.run("run", "--rm", "--cold", "--layer", "memory", busybox, "sh", "-c", "echo out; echo err >&2; exit 3"); r.code != 3 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Errorf("run --rm --cold in a spare: want exit 3, stdout \"out\\n\" and err on stderr:\n%s", r)
	}
	waitFor(t, 10*time.Second, "the run --rm did not claim the ready spare", func() bool { return !alive(next) })
	third := spareReady(spare, next)

	// A disk layer is another shape. Its first cold boot leaves a spare,
	// the next takes it, and the spare's data disk is the instance's
	// from then on: a stop and a start (in a VMM of its own, the disk
	// being there) find what the app wrote.
	e.must("run", "--rm", "--cold", "--layer", "disk", busybox, "true")
	diskSpare := spareReady(spare, next, third)
	e.must("run", "-d", "--cold", "--layer", "disk", "--name", "d", busybox, "sleep", "1000")
	if d, _ := e.inspect("d"); !d.SpareVMM || d.PID != diskSpare {
		t.Errorf("second disk-layer cold boot: pid %d spare_vmm %v, want the disk-layer spare's pid %d", d.PID, d.SpareVMM, diskSpare)
	}
	e.must("exec", "d", "sh", "-c", "echo kept > /note; sync")
	e.must("stop", "-t", "5", "d")
	e.must("start", "d")
	if d, _ := e.inspect("d"); d.SpareVMM {
		t.Error("a start of an instance with its disk layer used a spare, whose data disk is not the instance's")
	}
	if r := e.must("exec", "d", "cat", "/note"); r.stdout != "kept\n" {
		t.Errorf("after stop and start, /note is %q, want what the app wrote in the spare", r.stdout)
	}

	// A daemon killed and started again ends the last one's idle spares.
	idle := qemuUnder(pool)
	e.killDaemon()
	e.startDaemon()
	for _, pid := range idle {
		if pid == in.PID {
			continue
		}
		waitFor(t, 10*time.Second, "the last daemon's idle spare still runs", func() bool { return !alive(pid) })
	}
	if !alive(in.PID) {
		t.Error("the daemon restart ended the VM of instance s")
	}

	// With --spare-vmms 0 a cold boot spawns its own VMM and leaves none.
	e.must("rm", "-f", "s", "d")
	e.restartWith("--spare-vmms", "0")
	e.must("run", "--rm", "--cold", "--layer", "memory", busybox, "true")
	e.must("run", "-d", "--cold", "--layer", "memory", "--name", "n", busybox, "sleep", "1000")
	if n, _ := e.inspect("n"); n.SpareVMM {
		t.Error("--spare-vmms 0: a cold boot ran in a spare")
	}
	if pids := qemuUnder(pool); len(pids) != 0 {
		t.Errorf("--spare-vmms 0: %d VMMs in the pool", len(pids))
	}
}
