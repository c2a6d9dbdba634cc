package wire

import "time"

// The agent channel. flick-init's own channel (PortName) carries the boot
// sequence, the app's output and its exit; the guest agent, a separate
// process that PID 1 starts after the app and restarts when it dies, serves
// execs, copies, stats and readiness checks on a second port. After a
// handshake (handshake.go) that port carries a yamux session: every request
// is a stream whose first frame is a TypeRequest.

// AgentPortName is the virtio-serial port of the guest agent.
const AgentPortName = "flick.agent"

// AgentConfigPath is where flick-init leaves the instance's Config for the
// agent, in the initramfs root that the agent starts in.
const AgentConfigPath = "/run/flick/config.json"

// Frame types on agent streams, beside TypeStdout, TypeStderr and
// TypeSignal, which keep their meaning.
const (
	TypeRequest    byte = 16 // host to guest, first frame of a stream: JSON Request
	TypeResult     byte = 17 // guest to host: JSON Result answering the Request
	TypeStdin      byte = 18 // host to guest: raw bytes for the process's stdin
	TypeStdinClose byte = 19 // host to guest: end of stdin; empty
	TypeResize     byte = 20 // host to guest: JSON WindowSize of the TTY
	TypeExit       byte = 21 // guest to host, last frame of an exec: JSON ExitStatus
)

// Request operations.
const (
	OpExec       = "exec"        // run a process; stream frames until TypeExit
	OpStat       = "stat"        // Result.Stat of Path
	OpArchiveGet = "archive_get" // Result, then a tar stream of Path until the stream ends
	OpArchivePut = "archive_put" // a tar stream follows until the host closes; Result after
	OpReady      = "ready"       // Result once Ready passes or its timeout expires
)

// Request opens an agent stream.
type Request struct {
	Op    string      `json:"op"`
	Exec  *ExecSpec   `json:"exec,omitempty"`
	Path  string      `json:"path,omitempty"`
	Ready *ReadyCheck `json:"ready,omitempty"`
}

// ExecSpec is a process to run in the app's root. Empty Env, WorkingDir
// and User mean the app's own; Env entries override the app's.
type ExecSpec struct {
	Args       []string `json:"args"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// TTY gives the process a pseudo-terminal as stdin, stdout and stderr;
	// its output arrives as TypeStdout only.
	TTY  bool       `json:"tty,omitempty"`
	Size WindowSize `json:"size,omitzero"`
	// Stdin connects TypeStdin frames to the process; without it stdin is
	// /dev/null (or, with TTY, a terminal nobody types into).
	Stdin bool `json:"stdin,omitempty"`
}

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Result answers a Request. Status follows HTTP: 0 or 200 is success, 400
// a bad request, 404 a missing path, 408 a readiness check that timed out.
type Result struct {
	Status int       `json:"status,omitempty"`
	Error  string    `json:"error,omitempty"`
	Stat   *PathStat `json:"stat,omitempty"`
}

// PathStat describes a path in the guest, as os.Lstat sees it.
type PathStat struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Mode is a Go fs.FileMode: permission bits plus type bits.
	Mode       uint32    `json:"mode"`
	ModTime    time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
}

// ExitStatus ends an exec stream. ExitCode follows the shell: 127 for a
// command not found, 126 for one that cannot be executed, 128+N for a
// process killed by signal N.
type ExitStatus struct {
	ExitCode int    `json:"exit_code"`
	Signal   int    `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ReadyCheck is what makes an app ready: a TCP port accepting connections
// on the guest's loopback, or an HTTP GET of Path on Port answering 200.
type ReadyCheck struct {
	Kind string `json:"kind"` // "tcp" or "http"
	Port int    `json:"port"`
	Path string `json:"path,omitempty"`
	// TimeoutMS bounds the whole check, IntervalMS the pause between tries.
	TimeoutMS  int `json:"timeout_ms"`
	IntervalMS int `json:"interval_ms"`
}
