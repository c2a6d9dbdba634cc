package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// ExecSession is a process running in an instance, reached over the
// WebSocket of GET /v1/instances/{id}/exec.
type ExecSession struct {
	ws  *websocket.Conn
	ctx context.Context
	wmu sync.Mutex
}

// Exec starts req.Cmd in a running instance. Errors before the process
// starts are *Error with the HTTP status: 404 unknown instance, 409 not
// running or agent disabled, 503 agent not answering.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (*ExecSession, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + instancePath(id, "exec")
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			var er ErrorResponse
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			msg := strings.TrimSpace(string(data))
			if json.Unmarshal(data, &er) == nil && er.Error != "" {
				msg = er.Error
			}
			return nil, &Error{Status: resp.StatusCode, Message: msg}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot reach flickd at %s: %w", c.where, err)
	}
	ws.SetReadLimit(2 << 20)
	b, err := json.Marshal(req)
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
		ws.CloseNow()
		return nil, execError(err)
	}
	return &ExecSession{ws: ws, ctx: ctx}, nil
}

// execError turns the close of an exec WebSocket into an *Error when the
// daemon closed it with a status (close code 4000 + HTTP status).
func execError(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Code >= 4000 && ce.Code < 5000 {
		return &Error{Status: int(ce.Code) - 4000, Message: ce.Reason}
	}
	return err
}

func (s *ExecSession) send(typ byte, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return execError(s.ws.Write(s.ctx, websocket.MessageBinary, append([]byte{typ}, payload...)))
}

// Stdin sends input to the process.
func (s *ExecSession) Stdin(p []byte) error { return s.send(ExecStdin, p) }

// CloseStdin ends the process's input.
func (s *ExecSession) CloseStdin() error { return s.send(ExecStdinClose, nil) }

// Resize tells the process's terminal its new size.
func (s *ExecSession) Resize(rows, cols uint16) error {
	b, _ := json.Marshal(struct {
		Rows uint16 `json:"rows"`
		Cols uint16 `json:"cols"`
	}{rows, cols})
	return s.send(ExecResize, b)
}

// Signal sends a signal to the process.
func (s *ExecSession) Signal(sig int) error { return s.send(ExecSignal, []byte{byte(sig)}) }

// Next returns the next output message: ExecStdout or ExecStderr with its
// bytes, or ExecExitStatus with the exit decoded into exit; after that the
// session is over.
func (s *ExecSession) Next() (typ byte, data []byte, exit *ExecExit, err error) {
	for {
		mt, msg, err := s.ws.Read(s.ctx)
		if err != nil {
			return 0, nil, nil, execError(err)
		}
		if mt != websocket.MessageBinary || len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case ExecStdout, ExecStderr:
			return msg[0], msg[1:], nil, nil
		case ExecExitStatus:
			var e ExecExit
			if err := json.Unmarshal(msg[1:], &e); err != nil {
				return 0, nil, nil, fmt.Errorf("exec: bad exit status: %w", err)
			}
			s.ws.Close(websocket.StatusNormalClosure, "")
			return ExecExitStatus, nil, &e, nil
		}
	}
}

// Close ends the session; a process still running is killed.
func (s *ExecSession) Close() error { return s.ws.CloseNow() }

// Run copies the process's output to stdout and stderr until it exits and
// returns its exit.
func (s *ExecSession) Run(stdout, stderr io.Writer) (ExecExit, error) {
	for {
		typ, data, exit, err := s.Next()
		if err != nil {
			return ExecExit{}, err
		}
		switch typ {
		case ExecStdout:
			if _, err := stdout.Write(data); err != nil {
				return ExecExit{}, err
			}
		case ExecStderr:
			if _, err := stderr.Write(data); err != nil {
				return ExecExit{}, err
			}
		case ExecExitStatus:
			return *exit, nil
		}
	}
}

// ExecOutput runs req (without stdin) and returns its output and exit.
func (c *Client) ExecOutput(ctx context.Context, id string, req ExecRequest) (stdout, stderr []byte, exit ExecExit, err error) {
	s, err := c.Exec(ctx, id, req)
	if err != nil {
		return nil, nil, ExecExit{}, err
	}
	defer s.Close()
	var o, e bytes.Buffer
	exit, err = s.Run(&o, &e)
	return o.Bytes(), e.Bytes(), exit, err
}

// Stat describes a path inside a running instance.
func (c *Client) Stat(ctx context.Context, id, path string) (PathStat, error) {
	var st PathStat
	err := c.doJSON(ctx, "GET", instancePath(id, "stat"), url.Values{"path": {path}}, nil, &st)
	return st, err
}

// ArchiveGet returns a tar stream of path inside a running instance, whose
// top entry is path's base name, and the path's stat. The caller closes it.
func (c *Client) ArchiveGet(ctx context.Context, id, path string) (PathStat, io.ReadCloser, error) {
	resp, err := c.do(ctx, "GET", instancePath(id, "archive"), url.Values{"path": {path}}, "", nil)
	if err != nil {
		return PathStat{}, nil, err
	}
	var st PathStat
	if h := resp.Header.Get(HeaderPathStat); h != "" {
		if b, err := base64.StdEncoding.DecodeString(h); err == nil {
			_ = json.Unmarshal(b, &st)
		}
	}
	return st, resp.Body, nil
}

// ArchivePut extracts the tar stream r into the directory path inside a
// running instance.
func (c *Client) ArchivePut(ctx context.Context, id, path string, r io.Reader) error {
	resp, err := c.do(ctx, "PUT", instancePath(id, "archive"), url.Values{"path": {path}}, MediaTar, r)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
