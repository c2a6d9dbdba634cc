package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/testenv"
)

// helloSource is the scratch app of most tests: it prints its arguments to
// stdout, a line to stderr, and exits with the code given as "exit N".
const helloSource = `package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	fmt.Println("hello from a scratch image, args:", os.Args[1:])
	fmt.Fprintln(os.Stderr, "a line on stderr")
	if len(os.Args) == 3 && os.Args[1] == "exit" {
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	}
}
`

// greeterSource prints one fixed line, so that tests can tell images apart.
func greeterSource(greeting string) string {
	return fmt.Sprintf("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(%q) }\n", greeting)
}

const busybox = "e2e/busybox:latest"

func TestPullAndRun(t *testing.T) {
	e := newEnv(t)
	reg := testenv.StartRegistry(t)
	ref := reg + "/e2e/hello:v1"
	img := testenv.ScratchGoImage(t, helloSource)
	testenv.Push(t, img, ref)
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	e.must("pull", ref)

	r := e.must("images")
	line, ok := lineWith(r.stdout, reg+"/e2e/hello")
	if !ok || !strings.Contains(line, "v1") {
		t.Errorf("flick images does not list %s:\n%s", ref, r)
	}
	var images []api.Image
	r = e.must("images", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &images); err != nil {
		t.Fatalf("images --json: %v\n%s", err, r)
	}
	found := false
	for _, im := range images {
		if slices.Contains(im.Names, ref) {
			found = true
			if im.Digest != digest.String() {
				t.Errorf("images --json: %s has digest %s, want the pushed %s", ref, im.Digest, digest)
			}
		}
	}
	if !found {
		t.Errorf("images --json has no image named %s:\n%s", ref, r)
	}

	r = e.must("run", "--rm", ref)
	if !strings.Contains(r.stdout, "hello from a scratch image, args: []") {
		t.Errorf("run: stdout lacks the app's greeting:\n%s", r)
	}
	if strings.Contains(r.stdout, "a line on stderr") || !strings.Contains(r.stderr, "a line on stderr") {
		t.Errorf("run: the app's stderr must go to stderr, and only there:\n%s", r)
	}

	r = e.fails(3, []string{"run", "--rm", ref, "exit", "3"})
	if !strings.Contains(r.stdout, "args: [exit 3]") {
		t.Errorf("run with CMD override: stdout lacks the arguments:\n%s", r)
	}

	// --rm leaves nothing behind.
	waitFor(t, 5*time.Second, "run --rm left instances in ps -a", func() bool { return len(e.ps(true)) == 0 })
}

func TestRunOverrides(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)

	tests := []struct {
		name string
		args []string // between "run --rm" and the image, then after it
		cmd  []string
		want string // stdout, trimmed
	}{
		{name: "cmd", cmd: []string{"echo", "one", "two"}, want: "one two"},
		{name: "env", args: []string{"-e", "GREETING=hello-env"}, cmd: []string{"sh", "-c", "echo $GREETING"}, want: "hello-env"},
		{name: "env keeps image PATH", args: []string{"-e", "A=1"}, cmd: []string{"sh", "-c", `echo "$A $PATH"`}, want: "1 /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		{name: "workdir", args: []string{"-w", "/tmp"}, cmd: []string{"pwd"}, want: "/tmp"},
		{name: "user nobody", args: []string{"-u", "nobody"}, cmd: []string{"id", "-u"}, want: "65534"},
		{name: "user uid", args: []string{"-u", "1000"}, cmd: []string{"id", "-u"}, want: "1000"},
		{name: "user name", args: []string{"-u", "app"}, cmd: []string{"sh", "-c", "id -u; id -g"}, want: "1000\n1000"},
		{name: "entrypoint", args: []string{"--entrypoint", "/bin/echo"}, cmd: []string{"via", "entrypoint"}, want: "via entrypoint"},
		// One vCPU boots the uniprocessor kernel, more the SMP one.
		{name: "one cpu", cmd: []string{"grep", "-c", "^processor", "/proc/cpuinfo"}, want: "1"},
		{name: "two cpus", args: []string{"--cpus", "2"}, cmd: []string{"grep", "-c", "^processor", "/proc/cpuinfo"}, want: "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append(append([]string{"run", "--rm"}, tt.args...), busybox), tt.cmd...)
			r := e.sub(t).must(args...)
			if got := strings.TrimSpace(r.stdout); got != tt.want {
				t.Errorf("stdout %q, want %q\n%s", got, tt.want, r)
			}
		})
	}
}

// rngSource asks the kernel for random bytes without waiting: getrandom
// with GRND_NONBLOCK fails with EAGAIN until the kernel's RNG is ready,
// where a blocking call (crypto/rand) waits for it.
const rngSource = `package main

import (
	"fmt"
	"syscall"
	"unsafe"
)

func main() {
	b := make([]byte, 16)
	const sysGetrandom, grndNonblock = 318, 1 // linux/amd64
	if _, _, e := syscall.Syscall(sysGetrandom, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), grndNonblock); e != 0 {
		fmt.Println("rng not ready:", e)
		return
	}
	fmt.Println("rng ready")
}
`

// TestGuestRNGReady: the app finds the kernel's RNG ready, on a cold boot
// as on the boot that saves a snapshot and the starts restored from it.
// A cold boot used to leave it unready: crypto/rand in the app then
// waited ~1 s for the kernel to gather entropy from timer jitter.
func TestGuestRNGReady(t *testing.T) {
	e := newEnv(t)
	const img = "e2e/rng:v1"
	e.load(testenv.ScratchGoImage(t, rngSource), img)
	for _, run := range []struct{ name, mode string }{
		{"cold boot", "--cold"},
		{"boot that saves the snapshot", ""},
		{"start from the snapshot", ""},
	} {
		args := []string{"run", "--rm"}
		if run.mode != "" {
			args = append(args, run.mode)
		}
		r := e.must(append(args, img)...)
		if got := strings.TrimSpace(r.stdout); got != "rng ready" {
			t.Errorf("%s: the app says %q, want \"rng ready\"\n%s", run.name, got, r)
		}
	}
}

func TestWhiteouts(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.WhiteoutImage(t), "e2e/whiteout:v1")
	r := e.must("run", "--rm", "e2e/whiteout:v1", "sh", "-c", "ls -A /data; echo --; ls -A /opq; cat /data/b /opq/z")
	want := "b\n--\nz\nb\nz"
	if got := strings.TrimSpace(r.stdout); got != want {
		t.Errorf("the VM sees %q, want %q (/data/a whited out, /opq opaque):\n%s", got, want, r)
	}
}

func TestLoad(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()

	archive := filepath.Join(dir, "archive.tar")
	testenv.WriteDockerArchive(t, testenv.ScratchGoImage(t, greeterSource("from a docker archive")), "e2e/archive:v1", archive)
	e.must("load", "-i", archive)
	r := e.must("run", "--rm", "e2e/archive:v1")
	if strings.TrimSpace(r.stdout) != "from a docker archive" {
		t.Errorf("run of the loaded docker archive:\n%s", r)
	}

	layout := filepath.Join(dir, "layout")
	testenv.WriteOCILayout(t, testenv.ScratchGoImage(t, greeterSource("from an oci layout")), layout)
	e.must("load", "-i", layout, "--tag", "e2e/oci:v1")
	r = e.must("run", "--rm", "e2e/oci:v1")
	if strings.TrimSpace(r.stdout) != "from an oci layout" {
		t.Errorf("run of the loaded OCI layout:\n%s", r)
	}

	r = e.must("images")
	for _, repo := range []string{"e2e/archive", "e2e/oci"} {
		if _, ok := lineWith(r.stdout, repo); !ok {
			t.Errorf("flick images does not list %s:\n%s", repo, r)
		}
	}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	app := []string{"sh", "-c", "echo started; exec sleep 1000"}

	e.must(append([]string{"run", "-d", "--name", "web", busybox}, app...)...)

	r := e.must("ps")
	if _, ok := lineWith(r.stdout, "web"); !ok {
		t.Errorf("ps does not list web:\n%s", r)
	}
	if st := e.ps(false)["web"].State; st != api.StateRunning {
		t.Errorf("ps --json: web is %q, want running", st)
	}

	inst, raw := e.inspect("web")
	for _, k := range []string{"id", "name", "state", "image", "exit_code", "boot_ms", "phases"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("inspect --json lacks %q: %v", k, raw)
		}
	}
	if inst.Name != "web" || inst.State != api.StateRunning || inst.ID == "" {
		t.Errorf("inspect: name %q state %q id %q, want web running and an id", inst.Name, inst.State, inst.ID)
	}
	if inst.BootMS <= 0 {
		t.Errorf("inspect: boot_ms %v, want > 0", inst.BootMS)
	}
	for _, p := range api.Phases {
		if v, ok := inst.Phases[p]; !ok || v < 0 {
			t.Errorf("inspect: phase %q = %v (present %v), want a duration >= 0", p, v, ok)
		}
	}
	if !alive(inst.PID) {
		t.Errorf("inspect: pid %d of a running instance is not a live process", inst.PID)
	}
	// ps -q prints ids, maybe shortened as docker does.
	if r := e.run("ps", "-q"); len(strings.Fields(r.stdout)) != 1 || !strings.HasPrefix(inst.ID, strings.TrimSpace(r.stdout)) {
		t.Errorf("ps -q does not print just the id %s:\n%s", inst.ID, r)
	}

	// The name is taken.
	r = e.fails(125, append([]string{"run", "-d", "--name", "web", busybox}, app...), "web")
	if !regexp.MustCompile(`(?i)in use|already`).MatchString(r.stderr) {
		t.Errorf("name reuse: stderr does not say the name is in use:\n%s", r)
	}

	// run -d returns once the app's process runs, not once it has
	// printed: a stop before the echo would lose it, as docker's would.
	waitFor(t, 15*time.Second, "the first run never printed 'started'", func() bool {
		return strings.Contains(e.must("logs", "web").stdout, "started")
	})
	e.must("stop", "-t", "5", "web")
	stopped, _ := e.inspect("web")
	if stopped.State != api.StateExited || stopped.ExitCode == nil {
		t.Errorf("after stop: state %q exit code %v, want exited with a code", stopped.State, stopped.ExitCode)
	}
	waitFor(t, 10*time.Second, "QEMU still runs after stop", func() bool { return !alive(inst.PID) })
	if _, ok := e.ps(false)["web"]; ok {
		t.Error("ps without -a lists the stopped web")
	}
	if st := e.ps(true)["web"].State; st != api.StateExited {
		t.Errorf("ps -a: web is %q, want exited", st)
	}

	e.must("start", "web")
	restarted, _ := e.inspect("web")
	if restarted.State != api.StateRunning || restarted.ID != inst.ID || !alive(restarted.PID) {
		t.Errorf("after start: state %q id %q pid %d alive %v, want running, same id, a live VMM",
			restarted.State, restarted.ID, restarted.PID, alive(restarted.PID))
	}

	var logs result
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		logs = e.must("logs", "web")
		if strings.Count(logs.stdout+logs.stderr, "started") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs do not show the output of both runs after 15s:\n%s", logs)
		}
	}
	if n := strings.Count(logs.stdout, "started"); n != 2 {
		t.Errorf("logs: stdout has %d lines of 'started', want 2:\n%s", n, logs)
	}

	e.must("rm", "-f", "web")
	if _, ok := e.ps(true)["web"]; ok {
		t.Error("ps -a still lists web after rm -f")
	}
	waitFor(t, 10*time.Second, "a QEMU of the removed instance still runs", func() bool {
		return len(pgrep(t, inst.ID)) == 0 && !alive(restarted.PID)
	})
	e.fails(-1, []string{"inspect", "web", "--json"}, "no such instance")
}

func TestRmiInUse(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--name", "holder", busybox, "sleep", "1000")

	e.fails(-1, []string{"rmi", busybox}, "holder")
	if r := e.must("images"); !strings.Contains(r.stdout, "e2e/busybox") {
		t.Errorf("a failed rmi removed the image:\n%s", r)
	}

	e.must("rm", "-f", "holder")
	e.must("rmi", busybox)
	if r := e.must("images"); strings.Contains(r.stdout, "e2e/busybox") {
		t.Errorf("images still lists e2e/busybox after rmi:\n%s", r)
	}
	e.fails(125, []string{"run", "--rm", busybox, "true"}, "e2e/busybox")
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	reg := testenv.StartRegistry(t)
	testenv.Push(t, testenv.ScratchGoImage(t, helloSource), reg+"/e2e/hello:v1")

	t.Run("unreachable registry", func(t *testing.T) {
		e.sub(t).fails(-1, []string{"pull", "127.0.0.1:1/e2e/hello:v1"}, "127.0.0.1:1")
	})
	t.Run("unknown tag", func(t *testing.T) {
		e.sub(t).fails(-1, []string{"pull", reg + "/e2e/hello:nope"}, reg+"/e2e/hello:nope")
	})
	t.Run("unknown repository", func(t *testing.T) {
		e.sub(t).fails(-1, []string{"pull", reg + "/e2e/nothing:v1"}, reg+"/e2e/nothing:v1")
	})
	t.Run("bad reference", func(t *testing.T) {
		r := e.sub(t).fails(125, []string{"run", "UPPER:CASE!!"}, "UPPER:CASE!!")
		if !regexp.MustCompile(`(?i)invalid|bad|malformed`).MatchString(r.stderr) {
			t.Errorf("stderr does not say the reference is invalid:\n%s", r)
		}
	})
	t.Run("bad flag", func(t *testing.T) {
		e.sub(t).fails(125, []string{"run", "--memory", "lots", "e2e/hello:v1"}, "lots")
	})
	t.Run("unknown instance", func(t *testing.T) {
		e.sub(t).fails(-1, []string{"stop", "nope"}, "no such instance", "nope")
		e.sub(t).fails(-1, []string{"logs", "nope"}, "no such instance")
		e.sub(t).fails(-1, []string{"rm", "nope"}, "no such instance")
	})
	t.Run("unknown image", func(t *testing.T) {
		e.sub(t).fails(-1, []string{"rmi", "e2e/never:v1"}, "e2e/never:v1")
	})
	t.Run("guest that cannot boot", func(t *testing.T) {
		// A file that is no kernel: QEMU refuses it, run says so with
		// QEMU's words, and leaves no instance behind.
		notKernel := filepath.Join(t.TempDir(), "vmlinux")
		if err := os.WriteFile(notKernel, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.sub(t).must("pull", reg+"/e2e/hello:v1")
		for _, mode := range []string{"--rm", "-d"} {
			e.sub(t).fails(125, []string{"run", mode, "--kernel", notKernel, reg + "/e2e/hello:v1"}, "qemu")
		}
	})
	if n := len(e.ps(true)); n != 0 {
		t.Errorf("failed commands left %d instances", n)
	}
}

func TestDaemonRestart(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--name", "sleeper", busybox, "sleep", "1000")
	before, _ := e.inspect("sleeper")

	// A crash of the daemon leaves its VMs running, and a new daemon on the
	// same root adopts them.
	e.killDaemon()
	if !alive(before.PID) {
		t.Fatalf("killing flickd killed the VM (pid %d)", before.PID)
	}
	e.startDaemon()
	if st := e.ps(false)["sleeper"].State; st != api.StateRunning {
		t.Errorf("after a daemon restart ps shows sleeper %q, want running", st)
	}
	if after, _ := e.inspect("sleeper"); after.PID != before.PID {
		t.Errorf("after a daemon restart the pid is %d, want the adopted %d", after.PID, before.PID)
	}
	// The guest agent handshakes with the new daemon.
	if r := e.must("exec", "sleeper", "echo", "adopted"); r.stdout != "adopted\n" {
		t.Errorf("exec after a daemon restart: %q", r.stdout)
	}
	e.must("stop", "-t", "5", "sleeper")
	waitFor(t, 10*time.Second, "the adopted QEMU still runs after stop", func() bool { return !alive(before.PID) })
	if st := e.ps(true)["sleeper"].State; st != api.StateExited {
		t.Errorf("after stop ps -a shows sleeper %q, want exited", st)
	}

	// A VM that dies while no daemon watches is found dead at the next start.
	e.must("start", "sleeper")
	second, _ := e.inspect("sleeper")
	if !alive(second.PID) {
		t.Fatalf("start: pid %d not alive", second.PID)
	}
	e.killDaemon()
	if err := syscall.Kill(second.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", second.PID, err)
	}
	waitFor(t, 10*time.Second, "QEMU survived kill -9", func() bool { return !alive(second.PID) })
	e.startDaemon()
	if st := e.ps(true)["sleeper"].State; st != api.StateExited {
		t.Errorf("after its QEMU died with the daemon down, ps -a shows sleeper %q, want exited", st)
	}
	if _, ok := e.ps(false)["sleeper"]; ok {
		t.Error("ps without -a lists the dead sleeper")
	}

	// A VMM of this root that no instance owns (its daemon died before it
	// recorded the pid) is ended when the next daemon starts.
	e.killDaemon()
	orphanDir := filepath.Join(e.root, "instances", "0rphan")
	if err := os.MkdirAll(orphanDir, 0o755); err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("qemu-system-x86_64", "-S", "-nodefaults", "-nographic", "-M", "microvm",
		"-name", "flick-0rphan", "-chardev", "file,id=c,path="+filepath.Join(orphanDir, "console.log"))
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { orphan.Wait(); close(exited) }()
	defer orphan.Process.Kill()
	e.startDaemon()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("the daemon left a VMM of its root that no instance owns")
	}
}

func TestBench(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.ScratchGoImage(t, greeterSource("bench")), "e2e/bench:v1")
	r := e.must("bench", "e2e/bench:v1", "-n", "3", "--json")
	var v any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("bench --json is not JSON: %v\n%s", err, r)
	}
	if m, ok := v.(map[string]any); ok {
		if n, ok := m["n"].(float64); ok && n != 3 {
			t.Errorf("bench -n 3 --json reports n = %v", n)
		}
	}
	for _, p := range api.Phases {
		if x, ok := findP50(v, p); !ok || x < 0 {
			t.Errorf("bench --json has no p50 for phase %q:\n%s", p, r.stdout)
		}
	}
	if n := len(e.ps(true)); n != 0 {
		t.Errorf("bench left %d instances behind", n)
	}
}

// findP50 looks for the median of phase in bench's JSON, in any of the
// shapes a summary could take: {"image": {"p50": 1}}, {"p50": {"image": 1}}
// or [{"phase": "image", "p50": 1}], at any depth; "p50_ms" counts too.
func findP50(v any, phase string) (float64, bool) {
	p50 := func(m map[string]any) (float64, bool) {
		for _, k := range []string{"p50", "p50_ms", "P50", "median"} {
			if x, ok := m[k].(float64); ok {
				return x, true
			}
		}
		return 0, false
	}
	switch v := v.(type) {
	case map[string]any:
		if m, ok := v[phase].(map[string]any); ok {
			if x, ok := p50(m); ok {
				return x, true
			}
		}
		if v["phase"] == phase || v["name"] == phase {
			if x, ok := p50(v); ok {
				return x, true
			}
		}
		for _, k := range []string{"p50", "p50_ms", "P50", "median"} {
			if m, ok := v[k].(map[string]any); ok {
				if x, ok := m[phase].(float64); ok {
					return x, true
				}
			}
		}
		for _, c := range v {
			if x, ok := findP50(c, phase); ok {
				return x, true
			}
		}
	case []any:
		for _, c := range v {
			if x, ok := findP50(c, phase); ok {
				return x, true
			}
		}
	}
	return 0, false
}

func TestFindP50(t *testing.T) {
	tests := []struct {
		name, json string
		want       float64
		ok         bool
	}{
		{name: "by phase", json: `{"phases":{"kernel":{"p50":12.5,"p90":14}}}`, want: 12.5, ok: true},
		{name: "by stat", json: `{"p50":{"kernel":7}}`, want: 7, ok: true},
		{name: "list", json: `{"phases":[{"phase":"init","p50_ms":1},{"phase":"kernel","p50_ms":3}]}`, want: 3, ok: true},
		{name: "absent", json: `{"phases":{"init":{"p50":1}}}`},
		{name: "no p50", json: `{"phases":{"kernel":{"max":1}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v any
			if err := json.Unmarshal([]byte(tt.json), &v); err != nil {
				t.Fatal(err)
			}
			got, ok := findP50(v, "kernel")
			if got != tt.want || ok != tt.ok {
				t.Errorf("findP50 = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// The disk layer keeps the app's writes across stop and start; the memory
// layer (the default of run --rm) starts clean every time.
func TestWritableLayers(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)

	r := e.must("run", "--rm", busybox, "sh", "-c", "echo hi > /f && cat /f && grep ' / ' /proc/mounts | cut -d' ' -f3")
	if r.stdout != "hi\noverlay\n" {
		t.Errorf("run --rm writing a file: stdout %q", r.stdout)
	}

	app := []string{"sh", "-c", "if test -f /mark; then echo again; else echo first; fi; echo x > /mark; sync; exec sleep 1000"}
	for _, tc := range []struct{ layer, want string }{
		{"disk", "first\nagain\n"},
		{"memory", "first\nfirst\n"},
	} {
		name := "keep-" + tc.layer
		e.must(append([]string{"run", "-d", "--name", name, "--layer", tc.layer, busybox}, app...)...)
		waitFor(t, 15*time.Second, name+" never printed", func() bool { return e.must("logs", name).stdout != "" })
		e.must("stop", "-t", "5", name)
		e.must("start", name)
		waitFor(t, 15*time.Second, name+" printed once after its restart", func() bool {
			return strings.Count(e.must("logs", name).stdout, "\n") >= 2
		})
		if got := e.must("logs", name).stdout; got != tc.want {
			t.Errorf("--layer %s: logs of two runs %q, want %q", tc.layer, got, tc.want)
		}
		e.must("rm", "-f", name)
	}
	e.fails(125, []string{"run", "--layer", "tape", busybox, "true"}, "tape")
}

// kill sends the app a signal; restart boots it again.
func TestKillAndRestart(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--name", "k", busybox, "sh", "-c", "trap 'echo got TERM; exit 5' TERM; echo up; while :; do sleep 0.1; done")
	waitFor(t, 15*time.Second, "the app never printed", func() bool { return strings.Contains(e.must("logs", "k").stdout, "up") })
	first, _ := e.inspect("k")

	e.must("restart", "-t", "5", "k")
	second, _ := e.inspect("k")
	if second.State != api.StateRunning || second.PID == first.PID || alive(first.PID) {
		t.Errorf("after restart: state %q pid %d (was %d, alive %v), want running on a new VMM",
			second.State, second.PID, first.PID, alive(first.PID))
	}
	waitFor(t, 15*time.Second, "the restarted app never printed", func() bool {
		return strings.Count(e.must("logs", "k").stdout, "up") == 2
	})

	e.must("kill", "-s", "TERM", "k")
	if r := e.must("wait", "k"); strings.TrimSpace(r.stdout) != "5" {
		t.Errorf("wait after kill -s TERM printed %q, want the app's exit code 5", r.stdout)
	}
	if !strings.Contains(e.must("logs", "k").stdout, "got TERM") {
		t.Error("the app did not see the TERM that kill sent")
	}
	waitFor(t, 10*time.Second, "QEMU still runs after the app exited", func() bool { return !alive(second.PID) })
	e.fails(125, []string{"kill", "k"}, "not running")
}
