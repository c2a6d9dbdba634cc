package main

import (
	"errors"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// becomeClone gives a guest restored from a running VM's snapshot an
// identity of its own: its clock and RNG (reseeded, as a snapshot hands
// every restore the same pool), hostname, machine-id and address. The app
// goes on running; processes that read any of these before keep what they
// read.
func becomeClone(p *port, id wire.Identity, recv int64) {
	applyHostState(wire.Config{TimeNS: id.TimeNS, Seed: id.Seed}, recv)
	var errs []error
	root, err := openRootDir(newRoot)
	if err != nil {
		errs = append(errs, err)
	} else {
		if err := setHostname(root, id.Hostname, id.Net); err != nil {
			errs = append(errs, err)
		}
		if len(id.MachineID) == 32 {
			if err := root.writeFile("/etc/machine-id", []byte(id.MachineID+"\n"), 0o444); err != nil {
				errs = append(errs, err)
			}
		}
		if id.Net != nil {
			if err := netUp(root, id.Net); err != nil {
				errs = append(errs, err)
			}
		}
		unix.Close(root.fd)
	}
	ev := wire.Event{Kind: wire.EventCloned}
	if err := errors.Join(errs...); err != nil {
		logf("clone: %v", err)
		ev.Message = err.Error()
	}
	p.event(ev)
}
