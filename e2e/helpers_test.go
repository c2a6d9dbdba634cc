package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/testenv"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// cmdTimeout bounds every flick command: a cold TCG boot takes about a
// second, building a root disk a few more.
const cmdTimeout = 2 * time.Minute

// repoRoot walks up from the test's working directory to flick's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/flick-vm/flick\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no flick checkout (go.mod of github.com/flick-vm/flick) above the working directory")
		}
		dir = parent
	}
}

// env is one flickd of a test, with its own state directory, and the
// flick CLI pointed at it.
type env struct {
	t      *testing.T
	flickB string // bin/flick
	daemon string // bin/flickd
	init   string // bin/flick-init
	kernel string

	// netns is the network namespace the daemon keeps its VMs' networks
	// in, made for this test: nothing of the host's networking is touched.
	netns string
	// extra are more flags for flickd, and env more environment
	// variables, for the next startDaemon.
	extra, env []string

	start time.Time // when the test's environment was made

	dir  string // short temporary directory holding root, socket and log
	root string
	sock string
	log  string

	cmd  *exec.Cmd     // the running flickd, nil when down
	done chan struct{} // closed when cmd has exited
}

// newEnv checks that the machine can run VMs, starts a flickd of its own
// and stops it, with every VM it started, when t ends.
func newEnv(t *testing.T) *env {
	t.Helper()
	// FLICK_E2E_BIN tests binaries installed elsewhere (e.g. /usr/local/bin).
	bin := os.Getenv("FLICK_E2E_BIN")
	if bin == "" {
		bin = filepath.Join(repoRoot(t), "bin")
	}
	for _, b := range []string{"flick", "flickd", "flick-init"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Skipf("%s: run make build first", filepath.Join(bin, b))
		}
	}
	testenv.RequireRoot(t)
	testenv.RequireQEMU(t)
	kernel := testenv.RequireKernel(t)
	initPath := os.Getenv("FLICK_INIT")
	if initPath == "" {
		initPath = filepath.Join(bin, "flick-init")
	}

	// Unix socket paths must stay under 108 bytes, and flickd may put its
	// own sockets (QMP, serial) under its root: keep both short instead of
	// under t.TempDir's long names.
	dir, err := os.MkdirTemp("", "fe")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:      t,
		start:  time.Now(),
		flickB: filepath.Join(bin, "flick"),
		daemon: filepath.Join(bin, "flickd"),
		init:   initPath,
		kernel: kernel,
		dir:    dir,
		root:   filepath.Join(dir, "root"),
		sock:   filepath.Join(dir, "d.sock"),
		log:    filepath.Join(dir, "flickd.log"),
	}
	e.netns = "fe" + filepath.Base(dir)
	if out, err := exec.Command("ip", "netns", "add", e.netns).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("ip netns add %s: %v: %s", e.netns, err, out)
	}
	t.Cleanup(e.cleanup)
	e.inNS("ip", "link", "set", "lo", "up")
	e.startDaemon()
	return e
}

// inNS runs a command in the daemon's network namespace and returns its
// output; it fails the test if the command fails.
func (e *env) inNS(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", e.netns}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("in netns %s: %s: %v\n%s", e.netns, shellJoin(args), err, out)
	}
	return string(out)
}

func (e *env) cleanup() {
	t := e.t
	if e.cmd != nil {
		// Remove what the test left, the way a user would, so the daemon
		// stops its VMs; then stop the daemon.
		if r := e.run("ps", "-a", "-q"); r.code == 0 {
			for id := range strings.FieldsSeq(r.stdout) {
				e.run("rm", "-f", id)
			}
		}
		e.stopDaemon()
		// An ended VM leaves no guest RAM file behind (one that saved a
		// boot snapshot keeps its own while it runs).
		for _, f := range leftRAMFiles(e.start) {
			t.Errorf("guest RAM file %s is left after its VM ended", f)
		}
	}
	// Whatever QEMU still runs out of our directory is a VM this test
	// started that nobody stopped.
	for _, pid := range qemuUnder(e.dir) {
		t.Errorf("QEMU pid %d of this test still runs after rm -f and daemon stop; killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if t.Failed() {
		if b, err := os.ReadFile(e.log); err == nil {
			t.Logf("flickd log (last 60 lines):\n%s", tail(string(b), 60))
		}
	}
	if err := os.RemoveAll(e.dir); err != nil {
		t.Logf("remove %s: %v", e.dir, err)
	}
	if out, err := exec.Command("ip", "netns", "del", e.netns).CombinedOutput(); err != nil {
		t.Logf("ip netns del %s: %v: %s", e.netns, err, out)
	}
}

// sub returns e for a subtest: its commands log and fail in t.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// startDaemon starts flickd and waits until it answers on its socket.
func (e *env) startDaemon() {
	t := e.t
	t.Helper()
	if e.cmd != nil {
		t.Fatal("startDaemon: flickd already running")
	}
	logf, err := os.OpenFile(e.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: starting flickd\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{"--root", e.root, "--socket", e.sock, "--kernel", e.kernel, "--init", e.init, "--netns", e.netns}, e.extra...)
	cmd := exec.Command(e.daemon, args...)
	cmd.Env = append(os.Environ(), e.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start flickd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.cmd, e.done = cmd, done

	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("unix", e.sock); err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			e.cmd = nil
			b, _ := os.ReadFile(e.log)
			t.Fatalf("flickd exited before listening on %s (%v):\n%s", e.sock, cmd.ProcessState, tail(string(b), 40))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("flickd does not listen on %s after 15s", e.sock)
		}
	}
}

// killDaemon kills flickd with SIGKILL, the way a crash would.
func (e *env) killDaemon() {
	e.t.Helper()
	if e.cmd == nil {
		e.t.Fatal("killDaemon: flickd not running")
	}
	_ = e.cmd.Process.Kill()
	<-e.done
	e.cmd = nil
}

// stopDaemon asks flickd to exit (SIGTERM), and kills it after 15s.
// restartWith restarts flickd with these flags added to its usual ones.
func (e *env) restartWith(flags ...string) {
	e.stopDaemon()
	e.extra = flags
	e.startDaemon()
}

func (e *env) stopDaemon() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(15 * time.Second):
		e.t.Errorf("flickd still runs 15s after SIGTERM; killing it")
		_ = e.cmd.Process.Kill()
		<-e.done
	}
	e.cmd = nil
}

// result is what a user sees of one flick command.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("$ flick %s\nexit %d\n--- stdout:\n%s--- stderr:\n%s", shellJoin(r.args), r.code, r.stdout, r.stderr)
}

// run runs flick with args against this env's daemon, with no stdin.
func (e *env) run(args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.flickB, args...)
	cmd.Env = append(os.Environ(), "FLICK_HOST=unix://"+e.sock)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		e.t.Fatalf("timed out after %s:\n%s", cmdTimeout, r)
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		e.t.Fatalf("flick %s: %v", shellJoin(args), err)
	}
	e.t.Logf("$ flick %s  -> exit %d in %s", shellJoin(args), r.code, time.Since(start).Round(time.Millisecond))
	return r
}

// must runs flick and fails the test unless it exits 0.
func (e *env) must(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("want exit 0:\n%s", r)
	}
	return r
}

// fails runs flick and fails the test unless it exits with wantCode (any
// non-zero code when wantCode is -1) and its stderr holds every one of
// wantStderr, case-insensitively.
func (e *env) fails(wantCode int, args []string, wantStderr ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code == 0 || (wantCode >= 0 && r.code != wantCode) {
		want := "a non-zero exit"
		if wantCode >= 0 {
			want = "exit " + strconv.Itoa(wantCode)
		}
		e.t.Errorf("want %s:\n%s", want, r)
	}
	for _, s := range wantStderr {
		if !strings.Contains(strings.ToLower(r.stderr), strings.ToLower(s)) {
			e.t.Errorf("stderr does not mention %q:\n%s", s, r)
		}
	}
	return r
}

// load writes img as a docker-archive tagged tag and loads it with
// `flick load -i`.
func (e *env) load(img v1.Image, tag string) {
	e.t.Helper()
	file := filepath.Join(e.t.TempDir(), "image.tar")
	testenv.WriteDockerArchive(e.t, img, tag, file)
	e.must("load", "-i", file)
}

// inspect returns `flick inspect NAME --json` decoded, and as a raw map.
func (e *env) inspect(name string) (api.Instance, map[string]any) {
	e.t.Helper()
	r := e.must("inspect", name, "--json")
	var inst api.Instance
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &inst); err != nil {
		e.t.Fatalf("inspect --json is not one JSON object: %v\n%s", err, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		e.t.Fatalf("inspect --json is not one JSON object: %v\n%s", err, r)
	}
	return inst, raw
}

// ps returns `flick ps [-a] --json` decoded, by name.
func (e *env) ps(all bool) map[string]api.Instance {
	e.t.Helper()
	args := []string{"ps", "--json"}
	if all {
		args = append(args, "-a")
	}
	r := e.must(args...)
	var list []api.Instance
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		e.t.Fatalf("ps --json is not a JSON array of instances: %v\n%s", err, r)
	}
	m := make(map[string]api.Instance, len(list))
	for _, in := range list {
		m[in.Name] = in
	}
	return m
}

// waitFor polls cond until it holds or timeout passes, then fails with msg.
func waitFor(t *testing.T, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// pgrep reports the processes whose command line contains pattern, as
// `pgrep -f` does.
func pgrep(t *testing.T, pattern string) []int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		return nil
	}
	if err != nil {
		t.Fatalf("pgrep -f %s: %v", pattern, err)
	}
	var pids []int
	for f := range strings.FieldsSeq(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// leftRAMFiles returns the guest RAM files (flickd keeps them in
// /dev/shm/flick) made since start that no running process names as its
// memory.
func leftRAMFiles(start time.Time) []string {
	const ramDir = "/dev/shm/flick"
	inUse := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(cmdline), "\x00") {
			for _, opt := range strings.Split(arg, ",") {
				if f, ok := strings.CutPrefix(opt, "mem-path="); ok {
					inUse[filepath.Clean(f)] = true
				}
			}
		}
	}
	var left []string
	ents, _ := os.ReadDir(ramDir)
	for _, ent := range ents {
		f := filepath.Join(ramDir, ent.Name())
		var st syscall.Stat_t
		if syscall.Stat(f, &st) != nil || time.Unix(st.Ctim.Unix()).Before(start) || inUse[f] {
			continue
		}
		left = append(left, f)
	}
	return left
}

// qemuUnder lists the live QEMU processes whose command line names a path
// under dir.
func qemuUnder(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte("qemu-system")) && bytes.Contains(cmdline, []byte(dir+"/")) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// lineWith returns the first line of s that contains sub.
func lineWith(s, sub string) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			return sc.Text(), true
		}
	}
	return "", false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$;|&<>()*?!\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
