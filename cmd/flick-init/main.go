// Command flick-init is the PID 1 of a flick microVM. It mounts the image's
// root, runs the app the host asked for and reports the app's life to the
// host over its channel (package wire), then resets the machine. Started
// as flick-agent, the same binary is the guest agent: PID 1 starts it after
// the app and it serves execs, copies and readiness checks on a second port.
//
// It is static (CGO_ENABLED=0) and imports only the standard library,
// golang.org/x/sys/unix and internal/guest/wire: under TCG every page of
// code it pulls in costs boot time.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	start := bootNS()
	switch filepath.Base(os.Args[0]) {
	case agentArg0:
		agentMain()
		return
	case rehearsalArg0:
		return // the process a rehearsal starts: exec, runtime start, exit
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "flick-init: must run as PID 1 of a flick guest")
		os.Exit(2)
	}
	run(start)
}
