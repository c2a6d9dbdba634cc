package daemon

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"

	"github.com/coder/websocket"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// ExecCloseCode is the WebSocket close code that carries an HTTP status
// for an exec that failed after the upgrade: 4000 plus the status, such as
// 4400 for a bad request or 4503 for an agent that does not answer.
func ExecCloseCode(status int) websocket.StatusCode {
	return websocket.StatusCode(4000 + status)
}

// instanceExec runs a process in an instance over a WebSocket: the client
// sends an api.ExecRequest as the first (text) message, then binary
// messages of input; the server sends output and, last, the exit status.
// Each binary message is a wire frame type byte followed by its payload.
func (s *Server) instanceExec(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// Refuse before upgrading, so that these answers have a status code.
	if err := s.instances.CheckAgent(id); err != nil {
		writeError(w, err)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// The API listens on a unix socket: no browser origin to check.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(wire.MaxPayload + 1)
	ctx := r.Context()

	typ, msg, err := c.Read(ctx)
	if err != nil {
		return
	}
	var req api.ExecRequest
	if typ != websocket.MessageText || json.Unmarshal(msg, &req) != nil {
		c.Close(ExecCloseCode(http.StatusBadRequest), "the first message must be a JSON exec request")
		return
	}
	st, err := s.instances.Exec(ctx, id, req)
	if err != nil {
		c.Close(ExecCloseCode(Status(err)), truncateReason(err.Error()))
		return
	}
	defer st.Close()

	// Guest to client, until the exit status.
	go func() {
		for {
			f, err := wire.ReadFrame(st)
			if err != nil {
				c.Close(ExecCloseCode(http.StatusServiceUnavailable), "agent connection lost before the process exited")
				return
			}
			switch f.Type {
			case wire.TypeStdout, wire.TypeStderr, wire.TypeExit:
			default:
				continue
			}
			if err := c.Write(ctx, websocket.MessageBinary, append([]byte{f.Type}, f.Payload...)); err != nil {
				st.Close()
				return
			}
			if f.Type == wire.TypeExit {
				c.Close(websocket.StatusNormalClosure, "")
				return
			}
		}
	}()
	// Client to guest, until either side goes. Closing st before the exit
	// status kills the process in the guest.
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageBinary || len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case wire.TypeStdin, wire.TypeStdinClose, wire.TypeResize, wire.TypeSignal:
			if err := wire.WriteFrame(st, msg[0], msg[1:]); err != nil {
				return
			}
		}
	}
}

// truncateReason fits a close reason in the 123 bytes a close frame holds.
func truncateReason(s string) string {
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}

func (s *Server) instanceStat(w http.ResponseWriter, r *http.Request) {
	st, err := s.instances.Stat(r.Context(), r.PathValue("id"), r.URL.Query().Get("path"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) instanceArchiveGet(w http.ResponseWriter, r *http.Request) {
	st, rc, err := s.instances.ArchiveGet(r.Context(), r.PathValue("id"), r.URL.Query().Get("path"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer rc.Close()
	b, _ := json.Marshal(st)
	w.Header().Set(api.HeaderPathStat, base64.StdEncoding.EncodeToString(b))
	w.Header().Set("Content-Type", api.MediaTar)
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		s.log.Warn("archive get", "path", r.URL.Query().Get("path"), "err", err)
	}
}

func (s *Server) instanceArchivePut(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Query().Get("path")
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != api.MediaTar {
		writeError(w, errdefs.InvalidArgument("the body must be a tar stream (%s), not %s", api.MediaTar, ct))
		return
	}
	err := s.instances.ArchivePut(r.Context(), r.PathValue("id"), path, r.Body)
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
