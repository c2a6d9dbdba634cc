package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// frameWriter serialises frames from several goroutines onto one stream.
type frameWriter struct {
	mu sync.Mutex
	w  net.Conn
}

func (fw *frameWriter) send(typ byte, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_ = fw.w.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return wire.WriteFrame(fw.w, typ, payload)
}

func (fw *frameWriter) exit(s wire.ExitStatus) {
	b, _ := json.Marshal(s)
	_ = fw.send(wire.TypeExit, b)
}

// proc is a process started by exec, with the host ends of its stdio.
type proc struct {
	pid   int
	exit  chan unix.WaitStatus
	stdin *os.File // nil without stdin; the pty master with a TTY
	pty   *os.File // the pty master, or nil
	// outs are closed when the pumps of readers end.
	outs    []chan struct{}
	readers []*os.File
}

// exec runs spec in the app's root and streams its life on st: output as
// frames, then TypeExit. Input frames feed its stdin, resize its terminal
// or signal it. A stream that breaks before the process exits kills it.
func (a *agent) exec(st net.Conn, spec *wire.ExecSpec) {
	fw := &frameWriter{w: st}
	if spec == nil || len(spec.Args) == 0 || spec.Args[0] == "" {
		fw.exit(wire.ExitStatus{ExitCode: 125, Error: "exec: no command"})
		return
	}
	l, err := planApp(a.root, wire.Config{
		Args:       spec.Args,
		Env:        wire.MergeEnv(a.cfg.Env, spec.Env),
		WorkingDir: firstNonEmpty(spec.WorkingDir, a.cfg.WorkingDir),
		User:       firstNonEmpty(spec.User, a.cfg.User),
	})
	if err == nil {
		var p *proc
		if p, err = startProc(l, spec, fw); err == nil {
			a.run(st, fw, spec, p)
			return
		}
	}
	var ee *execError
	if errors.As(err, &ee) {
		_ = fw.send(wire.TypeStderr, []byte("flick: "+ee.msg+"\n"))
		fw.exit(wire.ExitStatus{ExitCode: ee.code, Error: ee.msg})
		return
	}
	_ = fw.send(wire.TypeStderr, []byte("flick: "+err.Error()+"\n"))
	fw.exit(wire.ExitStatus{ExitCode: 126, Error: err.Error()})
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// startProc starts l with pipes, or with a pseudo-terminal when spec asks
// for one, and pumps its output to fw.
func startProc(l *launch, spec *wire.ExecSpec, fw *frameWriter) (*proc, error) {
	var files []*os.File // the child's ends, closed here once it has them
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	p := &proc{exit: make(chan unix.WaitStatus, 1)}
	sys := &syscall.SysProcAttr{Credential: l.cred, Setsid: true}
	env := l.env
	var stdio [3]*os.File
	if spec.TTY {
		master, slave, err := openPTY(spec.Size)
		if err != nil {
			return nil, err
		}
		files = append(files, slave)
		p.pty, p.stdin = master, master
		stdio = [3]*os.File{slave, slave, slave}
		sys.Setctty = true
		sys.Ctty = 0
		if _, ok := envValue(env, "TERM"); !ok {
			env = append(env, "TERM=xterm")
		}
	} else {
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			files = append(files, r)
			p.stdin = w
			stdio[0] = r
		} else {
			null, err := os.Open("/dev/null")
			if err != nil {
				return nil, err
			}
			files = append(files, null)
			stdio[0] = null
		}
		for i := 1; i <= 2; i++ {
			r, w, err := os.Pipe()
			if err != nil {
				p.closeAll()
				return nil, err
			}
			files = append(files, w)
			p.readers = append(p.readers, r)
			done := make(chan struct{})
			p.outs = append(p.outs, done)
			typ := wire.TypeStdout
			if i == 2 {
				typ = wire.TypeStderr
			}
			go pumpFrames(fw, typ, r, done)
		}
		stdio[1], stdio[2] = files[len(files)-2], files[len(files)-1]
	}
	pid, err := forkExec(l.argv0, l.args, &syscall.ProcAttr{
		Dir:   l.dir,
		Env:   env,
		Files: []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd()},
		Sys:   sys,
	})
	if err != nil {
		p.closeAll()
		code := 126
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			code = 127
		}
		return nil, &execError{code, fmt.Sprintf("exec %q: %v", l.args[0], err)}
	}
	p.pid = pid
	if p.pty != nil {
		done := make(chan struct{})
		p.outs = append(p.outs, done)
		go pumpFrames(fw, wire.TypeStdout, p.pty, done)
	}
	go func() {
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.exit <- ws
			return
		}
	}()
	return p, nil
}

func (p *proc) closeAll() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	if p.pty != nil && p.pty != p.stdin {
		p.pty.Close()
	}
	for _, r := range p.readers {
		r.Close()
	}
}

// run feeds the process from st and reports its exit on fw.
func (a *agent) run(st net.Conn, fw *frameWriter, spec *wire.ExecSpec, p *proc) {
	exited := make(chan struct{})
	go func() {
		for {
			f, err := wire.ReadFrame(st)
			if err != nil {
				select {
				case <-exited:
				default:
					// The host is gone; leave nothing running for nobody.
					_ = unix.Kill(-p.pid, unix.SIGKILL)
				}
				return
			}
			switch f.Type {
			case wire.TypeStdin:
				if p.stdin != nil {
					_, _ = p.stdin.Write(f.Payload)
				}
			case wire.TypeStdinClose:
				if p.stdin != nil && p.pty == nil {
					p.stdin.Close()
				}
			case wire.TypeResize:
				var ws wire.WindowSize
				if p.pty != nil && json.Unmarshal(f.Payload, &ws) == nil {
					setWinsize(p.pty, ws)
				}
			case wire.TypeSignal:
				if len(f.Payload) == 1 {
					_ = unix.Kill(p.pid, unix.Signal(f.Payload[0]))
				}
			}
		}
	}()
	ws := <-p.exit
	close(exited)
	// Output ends when the last holder of the pipes or the terminal exits;
	// a background child that keeps them open is not waited for.
	timeout := time.NewTimer(drainTimeout)
	defer timeout.Stop()
	for _, done := range p.outs {
		select {
		case <-done:
		case <-timeout.C:
		}
	}
	p.closeAll()
	code, sig := exitCode(ws)
	fw.exit(wire.ExitStatus{ExitCode: code, Signal: sig})
}

// pumpFrames sends what r yields as frames of type typ until r ends.
func pumpFrames(fw *frameWriter, typ byte, r *os.File, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if fw.send(typ, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF, or EIO from a terminal whose last user left
		}
	}
}

// openPTY opens a new pseudo-terminal in the app's devpts.
func openPTY(size wire.WindowSize) (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/pts/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		if master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0); err != nil {
			return nil, nil, fmt.Errorf("open pty: %w", err)
		}
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if size.Rows > 0 && size.Cols > 0 {
		setWinsize(master, size)
	}
	return master, slave, nil
}

func setWinsize(f *os.File, size wire.WindowSize) {
	_ = unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
}
