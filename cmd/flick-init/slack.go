package main

import (
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Timer slack. Once a Go process is busy after being idle, the runtime's
// sysmon thread sleeps 20 µs at a time, and under TCG every one of those
// sleeps is a timer interrupt and two context switches that cost the
// guest's only vCPU ~0.25 ms. Starting an app from a zygote, PID 1 took
// 50-150 timer interrupts in bursts of one every 0.25-0.3 ms (counted with
// a uprobe on QEMU's apic_get_interrupt), which stalled the start by 10 ms
// or more. With a slack of 1 ms the kernel fires those sleeps up to 1 ms
// late, and the bursts are gone. flick-init's own sleeps are polls of at
// least 2 ms and timeouts, for which 1 ms more does not matter.
const (
	slackNS        = 1_000_000
	defaultSlackNS = 50_000 // the kernel's, which the processes flick-init starts keep
)

// setSlack gives every thread of this process a timer slack of slackNS;
// the threads the runtime starts later inherit it from the thread that
// starts them.
func setSlack() {
	ns := []byte(strconv.Itoa(slackNS))
	for _, tid := range dirNames("/proc/self/task") {
		// The file of a thread is /proc/TID/timerslack_ns: the
		// entries under /proc/self/task have none.
		if err := os.WriteFile("/proc/"+tid+"/timerslack_ns", ns, 0); err != nil {
			logf("timer slack of thread %s: %v", tid, err)
		}
	}
}

// forkExec is syscall.ForkExec for a process that keeps the kernel's
// default timer slack: a child inherits the slack of the thread that forks
// it, so the fork runs on a thread that has the default for the moment.
func forkExec(argv0 string, argv []string, attr *syscall.ProcAttr) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, defaultSlackNS, 0, 0, 0)
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, slackNS, 0, 0, 0)
	return syscall.ForkExec(argv0, argv, attr)
}
