package main

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// drainTimeout bounds how long flick-init reads the app's pipes after the
// app exited: an orphan that inherited them may keep them open forever.
const drainTimeout = 500 * time.Millisecond

// execError is an app that could not be executed: the exit code a shell
// would give (127 not found, 126 not executable) and its message.
type execError struct {
	code int
	msg  string
}

func (e *execError) Error() string { return e.msg }

// lookPath finds name as execve would inside root: as it is when it has a
// slash, else in the directories of PATH.
func lookPath(root rootDir, name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	var denied bool
	for _, dir := range strings.Split(pathEnv, ":") {
		if !path.IsAbs(dir) {
			continue // a relative PATH entry is relative to nothing useful in PID 1
		}
		p := path.Join(dir, name)
		st, err := root.stat(p)
		if err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return p, nil
		}
		denied = true
	}
	if denied {
		return "", &execError{126, fmt.Sprintf("exec %q: permission denied", name)}
	}
	return "", &execError{127, fmt.Sprintf("exec %q: executable file not found in $PATH", name)}
}

// envValue is the last value of key in env, as getenv would see it.
func envValue(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// app is the started process.
type app struct {
	pid     int
	exit    <-chan unix.WaitStatus
	outDone chan struct{}
	errDone chan struct{}
}

// appPID is the running app's pid for the signal forwarder; 0 before the app
// starts. A signal that arrives earlier is kept and delivered at start.
var (
	appMu      sync.Mutex
	appPID     int
	pendingSig int
)

func forwardSignal(sig int) {
	appMu.Lock()
	defer appMu.Unlock()
	if appPID == 0 {
		pendingSig = sig
		return
	}
	if err := unix.Kill(appPID, unix.Signal(sig)); err != nil {
		logf("signal %d to %d: %v", sig, appPID, err)
	}
}

// launch is everything exec needs, resolved inside the app's root.
type launch struct {
	argv0  string
	args   []string
	env    []string
	dir    string
	cred   *syscall.Credential
	chroot string // the app's root; a rehearsal's process stays in flick-init's
	target *appTarget
}

// appTarget is what planApp looks up in the app's root: the executable,
// the working directory, and the user's credential and home.
type appTarget struct {
	key              targetKey
	argv0, dir, home string
	cred             *syscall.Credential
}

// targetKey is what an appTarget is looked up from.
type targetKey struct{ arg0, path, user, dir string }

// rehearsedTarget is the appTarget of a zygote's rehearsal. The start
// that claims the zygote uses it if it asks for the same: nothing has
// touched the root since, and looking again (accounts, working directory,
// PATH) was 2 ms of file reads through the overlay under TCG.
var rehearsedTarget atomic.Pointer[appTarget]

// planApp resolves the app's user, environment, working directory and
// executable in its root; an *execError means it cannot be executed.
func planApp(root rootDir, cfg wire.Config) (*launch, error) {
	env := append([]string(nil), cfg.Env...)
	pathEnv, ok := envValue(env, "PATH")
	if !ok {
		pathEnv = defaultPath
		env = append(env, "PATH="+pathEnv)
	}
	key := targetKey{arg0: cfg.Args[0], path: pathEnv, user: cfg.User, dir: cfg.WorkingDir}
	t := rehearsedTarget.Swap(nil)
	if t == nil || t.key != key {
		var err error
		if t, err = lookUpTarget(root, key); err != nil {
			return nil, err
		}
	}
	if _, ok := envValue(env, "HOME"); !ok {
		env = append(env, "HOME="+t.home)
	}
	return &launch{argv0: t.argv0, args: cfg.Args, env: env, dir: t.dir, chroot: newRoot, cred: t.cred, target: t}, nil
}

// lookUpTarget finds the user, the working directory and the executable
// of key in root.
func lookUpTarget(root rootDir, key targetKey) (*appTarget, error) {
	passwd, group, err := readAccounts(root)
	if err != nil {
		return nil, err
	}
	c, err := resolveUser(key.user, passwd, group)
	if err != nil {
		return nil, err
	}
	dir := key.dir
	if dir == "" {
		dir = "/"
	}
	if st, err := root.stat(dir); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("working dir %q: not a directory in the image", dir)
	}
	argv0, err := lookPath(root, key.arg0, key.path)
	if err != nil {
		return nil, err
	}
	return &appTarget{
		key: key, argv0: argv0, dir: dir, home: c.home,
		cred: &syscall.Credential{Uid: c.uid, Gid: c.gid, Groups: c.groups},
	}, nil
}

// startApp starts a planned app; an *execError means it could not be
// executed.
func startApp(p *port, l *launch) (*app, error) {
	std := readyStdio.Swap(nil)
	if std == nil {
		var err error
		if std, err = newStdio(); err != nil {
			return nil, err
		}
	}
	null, outR, outW, errR, errW := std.null, std.outR, std.outW, std.errR, std.errW
	defer null.Close()
	p.event(wire.Event{Kind: wire.EventExec})

	appMu.Lock()
	kids.mu.Lock()
	pid, err := forkExec(l.argv0, l.args, &syscall.ProcAttr{
		Dir:   l.dir,
		Env:   l.env,
		Files: []uintptr{null.Fd(), outW.Fd(), errW.Fd()},
		Sys: &syscall.SysProcAttr{
			Chroot:     l.chroot,
			Credential: l.cred,
			Setsid:     true,
		},
	})
	var exit <-chan unix.WaitStatus
	if err == nil {
		exit = kids.watchLocked(pid)
		appPID = pid
		if pendingSig != 0 {
			unix.Kill(pid, unix.Signal(pendingSig))
		}
	}
	kids.mu.Unlock()
	appMu.Unlock()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		code := 126
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			code = 127
		}
		return nil, &execError{code, fmt.Sprintf("exec %q: %v", l.args[0], err)}
	}
	a := &app{pid: pid, exit: exit, outDone: make(chan struct{}), errDone: make(chan struct{})}
	go p.pump(wire.TypeStdout, outR, a.outDone)
	go p.pump(wire.TypeStderr, errR, a.errDone)
	return a, nil
}

// stdio is what an app's standard streams are made of: /dev/null for its
// input and a pipe each for its output and errors.
type stdio struct {
	null, outR, outW, errR, errW *os.File
}

func newStdio() (*stdio, error) {
	null, err := os.Open("/dev/null")
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		null.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		null.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	return &stdio{null, outR, outW, errR, errW}, nil
}

func (s *stdio) close() {
	for _, f := range []*os.File{s.null, s.outR, s.outW, s.errR, s.errW} {
		f.Close()
	}
}

// readyStdio is made at the end of a zygote's rehearsal for the start that
// claims it, which takes it: under TCG making them took that start 1-2 ms.
var readyStdio atomic.Pointer[stdio]

// wait waits for the app to exit and returns its exit code (128+signal
// when killed) and signal. Orphans are reaped meanwhile by kids.
func (a *app) wait() (code, sig int) {
	ws := <-a.exit
	appMu.Lock()
	appPID = 0
	appMu.Unlock()

	// The pipes end when the last writer exits; do not wait for orphans.
	timeout := time.NewTimer(drainTimeout)
	defer timeout.Stop()
	for _, done := range []chan struct{}{a.outDone, a.errDone} {
		select {
		case <-done:
		case <-timeout.C:
			logf("app output still open after %v; not waiting", drainTimeout)
			return exitCode(ws)
		}
	}
	return exitCode(ws)
}

func exitCode(ws unix.WaitStatus) (code, sig int) {
	if ws.Signaled() {
		return 128 + int(ws.Signal()), int(ws.Signal())
	}
	return ws.ExitStatus(), 0
}
