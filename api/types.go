// Package api holds the wire types of flickd's REST API and a Go client for
// it. The CLI and the end-to-end tests reach the daemon only through here.
package api

import "time"

// Instance states.
const (
	StateCreated  = "created"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateExited   = "exited"
	StateFailed   = "failed"
	// StateStandby is an instance whose VM was saved, memory and devices,
	// and ended: no CPU and no RAM until it is resumed.
	StateStandby = "standby"
)

// Boot phases, in the order they happen. Every start records each of them
// in milliseconds.
const (
	PhaseImage  = "image"  // resolve the image reference to a digest
	PhaseDisk   = "disk"   // root disk (built once per digest) and writable layer
	PhaseVMM    = "vmm"    // spawn QEMU until QMP answers
	PhaseKernel = "kernel" // vCPUs started until flick-init says hello
	PhaseInit   = "init"   // hello until flick-init is about to exec the app
	PhaseApp    = "app"    // exec until the app's process is running
	// PhaseReady is the app's process running until its readiness check
	// passes; recorded only for instances that have one.
	PhaseReady = "ready"
	// PhaseSnapshot is saving the image's boot snapshot, on the boot that
	// takes it; PhaseRestore is loading it, on the starts that use it
	// (they have no kernel phase).
	PhaseSnapshot = "snapshot"
	PhaseRestore  = "restore"
	// PhaseQueue is the wait for a boot slot, before the image phase, when
	// the daemon was already starting as many VMs as it lets run at once.
	PhaseQueue = "queue"
	// PhaseNetwork is the instance's address, published ports and TAP,
	// after the disk phase; recorded for instances on a network.
	PhaseNetwork = "network"
)

// Start modes: how an instance's VM came up.
const (
	StartCold     = "cold"     // booted the kernel
	StartSnapshot = "snapshot" // restored the image's boot snapshot
	StartResume   = "resume"   // restored the instance's own standby state
	StartFork     = "fork"     // restored a snapshot of another, running instance
)

// Phases lists the boot phases that every start records, in order;
// PhaseReady follows them when the instance has a readiness check.
var Phases = []string{PhaseImage, PhaseDisk, PhaseVMM, PhaseKernel, PhaseInit, PhaseApp}

// Instance is a microVM running one image.
type Instance struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Image   string    `json:"image"`        // the reference as the user gave it
	ImageID string    `json:"image_digest"` // manifest digest, sha256:...
	Created time.Time `json:"created"`

	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
	// ExitCode is the app's exit code once the instance has exited: 128+N
	// when signal N killed it. Nil before.
	ExitCode *int   `json:"exit_code"`
	Error    string `json:"error,omitempty"`

	Config InstanceConfig `json:"config"`

	// StartMode is how the last start brought the VM up: cold or snapshot.
	StartMode string `json:"start_mode,omitempty"`
	// SpareVMM says that the last start, a cold boot, ran in a VMM
	// spawned ahead of it (flickd --spare-vmms): the guest booted from
	// nothing, the VMM process did not start on the boot's path.
	SpareVMM bool `json:"spare_vmm,omitempty"`
	// BootMS is the wall time of the last start, from the start request to
	// the app running; Phases splits it.
	BootMS float64            `json:"boot_ms"`
	Phases map[string]float64 `json:"phases"`

	PID int `json:"pid,omitempty"` // the VMM's process id while it runs
	// RSSBytes is the resident set size of the VMM process while it runs.
	RSSBytes   int64  `json:"rss_bytes,omitempty"`
	Accel      string `json:"accel,omitempty"`
	ConsoleLog string `json:"console_log,omitempty"`

	// IP is the instance's address on its network while it has one; MAC
	// its interface's.
	IP  string `json:"ip,omitempty"`
	MAC string `json:"mac,omitempty"`
	// Ports are the published ports as bound, host ports resolved.
	Ports []PortMapping `json:"ports,omitempty"`

	// SizeBytes is the disk that the instance's own files take: its
	// writable layer (the blocks written, not the layer's size), a
	// standby save and its logs. Shown by inspect, and by list with size.
	SizeBytes int64 `json:"size_bytes,omitempty"`
}

// InstanceConfig is what the user asked for at create time.
type InstanceConfig struct {
	Entrypoint  []string `json:"entrypoint,omitempty"` // overrides the image's
	Cmd         []string `json:"cmd,omitempty"`        // overrides the image's
	Env         []string `json:"env,omitempty"`        // K=V, added to the image's
	WorkingDir  string   `json:"working_dir,omitempty"`
	User        string   `json:"user,omitempty"`
	CPUs        int      `json:"cpus,omitempty"`       // default 1
	MemoryMiB   int      `json:"memory_mib,omitempty"` // default 128
	AutoRemove  bool     `json:"auto_remove,omitempty"`
	StopSignal  string   `json:"stop_signal,omitempty"`  // overrides the image's
	StopTimeout int      `json:"stop_timeout,omitempty"` // seconds, default 10
	Accel       string   `json:"accel,omitempty"`        // auto, kvm or tcg
	Kernel      string   `json:"kernel,omitempty"`       // a vmlinux path; default the daemon's for the vCPUs
	// WritableLayer is where the instance's writes go: "disk" (an ext4
	// layer kept across stop and start; the default) or "memory" (guest
	// RAM, up to half of it, gone when the VM stops; faster to boot).
	WritableLayer string `json:"writable_layer,omitempty"`
	// NoAgent runs no guest agent: exec and cp answer 409, and the
	// instance is running as soon as its app's process is.
	NoAgent bool `json:"no_agent,omitempty"`
	// Ready is a readiness check, "tcp:PORT" or "http://:PORT/PATH", run
	// in the guest by the agent until it passes: the instance is running
	// only then. Empty means the image's label flick.ready, if any.
	Ready string `json:"ready,omitempty"`
	// ReadyTimeout is how long the check may take, in seconds (default 60).
	ReadyTimeout int `json:"ready_timeout,omitempty"`
	// ColdBoot always boots the kernel: no boot snapshot is restored or
	// taken for this instance.
	ColdBoot bool `json:"cold_boot,omitempty"`
	// Network is the network the instance joins: a name from
	// /v1/networks, "none" for loopback only; empty means "default".
	Network string `json:"network,omitempty"`
	// Ports are published ports (-p).
	Ports []PortMapping `json:"ports,omitempty"`
	// IdleStandby, in seconds, stands the instance by once its published
	// ports have had no connection for that long; the next connection
	// is held while it resumes, then served. Its ports are then served by
	// flickd's proxy alone, so guests see flickd's address as the
	// client's. 0 never.
	IdleStandby int `json:"idle_standby,omitempty"`
}

// Network names with a meaning of their own.
const (
	NetworkDefault = "default" // the network an instance joins unless told
	NetworkNone    = "none"    // no interface but loopback
)

// PortMapping publishes a guest port on the host: traffic to HostIP:HostPort
// reaches the instance's GuestPort.
type PortMapping struct {
	// HostIP is the host address to listen on; empty means all of them.
	HostIP string `json:"host_ip,omitempty"`
	// HostPort 0 asks the daemon to pick a free port; the instance's view
	// then shows the one it picked.
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"` // "tcp" or "udp"
}

// Network is an isolated layer-2 network with its own subnet, bridge, NAT
// to the host's uplink and DNS names under NetworkDomain.
type Network struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Subnet  string    `json:"subnet"`  // CIDR, e.g. 10.88.0.0/24
	Gateway string    `json:"gateway"` // the host's address on it; also its DNS server
	Bridge  string    `json:"bridge"`  // the host's bridge interface
	Created time.Time `json:"created"`
	// Instances counts the instances attached to it (any state).
	Instances int `json:"instances"`
}

// NetworkDomain is the DNS suffix under which instances resolve on their
// network: NAME.flick.internal.
const NetworkDomain = "flick.internal"

// ForkRequest is the body of POST /v1/instances/{id}/fork.
type ForkRequest struct {
	Count int `json:"count"` // clones to make, 1 to 64
}

// NetworkCreateRequest is the body of POST /v1/networks.
type NetworkCreateRequest struct {
	Name   string `json:"name"`
	Subnet string `json:"subnet,omitempty"` // default: a free /24 chosen by the daemon
}

// CreateRequest is the body of POST /v1/instances.
type CreateRequest struct {
	Name  string `json:"name,omitempty"`
	Image string `json:"image"`
	InstanceConfig
}

// ExecRequest is the first message a client sends on the WebSocket of GET
// /v1/instances/{id}/exec.
type ExecRequest struct {
	Cmd        []string `json:"cmd"`
	Env        []string `json:"env,omitempty"`         // K=V, over the instance's
	WorkingDir string   `json:"working_dir,omitempty"` // default the instance's
	User       string   `json:"user,omitempty"`        // default the instance's
	TTY        bool     `json:"tty,omitempty"`
	Stdin      bool     `json:"stdin,omitempty"`
	Rows       uint16   `json:"rows,omitempty"` // the terminal's size, with TTY
	Cols       uint16   `json:"cols,omitempty"`
}

// Exec stream message types: the first byte of every binary WebSocket
// message; the rest is the payload.
const (
	ExecStdout     byte = 2  // server: output (all of it with a TTY)
	ExecStderr     byte = 3  // server: error output
	ExecSignal     byte = 5  // client: one byte, a signal number for the process
	ExecStdin      byte = 18 // client: input
	ExecStdinClose byte = 19 // client: end of input; no payload
	ExecResize     byte = 20 // client: JSON {"rows":N,"cols":N}
	ExecExitStatus byte = 21 // server, last: JSON ExecExit
)

// ExecExit ends an exec: the process's exit code (127 not found, 126 not
// executable, 128+N killed by signal N).
type ExecExit struct {
	ExitCode int    `json:"exit_code"`
	Signal   int    `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
}

// PathStat describes a path inside an instance. Mode is a Go fs.FileMode.
type PathStat struct {
	Name       string    `json:"name"`
	Size       int64     `json:"size"`
	Mode       uint32    `json:"mode"`
	ModTime    time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
}

// HeaderPathStat carries the base64 (standard encoding) JSON PathStat of
// the path that GET /v1/instances/{id}/archive streams.
const HeaderPathStat = "X-Flick-Path-Stat"

// Image is a pulled or loaded image.
type Image struct {
	Digest  string    `json:"digest"` // manifest digest
	Names   []string  `json:"names"`  // repo:tag references that point here
	Size    int64     `json:"size"`   // sum of compressed layer sizes
	Created time.Time `json:"created"`
	// DiskSize is the size of the built root disk, 0 until first run.
	DiskSize int64 `json:"disk_size"`
	// SnapshotSize is the disk space of the image's boot snapshots (the
	// blocks their files use), 0 until its first start.
	SnapshotSize int64       `json:"snapshot_size"`
	Config       ImageConfig `json:"config"`
}

// ImageConfig is the part of the OCI image config that flick honours.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	StopSignal string   `json:"stop_signal,omitempty"`
	// Ready is the image's readiness check, from its label flick.ready
	// (same syntax as InstanceConfig.Ready).
	Ready string `json:"ready,omitempty"`
	// Pool, from the label flick.pool (0 to 16), is how many zygotes the
	// daemon keeps of this image instead of its default; nil when unset.
	Pool *int `json:"pool,omitempty"`
}

// ReadyLabel is the image label that gives an image's readiness check.
const ReadyLabel = "flick.ready"

// PoolLabel is the image label that sets how many zygotes of it to keep.
const PoolLabel = "flick.pool"

// MaxPool bounds PoolLabel.
const MaxPool = 16

// PullRequest is the body of POST /v1/images/pull.
type PullRequest struct {
	Ref string `json:"ref"`
}

// LoadRequest is the JSON body of POST /v1/images/load; a body of type
// application/x-tar is loaded as a tarball instead.
type LoadRequest struct {
	Path string `json:"path"` // a docker-archive or OCI tarball, or an oci-layout directory
	Tag  string `json:"tag,omitempty"`
}

// Progress is one line of the NDJSON stream answered by pull and load. The
// last line carries Image or Error.
type Progress struct {
	Status  string `json:"status,omitempty"` // "resolving", "downloading", "done", ...
	Layer   string `json:"layer,omitempty"`  // layer digest
	Current int64  `json:"current,omitempty"`
	Total   int64  `json:"total,omitempty"`
	Image   *Image `json:"image,omitempty"`
	Error   string `json:"error,omitempty"`
}

// WaitResponse answers POST /v1/instances/{id}/wait.
type WaitResponse struct {
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// LogRecord is one line of an instance's app log, as stored and as streamed.
type LogRecord struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // stdout or stderr
	Log    string    `json:"log"`
}

// Version answers GET /v1/version.
type Version struct {
	Version    string `json:"version"`     // flickd's version
	APIVersion string `json:"api_version"` // "v1"
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	// Accel is the accelerator "auto" resolves to on this host: kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// QEMU is the version of the QEMU binary the daemon drives.
	QEMU string `json:"qemu,omitempty"`
}
