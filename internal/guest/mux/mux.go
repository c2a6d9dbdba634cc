// Package mux configures the yamux sessions of the guest agent channel, the
// same on both ends.
package mux

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Config sizes a session for copies: a window of 1 MiB per stream keeps a
// 100 MiB copy moving without waiting on every 256 KiB. No keepalives: an
// idle VM should cost no CPU, and the host learns of a dead agent from
// PID 1.
func Config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.MaxStreamWindowSize = 1 << 20
	c.ConnectionWriteTimeout = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	c.LogOutput = io.Discard
	return c
}
