package instance

import (
	"context"
	"io"
	"net"
	"strings"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/agent"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// agentOf returns the guest agent of a running instance.
func (m *Manager) agentOf(ref string) (*agent.Client, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	r, name, state, noAgent := in.run, in.rec.Name, in.rec.State, in.rec.Config.NoAgent
	in.mu.Unlock()
	switch {
	case noAgent:
		return nil, errdefs.Conflict("agent disabled for this instance: %s was created with --no-agent", name)
	case r == nil || state != api.StateRunning:
		return nil, errdefs.Conflict("instance %s is not running (it is %s)", name, state)
	case r.agent == nil:
		return nil, errdefs.Conflict("agent disabled for this instance: %s", name)
	}
	return r.agent, nil
}

// CheckAgent tells whether the instance can serve execs and copies now:
// it must be running and have an agent.
func (m *Manager) CheckAgent(ref string) error {
	_, err := m.agentOf(ref)
	return err
}

// Exec starts a process in a running instance and returns its stream of
// frames (package wire): the caller relays input frames to it and output
// frames from it, up to TypeExit.
func (m *Manager) Exec(ctx context.Context, ref string, req api.ExecRequest) (net.Conn, error) {
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return nil, errdefs.InvalidArgument("exec needs a command")
	}
	for _, e := range req.Env {
		if k, _, _ := strings.Cut(e, "="); k == "" {
			return nil, errdefs.InvalidArgument("invalid environment variable %q: give KEY=VALUE", e)
		}
	}
	a, err := m.agentOf(ref)
	if err != nil {
		return nil, err
	}
	return a.Exec(ctx, wire.ExecSpec{
		Args: req.Cmd, Env: req.Env, WorkingDir: req.WorkingDir, User: req.User,
		TTY: req.TTY, Stdin: req.Stdin, Size: wire.WindowSize{Rows: req.Rows, Cols: req.Cols},
	})
}

// Stat describes a path inside a running instance.
func (m *Manager) Stat(ctx context.Context, ref, path string) (api.PathStat, error) {
	if path == "" {
		return api.PathStat{}, errdefs.InvalidArgument("give a path inside the instance")
	}
	a, err := m.agentOf(ref)
	if err != nil {
		return api.PathStat{}, err
	}
	s, err := a.Stat(ctx, path)
	return api.PathStat(s), err
}

// ArchiveGet streams path inside a running instance as a tar whose top
// entry is the path's base name; the caller closes it.
func (m *Manager) ArchiveGet(ctx context.Context, ref, path string) (api.PathStat, io.ReadCloser, error) {
	if path == "" {
		return api.PathStat{}, nil, errdefs.InvalidArgument("give a path inside the instance")
	}
	a, err := m.agentOf(ref)
	if err != nil {
		return api.PathStat{}, nil, err
	}
	s, rc, err := a.ArchiveGet(ctx, path)
	return api.PathStat(s), rc, err
}

// ArchivePut extracts the tar stream body into the directory path inside a
// running instance.
func (m *Manager) ArchivePut(ctx context.Context, ref, path string, body io.Reader) error {
	if path == "" {
		return errdefs.InvalidArgument("give a directory inside the instance")
	}
	a, err := m.agentOf(ref)
	if err != nil {
		return err
	}
	return a.ArchivePut(ctx, path, body)
}
