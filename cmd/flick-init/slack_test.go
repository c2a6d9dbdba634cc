package main

import (
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestTimerSlack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("setting the timer slack of another thread needs root (CAP_SYS_NICE)")
	}
	setSlack()
	for _, tid := range dirNames("/proc/self/task") {
		b, err := os.ReadFile("/proc/" + tid + "/timerslack_ns")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(slackNS) {
			t.Errorf("thread %s: timer slack %s ns, want %d", tid, got, slackNS)
		}
	}

	// A process flick-init starts has the kernel's default.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pid, err := forkExec("/bin/cat", []string{"cat", "/proc/self/timerslack_ns"}, &syscall.ProcAttr{
		Files: []uintptr{uintptr(unix.Stdin), w.Fd(), uintptr(unix.Stderr)},
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != strconv.Itoa(defaultSlackNS) {
		t.Errorf("child's timer slack %q ns, want %d", got, defaultSlackNS)
	}

	// The thread that forked is back to flick-init's slack.
	for _, tid := range dirNames("/proc/self/task") {
		b, _ := os.ReadFile("/proc/" + tid + "/timerslack_ns")
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(slackNS) {
			t.Errorf("after forkExec, thread %s has timer slack %s ns, want %d", tid, got, slackNS)
		}
	}
}
