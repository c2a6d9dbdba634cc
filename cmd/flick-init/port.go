package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flick-vm/flick/internal/guest/wire"
	"golang.org/x/sys/unix"
)

// portWriteTimeout bounds how long a frame waits for a host that is not
// connected to the port; after it the frame is dropped.
const portWriteTimeout = 10 * time.Second

// chunkSize keeps a frame (5-byte header included) within the 32 KiB that
// the virtio console driver takes per write, so a frame is one buffer.
const chunkSize = 32*1024 - 5

// port is the agent channel: a virtio-serial port carrying wire frames.
type port struct {
	f    *os.File
	mu   sync.Mutex // serialises frames
	acks chan struct{}
}

// findPort returns /dev/vportNpM for the virtio-serial port called name.
func findPort(name string, timeout time.Duration) (string, error) {
	var dev string
	err := poll("find port "+name, timeout, func() (bool, error) {
		for _, port := range dirNames("/sys/class/virtio-ports") {
			b, err := os.ReadFile("/sys/class/virtio-ports/" + port + "/name")
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev = "/dev/" + port
				_, err := os.Stat(dev)
				return err == nil, nil
			}
		}
		return false, nil
	})
	return dev, err
}

func openPort(timeout time.Duration) (*port, error) {
	dev, err := findPort(wire.PortName, timeout)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open port: %w", err)
	}
	return &port{f: f, acks: make(chan struct{}, 1)}, nil
}

// send writes one frame. While the host end is not connected the virtio
// console driver fails writes with ENODEV; send retries until the host
// connects or portWriteTimeout passes.
func (p *port) send(typ byte, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	deadline := time.Now().Add(portWriteTimeout)
	for {
		err := wire.WriteFrame(p.f, typ, payload)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EPIPE) || time.Now().After(deadline) {
			return fmt.Errorf("send frame type %d: %w", typ, err)
		}
		time.Sleep(pollInterval)
	}
}

// event sends an Event stamped with the guest's boot time, logging a
// failure: there is nobody else to tell. Events, the hello and the
// messages readLoop decodes go through wire's lean JSON, not
// encoding/json, whose first use costs 20-30 ms under TCG on every boot
// and restore.
func (p *port) event(e wire.Event) {
	e.BootNS = bootNS()
	if err := p.send(wire.TypeEvent, wire.AppendEvent(nil, e)); err != nil {
		logf("event %s: %v", e.Kind, err)
	}
}

// readLoop handles frames from the host for the life of the guest: signals
// go to signal, acks to p.acks. The port reads end of file while the host
// end is disconnected; readLoop waits for it to come back.
func (p *port) readLoop(signal func(int)) {
	for {
		f, err := wire.ReadFrame(p.f)
		recv := bootNS()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				logf("read port: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		switch f.Type {
		case wire.TypeSignal:
			if len(f.Payload) == 1 {
				signal(int(f.Payload[0]))
			}
		case wire.TypeAck:
			select {
			case p.acks <- struct{}{}:
			default:
			}
		case wire.TypeClock:
			if c, err := wire.DecodeClock(f.Payload); err == nil {
				applyHostState(wire.Config{TimeNS: c.TimeNS}, recv)
			} else {
				logf("clock frame: %v", err)
			}
		case wire.TypeAgentStart:
			agentWanted()
		case wire.TypeClone:
			id, err := wire.DecodeIdentity(f.Payload)
			if err != nil {
				logf("clone frame: %v", err)
				continue
			}
			go becomeClone(p, id, recv)
		case wire.TypeRehearse:
			cfg, err := wire.DecodeConfig(f.Payload)
			if err != nil {
				logf("rehearse frame: %v", err)
				continue
			}
			go rehearse(p, cfg, recv)
		case wire.TypeConfig:
			cfg, err := wire.DecodeConfig(f.Payload)
			if err != nil {
				logf("config frame: %v", err)
				continue
			}
			select {
			case hostConfig <- receivedConfig{cfg, recv}:
			default:
				logf("a second config frame; ignored")
			}
		}
	}
}

// pump copies an output pipe of the app to the host as frames of type typ
// until the pipe ends, then closes done.
func (p *port) pump(typ byte, r *os.File, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, chunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if err := p.send(typ, buf[:n]); err != nil {
				logf("%v", err)
			}
		}
		if err != nil {
			return
		}
	}
}
