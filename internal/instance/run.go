package instance

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/agent"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/failpoint"
	"github.com/flick-vm/flick/internal/fsutil"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/vmm"
)

// running is the daemon's side of one live VM.
type running struct {
	vm  vmm.VM
	ctl net.Conn   // flick-init's channel
	wmu sync.Mutex // serialises frames to the guest
	// agent is the guest agent's channel; nil with --no-agent.
	agent *agent.Client

	hello  chan wire.Hello
	events chan wire.Event

	mu       sync.Mutex
	exit     *wire.Event // the "exited" or "failed" event, once it came
	killed   bool        // the host ended the VMM itself
	standby  bool        // the host ended the VMM after saving it
	detached bool        // the daemon is going away; the VM goes on
	// hotTimer is set while a standby keeps the VMM paused (hot.go); it
	// ends the VMM when it fires.
	hotTimer *time.Timer

	exitOnce sync.Once
	exited   chan struct{} // closed when exit is set
	// readerDone is closed when the agent connection has been read to its end.
	readerDone chan struct{}
	// finished is closed when the instance's final state is recorded.
	finished chan struct{}
}

func newRunning(vm vmm.VM) *running {
	return &running{
		vm:         vm,
		hello:      make(chan wire.Hello, 1),
		events:     make(chan wire.Event, 8),
		exited:     make(chan struct{}),
		readerDone: make(chan struct{}),
		finished:   make(chan struct{}),
	}
}

func (r *running) send(typ byte, payload []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.ctl == nil {
		return errdefs.Unavailable("control channel not connected")
	}
	_ = r.ctl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return wire.WriteFrame(r.ctl, typ, payload)
}

func (r *running) signal(sig syscall.Signal) error {
	return r.send(wire.TypeSignal, []byte{byte(sig)})
}

func (r *running) kill() {
	r.mu.Lock()
	r.killed = true
	r.mu.Unlock()
	_ = r.vm.Kill()
}

func (r *running) detach() {
	r.mu.Lock()
	r.detached = true
	r.mu.Unlock()
	r.closeChannels()
	_ = r.vm.Close()
}

// startAgent sets up the host side of the guest agent: at the first
// request it asks flick-init to start the agent, then stays connected.
func (r *running) startAgent(log *slog.Logger) {
	r.agent = agent.New(r.vm.DialAgent, func() error { return r.send(wire.TypeAgentStart, nil) }, log)
}

func (r *running) closeChannels() {
	if r.ctl != nil {
		r.ctl.Close()
	}
	if r.agent != nil {
		r.agent.Close()
	}
}

// readFrames runs for the life of the agent connection: output goes to the
// log, events to the boot sequence and the exit record.
func (m *Manager) readFrames(r *running, logs *logWriter) {
	defer close(r.readerDone)
	for {
		f, err := wire.ReadFrame(r.ctl)
		if err != nil {
			return
		}
		switch f.Type {
		case wire.TypeHello:
			var h wire.Hello
			_ = json.Unmarshal(f.Payload, &h)
			select {
			case r.hello <- h:
			default:
			}
		case wire.TypeStdout:
			logs.write("stdout", f.Payload)
		case wire.TypeStderr:
			logs.write("stderr", f.Payload)
		case wire.TypeEvent:
			var ev wire.Event
			if json.Unmarshal(f.Payload, &ev) != nil {
				continue
			}
			if ev.Kind == wire.EventAgentExited {
				m.log.Warn("guest agent died; PID 1 restarts it", "exit_code", ev.ExitCode, "signal", ev.Signal)
				if r.agent != nil {
					r.agent.Reset()
				}
				continue
			}
			select {
			case r.events <- ev:
			default:
			}
			if ev.Kind == wire.EventExited || ev.Kind == wire.EventFailed {
				r.mu.Lock()
				r.exit = &ev
				r.mu.Unlock()
				r.exitOnce.Do(func() { close(r.exited) })
				// The guest powers off after the Ack: the event is
				// recorded before it is acknowledged.
				_ = r.send(wire.TypeAck, nil)
			}
		}
	}
}

// Start boots an instance and returns once its app is running, with every
// boot phase recorded. The boot belongs to the daemon: it goes on, or is
// rolled back, whatever happens to the caller's request.
func (m *Manager) Start(ctx context.Context, ref string) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	return m.startLocked(context.WithoutCancel(ctx), in)
}

func (m *Manager) startLocked(ctx context.Context, in *inst) (api.Instance, error) {
	in.mu.Lock()
	hot := in.run
	standby := in.rec.State == api.StateStandby
	in.mu.Unlock()
	if hot != nil && standby {
		if hot.takeHot() {
			return m.resumeHot(ctx, in, hot)
		}
		// Its time is up and its VMM is being ended: resume from the
		// save once the instance stands by without it.
		<-hot.finished
	}
	t0 := time.Now()
	in.mu.Lock()
	if in.rec.active() {
		in.mu.Unlock()
		return m.view(in), errdefs.Conflict("instance %s is already %s", in.rec.Name, in.rec.State)
	}
	if in.rec.State == "removed" {
		in.mu.Unlock()
		return api.Instance{}, errdefs.NotFound("no such instance: %s", in.rec.Name)
	}
	in.rec.State = api.StateStarting
	in.rec.Error = ""
	in.rec.ExitCode = nil
	in.rec.Finished = nil
	in.rec.KilledByHost = false
	in.rec.Phases = map[string]float64{}
	in.rec.BootMS = 0
	rec := in.rec
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()

	phases := map[string]float64{}
	mark := func(name string, since time.Time) time.Time {
		now := time.Now()
		phases[name] = float64(now.Sub(since).Microseconds()) / 1000
		return now
	}
	netName := firstNonEmpty(rec.Config.Network, api.NetworkDefault)
	useNet := m.cfg.Networks != nil && netName != api.NetworkNone
	attached := false
	fail := func(err error) (api.Instance, error) {
		if attached {
			m.cfg.Networks.Detach(rec.ID)
		}
		in.mu.Lock()
		in.rec.State = api.StateFailed
		in.rec.Error = err.Error()
		now := time.Now().UTC()
		in.rec.Finished = &now
		in.rec.Phases = phases
		in.rec.Handle = nil
		m.persistLocked(in)
		in.notifyLocked()
		in.mu.Unlock()
		_ = os.RemoveAll(rec.RunDir)
		return m.view(in), err
	}

	// Phase queue: a start waits for one of the boot slots, so that a burst
	// of starts shares the host's CPUs instead of thrashing them until the
	// boot timeout. Recorded only when it waited.
	t := t0
	release, err := m.bootSlot(ctx)
	if err != nil {
		return fail(err)
	}
	defer release()
	if time.Since(t0) > time.Millisecond {
		t = mark(api.PhaseQueue, t0)
	}

	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()

	// Phase image: the digest and config the instance was created from.
	img, err := m.cfg.Images.Resolve(ctx, rec.ImageID)
	if err != nil {
		return fail(fmt.Errorf("image %s: %w", rec.Image, err))
	}
	t = mark(api.PhaseImage, t)

	// Phase disk: the shared root disk and this instance's writable layer.
	rootDisk, fstype, err := m.cfg.Images.RootDisk(ctx, img.Digest)
	if err != nil {
		return fail(fmt.Errorf("root disk of %s: %w", rec.Image, err))
	}
	// The writable layer's disk is made below, unless a zygote (which
	// brings its own) starts the instance.
	dataDisk := filepath.Join(rec.Dir, "data.ext4")
	args, err := guestArgs(img.Config, rec.Config)
	if err != nil {
		return fail(err)
	}
	gc := wire.Config{
		ID: rec.ID, Hostname: rec.Name,
		Args: args, Env: wire.MergeEnv(img.Config.Env, rec.Config.Env),
		WorkingDir: firstNonEmpty(rec.Config.WorkingDir, img.Config.WorkingDir),
		User:       firstNonEmpty(rec.Config.User, img.Config.User),
		RootDevice: "root", RootFSType: fstype, DataDevice: "data",
		WritableLayer: firstNonEmpty(rec.Config.WritableLayer, wire.LayerDisk),
		NoAgent:       rec.Config.NoAgent,
	}
	var ready *wire.ReadyCheck
	if spec := firstNonEmpty(rec.Config.Ready, img.Config.Ready); spec != "" && !rec.Config.NoAgent {
		check, err := ParseReady(spec, rec.Config.ReadyTimeout)
		if err != nil {
			return fail(fmt.Errorf("image %s: label %s: %w", rec.Image, api.ReadyLabel, err))
		}
		ready = &check
	}
	if err := os.MkdirAll(rec.RunDir, 0o750); err != nil {
		return fail(err)
	}
	accel := vmm.PickAccel(rec.Config.Accel)
	spec := m.vmSpec(rec.ID, rec.Config, accel, rootDisk, dataDisk)
	kernel := spec.Kernel
	if _, err := os.Stat(kernel); err != nil {
		return fail(errdefs.Unavailable("guest kernel %s not found: build it with make kernel, or give flickd --kernel", kernel))
	}
	// A boot snapshot of this image to restore, or one to take on this
	// boot.
	var restore *bootSnapshot
	snapKey := ""
	snapIn := snapInputs{Kernel: kernel, Digest: img.Digest, Layer: gc.WritableLayer, MemMiB: rec.Config.MemoryMiB, CPUs: rec.Config.CPUs, Accel: accel, NIC: useNet}
	if m.cfg.Snapshots && !rec.Config.ColdBoot {
		if k, err := m.snapKey(snapIn); err == nil {
			snapKey = k
			restore, _ = m.lookupSnapshot(k)
		}
	}
	cfgPath := filepath.Join(rec.RunDir, "config.json")
	writeConfig := func(c wire.Config) error {
		b, _ := json.Marshal(c)
		return os.WriteFile(cfgPath, b, 0o600)
	}
	t = mark(api.PhaseDisk, t)

	// Phase network: the instance's address and published ports. Its TAP
	// is made just before the VMM, unless a zygote brings one.
	var nic *vmm.NIC
	var tap *os.File
	tapName := ""
	defer func() {
		if tap != nil {
			tap.Close()
		}
	}()
	// A zygote of the snapshot is the fastest start. A layer in memory
	// can always use one; a disk layer only on the instance's first start,
	// when the zygote's data disk, a fresh one like the instance's would
	// be, becomes the instance's. One that is claimed but never handed to
	// a boot is ended. (An instance standing by resumes from its own
	// state, a clone from its parent's: neither uses a zygote.)
	in.mu.Lock()
	cloning := in.clone != nil
	in.mu.Unlock()
	// Whether a VM made ahead (a zygote, or a spare VMM below) can serve
	// this start.
	madeAhead := (gc.WritableLayer == wire.LayerMemory || !fileExists(dataDisk)) && !cloning && !fileExists(in.standbyPath())
	var zyg *zygote
	if restore != nil && madeAhead {
		zyg = m.pool.claim(snapKey)
	}
	zygHanded := false
	defer func() {
		if zyg != nil && !zygHanded {
			go zyg.discard()
		}
	}()

	if useNet {
		req := rec.attachRequest()
		if zyg != nil {
			// The address held for the zygote, unless the instance
			// has one of its own from an earlier start.
			req.Reservation = zyg.id
		}
		att, err := m.cfg.Networks.Attach(ctx, req)
		if err != nil {
			return fail(err)
		}
		attached = true
		gc.Net = att.Guest()
		nic = &vmm.NIC{MAC: att.MAC}
		in.mu.Lock()
		in.rec.LastIP = att.IP
		in.mu.Unlock()
		t = mark(api.PhaseNetwork, t)
	}

	spec.Dir, spec.GuestConfig, spec.ConsoleLog, spec.NIC = rec.RunDir, cfgPath, in.consolePath(), nic
	// A cold boot that takes no snapshot starts in a spare VMM of its
	// shape when there is one (see spares.go), and has the next one
	// spawned once its guest runs: not during the claim, whose QMP
	// commands it would slow, and on another CPU than the guest's.
	var spare *zygote
	var refill func()
	spareHanded := false
	defer func() {
		if spare != nil && !spareHanded {
			go spare.discard()
		}
	}()
	if restore == nil && snapKey == "" && m.cfg.SpareVMMs > 0 && madeAhead {
		key := spareKey(spec, gc.WritableLayer, fstype)
		spare = m.spares.claim(key)
		refill = func() { m.fillSpares(key, spec, gc.WritableLayer, fstype) }
	}
	b := bootPlan{spec: spec, config: gc, snapIn: snapIn, refill: refill}
	// An instance standing by resumes from its own saved state; a clone
	// starts from its parent's.
	resume := ""
	if st := in.standbyPath(); fileExists(st) {
		resume, restore, snapKey = st, nil, ""
	}
	in.mu.Lock()
	clone := in.clone
	in.clone = nil
	in.mu.Unlock()
	if clone != nil {
		resume, restore, snapKey = "", nil, ""
	}
	var r *running
	var logs *logWriter
	for {
		b.restore, b.snapKey, b.zygote, b.spare, b.resume, b.clone = restore, "", zyg, spare, resume, clone
		if err := os.MkdirAll(rec.RunDir, 0o750); err != nil {
			return fail(err)
		}
		if zyg == nil && spare == nil {
			// Counted in the disk phase, not in the next one.
			td := time.Now()
			if _, err := os.Stat(dataDisk); errors.Is(err, os.ErrNotExist) {
				if err := fsutil.CopySparse(m.template, dataDisk, false); err != nil {
					return fail(fmt.Errorf("writable layer: %w", err))
				}
			}
			took := time.Since(td)
			phases[api.PhaseDisk] += ms(took)
			t = t.Add(took)
		}
		switch {
		case clone != nil:
			if err := writeConfig(wire.Config{AwaitConfig: true}); err != nil {
				return fail(err)
			}
			b.spec.GuestConfig = cfgPath
			b.spec.Restore = clone
		case resume != "":
			// The boot config of the VM's first start is gone with its
			// run directory; fw_cfg needs the item, not its bytes.
			if err := writeConfig(wire.Config{AwaitConfig: true}); err != nil {
				return fail(err)
			}
			b.spec.GuestConfig = cfgPath
			b.spec.Restore = &vmm.Snapshot{State: resume}
		case restore != nil:
			b.spec.GuestConfig = restore.boot
			b.spec.Restore = &restore.snap
		case snapKey != "":
			// The first boot of this image: it waits for its config, so
			// that the daemon can save it first.
			b.snapKey = snapKey
			b.spec.GuestConfig = cfgPath
			b.spec.Restore = nil
			// The image's own command, user, working directory and
			// PATH let the guest read its app into the page cache
			// before the save. Never this instance's: every start
			// from the snapshot can read this config (fw_cfg).
			app := imageOnly(gc, img.Config)
			boot := wire.Config{
				AwaitConfig:   true,
				RootDevice:    gc.RootDevice,
				RootFSType:    gc.RootFSType,
				DataDevice:    gc.DataDevice,
				WritableLayer: gc.WritableLayer,
				Args:          app.Args,
				Env:           app.Env,
				User:          app.User,
				WorkingDir:    app.WorkingDir,
			}
			if err := writeConfig(boot); err != nil {
				return fail(err)
			}
		default:
			b.spec.GuestConfig = cfgPath
			b.spec.Restore = nil
			if err := writeConfig(gc); err != nil {
				return fail(err)
			}
		}
		if useNet {
			name := ""
			switch {
			case zyg != nil:
				name = zyg.tap
			case spare != nil:
				name = spare.tap
			default:
				if tap == nil {
					// Kept open across a retry, so the TAP stays.
					f, n, err := m.cfg.Networks.OpenTAP(rec.ID)
					if err != nil {
						return fail(err)
					}
					tap, tapName = f, n
				}
				name = tapName
				spec := *nic
				spec.TAP = tap
				b.spec.NIC = &spec
			}
			if err := m.cfg.Networks.Plug(rec.ID, name); err != nil {
				return fail(err)
			}
		}
		var err error
		zygHanded, spareHanded = zyg != nil, spare != nil
		r, logs, t, err = m.boot(ctx, in, b, t, mark)
		if err == nil {
			if tap != nil {
				// The VMM holds the TAP now: it goes with the VMM.
				tap.Close()
				tap = nil
			}
			break
		}
		if resume != "" {
			return fail(fmt.Errorf("resume: %w", err))
		}
		if clone != nil {
			return fail(fmt.Errorf("clone: %w", err))
		}
		if zyg != nil && ctx.Err() == nil && !errors.Is(err, errGuestFailed) {
			// A zygote that died waiting: restore a VM of our own.
			m.log.Warn("zygote failed; restoring instead", "vm", rec.ID, "err", err)
			zyg = nil
			for _, p := range []string{api.PhaseRestore, api.PhaseInit, api.PhaseApp} {
				delete(phases, p)
			}
			continue
		}
		if spare != nil && ctx.Err() == nil && !errors.Is(err, errGuestFailed) {
			m.log.Warn("spare VMM failed; spawning one", "vm", rec.ID, "err", err)
			spare = nil
			for _, p := range []string{api.PhaseVMM, api.PhaseKernel, api.PhaseInit, api.PhaseApp} {
				delete(phases, p)
			}
			continue
		}
		if restore != nil && ctx.Err() == nil && !errors.Is(err, errGuestFailed) {
			// A snapshot that does not come back is not used again;
			// this start boots cold and takes a new one.
			m.discardSnapshot(restore, err)
			restore = nil
			for _, p := range []string{api.PhaseVMM, api.PhaseRestore, api.PhaseInit, api.PhaseApp} {
				delete(phases, p)
			}
			continue
		}
		return fail(err)
	}
	vm := r.vm
	consoleLog := in.consolePath()
	rollback := func(err error) (api.Instance, error) {
		r.kill()
		<-vm.Done()
		r.closeChannels()
		return fail(fmt.Errorf("%w; console: %s", err, vmm.LastLines(readFileString(consoleLog), 8)))
	}

	if ready != nil && b.resume == "" && b.clone == nil {
		// A resumed app was ready when it was saved, and is again.
		rctx, cancel := context.WithTimeout(context.Background(), time.Duration(ready.TimeoutMS)*time.Millisecond+10*time.Second)
		err := r.agent.Ready(rctx, *ready)
		cancel()
		if err != nil {
			logs.close()
			return rollback(fmt.Errorf("readiness check %s: %w", firstNonEmpty(rec.Config.Ready, img.Config.Ready), err))
		}
		mark(api.PhaseReady, t)
	}

	now := time.Now().UTC()
	in.mu.Lock()
	in.run = r
	in.rec.StartMode = api.StartCold
	in.rec.SpareVMM = b.spare != nil
	switch {
	case b.resume != "":
		in.rec.StartMode = api.StartResume
		m.discardSave(in)
	case b.clone != nil:
		in.rec.StartMode = api.StartFork
	case b.restore != nil:
		in.rec.StartMode = api.StartSnapshot
	}
	in.rec.State = api.StateRunning
	in.rec.Started = &now
	in.rec.Phases = phases
	in.rec.BootMS = float64(time.Since(t0).Microseconds()) / 1000
	bootMS := in.rec.BootMS
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()
	m.log.Info("started", "vm", rec.ID, "name", rec.Name, "boot_ms", bootMS, "accel", accel)

	m.wg.Add(1)
	go m.monitor(in, r, logs)
	m.watchIdle(in, r)
	if snapKey != "" {
		// The snapshot is in use (restored, or saved by this start): keep
		// zygotes of it ready. It was checked on the way in; a zygote that
		// fails to restore is dropped by fillPool.
		s := b.restore
		if s == nil {
			s = m.snapshotFiles(snapKey)
		}
		if fileExists(filepath.Join(s.dir, "meta.json")) {
			spec := b.spec
			spec.Restore, spec.GuestConfig, spec.KeepRAM = &s.snap, s.boot, false
			if nic != nil {
				spec.NIC = &vmm.NIC{MAC: nic.MAC} // each zygote makes its own TAP
			}
			size := m.cfg.PoolSize
			if img.Config.Pool != nil {
				size = *img.Config.Pool
			}
			m.fillPool(snapKey, size, spec, imageOnly(gc, img.Config), rec.Config.Network)
		}
	}
	return m.view(in), nil
}

// monitor waits for the VMM to exit and records how the app ended.
func (m *Manager) monitor(in *inst, r *running, logs *logWriter) {
	defer m.wg.Done()
	select {
	case <-r.vm.Done():
	case <-m.closing:
		return
	case <-r.exited:
		// After the app's exit the guest powers off by itself; one that
		// does not within a grace period is ended.
		select {
		case <-r.vm.Done():
		case <-m.closing:
			return
		case <-time.After(10 * time.Second):
			r.kill()
			<-r.vm.Done()
		}
	}
	r.mu.Lock()
	detached := r.detached
	r.mu.Unlock()
	if detached {
		return
	}
	m.finish(in, r, logs)
}

// finish records the final state of an instance whose VMM has exited.
func (m *Manager) finish(in *inst, r *running, logs *logWriter) {
	if r.ctl != nil {
		// The guest is gone; let the reader drain what it had sent.
		select {
		case <-r.readerDone:
		case <-time.After(time.Second):
		}
	}
	r.stopHot()
	r.closeChannels()
	logs.close()
	r.mu.Lock()
	exit, killed, standby := r.exit, r.killed, r.standby
	r.mu.Unlock()
	_ = os.RemoveAll(in.rec.RunDir)
	if m.cfg.Networks != nil {
		if standby {
			if err := m.cfg.Networks.Standby(in.rec.ID); err != nil {
				m.log.Warn("network standby", "vm", in.rec.ID, "err", err)
			}
		} else {
			m.cfg.Networks.Detach(in.rec.ID)
		}
	}
	if standby {
		in.mu.Lock()
		in.run = nil
		in.rec.Handle = nil
		in.rec.State = api.StateStandby
		m.persistLocked(in)
		in.notifyLocked()
		in.mu.Unlock()
		close(r.finished)
		m.log.Info("standing by", "vm", in.rec.ID, "name", in.rec.Name)
		return
	}
	now := time.Now().UTC()
	in.mu.Lock()
	in.run = nil
	in.rec.Handle = nil
	in.rec.Finished = &now
	in.rec.KilledByHost = killed
	in.rec.State = api.StateExited
	switch {
	case exit != nil && exit.Kind == wire.EventFailed:
		in.rec.State = api.StateFailed
		in.rec.Error = exit.Message
	case exit != nil:
		code := exit.ExitCode
		in.rec.ExitCode = &code
	case killed:
		code := 128 + int(syscall.SIGKILL)
		in.rec.ExitCode = &code
	default:
		in.rec.State = api.StateFailed
		in.rec.Error = "vmm exited without the app exiting: " + vmm.LastLines(readFileString(in.consolePath()), 8)
	}
	auto, state := in.rec.Config.AutoRemove, in.rec.State
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()
	close(r.finished)
	m.log.Info("exited", "vm", in.rec.ID, "name", in.rec.Name, "state", state)
	if auto {
		go func() {
			in.op.Lock()
			defer in.op.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := m.removeLocked(ctx, in, false); err != nil {
				m.log.Error("auto-remove", "vm", in.rec.ID, "err", err)
			}
		}()
	}
}

// reattach finds the VM of an instance that was active when the last
// daemon stopped; in is not yet shared.
func (m *Manager) reattach(ctx context.Context, in *inst) {
	rec := &in.rec
	end := func(state, reason string) {
		rec.State = state
		rec.Error = reason
		if state != api.StateStandby {
			now := time.Now().UTC()
			rec.Finished = &now
		}
		rec.Handle = nil
		m.persistLocked(in)
		_ = os.RemoveAll(rec.RunDir)
	}
	standby := in.standbyPath()
	_ = os.Remove(standby + ".tmp")   // a save the last daemon did not finish
	_ = os.Remove(standby + ".stale") // a save a resume had done with
	saved := fileExists(standby)
	if rec.Handle == nil || rec.State == api.StateStarting {
		// Its boot sequence died with the last daemon; a VMM that is
		// still there is ended here, or by killOrphans if QMP is gone.
		if rec.Handle != nil {
			if vm, err := m.cfg.Driver.Attach(ctx, *rec.Handle); err == nil {
				_ = vm.Kill()
				<-vm.Done()
			}
		}
		if saved {
			// A resume that did not finish: the saved state is whole.
			end(api.StateStandby, "")
			m.log.Info("resume interrupted by flickd's end; standing by again", "vm", rec.ID, "name", rec.Name)
			return
		}
		end(api.StateFailed, "flickd stopped while the instance was starting")
		return
	}
	vm, err := m.cfg.Driver.Attach(ctx, *rec.Handle)
	if err != nil {
		if saved {
			// The standby was saved and its VMM ended; only the record
			// was not written.
			end(api.StateStandby, "")
			return
		}
		end(api.StateExited, "vmm exited while flickd was down")
		return
	}
	if saved {
		// The last daemon saved the VM for a standby and ended before
		// the VMM: finish the standby.
		_ = vm.Kill()
		<-vm.Done()
		end(api.StateStandby, "")
		m.log.Info("finished a standby that flickd's end interrupted", "vm", rec.ID, "name", rec.Name)
		return
	}
	// A save for a standby or a fork that the last daemon did not finish
	// leaves the VM paused; running it is harmless otherwise.
	if err := vm.Resume(ctx); err != nil {
		m.log.Warn("reattach: continue the VM", "vm", rec.ID, "err", err)
	}
	r := newRunning(vm)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := vm.DialControl(dctx)
	cancel()
	if err != nil {
		m.log.Error("reattach control channel", "vm", rec.ID, "err", err)
	} else {
		r.ctl = conn
	}
	if !rec.Config.NoAgent {
		r.startAgent(m.log.With("vm", rec.ID))
	}
	logs, err := openLog(in.logPath(), in.notify)
	if err != nil {
		m.log.Error("reattach log", "vm", rec.ID, "err", err)
		return
	}
	in.run = r
	if r.ctl != nil {
		go m.readFrames(r, logs)
	} else {
		close(r.readerDone)
	}
	m.log.Info("re-attached", "vm", rec.ID, "name", rec.Name, "pid", rec.Handle.PID)
	m.wg.Add(1)
	go m.monitor(in, r, logs)
	m.watchIdle(in, r)
}

// Stop sends the stop signal, waits up to timeout for the app to exit,
// then kills it.
func (m *Manager) Stop(ctx context.Context, ref string, timeout time.Duration) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	return m.stopLocked(ctx, in, timeout)
}

func (m *Manager) stopLocked(ctx context.Context, in *inst, timeout time.Duration) (api.Instance, error) {
	in.mu.Lock()
	r := in.run
	if r == nil {
		in.mu.Unlock()
		return m.view(in), nil
	}
	if r.isHot() {
		// Standing by with its VMM paused: ending the VMM is all a stop
		// does; the instance stands by from its save.
		in.mu.Unlock()
		if r.endHot() {
			<-r.finished
		}
		return m.view(in), nil
	}
	if timeout < 0 {
		timeout = time.Duration(in.rec.Config.StopTimeout) * time.Second
	}
	sigName := firstNonEmpty(in.rec.Config.StopSignal, in.rec.ImageConfig.StopSignal, "SIGTERM")
	in.rec.State = api.StateStopping
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()

	sig, err := ParseSignal(sigName)
	if err != nil {
		sig = syscall.SIGTERM
	}
	if err := r.signal(sig); err != nil {
		r.kill()
	}
	select {
	case <-r.finished:
		return m.view(in), nil
	case <-time.After(timeout):
	case <-ctx.Done():
		return m.view(in), ctx.Err()
	}
	if err := r.signal(syscall.SIGKILL); err != nil {
		r.kill()
	}
	select {
	case <-r.finished:
		return m.view(in), nil
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return m.view(in), ctx.Err()
	}
	r.kill()
	select {
	case <-r.finished:
	case <-ctx.Done():
		return m.view(in), ctx.Err()
	}
	return m.view(in), nil
}

// Kill sends a signal to the app.
func (m *Manager) Kill(ctx context.Context, ref string, sigName string) (api.Instance, error) {
	sig, err := ParseSignal(firstNonEmpty(sigName, "KILL"))
	if err != nil {
		return api.Instance{}, err
	}
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.mu.Lock()
	r := in.run
	name, state := in.rec.Name, in.rec.State
	in.mu.Unlock()
	if r == nil || state == api.StateStandby {
		return api.Instance{}, errdefs.Conflict("instance %s is not running", name)
	}
	if err := r.signal(sig); err != nil {
		if sig != syscall.SIGKILL {
			return api.Instance{}, fmt.Errorf("signal %s: %w", name, err)
		}
		r.kill()
	}
	return m.view(in), nil
}

// Restart stops and starts an instance.
func (m *Manager) Restart(ctx context.Context, ref string, timeout time.Duration) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	if _, err := m.stopLocked(ctx, in, timeout); err != nil {
		return api.Instance{}, err
	}
	return m.startLocked(context.WithoutCancel(ctx), in)
}

// Wait blocks until the instance is no longer created, starting, running
// or stopping, and returns how it ended.
func (m *Manager) Wait(ctx context.Context, ref string) (api.WaitResponse, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.WaitResponse{}, err
	}
	for {
		in.mu.Lock()
		rec, changed := in.rec, in.changed
		in.mu.Unlock()
		if !rec.active() && rec.State != api.StateCreated {
			resp := api.WaitResponse{ExitCode: -1, Error: rec.Error}
			if rec.ExitCode != nil {
				resp.ExitCode = *rec.ExitCode
			}
			return resp, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return api.WaitResponse{}, ctx.Err()
		}
	}
}

// Console returns the last n lines of the kernel and VMM console (all when
// n < 0).
func (m *Manager) Console(_ context.Context, ref string, n int) (string, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return "", err
	}
	s := readFileString(in.consolePath())
	if n >= 0 {
		lines := strings.SplitAfter(s, "\n")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		s = strings.Join(lines, "")
	}
	return s, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func readFileString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// imageOnly is the guest config c with what belongs to its instance (id,
// name, command, env, user, working directory) replaced by its image's: of
// the env only the PATH. Boot snapshots and zygotes are given their config
// so, because whatever a guest is given stays in its memory (and a boot
// snapshot's in its fw_cfg item), which every later start inherits.
func imageOnly(c wire.Config, img api.ImageConfig) wire.Config {
	c.ID, c.Hostname = "", ""
	c.Args, _ = guestArgs(img, api.InstanceConfig{})
	c.Env = nil
	for _, e := range img.Env {
		if strings.HasPrefix(e, "PATH=") {
			c.Env = []string{e}
		}
	}
	c.User, c.WorkingDir = img.User, img.WorkingDir
	return c
}

// guestArgs resolves the command line as Docker does: --entrypoint
// replaces the image's entrypoint and drops its cmd; a cmd replaces the
// image's cmd.
func guestArgs(img api.ImageConfig, c api.InstanceConfig) ([]string, error) {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(c.Entrypoint) > 0 {
		entry, cmd = c.Entrypoint, nil
	}
	if len(c.Cmd) > 0 {
		cmd = c.Cmd
	}
	args := append(append([]string(nil), entry...), cmd...)
	if len(args) == 0 || args[0] == "" {
		return nil, errdefs.InvalidArgument("no command to run: the image has no entrypoint or cmd; give one after the image name")
	}
	return args, nil
}

// errGuestFailed marks a boot that failed because of the app or its
// config, which a cold boot would not fix.
var errGuestFailed = errors.New("guest failed")

// bootPlan is how one start brings its VM up.
type bootPlan struct {
	spec    vmm.Spec
	config  wire.Config   // the instance's config
	restore *bootSnapshot // restore this instead of booting
	snapKey string        // save a boot snapshot under this key
	snapIn  snapInputs    // the snapshot key's inputs from this start, the image's digest among them
	zygote  *zygote       // a VM already restored from restore, to claim
	spare   *zygote       // a VMM spawned for a cold boot of this shape, to claim
	refill  func()        // keeps spares of this shape; called once the VM runs
	resume  string        // the instance's standby state to resume from
	clone   *vmm.Snapshot // a fork snapshot of a running VM to restore, as a clone
}

// kernel is the guest kernel of an instance with config c: its own if it
// names one, else the daemon's for its number of vCPUs.
func (m *Manager) kernel(c api.InstanceConfig) string {
	switch {
	case c.Kernel != "":
		return c.Kernel
	case c.CPUs > 1 && m.cfg.KernelSMP != "":
		return m.cfg.KernelSMP
	}
	return m.cfg.Kernel
}

// vmSpec is the VM of an instance with config c: its kernel and command
// line, and its disks in the order that snapshots rely on. Dir,
// GuestConfig, ConsoleLog and NIC are the caller's to fill in.
func (m *Manager) vmSpec(id string, c api.InstanceConfig, accel, rootDisk, dataDisk string) vmm.Spec {
	return vmm.Spec{
		ID: id, Kernel: m.kernel(c), Initrd: m.cfg.Initrd, Cmdline: m.cfg.Cmdline(accel),
		CPUs: c.CPUs, MemoryMiB: c.MemoryMiB, Accel: accel,
		Disks: []vmm.Disk{
			{Path: rootDisk, Serial: "root", ReadOnly: true},
			{Path: dataDisk, Serial: "data"},
		},
	}
}

// boot brings up the VM of b until its app runs, marking the phases: vmm,
// then kernel and init for a boot (with snapshot when it saves one) or
// restore and init for a restore, then app. On failure nothing of the VM
// is left.
func (m *Manager) boot(ctx context.Context, in *inst, b bootPlan, t time.Time, mark func(string, time.Time) time.Time) (*running, *logWriter, time.Time, error) {
	rec := in.rec
	b.spec.KeepRAM = b.snapKey != ""
	var vm vmm.VM
	switch {
	case b.zygote != nil:
		if err := adopt(b.zygote, b); err != nil {
			return nil, nil, t, fmt.Errorf("the zygote: %w", err)
		}
		vm = b.zygote.vm
	case b.spare != nil:
		if err := adopt(b.spare, b); err != nil {
			return nil, nil, t, fmt.Errorf("the spare VMM: %w", err)
		}
		vm = b.spare.vm
		if !b.spare.hasRoot(b.spec.Disks[0].Path) {
			if err := vm.ReplaceDisk(ctx, 0, b.spec.Disks[0]); err != nil {
				b.spare.discard()
				return nil, nil, t, err
			}
		}
	default:
		_ = os.Truncate(b.spec.ConsoleLog, 0)
		var err error
		if vm, err = m.cfg.Driver.Start(ctx, b.spec); err != nil {
			return nil, nil, t, err
		}
	}
	if b.restore != nil || b.resume != "" || b.clone != nil {
		t = mark(api.PhaseRestore, t)
	}
	r := newRunning(vm)
	var logs *logWriter
	rollback := func(err error) (*running, *logWriter, time.Time, error) {
		r.kill()
		<-vm.Done()
		r.closeChannels()
		if logs != nil {
			logs.close()
		}
		in.mu.Lock()
		in.rec.Handle = nil
		in.mu.Unlock()
		return nil, nil, t, fmt.Errorf("%w; console: %s", err, vmm.LastLines(readFileString(b.spec.ConsoleLog), 8))
	}
	h := vm.Handle()
	in.mu.Lock()
	in.rec.Handle = &h
	in.rec.Accel = b.spec.Accel
	m.persistLocked(in)
	in.mu.Unlock()
	if b.zygote != nil {
		r.ctl = b.zygote.ctl
	} else {
		conn, err := vm.DialControl(ctx)
		if err != nil {
			return rollback(err)
		}
		r.ctl = conn
	}
	if !rec.Config.NoAgent {
		r.startAgent(m.log.With("vm", rec.ID))
	}
	var err error
	if logs, err = openLog(in.logPath(), in.notify); err != nil {
		return rollback(err)
	}
	go m.readFrames(r, logs)
	if b.zygote == nil {
		if err := vm.Resume(ctx); err != nil {
			return rollback(err)
		}
	}
	if b.refill != nil {
		b.refill()
	}
	if b.spare != nil {
		// The guest reads its config once it has mounted the image:
		// sent now, it is there by then. With neither a clock nor a
		// seed, as in any cold boot's fw_cfg config: the kernel has
		// read the RTC, and its RNG owes nothing to a snapshot.
		payload, _ := json.Marshal(b.config)
		if err := r.send(wire.TypeConfig, payload); err != nil {
			return rollback(fmt.Errorf("send config: %w", err))
		}
	}
	if b.clone != nil {
		// The parent's app runs on in the clone, which needs an
		// identity of its own.
		id := wire.Identity{Hostname: rec.Name, MachineID: newID() + newID(), Net: b.config.Net, TimeNS: time.Now().UnixNano(), Seed: make([]byte, 32)}
		if _, err := rand.Read(id.Seed); err != nil {
			return rollback(err)
		}
		payload, _ := json.Marshal(id)
		if err := r.send(wire.TypeClone, payload); err != nil {
			return rollback(fmt.Errorf("send the clone its identity: %w", err))
		}
		for {
			select {
			case ev := <-r.events:
				if ev.Kind != wire.EventCloned {
					continue
				}
				if ev.Message != "" {
					return rollback(fmt.Errorf("%w: clone identity: %s", errGuestFailed, ev.Message))
				}
				mark(api.PhaseInit, t)
				return r, logs, time.Now(), nil
			case <-vm.Done():
				return rollback(errors.New("vmm exited before the clone took its identity"))
			case <-ctx.Done():
				return rollback(errors.New("the clone did not take its identity in time"))
			}
		}
	}
	if b.resume != "" {
		failpoint.Hit("resume-running")
		// The app has been running all along; only the clock is behind.
		payload, _ := json.Marshal(wire.Clock{TimeNS: time.Now().UnixNano()})
		if err := r.send(wire.TypeClock, payload); err != nil {
			return rollback(fmt.Errorf("set the guest clock: %w", err))
		}
		return r, logs, t, nil
	}
	if b.restore == nil {
		t = mark(api.PhaseVMM, t)
	}

	wait := func(what string) (wire.Event, error) {
		for {
			select {
			case ev := <-r.events:
				return ev, nil
			case <-vm.Done():
				// The guest's last words may have come just before it went.
				select {
				case ev := <-r.events:
					return ev, nil
				default:
				}
				return wire.Event{}, fmt.Errorf("vmm exited while waiting for %s", what)
			case <-ctx.Done():
				return wire.Event{}, fmt.Errorf("guest did not start within %s (waiting for %s)", m.cfg.BootTimeout, what)
			}
		}
	}
	sendConfig := func() error {
		c := b.config
		c.TimeNS = time.Now().UnixNano()
		c.Seed = make([]byte, 32)
		if _, err := rand.Read(c.Seed); err != nil {
			return err
		}
		payload, _ := json.Marshal(c)
		return r.send(wire.TypeConfig, payload)
	}
	if b.restore == nil {
		select {
		case <-r.hello:
		case <-vm.Done():
			select {
			case <-r.hello:
			default:
				return rollback(errors.New("vmm exited before flick-init started"))
			}
		case <-ctx.Done():
			return rollback(fmt.Errorf("guest did not boot within %s (no word from flick-init)", m.cfg.BootTimeout))
		}
		t = mark(api.PhaseKernel, t)
		if b.snapKey != "" {
			// flick-init waits for its config: save the VM as it is.
			if err := m.saveSnapshot(ctx, vm, b); err != nil {
				m.log.Warn("boot snapshot not saved", "vm", rec.ID, "err", err)
			}
			if err := vm.Resume(ctx); err != nil {
				return rollback(err)
			}
			t = mark(api.PhaseSnapshot, t)
		}
	}
	if b.restore != nil || b.snapKey != "" {
		if err := sendConfig(); err != nil {
			return rollback(fmt.Errorf("send config: %w", err))
		}
	}
	ev, err := wait("flick-init to set up")
	if err == nil && ev.Kind == wire.EventFailed {
		err = fmt.Errorf("%w: guest init: %s", errGuestFailed, ev.Message)
	}
	if err != nil {
		return rollback(err)
	}
	t = mark(api.PhaseInit, t)
	if ev.Kind == wire.EventExec {
		ev, err = wait("the app to start")
		if err == nil && ev.Kind == wire.EventFailed {
			err = fmt.Errorf("%w: start app: %s", errGuestFailed, ev.Message)
		}
		if err != nil {
			return rollback(err)
		}
	}
	t = mark(api.PhaseApp, t)
	return r, logs, t, nil
}

// adopt makes z, a VM made ahead of time, b's: z's data disk becomes the
// instance's disk layer, if it has one, and z's run directory and console
// the instance's. On failure z is discarded.
func adopt(z *zygote, b bootPlan) error {
	if b.config.WritableLayer == wire.LayerDisk {
		// Its data disk is the instance's disk layer from now on (QEMU
		// keeps it open); not in the run directory, which goes when the
		// instance stops.
		if err := moveNew(z.data, b.spec.Disks[1].Path); err != nil {
			z.discard()
			return fmt.Errorf("its data disk: %w", err)
		}
	}
	if err := os.RemoveAll(b.spec.Dir); err != nil {
		z.discard()
		return err
	}
	if err := os.Rename(z.dir, b.spec.Dir); err != nil {
		z.discard()
		return err
	}
	z.vm.Moved(b.spec.Dir)
	_ = os.Rename(filepath.Join(b.spec.Dir, filepath.Base(z.console)), b.spec.ConsoleLog)
	return nil
}

// diskFull adds to a failed save that the disk holding dir has less room
// than the save needed, when so: QEMU only sees its writer's pipe break.
func diskFull(err error, dir string, need int64) error {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return err
	}
	if free := int64(st.Bavail) * st.Bsize; free < need {
		return fmt.Errorf("%w: the disk holding %s is full (%d MiB free, up to %d MiB needed)", err, dir, free>>20, need>>20)
	}
	return err
}

// saveSnapshot saves the paused boot of b as its image's boot snapshot.
func (m *Manager) saveSnapshot(ctx context.Context, vm vmm.VM, b bootPlan) error {
	tmp, snap, err := m.newSnapshotDir(b.snapKey)
	if err != nil {
		return err
	}
	if err := vm.SaveSnapshot(ctx, snap); err != nil {
		_ = os.RemoveAll(tmp)
		return diskFull(err, m.snapDir(), int64(b.spec.MemoryMiB)<<20)
	}
	if err := m.commitSnapshot(tmp, b.snapKey, b.snapIn, b.spec.GuestConfig); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	m.log.Info("boot snapshot saved", "snapshot", b.snapKey, "image", b.snapIn.Digest)
	return nil
}

// moveNew renames from to to, which must not exist yet.
func moveNew(from, to string) error {
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Standby saves a running instance's VM, memory and devices, into its
// directory and ends the VMM: the instance stands by with no CPU and no RAM
// until it is resumed (Resume, or Start). With Config.HotStandby the VMM
// stays, paused, that long first (hot.go). If the save fails (a full disk)
// the instance goes on running.
func (m *Manager) Standby(ctx context.Context, ref string) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	r, state, name := in.run, in.rec.State, in.rec.Name
	in.mu.Unlock()
	if r == nil || state != api.StateRunning {
		return m.view(in), errdefs.Conflict("instance %s is %s, not running: only a running instance can stand by", name, state)
	}
	path := in.standbyPath()
	tmp := path + ".tmp"
	save := func() error {
		if err := r.vm.SaveSnapshot(ctx, vmm.Snapshot{State: tmp}); err != nil {
			return err
		}
		failpoint.Hit("standby-written")
		f, err := os.Open(tmp)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	if err := save(); err != nil {
		_ = os.Remove(tmp)
		err = diskFull(err, filepath.Dir(path), int64(in.rec.Config.MemoryMiB)<<20)
		if rerr := r.vm.Resume(context.WithoutCancel(ctx)); rerr != nil {
			return m.view(in), fmt.Errorf("standby %s: %v; and the VM did not resume: %w", name, err, rerr)
		}
		return m.view(in), fmt.Errorf("standby %s: %w (it goes on running)", name, err)
	}
	failpoint.Hit("standby-saved")
	if d := m.cfg.HotStandby; d > 0 {
		if memoryToSpare() {
			m.standByHot(in, r, d)
			return m.view(in), nil
		}
		m.log.Info("host memory is short: the standby ends its VMM at once", "vm", in.rec.ID)
	}
	r.mu.Lock()
	r.standby = true
	r.mu.Unlock()
	_ = r.vm.Kill()
	select {
	case <-r.finished:
	case <-ctx.Done():
		return m.view(in), ctx.Err()
	}
	return m.view(in), nil
}

// Resume starts an instance that stands by from its saved state.
func (m *Manager) Resume(ctx context.Context, ref string) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	return m.resumeLocked(ctx, in)
}

// resumeLocked starts an instance that stands by; in.op held.
func (m *Manager) resumeLocked(ctx context.Context, in *inst) (api.Instance, error) {
	in.mu.Lock()
	state, name := in.rec.State, in.rec.Name
	in.mu.Unlock()
	if state != api.StateStandby {
		return m.view(in), errdefs.Conflict("instance %s is %s, not standing by", name, state)
	}
	return m.startLocked(context.WithoutCancel(ctx), in)
}

// Wake brings an instance standing by back for a connection to one of its
// published ports, and returns once it runs; a running instance needs
// nothing.
func (m *Manager) Wake(ctx context.Context, id string) error {
	in, err := m.lookup(id)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	running := in.rec.State == api.StateRunning
	name := in.rec.Name
	in.mu.Unlock()
	if running {
		return nil // another connection woke it
	}
	t0 := time.Now()
	if _, err := m.resumeLocked(ctx, in); err != nil {
		return err
	}
	m.log.Info("woken by a connection", "vm", id, "name", name, "ms", ms(time.Since(t0)))
	return nil
}

// watchIdle stands an instance with IdleStandby by once its published
// ports have had no connection and no traffic for that long, for as long
// as r runs.
func (m *Manager) watchIdle(in *inst, r *running) {
	in.mu.Lock()
	idle := time.Duration(in.rec.Config.IdleStandby) * time.Second
	id := in.rec.ID
	in.mu.Unlock()
	if idle <= 0 || m.cfg.Networks == nil {
		return
	}
	every := min(max(idle/4, 100*time.Millisecond), time.Second)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-r.finished:
				return
			case <-m.closing:
				return
			case <-tick.C:
			}
			conns, last := m.cfg.Networks.Activity(id)
			in.mu.Lock()
			running := in.run == r && in.rec.State == api.StateRunning
			if in.rec.Started != nil && in.rec.Started.After(last) {
				last = *in.rec.Started
			}
			in.mu.Unlock()
			if !running || conns > 0 || time.Since(last) < idle {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := m.Standby(ctx, id)
			cancel()
			if err != nil {
				m.log.Warn("idle standby", "vm", id, "err", err)
				continue
			}
			m.log.Info("standing by after idling", "vm", id, "idle", idle)
			return
		}
	}()
}

// queueTimeout bounds how long a start waits for a boot slot.
const queueTimeout = 5 * time.Minute

// bootSlot takes one of the daemon's boot slots, waiting for one to free
// up, and returns the function that gives it back.
func (m *Manager) bootSlot(ctx context.Context) (func(), error) {
	select {
	case m.slots <- struct{}{}:
		return func() { <-m.slots }, nil
	default:
	}
	t := time.NewTimer(queueTimeout)
	defer t.Stop()
	select {
	case m.slots <- struct{}{}:
		return func() { <-m.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-m.closing:
		return nil, errdefs.Unavailable("flickd is stopping")
	case <-t.C:
		return nil, errdefs.Unavailable("no boot slot free after %v: the host is busy starting other instances", queueTimeout)
	}
}
