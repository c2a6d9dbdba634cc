package main

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// portTimeout bounds the wait for a virtio-serial port to appear.
const portTimeout = 10 * time.Second

// run is flick-init's whole life; it ends by resetting the machine.
func run(start int64) {
	mountAll(earlyMounts)
	mounted = nil // /dev, /proc and /sys stay to the end
	setSlack()

	// The virtio-serial port shows up some 30 ms after init starts, when
	// QEMU has answered the console driver: the app's root is prepared
	// meanwhile rather than after.
	prepared := make(chan prepResult, 1)
	saveable := make(chan struct{})
	go func() {
		var r prepResult
		r.cfg, r.app, r.err = prepare(saveable)
		prepared <- r
	}()

	p, err := openPort(portTimeout)
	if err != nil {
		logf("%v", err)
		reboot()
	}
	// A boot to snapshot says hello only once it has done all that every
	// start of its image shares, and the host saves the VM as soon as the
	// hello comes: what PID 1 still does after the hello, every restore
	// finishes, with no code translated yet under TCG. So the console
	// line comes first (the save used to catch it half written).
	<-saveable
	go p.readLoop(forwardSignal)
	logLine("hello after " + msString(start) + " ms")
	if err := p.send(wire.TypeHello, wire.AppendHello(nil, wire.Hello{BootNS: start})); err != nil {
		logf("hello: %v", err)
	}

	code, sig, err := runApp(p, <-prepared)
	var ee *execError
	switch {
	case errors.As(err, &ee):
		p.send(wire.TypeStderr, []byte("flick-init: "+ee.msg+"\n"))
		p.event(wire.Event{Kind: wire.EventExited, ExitCode: ee.code})
	case err != nil:
		logf("%v", err)
		p.event(wire.Event{Kind: wire.EventFailed, Message: err.Error()})
	default:
		logf("app exited: code %d", code)
		p.event(wire.Event{Kind: wire.EventExited, ExitCode: code, Signal: sig})
	}

	select {
	case <-p.acks:
	case <-time.After(wire.AckTimeout):
		logf("no ack from the host after %v", wire.AckTimeout)
	}
	shutdown()
}

type prepResult struct {
	cfg wire.Config
	app *launch
	err error
}

// prepare reads the config, builds the app's root and resolves what to
// exec: everything that does not need the host. It closes saveable once the
// VM may be snapshotted: at once for an ordinary boot; for a boot to
// snapshot (AwaitConfig), after the image's root disk, loopback and (for a
// layer in memory) the whole root are up, and before it waits for the
// instance's config.
func prepare(saveable chan<- struct{}) (wire.Config, *launch, error) {
	var once sync.Once
	ready := func() { once.Do(func() { close(saveable) }) }
	defer ready()
	cfg, err := readConfig()
	if err != nil {
		return cfg, nil, err
	}
	// The interface is set up beside the root's mounts, whose disk reads
	// leave the vCPU idle.
	var link chan error
	startLink := func() {
		switch {
		case cfg.Net == nil:
		case sameLink(cfg.Net, rehearsedLink.Load()):
			// A zygote's start on the address held for it: the
			// rehearsal left the link so.
			link = make(chan error, 1)
			link <- nil
		default:
			link = make(chan error, 1)
			go func(n *wire.Net) { link <- linkUp(n) }(cfg.Net)
		}
	}
	if !cfg.AwaitConfig {
		ready()
		startLink()
		if err := setupRoot(cfg); err != nil {
			return cfg, nil, err
		}
		if err := loopbackUp(); err != nil {
			logf("%v", err)
		}
	} else {
		if err := mountLower(cfg); err != nil {
			return cfg, nil, err
		}
		inMemory := cfg.WritableLayer == wire.LayerMemory
		if inMemory {
			if err := mountUpper(cfg); err != nil {
				return cfg, nil, err
			}
		}
		if err := loopbackUp(); err != nil {
			logf("%v", err)
		}
		if !cfg.Spare {
			if err := linkStandIn(); err != nil {
				logf("%v", err)
			}
			warmApp(cfg)
			if inMemory {
				warmEtc()
			}
			// Every start reseeds through /dev/urandom: opened now,
			// the snapshot keeps it open.
			if _, err := urandom(); err != nil {
				logf("open /dev/urandom: %v", err)
			}
		}
		ready()
		layer := cfg.WritableLayer
		m := <-hostConfig
		cfg = m.cfg
		startLink()
		applyHostState(cfg, m.recv)
		if err := checkConfig(cfg); err != nil {
			return cfg, nil, err
		}
		if cfg.WritableLayer != layer {
			return cfg, nil, fmt.Errorf("config: the snapshot has a %s layer, the instance wants %s", layer, cfg.WritableLayer)
		}
		if !inMemory && !rehearsedUpper.Load() {
			if err := mountUpper(cfg); err != nil {
				return cfg, nil, err
			}
		}
	}
	root, err := openRootDir(newRoot)
	if err != nil {
		return cfg, nil, err
	}
	if err := setHostname(root, cfg.Hostname, cfg.Net); err != nil {
		logf("%v", err)
	}
	if link != nil {
		if err := <-link; err != nil {
			return cfg, nil, err
		}
		if err := writeResolvConf(root, cfg.Net); err != nil {
			return cfg, nil, err
		}
	}
	l, err := planApp(root, cfg)
	return cfg, l, err
}

// runApp starts the app in the prepared root and waits for it.
func runApp(p *port, r prepResult) (code, sig int, err error) {
	if r.err != nil {
		return 0, 0, r.err
	}
	a, err := startApp(p, r.app)
	if err != nil {
		return 0, 0, err
	}
	p.event(wire.Event{Kind: wire.EventStarted, PID: a.pid})
	if !r.cfg.NoAgent {
		// After the app, not before, and only once the host asks: the
		// agent is not on the boot path.
		agentReady(func() { go superviseAgent(p, r.cfg) })
	}
	code, sig = a.wait()
	return code, sig, nil
}

// shutdown stops what is left, flushes and unmounts the disks and resets
// the machine, which ends the VM: QEMU runs with -no-reboot and the kernel
// with reboot=t.
func shutdown() {
	stopping.Store(true)
	unix.Kill(-1, unix.SIGKILL)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(-1, &ws, 0, nil)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(200 * time.Millisecond):
	}
	unix.Sync()
	unmountAll()
	reboot()
}

func reboot() {
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
			logf("reboot: %v", err)
		}
		time.Sleep(time.Second)
	}
}
