package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/flick-vm/flick/internal/guest/mux"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// agentArg0 is the name PID 1 gives its own binary when it starts it as
// the guest agent.
const agentArg0 = "flick-agent"

// stopping is set once PID 1 has begun to shut down: a dying agent is then
// not restarted.
var stopping atomic.Bool

// The agent starts when both the app has started (agentReady) and the host
// has asked for it (agentWanted), whichever comes last, and once.
var agentStart struct {
	sync.Mutex
	wanted  bool
	start   func()
	started bool
}

// agentReady says how to start the agent, once the app has started.
func agentReady(start func()) {
	agentStart.Lock()
	defer agentStart.Unlock()
	agentStart.start = start
	maybeStartAgentLocked()
}

// agentWanted records the host's request for the agent.
func agentWanted() {
	agentStart.Lock()
	defer agentStart.Unlock()
	agentStart.wanted = true
	maybeStartAgentLocked()
}

func maybeStartAgentLocked() {
	if agentStart.wanted && agentStart.start != nil && !agentStart.started {
		agentStart.started = true
		agentStart.start()
	}
}

// superviseAgent runs in PID 1: it starts the agent and starts it again
// whenever it dies, telling the host each time, with a growing pause when it
// keeps dying young.
func superviseAgent(p *port, cfg wire.Config) {
	if err := writeAgentConfig(cfg); err != nil {
		logf("agent: %v", err)
		return
	}
	pause := 100 * time.Millisecond
	for {
		born := time.Now()
		exit, err := spawnAgent()
		if err != nil {
			logf("agent: %v", err)
			return
		}
		ws := <-exit
		if stopping.Load() {
			return
		}
		code, sig := exitCode(ws)
		logf("agent exited (code %d, signal %d); starting it again", code, sig)
		p.event(wire.Event{Kind: wire.EventAgentExited, ExitCode: code, Signal: sig})
		if time.Since(born) > 10*time.Second {
			pause = 100 * time.Millisecond
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Second)
	}
}

func writeAgentConfig(cfg wire.Config) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(wire.AgentConfigPath), 0o700); err != nil {
		return err
	}
	return os.WriteFile(wire.AgentConfigPath, b, 0o600)
}

func spawnAgent() (<-chan unix.WaitStatus, error) {
	kids.mu.Lock()
	defer kids.mu.Unlock()
	pid, err := forkExec("/init", []string{agentArg0}, &syscall.ProcAttr{
		Env:   []string{"PATH=" + defaultPath},
		Files: []uintptr{uintptr(unix.Stdin), uintptr(unix.Stderr), uintptr(unix.Stderr)},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	return kids.watchLocked(pid), nil
}

// agent is the guest agent process: it lives in the app's root and serves
// the host's requests over the agent port.
type agent struct {
	cfg  wire.Config
	root rootDir
}

// agentMain is the agent process's whole life.
func agentMain() {
	setSlack()
	b, err := os.ReadFile(wire.AgentConfigPath)
	if err != nil {
		logf("agent: %v", err)
		os.Exit(1)
	}
	cfg, err := wire.DecodeConfig(b)
	if err != nil {
		logf("agent: config: %v", err)
		os.Exit(1)
	}
	dev, err := findPort(wire.AgentPortName, portTimeout)
	if err != nil {
		logf("agent: %v", err)
		os.Exit(1)
	}
	// From here on every path is the app's: copies and stats cannot reach
	// flick-init's root, and execs need no chroot of their own.
	if err := unix.Chroot(newRoot); err != nil {
		logf("agent: chroot: %v", err)
		os.Exit(1)
	}
	if err := os.Chdir("/"); err != nil {
		logf("agent: %v", err)
		os.Exit(1)
	}
	root, err := openRootDir("/")
	if err != nil {
		logf("agent: %v", err)
		os.Exit(1)
	}
	a := &agent{cfg: cfg, root: root}
	var tr transport = serialTransport{dev: dev}
	for {
		if err := a.session(tr); err != nil {
			logf("agent: %v", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// transport is how the agent reaches the host: a virtio-serial port here,
// an AF_VSOCK listener where the host has vhost-vsock.
type transport interface {
	// open returns a fresh connection to the host; closing it ends the
	// session.
	open() (io.ReadWriteCloser, error)
}

// serialTransport is a virtio-serial port. Opening it again discards what
// the guest had buffered for the last session.
type serialTransport struct{ dev string }

func (t serialTransport) open() (io.ReadWriteCloser, error) {
	for {
		f, err := os.OpenFile(t.dev, os.O_RDWR, 0)
		if errors.Is(err, unix.EBUSY) {
			// The last session's file is still being closed.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return f, err
	}
}

// session handshakes with the host and serves streams until the session
// ends: the host went away, or the port carried something that is not
// yamux.
func (a *agent) session(tr transport) error {
	conn, err := tr.open()
	if err != nil {
		return err
	}
	r, err := wire.AgentHandshake(conn, rand.Uint64(), 200*time.Millisecond, 50*time.Millisecond, nil)
	if err != nil {
		conn.Close()
		return err
	}
	sess, err := yamux.Server(readWriteCloser{r, conn}, mux.Config())
	if err != nil {
		conn.Close()
		return err
	}
	defer sess.Close()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return nil
		}
		go a.serve(st)
	}
}

type readWriteCloser struct {
	io.Reader
	io.WriteCloser
}

// requestTimeout bounds the wait for a stream's request frame.
const requestTimeout = 10 * time.Second

func (a *agent) serve(st net.Conn) {
	defer st.Close()
	_ = st.SetReadDeadline(time.Now().Add(requestTimeout))
	f, err := wire.ReadFrame(st)
	if err != nil {
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	var req wire.Request
	if f.Type != wire.TypeRequest || json.Unmarshal(f.Payload, &req) != nil {
		sendResult(st, wire.Result{Status: 400, Error: "the first frame of a stream must be a request"})
		return
	}
	switch req.Op {
	case wire.OpExec:
		a.exec(st, req.Exec)
	case wire.OpStat:
		a.stat(st, guestPath(req.Path))
	case wire.OpArchiveGet:
		a.archiveGet(st, req.Path)
	case wire.OpArchivePut:
		a.archivePut(st, req.Path)
	case wire.OpReady:
		a.ready(st, req.Ready)
	default:
		sendResult(st, wire.Result{Status: 400, Error: fmt.Sprintf("unknown operation %q", req.Op)})
	}
}

func sendResult(w io.Writer, r wire.Result) {
	_ = wire.WriteJSON(w, wire.TypeResult, r)
}
