package guest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
)

// bootEnv is what every test boot shares: the kernel, the initramfs and a
// root disk built from busybox-static.
type bootEnv struct {
	qemu, kernel, initrd, rootDisk string
	dir                            string // holds the files above; TestMain removes it
}

var (
	bootOnce   sync.Once
	bootShared *bootEnv
	bootSkip   string
	bootErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bootShared != nil {
		os.RemoveAll(bootShared.dir)
	}
	os.Exit(code)
}

// requireBoot returns the shared boot environment, or skips the test with
// the reason when this machine cannot boot a guest.
func requireBoot(t testing.TB) *bootEnv {
	t.Helper()
	bootOnce.Do(func() { bootShared, bootSkip, bootErr = newBootEnv() })
	if bootSkip != "" {
		t.Skip(bootSkip)
	}
	if bootErr != nil {
		t.Fatal(bootErr)
	}
	return bootShared
}

func newBootEnv() (env *bootEnv, skip string, err error) {
	if os.Geteuid() != 0 {
		return nil, "boot tests need root", nil
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, "qemu-system-x86_64 not installed", nil
	}
	for _, tool := range []string{"mkfs.erofs", "mkfs.ext4", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, tool + " not installed", nil
		}
	}
	kernel := DefaultKernelPath()
	if _, err := os.Stat(kernel); err != nil {
		return nil, fmt.Sprintf("no guest kernel at %s: run make kernel or set FLICK_KERNEL", kernel), nil
	}
	// The files outlive single tests; TestMain removes the directory
	// when they have all run.
	dir, err := os.MkdirTemp("", "flick-boot-")
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	init := os.Getenv("FLICK_INIT")
	if init == "" {
		init = filepath.Join(dir, "flick-init")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", init, "github.com/flick-vm/flick/cmd/flick-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("build flick-init: %v\n%s", err, out)
		}
	}
	initrd, err := BuildInitrd(init, dir)
	if err != nil {
		return nil, "", err
	}
	rootDisk, err := buildTestRoot(dir)
	if err != nil {
		return nil, "", err
	}
	return &bootEnv{qemu: qemu, kernel: kernel, initrd: initrd, rootDisk: rootDisk, dir: dir}, "", nil
}

// buildTestRoot makes an erofs image of a tiny busybox system: /bin/sh is an
// absolute symlink (flick-init must resolve it inside the image), and there
// is a user, a group and a file that is not executable.
func buildTestRoot(dir string) (string, error) {
	root := filepath.Join(dir, "root")
	busybox, _ := exec.LookPath("busybox")
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return "", err
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
	}
	for _, d := range []string{"bin", "etc", "tmp", "home/app", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/noexec"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Symlink("/bin/busybox", filepath.Join(root, "bin/sh")); err != nil {
		return "", err
	}
	for _, applet := range []string{"sleep", "id", "cat", "hostname", "pwd", "kill"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "root.erofs")
	if out, err := exec.Command("mkfs.erofs", "--quiet", "--all-root", img, root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.erofs: %v\n%s", err, out)
	}
	return img, nil
}

// qemuArgs is the command line flick's QEMU driver uses, minus -S.
func qemuArgs(env *bootEnv, dir, ram string) []string {
	return []string{
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-M", "microvm,acpi=off,x-option-roms=off,rtc=on,isa-serial=on,pic=on,pit=on",
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "128M",
		"-object", "memory-backend-file,id=mem,size=128M,mem-path=" + ram + ",share=on",
		"-machine", "memory-backend=mem",
		"-kernel", env.kernel, "-initrd", env.initrd,
		"-append", KernelCmdline(CmdlineOptions{}),
		"-chardev", "file,id=serial,path=" + filepath.Join(dir, "console.log") + ",append=on", "-serial", "chardev:serial",
		"-drive", "id=root,file=" + env.rootDisk + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root,serial=root",
		"-drive", "id=data,file=" + filepath.Join(dir, "data.ext4") + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=data,serial=data",
		"-device", "virtio-serial-device,id=cons,max_ports=1",
		"-chardev", "file,id=console,path=" + filepath.Join(dir, "console.log") + ",append=on",
		"-device", "virtconsole,chardev=console,bus=cons.0",
		"-device", "virtio-serial-device,id=ports,max_ports=2",
		"-chardev", "socket,id=agent,path=" + filepath.Join(dir, "agent.sock") + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,bus=ports.0,name=" + wire.PortName,
		"-fw_cfg", "name=" + wire.FwCfgName + ",file=" + filepath.Join(dir, "config.json"),
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
	}
}

// bootResult is what the host saw of one VM's life.
type bootResult struct {
	hello          wire.Hello
	events         []wire.Event
	stdout, stderr string
	exit           wire.Event // the "exited" or "failed" event

	// Host times, from QEMU's spawn.
	toHello, toStarted, toExitEvent, toQEMUExit time.Duration
	ackToQEMUExit                               time.Duration
	console                                     string
}

// bootApp boots a VM running cfg (root and data disks filled in), answers
// its exit event with an Ack and waits for QEMU to exit by itself. onStdout
// sees the app's output as it arrives and may send frames.
func bootApp(t testing.TB, env *bootEnv, cfg wire.Config, onStdout func(conn net.Conn, soFar string)) bootResult {
	t.Helper()
	dir, err := os.MkdirTemp("", "fb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.RootDevice, cfg.DataDevice = "root", "data"
	if cfg.RootFSType == "" {
		cfg.RootFSType = "erofs"
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data.ext4")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", data).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	ram := "/dev/shm/flick-test-" + filepath.Base(dir) + ".ram"
	t.Cleanup(func() { os.Remove(ram) })

	cmd := exec.Command(env.qemu, qemuArgs(env, dir, ram)...)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	spawned := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(waited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
	})
	console := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		return string(b)
	}

	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err = net.Dial("unix", filepath.Join(dir, "agent.sock"))
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("qemu exited before its agent socket appeared: %v\n%s", err, qemuOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent socket: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	defer conn.Close()

	var res bootResult
	overall := time.AfterFunc(60*time.Second, func() { conn.Close() })
	defer overall.Stop()
	for res.exit.Kind == "" {
		f, err := wire.ReadFrame(conn)
		if err != nil {
			t.Fatalf("read frame: %v (after %v)\nconsole:\n%s\nqemu:\n%s", err, time.Since(spawned), console(), qemuOut.String())
		}
		now := time.Since(spawned)
		switch f.Type {
		case wire.TypeHello:
			res.toHello = now
			if err := json.Unmarshal(f.Payload, &res.hello); err != nil {
				t.Fatalf("hello %q: %v", f.Payload, err)
			}
		case wire.TypeStdout:
			res.stdout += string(f.Payload)
			if onStdout != nil {
				onStdout(conn, res.stdout)
			}
		case wire.TypeStderr:
			res.stderr += string(f.Payload)
		case wire.TypeEvent:
			var e wire.Event
			if err := json.Unmarshal(f.Payload, &e); err != nil {
				t.Fatalf("event %q: %v", f.Payload, err)
			}
			res.events = append(res.events, e)
			switch e.Kind {
			case wire.EventStarted:
				res.toStarted = now
			case wire.EventExited, wire.EventFailed:
				res.toExitEvent = now
				res.exit = e
			}
		default:
			t.Fatalf("unexpected frame type %d", f.Type)
		}
	}
	// The guest's last frames may still be in flight before the Ack; none
	// should come after the exit event, which is the guest's last word.
	acked := time.Now()
	if err := wire.WriteFrame(conn, wire.TypeAck, nil); err != nil {
		t.Fatalf("ack: %v", err)
	}
	select {
	case err := <-exited:
		res.toQEMUExit = time.Since(spawned)
		res.ackToQEMUExit = time.Since(acked)
		if err != nil {
			t.Fatalf("qemu: %v\n%s", err, qemuOut.String())
		}
	case <-time.After(wire.AckTimeout / 2):
		t.Fatalf("qemu still running %v after the ack\nconsole:\n%s", wire.AckTimeout/2, console())
	}
	res.console = console()
	return res
}

func eventKinds(events []wire.Event) string {
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, e.Kind)
	}
	return strings.Join(kinds, ",")
}

func TestBoot(t *testing.T) {
	env := requireBoot(t)
	path := []string{"PATH=/usr/bin:/bin"}

	tests := []struct {
		name       string
		cfg        wire.Config
		onStdout   func(conn net.Conn, soFar string)
		wantEvents string
		wantCode   int
		wantSignal int
		wantStdout string
		wantStderr string // substring
		wantFailed string // substring of a "failed" event's message
	}{
		{
			name:       "output and exit code",
			cfg:        wire.Config{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, Env: path},
			wantEvents: "exec,started,exited",
			wantCode:   3,
			wantStdout: "out\n",
			wantStderr: "err\n",
		},
		{
			name:       "missing executable",
			cfg:        wire.Config{Args: []string{"nope"}, Env: path},
			wantEvents: "exited",
			wantCode:   127,
			wantStderr: `flick-init: exec "nope": executable file not found in $PATH`,
		},
		{
			name:       "not executable",
			cfg:        wire.Config{Args: []string{"noexec"}, Env: path},
			wantEvents: "exited",
			wantCode:   126,
			wantStderr: `flick-init: exec "noexec": permission denied`,
		},
		{
			name: "signal forwarded",
			cfg: wire.Config{Args: []string{"/bin/sh", "-c",
				`trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`}},
			onStdout: func(conn net.Conn, soFar string) {
				if soFar == "ready\n" {
					wire.WriteFrame(conn, wire.TypeSignal, []byte{15})
				}
			},
			wantEvents: "exec,started,exited",
			wantCode:   7,
			wantStdout: "ready\ngot TERM\n",
		},
		{
			name:       "killed by a signal",
			cfg:        wire.Config{Args: []string{"sh", "-c", "kill -9 $$"}, Env: path},
			wantEvents: "exec,started,exited",
			wantCode:   137,
			wantSignal: 9,
		},
		{
			name: "user, workdir, hostname",
			cfg: wire.Config{
				Args:       []string{"sh", "-c", `id -u; id -g; id -G; echo $HOME; pwd; hostname; cat /etc/hostname; echo hi > /tmp/f && cat /tmp/f`},
				Env:        path,
				User:       "app",
				Hostname:   "box1",
				WorkingDir: "/tmp",
			},
			wantEvents: "exec,started,exited",
			wantStdout: "1000\n1000\n1000 2000\n/home/app\n/tmp\nbox1\nbox1\nhi\n",
		},
		{
			name: "writable layer in memory",
			cfg: wire.Config{
				Args:          []string{"sh", "-c", `echo hi > /f && cat /f; grep -c " /mnt/data " /proc/mounts; grep " / " /proc/mounts | cut -d" " -f3`},
				Env:           path,
				WritableLayer: wire.LayerMemory,
			},
			wantEvents: "exec,started,exited",
			// flick-init's mounts are outside the app's chroot: the app
			// sees only its overlay.
			wantStdout: "hi\n0\noverlay\n",
		},
		{
			name:       "setup failure",
			cfg:        wire.Config{Args: []string{"sh"}, Env: path, RootFSType: "ext4"},
			wantEvents: "failed",
			wantFailed: "mount /dev/vda on /mnt/lower (ext4)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := bootApp(t, env, tc.cfg, tc.onStdout)
			if res.hello.BootNS <= 0 {
				t.Errorf("hello boot_ns = %d", res.hello.BootNS)
			}
			if got := eventKinds(res.events); got != tc.wantEvents {
				t.Errorf("events %s, want %s\nconsole:\n%s", got, tc.wantEvents, res.console)
			}
			if tc.wantFailed != "" {
				if !strings.Contains(res.exit.Message, tc.wantFailed) {
					t.Errorf("failed event %q, want it to say %q", res.exit.Message, tc.wantFailed)
				}
				return
			}
			if res.exit.ExitCode != tc.wantCode || res.exit.Signal != tc.wantSignal {
				t.Errorf("exit code %d signal %d, want %d signal %d", res.exit.ExitCode, res.exit.Signal, tc.wantCode, tc.wantSignal)
			}
			if res.stdout != tc.wantStdout {
				t.Errorf("stdout %q, want %q", res.stdout, tc.wantStdout)
			}
			if !strings.Contains(res.stderr, tc.wantStderr) {
				t.Errorf("stderr %q, want it to contain %q", res.stderr, tc.wantStderr)
			}
			for _, e := range res.events {
				if e.Kind == wire.EventStarted && e.PID <= 1 {
					t.Errorf("started event with pid %d", e.PID)
				}
			}
			t.Logf("spawn->hello %v (guest boot %v) ->started %v ->exit event %v ->qemu exit %v (ack->exit %v)",
				ms(res.toHello), ms(time.Duration(res.hello.BootNS)), ms(res.toStarted), ms(res.toExitEvent), ms(res.toQEMUExit), ms(res.ackToQEMUExit))
		})
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }

// BenchmarkBoot boots a VM whose app exits at once and reports each phase,
// from QEMU's spawn, in milliseconds.
func BenchmarkBoot(b *testing.B) {
	env := requireBoot(b)
	cfg := wire.Config{Args: []string{"/bin/sh", "-c", "exit 0"}}
	var hello, guestHello, started, exited, qemuExit time.Duration
	n := 0
	for b.Loop() {
		res := bootApp(b, env, cfg, nil)
		if res.exit.Kind != wire.EventExited || res.exit.ExitCode != 0 {
			b.Fatalf("exit event %+v", res.exit)
		}
		hello += res.toHello
		guestHello += time.Duration(res.hello.BootNS)
		started += res.toStarted
		exited += res.toExitEvent
		qemuExit += res.toQEMUExit
		n++
		if testing.Verbose() {
			b.Logf("boot %d: spawn->hello %s (kernel start->init main %s) ->started %s ->exited %s ->qemu exit %s",
				n, ms(res.toHello), ms(time.Duration(res.hello.BootNS)), ms(res.toStarted), ms(res.toExitEvent), ms(res.toQEMUExit))
		}
	}
	per := func(d time.Duration) float64 { return float64(d) / float64(n) / 1e6 }
	b.ReportMetric(per(hello), "hello-ms")
	b.ReportMetric(per(guestHello), "guest-init-ms")
	b.ReportMetric(per(started), "started-ms")
	b.ReportMetric(per(qemuExit), "qemu-exit-ms")
}
