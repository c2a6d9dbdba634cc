package main

import (
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReaperAfterNoChild checks that the reaper, having found no child
// left, hands over the exit status of the next one.
func TestReaperAfterNoChild(t *testing.T) {
	c := &children{waiters: map[int]chan unix.WaitStatus{}, forked: make(chan struct{}, 1)}
	run := func(code string) unix.WaitStatus {
		t.Helper()
		c.mu.Lock()
		pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit " + code}, &syscall.ProcAttr{})
		if err != nil {
			c.mu.Unlock()
			t.Fatal(err)
		}
		ch := c.watchLocked(pid)
		c.mu.Unlock()
		select {
		case ws := <-ch:
			return ws
		case <-time.After(10 * time.Second):
			t.Fatalf("no exit status for child %d", pid)
			return 0
		}
	}
	if ws := run("3"); ws.ExitStatus() != 3 {
		t.Fatalf("first child: exit status %d, want 3", ws.ExitStatus())
	}
	// Let the reaper find no child and wait.
	time.Sleep(100 * time.Millisecond)
	if ws := run("5"); ws.ExitStatus() != 5 {
		t.Fatalf("second child: exit status %d, want 5", ws.ExitStatus())
	}
}
