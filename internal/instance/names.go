package instance

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"syscall"

	"github.com/flick-vm/flick/internal/errdefs"
)

var (
	adjectives = []string{"brisk", "calm", "eager", "fleet", "gentle", "keen", "lucid", "nimble", "quiet", "rapid", "steady", "swift", "tidy", "vivid", "witty", "zesty"}
	nouns      = []string{"falcon", "otter", "heron", "lynx", "marten", "osprey", "puffin", "quokka", "raven", "swallow", "tern", "wren", "gecko", "ibis", "kestrel", "stoat"}
)

// randomName returns an adjective_noun name that taken reports as free.
func randomName(taken func(string) bool) string {
	for i := 0; ; i++ {
		n := adjectives[rand.IntN(len(adjectives))] + "_" + nouns[rand.IntN(len(nouns))]
		if i > 20 {
			n += "_" + strconv.Itoa(rand.IntN(100000))
		}
		if !taken(n) {
			return n
		}
	}
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "ALRM": syscall.SIGALRM,
	"CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP, "WINCH": syscall.SIGWINCH, "PWR": syscall.SIGPWR,
	"ABRT": syscall.SIGABRT,
}

// ParseSignal accepts "TERM", "SIGTERM", "sigterm" or "15".
func ParseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, errdefs.InvalidArgument("invalid signal %q: give a name like TERM or a number 1-64", s)
		}
		return syscall.Signal(n), nil
	}
	u := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signals[u]; ok {
		return sig, nil
	}
	return 0, errdefs.InvalidArgument("invalid signal %q: give a name like TERM or a number 1-64", fmt.Sprint(s))
}
