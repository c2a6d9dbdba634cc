// Package failpoint lets the end-to-end tests crash flickd at a chosen
// point, to check that nothing is lost when the daemon dies there. A point
// is armed by naming it in the environment variable FLICK_FAILPOINT; an
// armed point kills the process with SIGKILL, as a crash would. Unarmed,
// Hit costs a string comparison.
package failpoint

import (
	"os"
	"syscall"
)

// Env is the variable that arms a point.
const Env = "FLICK_FAILPOINT"

var armed = os.Getenv(Env)

// Hit kills the process if the point name is armed.
func Hit(name string) {
	if armed != "" && armed == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
