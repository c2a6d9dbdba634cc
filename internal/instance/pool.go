package instance

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/flick-vm/flick/internal/fsutil"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/vmm"
)

// Zygotes. Restoring a boot snapshot costs a VMM spawn and a device-state
// load on the start's path. A zygote is a VM restored from a boot snapshot
// ahead of time and left running in flick-init, which waits for its config:
// a start of the snapshot's image (with a layer in memory, or the first
// start of an instance with a disk layer, which takes the zygote's data
// disk as its own) claims one and only sends its config. The pool keeps PoolSize zygotes (or the image's
// flick.pool) per snapshot, for the PoolSnapshots snapshots started most
// recently, refilling in the background after each claim; the zygotes of a
// snapshot that falls out of that set are ended. They live in Root/pool and
// die with the daemon.

// zygote is a VM made ahead of its instance: restored from a boot snapshot
// and waiting in flick-init (a zygote proper), or spawned and paused before
// its guest's first instruction (a spare VMM, spares.go; no ctl, no net).
type zygote struct {
	id      string
	dir     string // its run directory, sockets included
	vm      vmm.VM
	ctl     net.Conn // flick-init's channel, dialled before the restore resumed
	console string
	data    string // its data disk, a disk-layer instance's from the claim
	tap     string // its TAP, plugged into the instance's network at claim
	// net is the address held for it (Networks.Reserve), which its link
	// is set up with: the instance that claims it on that network takes
	// the address, and the start skips configuring the link. Nil when it
	// has none.
	net     *wire.Net
	release func() // gives back net's address, if no instance took it
	// root is the root disk file a spare VMM was spawned over; nil for a
	// stand-in, and for zygotes.
	root os.FileInfo
}

// pool holds VMs made ahead of time (zygotes, or spare VMMs) by key, for
// the keep keys used most recently.
type pool struct {
	kind    string // what it holds, for the log
	mu      sync.Mutex
	keep    int                  // keys with VMs, at most
	idle    map[string][]*zygote // by key
	filling map[string]int
	used    map[string]time.Time // when a start last used each key
	closed  bool
	wg      sync.WaitGroup
}

func newPool(kind string, keep int) *pool {
	return &pool{kind: kind, keep: keep, idle: map[string][]*zygote{}, filling: map[string]int{}, used: map[string]time.Time{}}
}

// evictLocked ends the idle VMs of the keys beyond the keep most recently
// used; VMs still being made are ended when they are ready.
func (p *pool) evictLocked() []*zygote {
	if len(p.used) <= p.keep {
		return nil
	}
	keys := make([]string, 0, len(p.used))
	for k := range p.used {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return p.used[keys[i]].After(p.used[keys[j]]) })
	var out []*zygote
	for _, k := range keys[p.keep:] {
		out = append(out, p.idle[k]...)
		delete(p.idle, k)
		delete(p.used, k)
	}
	return out
}

func (m *Manager) poolDir() string { return filepath.Join(m.cfg.Root, "pool") }

// claim takes an idle VM of key, if there is one whose VMM still runs.
func (p *pool) claim(key string) *zygote {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle[key]) > 0 {
		z := p.idle[key][0]
		p.idle[key] = p.idle[key][1:]
		select {
		case <-z.vm.Done():
			go z.discard()
			continue
		default:
		}
		return z
	}
	return nil
}

// fillPool makes zygotes of key, restored as spec says (ID, Dir, console
// and data disk are the zygote's own) and rehearsed with drill, with an
// address of network held for each, until the pool holds size of them,
// and ends those of the snapshots used least recently.
func (m *Manager) fillPool(key string, size int, spec vmm.Spec, drill wire.Config, network string) {
	m.fill(m.pool, key, size, func() (*zygote, error) { return m.makeZygote(spec, drill, network) })
}

// fill has newVM make VMs of key until p holds size of them, and ends those of
// the keys used least recently.
func (m *Manager) fill(p *pool, key string, size int, newVM func() (*zygote, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if size <= 0 {
		m.log.Debug("no "+p.kind+"s kept for this key", "key", key)
		for _, z := range p.idle[key] {
			go z.discard()
		}
		delete(p.idle, key)
		delete(p.used, key)
		return
	}
	p.used[key] = time.Now()
	for _, z := range p.evictLocked() {
		m.log.Info(p.kind+" ended: its key is not among the most recently used", "id", z.id)
		go z.discard()
	}
	for n := len(p.idle[key]) + p.filling[key]; n < size; n++ {
		p.filling[key]++
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			z, err := newVM()
			p.mu.Lock()
			defer p.mu.Unlock()
			p.filling[key]--
			switch {
			case err != nil:
				m.log.Warn(p.kind+" not made", "key", key, "err", err)
			case p.closed:
				z.discard()
			case p.used[key].IsZero():
				// Evicted while it was being made.
				go z.discard()
			default:
				p.idle[key] = append(p.idle[key], z)
				addr := ""
				if z.net != nil {
					addr = z.net.Address
				}
				m.log.Info(p.kind+" ready", "key", key, "id", z.id, "pid", z.vm.Handle().PID, "addr", addr)
				go m.watchPooled(p, key, z)
			}
		}()
	}
}

// watchPooled discards z, of p's VMs of key, if its VMM exits while it is
// idle there, so that nothing of it waits for a claim to find it dead.
func (m *Manager) watchPooled(p *pool, key string, z *zygote) {
	<-z.vm.Done()
	p.mu.Lock()
	i := slices.Index(p.idle[key], z)
	if i >= 0 {
		p.idle[key] = slices.Delete(p.idle[key], i, i+1)
	}
	p.mu.Unlock()
	if i >= 0 {
		m.log.Warn(p.kind+" exited while idle", "key", key, "id", z.id)
		z.discard()
	}
}

// newPoolVM makes the run directory, console, data disk and (when spec
// has a NIC) TAP of a VM made ahead of time, and returns it with spec
// made its own. The caller closes tap once the VMM holds it.
func (m *Manager) newPoolVM(spec vmm.Spec) (z *zygote, _ vmm.Spec, tap *os.File, _ error) {
	id := newID()
	z = &zygote{id: id, dir: filepath.Join(m.poolDir(), id)}
	if err := os.MkdirAll(z.dir, 0o750); err != nil {
		return nil, spec, nil, err
	}
	z.console = filepath.Join(z.dir, "console.log")
	z.data = filepath.Join(z.dir, "data.ext4")
	if err := fsutil.CopySparse(m.template, z.data, false); err != nil {
		_ = os.RemoveAll(z.dir)
		return nil, spec, nil, err
	}
	spec.ID, spec.Dir, spec.ConsoleLog = id, z.dir, z.console
	spec.Disks = append([]vmm.Disk(nil), spec.Disks...)
	spec.Disks[1].Path = z.data
	if spec.NIC != nil {
		f, name, err := m.cfg.Networks.OpenTAP(id)
		if err != nil {
			_ = os.RemoveAll(z.dir)
			return nil, spec, nil, err
		}
		nic := *spec.NIC
		nic.TAP = f
		spec.NIC = &nic
		z.tap, tap = name, f
	}
	return z, spec, tap, nil
}

// makeZygote restores spec's snapshot into a VM of its own, lets it run
// and has it rehearse a start with drill, on an address of network held
// for it.
func (m *Manager) makeZygote(spec vmm.Spec, drill wire.Config, network string) (*zygote, error) {
	z, spec, tap, err := m.newPoolVM(spec)
	if err != nil {
		return nil, err
	}
	if tap != nil {
		defer tap.Close() // the VMM holds it
	}
	release, err := m.bootSlot(context.Background())
	if err != nil {
		z.discard()
		return nil, err
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	defer cancel()
	if spec.NIC != nil && drill.Net != nil {
		// Not having one costs the start its link's set-up.
		if n, err := m.cfg.Networks.Reserve(network, z.id); err != nil {
			m.log.Warn("zygote: no address held for it", "zygote", z.id, "err", err)
		} else {
			id := z.id
			z.net, z.release = n, func() { m.cfg.Networks.Release(id) }
		}
	}
	vm, err := m.cfg.Driver.Start(ctx, spec)
	if err != nil {
		z.discard()
		return nil, err
	}
	z.vm = vm
	if z.ctl, err = vm.DialControl(ctx); err == nil {
		err = vm.Resume(ctx)
	}
	if err == nil {
		err = rehearse(ctx, z.ctl, drill, z.net)
	}
	if err != nil {
		z.discard()
		return nil, fmt.Errorf("zygote: %w", err)
	}
	return z, nil
}

// rehearse has the guest on ctl go through a start with drill and waits
// for it to say it did. Its link ends up configured with held, the
// address held for the zygote, or with a link-local stand-in.
func rehearse(ctx context.Context, ctl net.Conn, drill wire.Config, held *wire.Net) error {
	drill.Hostname = "zygote"
	drill.TimeNS = time.Now().UnixNano()
	// A seed of its own: the zygote's RNG parts from its snapshot's here,
	// and the reseed the start repeats is translated code by then.
	drill.Seed = make([]byte, 32)
	if _, err := rand.Read(drill.Seed); err != nil {
		return fmt.Errorf("rehearse: %w", err)
	}
	switch {
	case drill.Net != nil && held != nil:
		// The zygote's TAP is on no bridge until a start claims it, but
		// its address is the one that start will have.
		drill.Net = held
	case drill.Net != nil:
		// A link-local stand-in, which the start replaces.
		drill.Net = &wire.Net{MAC: "02:fc:a9:fe:00:02", Address: "169.254.0.2/16", Gateway: "169.254.0.1", DNS: []string{"169.254.0.1"}, Search: drill.Net.Search}
	}
	payload, _ := json.Marshal(drill)
	dl, _ := ctx.Deadline()
	_ = ctl.SetDeadline(dl)
	defer ctl.SetDeadline(time.Time{})
	if err := wire.WriteFrame(ctl, wire.TypeRehearse, payload); err != nil {
		return fmt.Errorf("rehearse: %w", err)
	}
	for {
		f, err := wire.ReadFrame(ctl)
		if err != nil {
			return fmt.Errorf("rehearse: %w", err)
		}
		var ev wire.Event
		if f.Type == wire.TypeEvent && json.Unmarshal(f.Payload, &ev) == nil && ev.Kind == wire.EventRehearsed {
			return nil
		}
	}
}

// discard kills a zygote and removes its files.
func (z *zygote) discard() {
	if z.ctl != nil {
		z.ctl.Close()
	}
	if z.vm != nil {
		_ = z.vm.Kill()
		<-z.vm.Done()
	}
	if z.release != nil {
		z.release()
	}
	_ = os.RemoveAll(z.dir)
}

// closePool kills every idle zygote and spare VMM, and waits for those
// being made.
func (m *Manager) closePool() {
	for _, p := range []*pool{m.pool, m.spares} {
		p.mu.Lock()
		p.closed = true
		var all []*zygote
		for _, zs := range p.idle {
			all = append(all, zs...)
		}
		p.idle = map[string][]*zygote{}
		p.mu.Unlock()
		for _, z := range all {
			z.discard()
		}
		p.wg.Wait()
	}
}

// cleanPool removes the zygotes of an earlier daemon: their VMMs were
// killed as orphans, their files are left.
func (m *Manager) cleanPool() {
	ents, err := os.ReadDir(m.poolDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("clean pool", "err", err)
		return
	}
	for _, e := range ents {
		_ = os.RemoveAll(filepath.Join(m.poolDir(), e.Name()))
	}
}
