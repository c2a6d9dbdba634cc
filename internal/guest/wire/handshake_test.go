package wire

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// end is one side of an in-memory port: it reads what the other side
// wrote, after stale bytes left over from an earlier session.
type end struct {
	io.Reader
	io.Writer
}

func portPair(staleToAgent, staleToHost []byte) (agent, host end) {
	a, h := net.Pipe()
	return end{io.MultiReader(bytes.NewReader(staleToAgent), a), a},
		end{io.MultiReader(bytes.NewReader(staleToHost), h), h}
}

func runHandshake(t *testing.T, agent, host end, nonce uint64) (agentR, hostR io.Reader) {
	t.Helper()
	type res struct {
		r   io.Reader
		err error
	}
	ach := make(chan res, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		r, err := AgentHandshake(agent, nonce, 5*time.Millisecond, time.Millisecond, stop)
		ach <- res{r, err}
	}()
	hr, err := HostHandshake(host, host)
	if err != nil {
		t.Fatalf("HostHandshake: %v", err)
	}
	select {
	case a := <-ach:
		if a.err != nil {
			t.Fatalf("AgentHandshake: %v", a.err)
		}
		return a.r, hr
	case <-time.After(5 * time.Second):
		t.Fatal("AgentHandshake did not return")
	}
	return nil, nil
}

// exchange checks that both directions carry the session's first bytes
// intact after the handshake.
func exchange(t *testing.T, agentR, hostR io.Reader, agent, host end) {
	t.Helper()
	go func() { _, _ = agent.Write([]byte("from-agent")) }()
	buf := make([]byte, len("from-agent"))
	if _, err := io.ReadFull(hostR, buf); err != nil || string(buf) != "from-agent" {
		t.Fatalf("host read %q, %v; want from-agent", buf, err)
	}
	go func() { _, _ = host.Write([]byte("from-host")) }()
	buf = make([]byte, len("from-host"))
	if _, err := io.ReadFull(agentR, buf); err != nil || string(buf) != "from-host" {
		t.Fatalf("agent read %q, %v; want from-host", buf, err)
	}
}

func TestHandshakeClean(t *testing.T) {
	agent, host := portPair(nil, nil)
	ar, hr := runHandshake(t, agent, host, 42)
	exchange(t, ar, hr, agent, host)
}

func TestHandshakeSkipsStaleSessions(t *testing.T) {
	// The host finds the end of a dead agent's session (a partial yamux
	// frame, the SYN of an agent that died before it could answer) before
	// the new agent's SYNs; the agent finds the tail of frames the host
	// sent to its predecessor and an ACK for another nonce.
	toHost := append([]byte{0, 1, 0, 0, 0, 0, 0, 3}, hsMessage(hsSyn, 7)...)
	toHost = append(toHost, "garbage"...)
	toAgent := append([]byte("tail of a stdin frame"), hsMessage(hsAck, 7)...)
	agent, host := portPair(toAgent, toHost)
	ar, hr := runHandshake(t, agent, host, 99)
	exchange(t, ar, hr, agent, host)
}

func TestHandshakeWaitsForHost(t *testing.T) {
	// Reads end while no host is connected; the agent keeps trying.
	a, h := net.Pipe()
	agent := end{&eofThen{n: 3, r: a}, a}
	host := end{h, h}
	ar, hr := runHandshake(t, agent, host, 5)
	exchange(t, ar, hr, agent, host)
}

// eofThen returns io.EOF n times, as an unconnected port does, then reads r.
type eofThen struct {
	n int
	r io.Reader
}

func (e *eofThen) Read(p []byte) (int, error) {
	if e.n > 0 {
		e.n--
		return 0, io.EOF
	}
	return e.r.Read(p)
}

func TestAgentHandshakeStops(t *testing.T) {
	a, _ := net.Pipe()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := AgentHandshake(end{&eofThen{n: 1 << 30}, io.Discard}, 1, time.Millisecond, time.Millisecond, stop)
		done <- err
	}()
	close(stop)
	select {
	case err := <-done:
		if err != ErrHandshakeClosed {
			t.Fatalf("err = %v, want ErrHandshakeClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AgentHandshake ignored stop")
	}
	a.Close()
}

func FuzzHostHandshake(f *testing.F) {
	f.Add(append(hsMessage(hsSyn, 1), hsMessage(hsReady, 1)...))
	f.Add(append([]byte("FLK\x01S\x00\x00"), hsMessage(hsReady, 3)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		var acks bytes.Buffer
		r, err := HostHandshake(bytes.NewReader(data), &acks)
		if err == nil {
			// Success needs an ACK sent for the nonce that became ready.
			if acks.Len() == 0 || acks.Len()%hsLen != 0 {
				t.Fatalf("handshake succeeded after writing %d bytes of ACKs", acks.Len())
			}
			_, _ = io.ReadAll(r)
		}
	})
}
