package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"time"
)

// The agent port is a byte stream that outlives both its ends: the agent
// may die and be restarted by PID 1, and flickd may restart and reconnect,
// each leaving bytes of the old session in flight. Before each session the
// two ends agree on a fresh start with a three-way handshake of 16-byte
// messages, "FLK\x01", a kind byte, three zero bytes and an 8-byte nonce
// chosen by the agent:
//
//	host:  RESET, once, to end a session the agent may still be in
//	agent: SYN(n), repeated every resend until answered
//	host:  ACK(n), once per nonce, after skipping anything that is not a SYN
//	agent: READY(n), after skipping anything that is not ACK(n)
//
// The host skips everything up to READY(n) and the agent everything up to
// ACK(n); what follows on each side belongs to the new session.

const hsLen = 16

var hsMagic = [4]byte{'F', 'L', 'K', 1}

const (
	hsSyn   = 'S'
	hsAck   = 'A'
	hsReady = 'R'
	// hsReset, sent by the host first, ends a session that the agent still
	// believes in (as after a resume from standby, when the guest never saw
	// its host go): the agent's yamux reads it as a frame of a protocol it
	// does not speak and drops the session. An agent in the handshake
	// skips it like any other byte.
	hsReset = 'X'
)

func hsMessage(kind byte, nonce uint64) []byte {
	b := make([]byte, hsLen)
	copy(b, hsMagic[:])
	b[4] = kind
	binary.BigEndian.PutUint64(b[8:], nonce)
	return b
}

// hsScanner finds handshake messages in a stream of anything.
type hsScanner struct {
	r   *bufio.Reader
	win []byte
}

// next returns the kind and nonce of the next handshake message in the
// stream, skipping all other bytes.
func (s *hsScanner) next() (byte, uint64, error) {
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		s.win = append(s.win, c)
		if len(s.win) > hsLen {
			s.win = s.win[1:]
		}
		if len(s.win) == hsLen && bytes.Equal(s.win[:4], hsMagic[:]) && s.win[5] == 0 && s.win[6] == 0 && s.win[7] == 0 {
			kind, nonce := s.win[4], binary.BigEndian.Uint64(s.win[8:])
			s.win = s.win[:0]
			return kind, nonce, nil
		}
	}
}

// ErrHandshakeClosed is returned by AgentHandshake when stop is closed.
var ErrHandshakeClosed = errors.New("handshake stopped")

// AgentHandshake runs the agent's side of the handshake on rw with the
// given nonce, resending SYN every resend. Reads that end (the host end is
// not connected) are retried after retry. It returns a reader that starts
// right after ACK(nonce); the caller's session reads from it and writes to
// rw. It gives up with ErrHandshakeClosed when stop is closed.
func AgentHandshake(rw io.ReadWriter, nonce uint64, resend, retry time.Duration, stop <-chan struct{}) (io.Reader, error) {
	var mu sync.Mutex
	done := false
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		t := time.NewTicker(resend)
		defer t.Stop()
		syn := hsMessage(hsSyn, nonce)
		for {
			mu.Lock()
			if done {
				mu.Unlock()
				return
			}
			_, _ = rw.Write(syn) // fails while the host is away; resent
			mu.Unlock()
			select {
			case <-t.C:
			case <-quit:
				return
			case <-stop:
				return
			}
		}
	}()
	s := &hsScanner{r: bufio.NewReaderSize(rw, 64<<10)}
	for {
		select {
		case <-stop:
			return nil, ErrHandshakeClosed
		default:
		}
		kind, n, err := s.next()
		if err != nil {
			// End of file while the host end is disconnected, or a
			// transient error: wait and read again.
			select {
			case <-stop:
				return nil, ErrHandshakeClosed
			case <-time.After(retry):
			}
			continue
		}
		if kind != hsAck || n != nonce {
			continue
		}
		mu.Lock()
		done = true
		_, err = rw.Write(hsMessage(hsReady, nonce))
		mu.Unlock()
		if err != nil {
			return nil, err
		}
		return s.r, nil
	}
}

// HostHandshake runs the host's side of the handshake: it answers the
// newest SYN and returns once READY arrives, with a reader that starts right
// after it. Deadlines are the caller's, set on the connection.
func HostHandshake(r io.Reader, w io.Writer) (io.Reader, error) {
	if _, err := w.Write(hsMessage(hsReset, 0)); err != nil {
		return nil, err
	}
	s := &hsScanner{r: bufio.NewReaderSize(r, 64<<10)}
	var acked uint64
	var have bool
	for {
		kind, n, err := s.next()
		if err != nil {
			return nil, err
		}
		switch kind {
		case hsSyn:
			if have && n == acked {
				continue // a resend of the SYN already answered
			}
			if _, err := w.Write(hsMessage(hsAck, n)); err != nil {
				return nil, err
			}
			acked, have = n, true
		case hsReady:
			if have && n == acked {
				return s.r, nil
			}
		}
	}
}
