// Package qmp is a small client of the QEMU Machine Protocol: it connects to
// a QMP socket, negotiates capabilities, runs commands and collects events.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Event is an asynchronous QMP event such as SHUTDOWN or STOP.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// Error is an error answered by QEMU to a command.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp %s: %s", e.Class, e.Desc) }

type message struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     uint64          `json:"id"`
	QMP    json.RawMessage `json:"QMP"`
}

type result struct {
	ret json.RawMessage
	err error
}

// Conn is a negotiated QMP connection. It is safe for concurrent use.
type Conn struct {
	conn net.Conn

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan result
	closed  error

	events chan Event
	done   chan struct{}
}

// ErrClosed is returned for commands on a connection that has ended, which
// is also how a QEMU that exits looks from here.
var ErrClosed = errors.New("qmp connection closed")

// Dial connects to the QMP unix socket at path, retrying until ctx ends
// while the socket does not accept yet (QEMU creates it as it starts), reads
// the greeting and negotiates capabilities.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	var c net.Conn
	for {
		var err error
		c, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial qmp %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(500 * time.Microsecond):
		}
	}
	return newConn(ctx, c)
}

func newConn(ctx context.Context, c net.Conn) (*Conn, error) {
	q := &Conn{
		conn:    c,
		pending: make(map[uint64]chan result),
		events:  make(chan Event, 64),
		done:    make(chan struct{}),
	}
	r := bufio.NewReader(c)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	var greet message
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("read qmp greeting: unexpected %q", line)
	}
	_ = c.SetReadDeadline(time.Time{})
	go q.readLoop(r)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *Conn) readLoop(r *bufio.Reader) {
	var err error
	defer func() {
		q.conn.Close()
		q.mu.Lock()
		if err == nil {
			err = ErrClosed
		}
		q.closed = err
		for id, ch := range q.pending {
			ch <- result{err: ErrClosed}
			delete(q.pending, id)
		}
		q.mu.Unlock()
		close(q.events)
		close(q.done)
	}()
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			return
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		if m.Event != "" {
			select {
			case q.events <- Event{Name: m.Event, Data: m.Data}:
			default: // nobody is listening closely; events are advisory
			}
			continue
		}
		q.mu.Lock()
		ch := q.pending[m.ID]
		delete(q.pending, m.ID)
		q.mu.Unlock()
		if ch == nil {
			continue
		}
		if m.Error != nil {
			ch <- result{err: m.Error}
		} else {
			ch <- result{ret: m.Return}
		}
	}
}

// Execute runs one command and returns its "return" value.
func (q *Conn) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	if q.closed != nil {
		q.mu.Unlock()
		return nil, ErrClosed
	}
	q.nextID++
	id := q.nextID
	ch := make(chan result, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// Events returns the channel of asynchronous events; it is closed when the
// connection ends. Events are dropped when nobody reads them.
func (q *Conn) Events() <-chan Event { return q.events }

// Done is closed when the connection has ended.
func (q *Conn) Done() <-chan struct{} { return q.done }

// Close ends the connection.
func (q *Conn) Close() error { return q.conn.Close() }
