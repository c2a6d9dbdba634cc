package instance

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/store"
	"github.com/flick-vm/flick/internal/vmm"
)

// fakeImages serves one image, "app".
type fakeImages struct{ disk string }

func (f fakeImages) Resolve(_ context.Context, ref string) (api.Image, error) {
	if ref != "app" && ref != "sha256:app" {
		return api.Image{}, errdefs.NotFound("image %s not found", ref)
	}
	return api.Image{Digest: "sha256:app", Config: api.ImageConfig{Entrypoint: []string{"/app"}, StopSignal: "SIGINT"}}, nil
}

func (f fakeImages) RootDisk(context.Context, string) (string, string, error) {
	return f.disk, "erofs", nil
}

// fakeGuest plays flick-init on the far end of the agent channel.
type fakeGuest func(cfg wire.Config, conn net.Conn, done chan struct{})

// fakeDriver starts VMs whose guest is a goroutine.
type fakeDriver struct {
	guest fakeGuest
	mu    sync.Mutex
	vms   []*fakeVM
}

type fakeVM struct {
	h     vmm.Handle
	cfg   wire.Config
	host  net.Conn
	guest net.Conn
	run   fakeGuest
	done  chan struct{}
	once  sync.Once
	// agents receives the guest end of every agent connection.
	agents chan net.Conn

	mu       sync.Mutex
	spec     vmm.Spec
	replaced map[int]vmm.Disk // by ReplaceDisk
	resumed  bool
}

func (d *fakeDriver) Start(_ context.Context, spec vmm.Spec) (vmm.VM, error) {
	b, err := os.ReadFile(spec.GuestConfig)
	if err != nil {
		return nil, err
	}
	var cfg wire.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, err
	}
	host, guest := net.Pipe()
	vm := &fakeVM{h: vmm.Handle{Driver: "fake", PID: 1}, cfg: cfg, host: host, guest: guest, run: d.guest, done: make(chan struct{}), agents: make(chan net.Conn, 16), spec: spec}
	d.mu.Lock()
	d.vms = append(d.vms, vm)
	d.mu.Unlock()
	return vm, nil
}

func (d *fakeDriver) Running(string) (map[string]int, error) { return nil, nil }

func (d *fakeDriver) Attach(context.Context, vmm.Handle) (vmm.VM, error) {
	return nil, errdefs.NotFound("fake VMs do not outlive their daemon")
}

func (v *fakeVM) Handle() vmm.Handle { return v.h }
func (v *fakeVM) Resume(context.Context) error {
	v.mu.Lock()
	v.resumed = true
	v.mu.Unlock()
	go func() {
		v.run(v.cfg, v.guest, v.done)
		v.exit()
	}()
	return nil
}
func (v *fakeVM) DialControl(context.Context) (net.Conn, error) { return v.host, nil }
func (v *fakeVM) Moved(string)                                  {}
func (v *fakeVM) ReplaceDisk(_ context.Context, i int, d vmm.Disk) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.resumed {
		return errors.New("fake: disk replaced after the guest ran")
	}
	if v.replaced == nil {
		v.replaced = map[int]vmm.Disk{}
	}
	v.replaced[i] = d
	return nil
}
func (v *fakeVM) SaveSnapshot(context.Context, vmm.Snapshot) error {
	return errors.New("fake VMs cannot be snapshotted")
}
func (v *fakeVM) DialAgent(ctx context.Context) (net.Conn, error) {
	select {
	case <-v.done:
		return nil, errors.New("vmm exited")
	default:
	}
	host, guest := net.Pipe()
	select {
	case v.agents <- guest:
	default:
		guest.Close()
	}
	return host, nil
}
func (v *fakeVM) Shutdown(context.Context) error { v.exit(); return nil }
func (v *fakeVM) Kill() error                    { v.exit(); return nil }
func (v *fakeVM) Done() <-chan struct{}          { return v.done }
func (v *fakeVM) RSS() int64                     { return 1 << 20 }
func (v *fakeVM) Close() error                   { return nil }
func (v *fakeVM) exit() {
	v.once.Do(func() {
		v.guest.Close()
		close(v.done)
	})
}

// serveApp is a well-behaved guest: hello, exec, started, some output, then
// it waits for a signal (exit 128+sig) unless exitAt0 says to exit at once.
func serveApp(exitCode int, waitForSignal bool) fakeGuest {
	return func(cfg wire.Config, c net.Conn, done chan struct{}) {
		var wmu sync.Mutex
		send := func(typ byte, v any) {
			wmu.Lock()
			defer wmu.Unlock()
			if b, ok := v.([]byte); ok {
				wire.WriteFrame(c, typ, b)
				return
			}
			wire.WriteJSON(c, typ, v)
		}
		send(wire.TypeHello, wire.Hello{BootNS: 1})
		if cfg.AwaitConfig {
			// As flick-init: the instance's config follows the hello.
			for {
				f, err := wire.ReadFrame(c)
				if err != nil {
					return
				}
				if f.Type == wire.TypeConfig {
					cfg = wire.Config{}
					if json.Unmarshal(f.Payload, &cfg) != nil {
						return
					}
					break
				}
			}
		}
		send(wire.TypeEvent, wire.Event{Kind: wire.EventExec})
		send(wire.TypeEvent, wire.Event{Kind: wire.EventStarted, PID: 7})
		send(wire.TypeStdout, []byte("hello "+strings.Join(cfg.Args, " ")+"\n"))
		send(wire.TypeStderr, []byte("warn\n"))
		code := exitCode
		if waitForSignal {
			for {
				f, err := wire.ReadFrame(c)
				if err != nil {
					return
				}
				if f.Type == wire.TypeSignal {
					code = 128 + int(f.Payload[0])
					break
				}
			}
		}
		send(wire.TypeEvent, wire.Event{Kind: wire.EventExited, ExitCode: code})
		for {
			f, err := wire.ReadFrame(c)
			if err != nil || f.Type == wire.TypeAck {
				return
			}
		}
	}
}

// newTestManager makes a Manager over a fakeDriver playing g; opts change
// its Config first.
func newTestManager(t *testing.T, g fakeGuest, opts ...func(*Config)) (*Manager, *fakeDriver) {
	t.Helper()
	root := t.TempDir()
	db, err := store.Open(filepath.Join(root, "flick.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	kernel := filepath.Join(root, "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	initrd := filepath.Join(root, "initrd.cpio")
	os.WriteFile(initrd, []byte("i"), 0o644)
	d := &fakeDriver{guest: g}
	cfg := Config{
		Root: root, DB: db, Images: fakeImages{disk: kernel}, Driver: d, Kernel: kernel, Initrd: initrd,
		Cmdline: func(string) string { return "" }, BootTimeout: 5 * time.Second, DataSizeMiB: 64,
	}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, d
}

func TestEngineRunToExit(t *testing.T) {
	m, _ := newTestManager(t, serveApp(3, false))
	ctx := t.Context()
	inst, err := m.Create(ctx, api.CreateRequest{Name: "web", Image: "app", InstanceConfig: api.InstanceConfig{Cmd: []string{"a", "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != api.StateCreated || inst.Config.MemoryMiB != 128 || inst.Config.CPUs != 1 {
		t.Fatalf("created: %+v", inst)
	}
	started, err := m.Start(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range api.Phases {
		if _, ok := started.Phases[p]; !ok {
			t.Errorf("phase %s missing from %v", p, started.Phases)
		}
	}
	if started.BootMS <= 0 {
		t.Errorf("boot_ms = %v", started.BootMS)
	}
	w, err := m.Wait(ctx, "web")
	if err != nil || w.ExitCode != 3 {
		t.Fatalf("wait = %+v, %v; want exit 3", w, err)
	}
	var lines []string
	m.Logs(ctx, "web", LogOptions{Tail: -1}, func(r api.LogRecord) error {
		lines = append(lines, r.Stream+":"+r.Log)
		return nil
	})
	if strings.Join(lines, "") != "stdout:hello /app a b\nstderr:warn\n" {
		t.Errorf("logs = %q", lines)
	}
	got, _ := m.Get(ctx, "web")
	if got.State != api.StateExited || got.ExitCode == nil || *got.ExitCode != 3 {
		t.Errorf("after exit: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(m.cfg.RunDir, got.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Error("run dir left behind after exit")
	}
	if err := m.Remove(ctx, "web", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "web"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("after rm: %v", err)
	}
}

func TestEngineStopSendsStopSignal(t *testing.T) {
	m, _ := newTestManager(t, serveApp(0, true))
	ctx := t.Context()
	if _, err := m.Create(ctx, api.CreateRequest{Name: "svc", Image: "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "svc", false); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("rm of a running instance: %v, want conflict", err)
	}
	if _, err := m.Start(ctx, "svc"); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second start: %v, want conflict", err)
	}
	got, err := m.Stop(ctx, "svc", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The image's StopSignal is SIGINT.
	if got.State != api.StateExited || got.ExitCode == nil || *got.ExitCode != 128+int(syscall.SIGINT) {
		t.Fatalf("after stop: state %s exit %v", got.State, got.ExitCode)
	}
	// Follow on an exited instance ends at once.
	done := make(chan struct{})
	go func() {
		m.Logs(ctx, "svc", LogOptions{Follow: true, Tail: -1}, func(api.LogRecord) error { return nil })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("logs -f of an exited instance did not end")
	}
}

func TestEngineFailedInitLeavesFailedState(t *testing.T) {
	m, d := newTestManager(t, func(_ wire.Config, c net.Conn, _ chan struct{}) {
		wire.WriteJSON(c, wire.TypeHello, wire.Hello{})
		wire.WriteJSON(c, wire.TypeEvent, wire.Event{Kind: wire.EventFailed, Message: "mount root: no such device"})
		wire.ReadFrame(c)
	})
	ctx := t.Context()
	if _, err := m.Create(ctx, api.CreateRequest{Name: "bad", Image: "app"}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Start(ctx, "bad")
	if err == nil || !strings.Contains(err.Error(), "mount root: no such device") {
		t.Fatalf("start: %v, want the guest's reason", err)
	}
	got, _ := m.Get(ctx, "bad")
	if got.State != api.StateFailed || !strings.Contains(got.Error, "mount root") {
		t.Errorf("after failed start: %+v", got)
	}
	select {
	case <-d.vms[0].done:
	default:
		t.Error("the VM of a failed start is still running")
	}
}

func TestEngineBootTimeout(t *testing.T) {
	m, _ := newTestManager(t, func(_ wire.Config, c net.Conn, done chan struct{}) { <-done })
	m.cfg.BootTimeout = 200 * time.Millisecond
	ctx := t.Context()
	m.Create(ctx, api.CreateRequest{Name: "slow", Image: "app"})
	_, err := m.Start(ctx, "slow")
	if err == nil || !strings.Contains(err.Error(), "did not boot within") {
		t.Fatalf("start: %v, want a boot timeout", err)
	}
}

func TestEngineCreateErrors(t *testing.T) {
	m, _ := newTestManager(t, serveApp(0, false))
	ctx := t.Context()
	if _, err := m.Create(ctx, api.CreateRequest{Name: "a", Image: "app"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		req   api.CreateRequest
		class error
		msg   string
	}{
		{"unknown image", api.CreateRequest{Image: "nope"}, errdefs.ErrNotFound, "not found locally"},
		{"name in use", api.CreateRequest{Name: "a", Image: "app"}, errdefs.ErrConflict, "already in use"},
		{"bad name", api.CreateRequest{Name: "-x", Image: "app"}, errdefs.ErrInvalidArgument, "invalid instance name"},
		{"bad env", api.CreateRequest{Image: "app", InstanceConfig: api.InstanceConfig{Env: []string{"=x"}}}, errdefs.ErrInvalidArgument, "KEY=VALUE"},
		{"bad memory", api.CreateRequest{Image: "app", InstanceConfig: api.InstanceConfig{MemoryMiB: 4}}, errdefs.ErrInvalidArgument, "memory"},
		{"bad accel", api.CreateRequest{Image: "app", InstanceConfig: api.InstanceConfig{Accel: "xen"}}, errdefs.ErrInvalidArgument, "accel"},
		{"bad signal", api.CreateRequest{Image: "app", InstanceConfig: api.InstanceConfig{StopSignal: "NOPE"}}, errdefs.ErrInvalidArgument, "signal"},
		{"kernel path with a comma", api.CreateRequest{Image: "app", InstanceConfig: api.InstanceConfig{Kernel: "/k/a,b"}}, errdefs.ErrInvalidArgument, "/k/a,b: QEMU cannot be given a path with a comma"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Create(ctx, tt.req)
			if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want class %v mentioning %q", err, tt.class, tt.msg)
			}
		})
	}
	if n := len(m.List(ctx, true, false)); n != 1 {
		t.Errorf("failed creates left records: %d instances", n)
	}
}

// vmsNow is how many VMs d has started so far.
func (d *fakeDriver) vmsNow() []*fakeVM {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeVM(nil), d.vms...)
}

// waitSpares waits until d has started n spare VMMs, and returns them.
func waitSpares(t *testing.T, d *fakeDriver, n int) []*fakeVM {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var spares []*fakeVM
		for _, vm := range d.vmsNow() {
			if vm.cfg.Spare {
				spares = append(spares, vm)
			}
		}
		if len(spares) >= n {
			return spares
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d spare VMMs started, want %d", len(spares), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEngineSpareVMM: a cold boot leaves a spare VMM of its shape, spawned
// over the root disk of its image, which the next cold boot of that shape
// claims: a boot of the same disk file keeps it, one of another file has
// that put under the spare before it runs, and the guest gets the
// instance's config over the channel.
func TestEngineSpareVMM(t *testing.T) {
	m, d := newTestManager(t, serveApp(0, false), func(c *Config) { c.SpareVMMs = 1 })
	ctx := t.Context()
	run := func(name string, cmd ...string) api.Instance {
		t.Helper()
		if _, err := m.Create(ctx, api.CreateRequest{Name: name, Image: "app", InstanceConfig: api.InstanceConfig{Cmd: cmd}}); err != nil {
			t.Fatal(err)
		}
		in, err := m.Start(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if w, err := m.Wait(ctx, name); err != nil || w.ExitCode != 0 {
			t.Fatalf("wait %s = %+v, %v", name, w, err)
		}
		return in
	}
	logs := func(name string) string {
		var out strings.Builder
		m.Logs(ctx, name, LogOptions{Tail: -1}, func(r api.LogRecord) error {
			out.WriteString(r.Log)
			return nil
		})
		return out.String()
	}

	if a := run("a", "one"); a.SpareVMM {
		t.Error("the first cold boot of its shape found a spare VMM")
	}
	spare := waitSpares(t, d, 1)[0]
	if !spare.cfg.AwaitConfig || spare.cfg.RootFSType != "erofs" || len(spare.cfg.Args) != 0 {
		t.Errorf("spare's boot config = %+v, want one that awaits its config and names only the disks", spare.cfg)
	}
	if root := spare.spec.Disks[0]; root.Path != m.cfg.Kernel || !root.ReadOnly {
		t.Errorf("the spare was spawned over %+v, want the image's root disk (%s), read-only", root, m.cfg.Kernel)
	}

	b := run("b", "two")
	if !b.SpareVMM || b.StartMode != api.StartCold {
		t.Errorf("second cold boot: spare_vmm %v, start mode %q; want a cold boot in the spare", b.SpareVMM, b.StartMode)
	}
	spare.mu.Lock()
	replaced := len(spare.replaced)
	spare.mu.Unlock()
	if replaced != 0 {
		t.Errorf("the spare's root disk was replaced %d times, though it was the image's already", replaced)
	}
	if got := logs("b"); got != "hello /app two\nwarn\n" {
		t.Errorf("b's logs = %q: the app did not run with b's config", got)
	}
	// b has a disk layer: the spare's data disk became its own.
	in, err := m.lookup("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(in.rec.Dir, "data.ext4")); err != nil {
		t.Errorf("b's data disk: %v", err)
	}
	// The claim spawned the next spare. The image's disk is built again
	// meanwhile (another file at the same path): the next boot's claim
	// puts that file under the spare.
	next := waitSpares(t, d, 2)[1]
	rebuilt := m.cfg.Kernel + ".new"
	if err := os.WriteFile(rebuilt, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rebuilt, m.cfg.Kernel); err != nil {
		t.Fatal(err)
	}
	if e := run("e", "five"); !e.SpareVMM {
		t.Error("the boot after the rebuild found no spare VMM")
	}
	next.mu.Lock()
	root := next.replaced[0]
	next.mu.Unlock()
	if root.Path != m.cfg.Kernel || !root.ReadOnly {
		t.Errorf("spare's root disk replaced with %+v, want the rebuilt image disk (%s), read-only", root, m.cfg.Kernel)
	}
	// The claim spawned a spare again, which a boot of another shape does
	// not claim.
	next = waitSpares(t, d, 3)[2]
	if _, err := m.Create(ctx, api.CreateRequest{Name: "c", Image: "app", InstanceConfig: api.InstanceConfig{MemoryMiB: 256}}); err != nil {
		t.Fatal(err)
	}
	if c, err := m.Start(ctx, "c"); err != nil || c.SpareVMM {
		t.Errorf("start of another shape: spare_vmm %v, err %v; want a VMM of its own", c.SpareVMM, err)
	}
	select {
	case <-next.done:
		t.Error("the spare of another shape was ended by an unrelated boot")
	default:
	}
}

// TestEnginePooledVMExits: a spare VMM whose process ends while it waits
// leaves the pool at once, its files with it, and the next cold boot of its
// shape spawns a VMM of its own.
func TestEnginePooledVMExits(t *testing.T) {
	m, d := newTestManager(t, serveApp(0, false), func(c *Config) { c.SpareVMMs = 1 })
	ctx := t.Context()
	start := func(name string) api.Instance {
		t.Helper()
		if _, err := m.Create(ctx, api.CreateRequest{Name: name, Image: "app"}); err != nil {
			t.Fatal(err)
		}
		in, err := m.Start(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	start("a")
	spare := waitSpares(t, d, 1)[0]
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.spares.mu.Lock()
		n := 0
		for _, zs := range m.spares.idle {
			n += len(zs)
		}
		m.spares.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the spare never became idle")
		}
		time.Sleep(5 * time.Millisecond)
	}
	spare.Kill()
	for {
		if _, err := os.Stat(spare.spec.Dir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead spare's directory %s is still there", spare.spec.Dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if b := start("b"); b.SpareVMM {
		t.Error("a cold boot claimed a spare whose VMM had exited")
	}
}
