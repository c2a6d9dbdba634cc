package main

import (
	"fmt"
	"os"
	"strconv"

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
	logLine(fmt.Sprintf(format, args...))
}

// logLine is logf without fmt, whose first use costs ~3 ms under TCG: for
// the lines of every boot.
func logLine(msg string) {
	ns := bootNS()
	b := append(make([]byte, 0, 40+len(msg)), '[')
	b = appendPadded(b, ns/1e9, 5, ' ')
	b = append(b, '.')
	b = appendPadded(b, ns%1e9/1e3, 6, '0')
	b = append(b, "] flick-init: "...)
	b = append(b, msg...)
	_, _ = os.Stderr.Write(append(b, '\n'))
}

// appendPadded appends v (not negative) in decimal, padded with pad to
// width.
func appendPadded(b []byte, v int64, width int, pad byte) []byte {
	s := strconv.FormatInt(v, 10)
	for i := len(s); i < width; i++ {
		b = append(b, pad)
	}
	return append(b, s...)
}

// msString is ns as milliseconds with three decimals, as "%d.%03d".
func msString(ns int64) string {
	return string(appendPadded(append(strconv.AppendInt(nil, ns/1e6, 10), '.'), ns%1e6/1e3, 3, '0'))
}
