// Package instance is flick's engine: it creates instances from images,
// boots them through a vmm.Driver, talks to flick-init over the agent
// channel, records every boot phase and keeps the state in the store so
// that a restarted daemon finds its VMs again.
package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/network"
	"github.com/flick-vm/flick/internal/network/portspec"
	"github.com/flick-vm/flick/internal/store"
	"github.com/flick-vm/flick/internal/vmm"
)

const bucket = "instances"

// Images is what the engine needs of the image store.
type Images interface {
	Resolve(ctx context.Context, ref string) (api.Image, error)
	RootDisk(ctx context.Context, digest string) (path, fstype string, err error)
}

// Networks is what the engine needs of the network manager.
type Networks interface {
	Check(network string) error
	Attach(ctx context.Context, req network.AttachRequest) (network.Attachment, error)
	Attachment(id string) (network.Attachment, bool)
	OpenTAP(id string) (*os.File, string, error)
	// Reserve holds an address for a zygote (holder) and returns its
	// guest config; an Attach with the holder as Reservation takes it,
	// Release gives it back.
	Reserve(network, holder string) (*wire.Net, error)
	Release(holder string)
	Plug(id, tap string) error
	Standby(id string) error
	Detach(id string)
	Reconcile(keep func(id string) bool)
	Activity(id string) (conns int, last time.Time)
}

// Config configures a Manager.
type Config struct {
	Root   string // instance directories live under Root/instances
	RunDir string // short directory for unix sockets; default Root/run
	DB     *store.DB
	Images Images
	Driver vmm.Driver
	// Networks gives instances their networks; nil runs every instance
	// with loopback only.
	Networks Networks
	Logger   *slog.Logger

	Kernel string // default guest kernel (vmlinux) for guests of one vCPU
	// KernelSMP is the default kernel for guests of more vCPUs; empty
	// means Kernel.
	KernelSMP string
	Initrd    string // initramfs holding flick-init
	// Cmdline returns the guest kernel command line for an accelerator.
	Cmdline func(accel string) string

	// Snapshots turns boot snapshots on: the first start of an image
	// saves one and later starts restore it. SnapshotTag names the VMM
	// build and CPU model, which a snapshot is only good for.
	Snapshots   bool
	SnapshotTag string
	// PoolSize is how many zygotes (VMs restored ahead of time) the
	// daemon keeps per boot snapshot in use, unless the image's label
	// flick.pool says otherwise; 0 keeps none.
	PoolSize int
	// PoolSnapshots is how many boot snapshots, the most recently started,
	// have zygotes; those of others are ended. Default 4.
	PoolSnapshots int
	// SpareVMMs is how many VMMs to keep spawned and paused, per shape of
	// VM (kernel, vCPUs, memory, root file system, writable layer,
	// network or none) that cold-booted last, for the next cold boots of
	// that shape; 0 keeps none.
	SpareVMMs int
	// BootSlots is how many VMs may be starting at once (zygotes being
	// made included); further starts queue. Default twice the CPUs.
	BootSlots int
	// HotStandby is how long a standby keeps its VMM, paused, after the
	// save: a resume within it continues the same VM (no restore, and
	// under TCG its translated code is still there) instead of loading
	// the save. The VM's memory is held meanwhile; 0 ends the VMM at
	// once, so that a standby costs no RAM.
	HotStandby time.Duration
	// Resident keeps the files of boot snapshots in memory (package
	// resident), so that a restore reads none of them from disk; nil
	// leaves them to the page cache.
	Resident Resident

	BootTimeout   time.Duration // default 30 s
	DataSizeMiB   int           // size of each writable layer, default 2048
	DefaultMemMiB int           // default 128
}

// Manager owns every instance of one daemon.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	template string

	mu  sync.Mutex
	all map[string]*inst // by id

	pool   *pool         // zygotes
	spares *pool         // spare VMMs
	slots  chan struct{} // boot slots, see bootSlot

	closing chan struct{}
	wg      sync.WaitGroup

	// resident holds the snapshot directories whose files were given to
	// cfg.Resident, kept or not (over its budget): each is tried once.
	resident sync.Map
}

// Resident keeps files in memory.
type Resident interface {
	Add(path string) error
	RemoveUnder(dir string)
}

// record is what the store keeps of an instance.
type record struct {
	api.Instance
	ImageConfig api.ImageConfig `json:"image_config"`
	Handle      *vmm.Handle     `json:"handle,omitempty"`
	Dir         string          `json:"dir"`
	RunDir      string          `json:"run_dir"`
	// KilledByHost is set when the daemon had to end the VMM itself.
	KilledByHost bool `json:"killed_by_host,omitempty"`
	// LastIP is the address of the last start, which the next one asks
	// for again.
	LastIP string `json:"last_ip,omitempty"`
}

// attachRequest is what a start of r asks of the network manager: its
// network, published ports and last address; proxies only, for an
// instance that stands by when idle.
func (r *record) attachRequest() network.AttachRequest {
	return network.AttachRequest{
		ID: r.ID, Name: r.Name, Network: firstNonEmpty(r.Config.Network, api.NetworkDefault),
		Ports: r.Config.Ports, PrevIP: r.LastIP, ProxyOnly: r.Config.IdleStandby > 0,
	}
}

func (r *record) active() bool {
	switch r.State {
	case api.StateStarting, api.StateRunning, api.StateStopping:
		return true
	}
	return false
}

type inst struct {
	// op serialises lifecycle operations (start, stop, rm) on one instance.
	op sync.Mutex

	mu      sync.Mutex
	rec     record
	run     *running
	changed chan struct{}
	// clone is a fork snapshot that the next start restores, once.
	clone *vmm.Snapshot
}

func (in *inst) logPath() string     { return filepath.Join(in.rec.Dir, "app.log") }
func (in *inst) consolePath() string { return filepath.Join(in.rec.Dir, "console.log") }

// standbyPath is where a standby saves the VM.
func (in *inst) standbyPath() string { return filepath.Join(in.rec.Dir, "standby.state") }

// notify wakes everyone waiting for a change of this instance; in.mu held.
func (in *inst) notifyLocked() {
	close(in.changed)
	in.changed = make(chan struct{})
}

func (in *inst) notify() {
	in.mu.Lock()
	in.notifyLocked()
	in.mu.Unlock()
}

// New loads the instances from the store and reconciles them with the VMs
// that are still running: live ones are re-attached, dead ones marked exited.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(cfg.Root, "run")
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 30 * time.Second
	}
	if cfg.DataSizeMiB == 0 {
		cfg.DataSizeMiB = 2048
	}
	if cfg.DefaultMemMiB == 0 {
		cfg.DefaultMemMiB = 128
	}
	if cfg.PoolSnapshots <= 0 {
		cfg.PoolSnapshots = 4
	}
	if cfg.BootSlots <= 0 {
		cfg.BootSlots = 2 * runtime.NumCPU()
	}
	for _, d := range []string{filepath.Join(cfg.Root, "instances"), cfg.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	tpl, err := dataTemplate(ctx, filepath.Join(cfg.Root, "templates"), cfg.DataSizeMiB)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, template: tpl, all: map[string]*inst{}, closing: make(chan struct{}), pool: newPool("zygote", cfg.PoolSnapshots), spares: newPool("spare VMM", spareShapes), slots: make(chan struct{}, cfg.BootSlots)}
	m.cleanSnapshots()
	if cfg.Resident != nil {
		// Every start with a disk layer copies it (its data, ~1 MiB).
		go func() {
			if err := cfg.Resident.Add(tpl); err != nil {
				m.log.Warn("writable-layer template left to the page cache", "err", err)
			}
		}()
	}
	var recs []record
	err = cfg.DB.View(func(tx *store.Tx) error {
		var err error
		recs, err = store.All[record](tx, bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load instances: %w", err)
	}
	for _, r := range recs {
		in := &inst{rec: r, changed: make(chan struct{})}
		m.all[r.ID] = in
		if r.active() {
			m.reattach(ctx, in)
		}
	}
	m.killOrphans()
	if cfg.Networks != nil {
		cfg.Networks.Reconcile(func(id string) bool {
			in, ok := m.all[id]
			return ok && (in.run != nil || in.rec.State == api.StateStandby)
		})
	}
	return m, nil
}

// NetworkUsers names the instances, any state, configured to join
// network.
func (m *Manager) NetworkUsers(network string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, in := range m.all {
		// Config does not change after create.
		if firstNonEmpty(in.rec.Config.Network, api.NetworkDefault) == network {
			out = append(out, in.rec.Name)
		}
	}
	sort.Strings(out)
	return out
}

// killOrphans ends the VMMs of this root that no instance owns: those of a
// daemon that died between spawning a VMM and recording its pid, or of an
// instance removed while its VMM could not be reached.
func (m *Manager) killOrphans() {
	owned := map[int]bool{}
	for _, in := range m.all {
		if in.run != nil {
			owned[in.run.vm.Handle().PID] = true
		}
	}
	// Instances' VMMs, and zygotes of the last daemon's pool (a claimed
	// zygote is owned by its instance).
	for _, dir := range []string{filepath.Join(m.cfg.Root, "instances"), m.poolDir()} {
		running, err := m.cfg.Driver.Running(dir)
		if err != nil {
			m.log.Warn("look for orphan VMMs", "err", err)
			continue
		}
		for id, pid := range running {
			if owned[pid] {
				continue
			}
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.SIGKILL) == nil {
				m.log.Warn("killed an orphan VMM", "vm", id, "pid", pid)
			}
		}
	}
	m.cleanPool()
}

// Close detaches from every VM without stopping it: the VMs outlive the
// daemon and the next one re-attaches.
func (m *Manager) Close() {
	close(m.closing)
	m.closePool()
	m.mu.Lock()
	for _, in := range m.all {
		in.mu.Lock()
		if in.run != nil {
			in.run.detach()
		}
		in.mu.Unlock()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// lookup finds an instance by id, name or unique id prefix.
func (m *Manager) lookup(ref string) (*inst, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lookupLocked(ref)
}

func (m *Manager) lookupLocked(ref string) (*inst, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument("no instance named: give a name or id")
	}
	if in, ok := m.all[ref]; ok {
		return in, nil
	}
	var byPrefix []*inst
	for _, in := range m.all {
		if in.rec.Name == ref {
			return in, nil
		}
		if strings.HasPrefix(in.rec.ID, ref) {
			byPrefix = append(byPrefix, in)
		}
	}
	switch len(byPrefix) {
	case 1:
		return byPrefix[0], nil
	case 0:
		return nil, errdefs.NotFound("no such instance: %s", ref)
	}
	return nil, errdefs.InvalidArgument("instance id prefix %s is ambiguous: give more of the id or the name", ref)
}

// persist writes the record; in.mu held.
func (m *Manager) persistLocked(in *inst) {
	if err := m.cfg.DB.Put(bucket, in.rec.ID, in.rec); err != nil {
		m.log.Error("persist instance", "vm", in.rec.ID, "err", err)
	}
}

func (m *Manager) view(in *inst) api.Instance {
	in.mu.Lock()
	defer in.mu.Unlock()
	v := in.rec.Instance
	v.Config.Env = append([]string(nil), v.Config.Env...)
	v.ConsoleLog = in.consolePath()
	if in.run != nil {
		v.RSSBytes = in.run.vm.RSS()
		v.PID = in.run.vm.Handle().PID
	}
	if v.Phases == nil {
		v.Phases = map[string]float64{}
	}
	if m.cfg.Networks != nil {
		if a, ok := m.cfg.Networks.Attachment(v.ID); ok {
			v.IP, v.MAC, v.Ports = a.IP, a.MAC, a.Ports
		}
	}
	return v
}

// Create makes an instance of an image that is present locally.
func (m *Manager) Create(ctx context.Context, req api.CreateRequest) (api.Instance, error) {
	if req.Image == "" {
		return api.Instance{}, errdefs.InvalidArgument("no image given")
	}
	if req.Name != "" && !nameRE.MatchString(req.Name) {
		return api.Instance{}, errdefs.InvalidArgument("invalid instance name %q: use letters, digits, '_', '.' and '-', starting with a letter or digit", req.Name)
	}
	if req.CPUs < 0 || req.CPUs > 64 {
		return api.Instance{}, errdefs.InvalidArgument("invalid --cpus %d: give 1 to 64", req.CPUs)
	}
	if req.MemoryMiB != 0 && (req.MemoryMiB < 32 || req.MemoryMiB > 1<<20) {
		return api.Instance{}, errdefs.InvalidArgument("invalid --memory %d MiB: give at least 32M", req.MemoryMiB)
	}
	switch req.WritableLayer {
	case "", wire.LayerDisk, wire.LayerMemory:
	default:
		return api.Instance{}, errdefs.InvalidArgument("invalid --layer %q: give disk or memory", req.WritableLayer)
	}
	switch req.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return api.Instance{}, errdefs.InvalidArgument("invalid --accel %q: give auto, kvm or tcg", req.Accel)
	}
	for _, e := range req.Env {
		if k, _, _ := strings.Cut(e, "="); k == "" {
			return api.Instance{}, errdefs.InvalidArgument("invalid environment variable %q: give KEY=VALUE", e)
		}
	}
	if req.StopSignal != "" {
		if _, err := ParseSignal(req.StopSignal); err != nil {
			return api.Instance{}, err
		}
	}
	if req.ReadyTimeout < 0 {
		return api.Instance{}, errdefs.InvalidArgument("invalid --ready-timeout %d: give seconds, 0 for the default", req.ReadyTimeout)
	}
	if req.Ready != "" {
		if req.NoAgent {
			return api.Instance{}, errdefs.InvalidArgument("--ready needs the guest agent, which --no-agent disables")
		}
		if _, err := ParseReady(req.Ready, req.ReadyTimeout); err != nil {
			return api.Instance{}, err
		}
	}
	if err := m.checkNetwork(req.InstanceConfig); err != nil {
		return api.Instance{}, err
	}
	img, err := m.cfg.Images.Resolve(ctx, req.Image)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return api.Instance{}, errdefs.NotFound("image %s not found locally: pull it with flick pull %s", req.Image, req.Image)
		}
		return api.Instance{}, err
	}
	if _, err := guestArgs(img.Config, req.InstanceConfig); err != nil {
		return api.Instance{}, err
	}
	if req.Kernel != "" {
		if err := vmm.CheckPath("kernel", req.Kernel); err != nil {
			return api.Instance{}, errdefs.InvalidArgument("%v", err)
		}
		if _, err := os.Stat(req.Kernel); err != nil {
			return api.Instance{}, errdefs.InvalidArgument("kernel %s: %v", req.Kernel, err)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	id := newID()
	name := req.Name
	if name == "" {
		name = randomName(func(n string) bool { _, err := m.lookupLocked(n); return err == nil })
	}
	for _, in := range m.all {
		if in.rec.Name == name {
			return api.Instance{}, errdefs.Conflict("name %s is already in use by instance %s: remove it (flick rm %s) or choose another name", name, in.rec.ID[:12], name)
		}
	}
	dir := filepath.Join(m.cfg.Root, "instances", id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return api.Instance{}, err
	}
	cfg := req.InstanceConfig
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = m.cfg.DefaultMemMiB
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10
	}
	in := &inst{changed: make(chan struct{}), rec: record{
		Instance: api.Instance{
			ID: id, Name: name, State: api.StateCreated, Image: req.Image, ImageID: img.Digest,
			Created: time.Now().UTC(), Config: cfg, Phases: map[string]float64{},
		},
		ImageConfig: img.Config,
		Dir:         dir,
		RunDir:      filepath.Join(m.cfg.RunDir, id),
	}}
	if err := m.cfg.DB.Put(bucket, id, in.rec); err != nil {
		os.RemoveAll(dir)
		return api.Instance{}, fmt.Errorf("create instance: %w", err)
	}
	m.all[id] = in
	return m.view(in), nil
}

// checkNetwork refuses an unknown network and bad published ports.
func (m *Manager) checkNetwork(c api.InstanceConfig) error {
	for _, p := range c.Ports {
		if err := portspec.Validate(p); err != nil {
			return errdefs.InvalidArgument("%v", err)
		}
	}
	if err := portspec.Conflicts(c.Ports); err != nil {
		return errdefs.InvalidArgument("%v", err)
	}
	if c.IdleStandby < 0 {
		return errdefs.InvalidArgument("invalid --idle-standby %ds: give a duration of a second or more", c.IdleStandby)
	}
	if c.IdleStandby > 0 && len(c.Ports) == 0 {
		return errdefs.InvalidArgument("--idle-standby needs a published port (-p) for the connection that wakes the instance")
	}
	if c.Network == api.NetworkNone {
		if len(c.Ports) > 0 {
			return errdefs.InvalidArgument("published ports need a network: --network none has none")
		}
		return nil
	}
	if m.cfg.Networks == nil {
		if c.Network != "" || len(c.Ports) > 0 {
			return errdefs.Unavailable("this flickd runs without networking (--network none): instances can have no network or published ports")
		}
		return nil
	}
	return m.cfg.Networks.Check(firstNonEmpty(c.Network, api.NetworkDefault))
}

// Get returns one instance.
func (m *Manager) Get(_ context.Context, ref string) (api.Instance, error) {
	in, err := m.lookup(ref)
	if err != nil {
		return api.Instance{}, err
	}
	v := m.view(in)
	v.SizeBytes = diskUsage(in.rec.Dir)
	return v, nil
}

// List returns the instances, newest first; only active ones unless all.
func (m *Manager) List(_ context.Context, all, size bool) []api.Instance {
	m.mu.Lock()
	ins := make([]*inst, 0, len(m.all))
	for _, in := range m.all {
		ins = append(ins, in)
	}
	m.mu.Unlock()
	out := make([]api.Instance, 0, len(ins))
	for _, in := range ins {
		v := m.view(in)
		if all || v.State == api.StateStarting || v.State == api.StateRunning || v.State == api.StateStopping {
			if size {
				v.SizeBytes = diskUsage(in.rec.Dir)
			}
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// InUse reports the name of an instance that uses the image digest; with
// onlyActive, only an instance that is starting, running or stopping counts.
func (m *Manager) InUse(digest string, onlyActive bool) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, in := range m.all {
		in.mu.Lock()
		d, n, active := in.rec.ImageID, in.rec.Name, in.rec.active()
		in.mu.Unlock()
		if d == digest && (active || !onlyActive) {
			return n, true
		}
	}
	return "", false
}

// Remove deletes an instance and everything it left on disk. A running one
// needs force, which kills it.
func (m *Manager) Remove(ctx context.Context, ref string, force bool) error {
	in, err := m.lookup(ref)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	return m.removeLocked(ctx, in, force)
}

// removeLocked removes an instance; in.op held.
func (m *Manager) removeLocked(ctx context.Context, in *inst, force bool) error {
	in.mu.Lock()
	run, active, name := in.run, in.rec.active(), in.rec.Name
	in.mu.Unlock()
	if active && !force {
		return errdefs.Conflict("instance %s is %s: stop it first or remove it with flick rm -f %s", name, in.rec.State, name)
	}
	if run != nil {
		run.kill()
		select {
		case <-run.finished:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	delete(m.all, in.rec.ID)
	m.mu.Unlock()
	if m.cfg.Networks != nil {
		m.cfg.Networks.Detach(in.rec.ID)
	}
	if err := m.cfg.DB.Delete(bucket, in.rec.ID); err != nil {
		return fmt.Errorf("remove instance %s: %w", name, err)
	}
	_ = os.RemoveAll(in.rec.RunDir)
	if err := os.RemoveAll(in.rec.Dir); err != nil {
		return fmt.Errorf("remove instance %s: %w", name, err)
	}
	in.mu.Lock()
	in.rec.State = "removed"
	in.notifyLocked()
	in.mu.Unlock()
	return nil
}
