package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"

	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/tarx"
)

// The agent runs chrooted into the app's root, so these paths are the
// app's: a symlink that points at / leads to the app's root, not to
// flick-init's.

// guestPath makes p absolute and clean; relative paths start at the root,
// as docker cp has them.
func guestPath(p string) string {
	return path.Clean("/" + p)
}

func statOf(p string) (*wire.PathStat, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	st := &wire.PathStat{
		Name:    path.Base(p),
		Size:    fi.Size(),
		Mode:    uint32(fi.Mode()),
		ModTime: fi.ModTime(),
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		st.LinkTarget, _ = os.Readlink(p)
	}
	return st, nil
}

// pathResult turns a failed lookup into a Result with its status.
func pathResult(p string, err error) wire.Result {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return wire.Result{Status: 404, Error: fmt.Sprintf("no such file or directory in the instance: %s", p)}
	case errors.Is(err, fs.ErrPermission):
		return wire.Result{Status: 403, Error: err.Error()}
	}
	return wire.Result{Status: 500, Error: err.Error()}
}

// stat answers with the stat of p and returns it, or nil when there is
// none (the answer then says why).
func (a *agent) stat(st net.Conn, p string) *wire.PathStat {
	s, err := statOf(p)
	if err != nil {
		sendResult(st, pathResult(p, err))
		return nil
	}
	sendResult(st, wire.Result{Stat: s})
	return s
}

// archiveGet answers with the stat of p, then streams p as a tar whose top
// entry is p's base name, and ends the stream.
func (a *agent) archiveGet(st net.Conn, p string) {
	p = guestPath(p)
	s := a.stat(st, p)
	if s == nil {
		return
	}
	name := s.Name
	if p == "/" {
		name = "."
	}
	if err := tarx.CreateDirect(st, p, name); err != nil {
		logf("agent: archive %s: %v", p, err)
		// Ending the stream early leaves the host a truncated tar, which
		// its reader reports.
	}
}

// archivePut extracts the tar stream that follows the request into the
// directory p, refusing entries that would land outside it, and answers
// when the stream has ended.
func (a *agent) archivePut(st net.Conn, p string) {
	p = guestPath(p)
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		sendResult(st, pathResult(p, err))
	case !fi.IsDir():
		sendResult(st, wire.Result{Status: 400, Error: fmt.Sprintf("%s is not a directory in the instance", p)})
	default:
		if err := tarx.ExtractDirect(p, st); err != nil {
			sendResult(st, wire.Result{Status: 400, Error: fmt.Sprintf("copy into %s: %v", p, err)})
		} else {
			sendResult(st, wire.Result{})
		}
	}
	// Read what the host still sends, so that its writes end and it reads
	// the answer.
	_, _ = io.Copy(io.Discard, st)
}
