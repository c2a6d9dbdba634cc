// Package wire is the contract between the host and flick-init, the guest's
// PID 1: the boot config the host hands to the guest and the frames both
// sides exchange on the agent channel. It imports only the standard library,
// because flick-init links it and must stay small and static.
package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// FwCfgName is the fw_cfg item that carries the JSON-encoded Config.
const FwCfgName = "opt/flick/config"

// FwCfgSysfsPath is where the guest kernel exposes that item.
const FwCfgSysfsPath = "/sys/firmware/qemu_fw_cfg/by_name/" + FwCfgName + "/raw"

// PortName is the name of the virtio-serial port that carries frames.
const PortName = "flick.0"

// Writable layers.
const (
	LayerDisk   = "disk"
	LayerMemory = "memory"
)

// Config is everything flick-init needs to turn a booted kernel into a
// running app. It is JSON on the wire.
type Config struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`

	// Args is the resolved entrypoint followed by its arguments; Args[0] is
	// looked up in PATH from Env inside the image when it has no slash.
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	WorkingDir string   `json:"working_dir,omitempty"`
	// User is "", "name", "uid", "name:group" or "uid:gid", as in an OCI
	// image config, resolved against the image's /etc/passwd and /etc/group.
	User string `json:"user,omitempty"`

	// RootDevice and DataDevice are virtio-blk serial numbers: flick-init
	// finds the /dev/vdX whose /sys/block/vdX/serial matches. RootDevice
	// holds the image's read-only filesystem (RootFSType); DataDevice holds
	// the instance's writable ext4 layer (directories upper/ and work/ are
	// made by flick-init when missing).
	RootDevice string `json:"root_device"`
	RootFSType string `json:"root_fstype"`
	DataDevice string `json:"data_device"`
	// WritableLayer is where the overlay's upper layer lives: "disk" (the
	// ext4 DataDevice, kept across stop and start) or "memory" (a tmpfs in
	// the guest, gone when the VM ends; the data disk is not mounted).
	// Empty means disk.
	WritableLayer string `json:"writable_layer,omitempty"`

	// NoAgent keeps the guest agent from starting: execs and copies are
	// refused by the host, and readiness is the app's process starting.
	NoAgent bool `json:"no_agent,omitempty"`

	// AwaitConfig makes flick-init say hello and then wait for the real
	// Config in a TypeConfig frame instead of using this one: the host
	// snapshots the VM while it waits, and every restore of that snapshot
	// gets its own Config.
	AwaitConfig bool `json:"await_config,omitempty"`
	// Spare, with AwaitConfig, is a spare VMM's boot: nothing is saved at
	// the hello, so flick-init mounts the disks and waits, and leaves
	// what only a snapshot would keep (the link's stand-in address, the
	// app's files read ahead) to the start.
	Spare bool `json:"spare,omitempty"`
	// TimeNS is the host's wall clock (Unix nanoseconds) when it sent a
	// TypeConfig: a restored guest sets its clock from it.
	TimeNS int64 `json:"time_ns,omitempty"`
	// Seed is fresh randomness for the guest's RNG, which a snapshot
	// would otherwise hand to every restore alike.
	Seed []byte `json:"seed,omitempty"`

	// Net configures the guest's one network interface; nil leaves the
	// guest with loopback only.
	Net *Net `json:"net,omitempty"`
}

// Net is the static network config of the guest's interface: no DHCP.
type Net struct {
	// MAC is set on the interface even when the VMM gave it another, as a
	// VM restored from a snapshot has the snapshot's.
	MAC     string   `json:"mac"`
	Address string   `json:"address"` // CIDR, e.g. 10.77.0.5/16
	Gateway string   `json:"gateway"` // default route; empty for none
	DNS     []string `json:"dns,omitempty"`
	Search  string   `json:"search,omitempty"` // DNS search domain
}

// Frame types. Guest to host: Hello, Stdout, Stderr, Event. Host to guest:
// Signal, Ack.
const (
	TypeHello  byte = 1 // payload: JSON Hello
	TypeStdout byte = 2 // payload: raw bytes
	TypeStderr byte = 3 // payload: raw bytes
	TypeEvent  byte = 4 // payload: JSON Event
	TypeSignal byte = 5 // payload: one byte, the signal number, for the app
	TypeAck    byte = 6 // payload: empty; answers an Event of kind "exited"
	TypeConfig byte = 7 // host to guest: JSON Config, for a guest that awaits it
	// TypeRehearse (host to guest, JSON Config) makes a guest that awaits
	// its config go through what a start does with one, short of running
	// an app, and answer with an Event of kind "rehearsed". A VM restored
	// from a snapshot has no translated code under TCG; one that rehearsed
	// starts its app without translating flick-init's and the kernel's
	// paths again.
	TypeRehearse byte = 8
	// TypeClock (host to guest, JSON Clock) sets the guest's wall clock, as
	// after a resume from standby.
	TypeClock byte = 9
	// TypeClone (host to guest, JSON Identity) tells a guest that it is a
	// clone of a running VM and gives it an identity of its own; it
	// answers with an Event of kind "cloned".
	TypeClone byte = 10
	// TypeAgentStart (host to guest, empty) starts the guest agent, once
	// the app has started: the host asks with its first request, so that
	// a VM nobody execs into never pays for an agent. Again, it is a no-op.
	TypeAgentStart byte = 11
)

// Identity is the payload of TypeClone: what makes a clone a machine of
// its own.
type Identity struct {
	Hostname string `json:"hostname"`
	// MachineID is written to /etc/machine-id: 32 hex digits.
	MachineID string `json:"machine_id"`
	// Net is the clone's address; nil for a VM with no network.
	Net    *Net   `json:"net,omitempty"`
	TimeNS int64  `json:"time_ns"`
	Seed   []byte `json:"seed"`
}

// Clock is the payload of TypeClock.
type Clock struct {
	TimeNS int64 `json:"time_ns"`
}

// AckTimeout is how long flick-init waits for the host's Ack before it
// powers off anyway.
const AckTimeout = 5 * time.Second

// MaxPayload bounds a frame so that a corrupt length cannot make a reader
// allocate without limit.
const MaxPayload = 1 << 20

// Hello is the first frame flick-init sends, as soon as its channel is open.
type Hello struct {
	// BootNS is CLOCK_BOOTTIME when flick-init's main started.
	BootNS int64 `json:"boot_ns"`
}

// Event kinds.
const (
	EventExec    = "exec"    // config applied, about to start the app
	EventStarted = "started" // the app's execve succeeded
	EventExited  = "exited"  // the app is gone; the guest powers off after the Ack
	EventFailed  = "failed"  // flick-init could not set up or start the app; Message says why
	// EventAgentExited says the guest agent died; PID 1 starts a new one,
	// which the host must handshake with again.
	EventAgentExited = "agent_exited"
	// EventRehearsed answers TypeRehearse.
	EventRehearsed = "rehearsed"
	// EventCloned answers TypeClone; Message says what failed, if anything.
	EventCloned = "cloned"
)

// Event reports progress of the app's life. After "exited" or "failed"
// flick-init waits up to AckTimeout for an Ack, syncs, unmounts and resets
// the machine (QEMU runs with -no-reboot, so it exits).
type Event struct {
	Kind     string `json:"kind"`
	PID      int    `json:"pid,omitempty"`
	ExitCode int    `json:"exit_code"`
	Signal   int    `json:"signal,omitempty"`
	Message  string `json:"message,omitempty"`
	// BootNS is CLOCK_BOOTTIME in the guest when the event happened.
	BootNS int64 `json:"boot_ns,omitempty"`
}

// Frame is one message on the channel: a type byte, a 4-byte big-endian
// payload length, then the payload.
type Frame struct {
	Type    byte
	Payload []byte
}

// ErrFrameTooLarge is returned for a frame whose length exceeds MaxPayload.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes one frame in a single Write call.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("write frame type %d: %w (%d bytes)", typ, ErrFrameTooLarge, len(payload))
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// WriteJSON writes v as the JSON payload of a frame.
func WriteJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, typ, b)
}

// ReadFrame reads one frame. It returns io.EOF only when the stream ends
// cleanly between frames.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("read frame type %d: %w (%d bytes)", hdr[0], ErrFrameTooLarge, n)
	}
	f := Frame{Type: hdr[0], Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

// MergeEnv returns base with each K=V of over replacing base's K, or added
// at the end when base has no K.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i] = kv
				replaced = true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}
