package main

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// children reaps every child of PID 1, orphans included, and hands the
// exit status of the ones it was asked about to their waiters. Fork a child
// while holding mu and register it with watchLocked before unlocking: the
// reaper takes mu before it looks for a waiter, so a child that exits at
// once is not missed.
type children struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	forked  chan struct{} // a token per fork, for a reaper that found no child
	once    sync.Once
}

var kids = &children{waiters: map[int]chan unix.WaitStatus{}, forked: make(chan struct{}, 1)}

// watchLocked returns a channel that receives pid's exit status.
func (c *children) watchLocked(pid int) <-chan unix.WaitStatus {
	ch := make(chan unix.WaitStatus, 1)
	c.waiters[pid] = ch
	select {
	case c.forked <- struct{}{}:
	default:
	}
	c.once.Do(func() { go c.reap() })
	return ch
}

func (c *children) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			// Nothing to reap until PID 1 forks again: every process
			// of the guest descends from it, so while it has no child
			// there is no orphan either. Polling here instead woke an
			// idle zygote 20 times a second.
			<-c.forked
			continue
		case err != nil:
			logf("wait: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c.mu.Lock()
		if ch, ok := c.waiters[pid]; ok {
			delete(c.waiters, pid)
			ch <- ws
		}
		c.mu.Unlock()
	}
}
