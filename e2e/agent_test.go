package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/testenv"
)

// sleeperSource is a scratch app that prints its arguments, or with
// "sleep" waits to be stopped: exec into it can run only its own binary.
const sleeperSource = `package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "sleep" {
		time.Sleep(time.Hour)
	}
	fmt.Println("scratch says", os.Args[1:])
}
`

// command returns flick args as a command against this env's daemon, for
// tests that need its stdin, a terminal or a signal.
func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.flickB, args...)
	cmd.Env = append(os.Environ(), "FLICK_HOST=unix://"+e.sock)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (e *env) client() *api.Client {
	e.t.Helper()
	c, err := api.NewClient("unix://" + e.sock)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func exitOf(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestExec(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--name", "box", busybox, "sleep", "1000")

	if r := e.must("exec", "box", "echo", "hello", "there"); r.stdout != "hello there\n" {
		t.Errorf("exec echo: stdout %q, want %q", r.stdout, "hello there\n")
	}
	e.fails(7, []string{"exec", "box", "sh", "-c", "echo out; echo err >&2; exit 7"})
	r := e.fails(127, []string{"exec", "box", "no-such-command"}, "no-such-command", "not found")
	if r.stdout != "" {
		t.Errorf("a missing command printed to stdout: %q", r.stdout)
	}
	r = e.must("exec", "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody", "box", "sh", "-c", `echo "$FOO $(pwd) $(id -u)"`)
	if r.stdout != "bar /tmp 65534\n" {
		t.Errorf("exec -e -w -u: stdout %q, want %q", r.stdout, "bar /tmp 65534\n")
	}

	t.Run("stdin", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := e.command(ctx, "exec", "-i", "box", "sh", "-c", "wc -l; echo done")
		cmd.Stdin = strings.NewReader("one\ntwo\nthree\n")
		out, err := cmd.Output()
		// wc ends only when stdin's end of file reaches the guest.
		if err != nil || strings.Fields(string(out))[0] != "3" || !strings.Contains(string(out), "done") {
			t.Errorf("exec -i: %q, %v; want 3 lines counted, then done", out, err)
		}
	})

	t.Run("signal", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := e.command(ctx, "exec", "box", "sh", "-c", `trap "echo caught; exit 42" INT; echo ready; sleep 100 & wait`)
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "exec never printed ready", func() bool { return strings.Contains(out.String(), "ready") })
		_ = cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		if code := exitOf(err); code != 42 || !strings.Contains(out.String(), "caught") {
			t.Errorf("SIGINT to flick exec: exit %d, output %q; want the trap to run and exit 42", code, out.String())
		}
	})

	t.Run("tty", func(t *testing.T) {
		master, slave := openPTY(t)
		if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 91}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := e.command(ctx, "exec", "-it", "box", "sh", "-c", `tty; stty size; read line; echo "got $line"; exit 3`)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		var mu sync.Mutex
		var out bytes.Buffer
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := master.Read(buf)
				mu.Lock()
				out.Write(buf[:n])
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		seen := func(s string) bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(out.String(), s) }
		waitFor(t, 20*time.Second, "no terminal size from the guest", func() bool { return seen("33 91") })
		if _, err := master.Write([]byte("typed\r")); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		mu.Lock()
		got := out.String()
		mu.Unlock()
		if code := exitOf(err); code != 3 {
			t.Errorf("exec -it: exit %d, want 3; output %q", code, got)
		}
		if !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "got typed") {
			t.Errorf("exec -it: output %q lacks the pty name or the typed line", got)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		c := e.client()
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for i := range 50 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				out, _, exit, err := c.ExecOutput(ctx, "box", api.ExecRequest{Cmd: []string{"sh", "-c", fmt.Sprintf("echo out-%d; exit %d", i, i%7)}})
				switch {
				case err != nil:
					errs <- fmt.Errorf("exec %d: %v", i, err)
				case string(out) != fmt.Sprintf("out-%d\n", i) || exit.ExitCode != i%7:
					errs <- fmt.Errorf("exec %d: stdout %q exit %d, want out-%d and exit %d", i, out, exit.ExitCode, i, i%7)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("agent restart", func(t *testing.T) {
		// Killing the agent ends the exec that does it; PID 1 starts a
		// new agent and flickd handshakes with it.
		e.run("exec", "box", "sh", "-c", `kill -9 $(ps | awk '/flick-agent/ && !/awk/ {print $1}')`)
		var r result
		waitFor(t, 20*time.Second, "exec does not work again after the agent was killed", func() bool {
			r = e.run("exec", "box", "echo", "back")
			return r.code == 0 && r.stdout == "back\n"
		})
	})

	t.Run("scratch", func(t *testing.T) {
		e.load(testenv.ScratchGoImage(t, sleeperSource), "e2e/sleeper:1")
		e.must("run", "-d", "--name", "scratch", "e2e/sleeper:1", "sleep")
		r := e.must("exec", "scratch", "/app", "hi")
		if !strings.Contains(r.stdout, "scratch says [hi]") {
			t.Errorf("exec in a scratch image: %q", r.stdout)
		}
		e.fails(127, []string{"exec", "scratch", "sh"}, "not found")
	})

	e.fails(125, []string{"exec", "nosuch", "true"}, "no such instance")
	e.must("stop", "-t", "1", "box")
	e.fails(125, []string{"exec", "box", "true"}, "not running")
}

// openPTY returns a new pseudo-terminal's master and slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestCp(t *testing.T) {
	e := newEnv(t)
	e.load(testenv.BusyboxImage(t), busybox)
	e.must("run", "-d", "--name", "box", busybox, "sleep", "1000")

	src := filepath.Join(t.TempDir(), "site")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "sub"), 0o750))
	must(os.WriteFile(filepath.Join(src, "index.html"), []byte("<h1>hi</h1>\n"), 0o640))
	must(os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755))
	must(os.Symlink("index.html", filepath.Join(src, "home.html")))
	mtime := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "index.html"), mtime, mtime))
	// Big enough for the agent's direct writes, with a tail that is not
	// a whole block.
	big := make([]byte, 5<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	must(os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644))
	bigSum := fmt.Sprintf("%x  /tmp/site/big.bin\n", sha256.Sum256(big))

	e.must("cp", src, "box:/tmp/")
	if r := e.must("exec", "box", "sh", "-c", "sha256sum /tmp/site/big.bin"); r.stdout != bigSum {
		t.Errorf("a 5 MiB file copied in reads back as %q, want %q", r.stdout, bigSum)
	}
	r := e.must("exec", "box", "sh", "-c", "stat -c '%a %Y' /tmp/site/index.html; readlink /tmp/site/home.html; /tmp/site/sub/run.sh; stat -c %a /tmp/site/sub")
	if want := fmt.Sprintf("640 %d\nindex.html\nran\n750\n", mtime.Unix()); r.stdout != want {
		t.Errorf("after cp in, the guest shows %q, want %q", r.stdout, want)
	}
	// A file onto a new name.
	e.must("cp", filepath.Join(src, "index.html"), "box:/tmp/renamed.html")
	if r := e.must("exec", "box", "cat", "/tmp/renamed.html"); r.stdout != "<h1>hi</h1>\n" {
		t.Errorf("cp to a new name: %q", r.stdout)
	}

	// And back out.
	e.must("exec", "box", "sh", "-c", "echo log line > /tmp/site/app.log")
	back := filepath.Join(t.TempDir(), "back")
	e.must("cp", "box:/tmp/site", back)
	for name, want := range map[string]string{"big.bin": string(big), "index.html": "<h1>hi</h1>\n", "app.log": "log line\n", "sub/run.sh": "#!/bin/sh\necho ran\n"} {
		b, err := os.ReadFile(filepath.Join(back, name))
		if err != nil || string(b) != want {
			t.Errorf("cp out: %s = %q (%v), want %q", name, b, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(back, "index.html")); err != nil || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("cp out: index.html lost its mode or mtime: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(back, "home.html")); err != nil || l != "index.html" {
		t.Errorf("cp out: home.html -> %q (%v), want the symlink kept", l, err)
	}
	dir := t.TempDir()
	e.must("cp", "box:/tmp/site/app.log", dir)
	if b, err := os.ReadFile(filepath.Join(dir, "app.log")); err != nil || string(b) != "log line\n" {
		t.Errorf("cp of a file into a directory: %q %v", b, err)
	}

	e.fails(125, []string{"cp", "box:/no/such/file", dir}, "no such file")
	e.fails(125, []string{"cp", src, "box:/no/such/dir/"}, "no such directory")

	// A tar whose entry climbs out of the destination is refused, and
	// nothing lands outside it.
	var hostile bytes.Buffer
	tw := tar.NewWriter(&hostile)
	must(tw.WriteHeader(&tar.Header{Name: "../escaped", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg}))
	_, _ = tw.Write([]byte("x\n"))
	must(tw.Close())
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := e.command(ctx, "cp", "-", "box:/tmp/site")
	cmd.Stdin = &hostile
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); exitOf(err) != 125 || !strings.Contains(stderr.String(), "../escaped") {
		t.Errorf("cp of a tar escaping its destination: exit %d, stderr %q; want 125 naming ../escaped", exitOf(err), stderr.String())
	}
	e.fails(1, []string{"exec", "box", "test", "-e", "/tmp/escaped"})
}

func TestNoAgentAndReady(t *testing.T) {
	e := newEnv(t)
	bb := testenv.BusyboxImage(t)
	e.load(bb, busybox)

	e.must("run", "-d", "--name", "quiet", "--no-agent", busybox, "sleep", "1000")
	e.fails(125, []string{"exec", "quiet", "true"}, "agent disabled for this instance")
	e.fails(125, []string{"cp", "quiet:/etc", t.TempDir()}, "agent disabled for this instance")
	if _, err := e.client().Stat(context.Background(), "quiet", "/"); !api.IsConflict(err) {
		t.Errorf("stat of a --no-agent instance: %v, want 409", err)
	}
	if in, _ := e.inspect("quiet"); in.State != api.StateRunning || in.Phases[api.PhaseReady] != 0 {
		t.Errorf("--no-agent: state %s, phases %v; want running without a ready phase", in.State, in.Phases)
	}

	// The instance is running only once its server answers: the first
	// request after run returns succeeds.
	server := `sleep 1; mkdir /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www`
	e.must("run", "-d", "--name", "web", "--ready", "http://:8080/index.html", busybox, "sh", "-c", server)
	if r := e.must("exec", "web", "sh", "-c", "wget -qO- http://127.0.0.1:8080/index.html"); r.stdout != "ok\n" {
		t.Errorf("right after run: %q", r.stdout)
	}
	if in, _ := e.inspect("web"); in.Phases[api.PhaseReady] <= 0 {
		t.Errorf("phases %v lack ready", in.Phases)
	}
	e.fails(125, []string{"run", "-d", "--name", "never", "--ready", "tcp:9999", "--ready-timeout", "2", busybox, "sleep", "100"}, "not ready after 2s")
	e.fails(125, []string{"run", "-d", "--ready", "udp:53", busybox, "true"}, "invalid readiness check")

	// The image's label gives the check when the flags do not.
	labelled, err := mutate.Config(bb, withLabel(t, bb, api.ReadyLabel, "tcp:8081"))
	if err != nil {
		t.Fatal(err)
	}
	e.load(labelled, "e2e/labelled:1")
	e.must("run", "-d", "--name", "lab", "e2e/labelled:1", "sh", "-c", "sleep 1; mkdir /w; exec httpd -f -p 8081 -h /w")
	if in, _ := e.inspect("lab"); in.Phases[api.PhaseReady] <= 0 {
		t.Errorf("the image label %s did not gate the start: phases %v", api.ReadyLabel, in.Phases)
	}
}

// withLabel returns img's config with label k=v added.
func withLabel(t *testing.T, img v1.Image, k, v string) v1.Config {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := *cf.Config.DeepCopy()
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	cfg.Labels[k] = v
	return cfg
}
