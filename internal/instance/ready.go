package instance

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// DefaultReadyTimeout is how long a readiness check may take, in seconds,
// when the instance does not say.
const DefaultReadyTimeout = 60

// readyInterval is the pause between two tries of a readiness check.
const readyInterval = 20

// ParseReady parses a readiness check: "tcp:PORT" (a connection to PORT on
// the guest's loopback is accepted) or "http://[localhost]:PORT[/PATH]" (a
// GET answers 200). timeout is in seconds; 0 means DefaultReadyTimeout.
func ParseReady(spec string, timeout int) (wire.ReadyCheck, error) {
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	check := wire.ReadyCheck{TimeoutMS: timeout * 1000, IntervalMS: readyInterval}
	bad := func(why string) (wire.ReadyCheck, error) {
		return wire.ReadyCheck{}, errdefs.InvalidArgument("invalid readiness check %q: %s; give tcp:PORT or http://:PORT/PATH", spec, why)
	}
	port := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && n > 0 && n < 65536
	}
	if p, ok := strings.CutPrefix(spec, "tcp:"); ok {
		n, ok := port(p)
		if !ok {
			return bad("the port must be 1-65535")
		}
		check.Kind, check.Port = "tcp", n
		return check, nil
	}
	if !strings.HasPrefix(spec, "http://") {
		return bad("unknown kind")
	}
	u, err := url.Parse(spec)
	if err != nil {
		return bad(err.Error())
	}
	if h := u.Hostname(); h != "" && h != "localhost" && h != "127.0.0.1" {
		return bad("the check runs in the guest against its loopback; leave out the host")
	}
	n, ok := port(u.Port())
	if !ok {
		return bad("the port must be 1-65535")
	}
	check.Kind, check.Port, check.Path = "http", n, u.RequestURI()
	return check, nil
}
