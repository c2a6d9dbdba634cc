package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// bootNS is CLOCK_BOOTTIME in nanoseconds: time since the kernel started.
func bootNS() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// logf writes one line to the console (the kernel gave PID 1 /dev/console
// as stderr), stamped like the kernel's own messages. Every byte is a trap
// into the VMM, so log milestones and errors only.
func logf(format string, args ...any) {
	ns := bootNS()
	fmt.Fprintf(os.Stderr, "[%5d.%06d] flick-init: %s\n", ns/1e9, ns%1e9/1e3, fmt.Sprintf(format, args...))
}
