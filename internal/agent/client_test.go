package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/mux"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// fakeAgent plays the guest agent on the far end of each connection the
// client dials: the handshake, then a yamux server answering stat with the
// agent's generation in Name, and archive_put with the number of bytes it
// read before the host's end of stream.
type fakeAgent struct {
	conns chan net.Conn
	gen   atomic.Int64
}

func newFakeAgent() *fakeAgent { return &fakeAgent{conns: make(chan net.Conn, 4)} }

func (f *fakeAgent) dial(ctx context.Context) (net.Conn, error) {
	host, guest := net.Pipe()
	select {
	case f.conns <- guest:
		return host, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serve runs one agent generation on the next connection, until it dies.
func (f *fakeAgent) serve(t *testing.T, nonce uint64) {
	conn := <-f.conns
	gen := f.gen.Add(1)
	r, err := wire.AgentHandshake(conn, nonce, 5*time.Millisecond, time.Millisecond, nil)
	if err != nil {
		t.Errorf("agent handshake: %v", err)
		return
	}
	sess, err := yamux.Server(rwc{r, conn}, mux.Config())
	if err != nil {
		t.Errorf("yamux server: %v", err)
		return
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			fr, err := wire.ReadFrame(st)
			if err != nil {
				return
			}
			var req wire.Request
			_ = json.Unmarshal(fr.Payload, &req)
			switch req.Op {
			case wire.OpStat:
				if req.Path == "/missing" {
					_ = wire.WriteJSON(st, wire.TypeResult, wire.Result{Status: 404, Error: "no such file: /missing"})
					return
				}
				_ = wire.WriteJSON(st, wire.TypeResult, wire.Result{Stat: &wire.PathStat{Name: string(rune('0' + gen))}})
			case wire.OpArchivePut:
				n, _ := io.Copy(io.Discard, st)
				_ = wire.WriteJSON(st, wire.TypeResult, wire.Result{Stat: &wire.PathStat{Size: n}})
			}
		}()
	}
}

func newClient(t *testing.T, f *fakeAgent) *Client {
	c := New(f.dial, nil, slog.New(slog.DiscardHandler))
	go c.Run(context.Background())
	t.Cleanup(func() { c.Close(); c.Wait() })
	return c
}

func TestClientStat(t *testing.T) {
	f := newFakeAgent()
	go f.serve(t, 1)
	c := newClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Stat(ctx, "/etc")
	if err != nil || st.Name != "1" {
		t.Fatalf("Stat = %+v, %v; want the first agent's answer", st, err)
	}
	if _, err := c.Stat(ctx, "/missing"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Stat of a missing path = %v, want not found", err)
	}
}

func TestClientReconnectsAfterReset(t *testing.T) {
	f := newFakeAgent()
	go f.serve(t, 1)
	c := newClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Stat(ctx, "/"); err != nil {
		t.Fatal(err)
	}
	// PID 1 reports a dead agent; its successor answers on a new
	// connection with a new nonce.
	go f.serve(t, 2)
	c.Reset()
	for {
		st, err := c.Stat(ctx, "/")
		if err == nil && st.Name == "2" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("never reached the second agent: %+v %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientWithoutAgentTimesOut(t *testing.T) {
	f := newFakeAgent() // nobody serves
	c := newClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Stat(ctx, "/"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Stat with no agent = %v, want unavailable", err)
	}
}

func TestClientArchivePutHalfCloses(t *testing.T) {
	f := newFakeAgent()
	go f.serve(t, 1)
	c := newClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The fake answers only after the end of the stream; 3 MiB is more
	// than a stream window, so the copy must flow while it reads.
	if err := c.ArchivePut(ctx, "/tmp", io.LimitReader(zeros{}, 3<<20)); err != nil {
		t.Fatalf("ArchivePut: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
