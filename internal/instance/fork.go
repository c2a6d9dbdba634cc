package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/fsutil"
	"github.com/flick-vm/flick/internal/guest/wire"
	"github.com/flick-vm/flick/internal/vmm"
)

// MaxClones bounds one fork.
const MaxClones = 64

// Fork. A running instance is paused for as long as it takes to save it,
// memory in the migration stream (its RAM is private to its VMM), and to
// copy its writable layer for each clone; then it runs on. A converter VMM
// loads that stream into a RAM file of its own and saves the device state
// again without the memory, which turns it into a snapshot like an
// image's boot snapshot: each clone maps the RAM file copy-on-write, so the
// clones share the parent's memory as it was, and is sent an identity of
// its own. The fork's files are removed once the clones run: their VMMs
// hold the RAM file mapped.

func (m *Manager) forkDir() string { return filepath.Join(m.cfg.Root, "forks") }

// Fork makes n clones of a running instance, named NAME-1, NAME-2, ... (the
// first free numbers), and starts them. Clones join the parent's network
// with addresses of their own; they publish no ports.
func (m *Manager) Fork(ctx context.Context, ref string, n int) ([]api.Instance, error) {
	if n < 1 || n > MaxClones {
		return nil, errdefs.InvalidArgument("invalid clone count %d: give 1 to %d", n, MaxClones)
	}
	parent, err := m.lookup(ref)
	if err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	parent.op.Lock()
	parent.mu.Lock()
	r, prec := parent.run, parent.rec
	parent.mu.Unlock()
	if r == nil || prec.State != api.StateRunning {
		parent.op.Unlock()
		return nil, errdefs.Conflict("instance %s is %s, not running: only a running instance can be forked", prec.Name, prec.State)
	}

	// The clones' records, so that their names are taken at once.
	clones, err := m.createClones(ctx, prec, n)
	if err != nil {
		parent.op.Unlock()
		return nil, err
	}
	removeClones := func() {
		for _, c := range clones {
			c.op.Lock()
			_ = m.removeLocked(context.Background(), c, true)
			c.op.Unlock()
		}
	}

	t0 := time.Now()
	dir := filepath.Join(m.forkDir(), newID())
	snap, err := m.saveFork(ctx, parent, r, dir, clones)
	parent.op.Unlock()
	defer os.RemoveAll(dir)
	if err != nil {
		removeClones()
		return nil, fmt.Errorf("fork %s: %w", prec.Name, err)
	}
	m.log.Info("forked", "vm", prec.ID, "name", prec.Name, "clones", n, "save_ms", ms(time.Since(t0)))

	out := make([]api.Instance, 0, n)
	var errs []error
	for _, c := range clones {
		c.op.Lock()
		c.mu.Lock()
		c.clone = snap
		c.mu.Unlock()
		v, err := m.startLocked(ctx, c)
		c.op.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("clone %s: %w", v.Name, err))
		}
		out = append(out, v)
	}
	return out, errors.Join(errs...)
}

// createClones makes the records of n clones of the instance rec.
func (m *Manager) createClones(ctx context.Context, rec record, n int) ([]*inst, error) {
	cfg := rec.Config
	// Host ports are the parent's; the clones are reached by address.
	cfg.Ports, cfg.IdleStandby, cfg.AutoRemove = nil, 0, false
	var out []*inst
	next := 1
	for range n {
		var name string
		for {
			name = rec.Name + "-" + strconv.Itoa(next)
			next++
			if _, err := m.lookup(name); err != nil {
				break
			}
		}
		v, err := m.Create(ctx, api.CreateRequest{Name: name, Image: rec.ImageID, InstanceConfig: cfg})
		if err != nil {
			for _, c := range out {
				_ = m.removeLocked(context.Background(), c, true)
			}
			return nil, err
		}
		c, err := m.lookup(v.ID)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.rec.Image = rec.Image
		m.persistLocked(c)
		c.mu.Unlock()
		out = append(out, c)
	}
	return out, nil
}

// saveFork pauses the parent, saves it with its memory into dir, copies its
// writable layer to every clone, lets it run again, and converts the save
// into a snapshot whose RAM clones can map.
func (m *Manager) saveFork(ctx context.Context, parent *inst, r *running, dir string, clones []*inst) (*vmm.Snapshot, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	stream := filepath.Join(dir, "stream")
	err := r.vm.SaveSnapshot(ctx, vmm.Snapshot{State: stream})
	if err == nil && firstNonEmpty(parent.rec.Config.WritableLayer, wire.LayerDisk) == wire.LayerDisk {
		// QEMU flushed the disk for the migration: the layer matches the
		// memory that was saved.
		src := filepath.Join(parent.rec.Dir, "data.ext4")
		for _, c := range clones {
			if err = fsutil.CopySparse(src, filepath.Join(c.rec.Dir, "data.ext4"), false); err != nil {
				break
			}
		}
	}
	if rerr := r.vm.Resume(ctx); rerr != nil {
		m.log.Error("fork: the parent did not run again", "vm", parent.rec.ID, "err", rerr)
		if err == nil {
			err = fmt.Errorf("the parent did not run again: %w", rerr)
		}
	}
	if err != nil {
		return nil, err
	}
	return m.convertFork(ctx, parent.rec, dir, stream, clones[0])
}

// convertFork loads a save whose memory is in the stream into a VMM whose
// RAM is a file in dir, and saves it again without the memory.
func (m *Manager) convertFork(ctx context.Context, rec record, dir, stream string, first *inst) (*vmm.Snapshot, error) {
	img, err := m.cfg.Images.Resolve(ctx, rec.ImageID)
	if err != nil {
		return nil, err
	}
	rootDisk, _, err := m.cfg.Images.RootDisk(ctx, img.Digest)
	if err != nil {
		return nil, err
	}
	// The converter's devices are the parent's; it never runs, so the
	// first clone's layer (the parent's is in use) and any TAP serve.
	data := filepath.Join(first.rec.Dir, "data.ext4")
	if _, err := os.Stat(data); err != nil {
		data = filepath.Join(dir, "data.ext4")
		if err := fsutil.CopySparse(m.template, data, false); err != nil {
			return nil, err
		}
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, []byte(`{"await_config":true}`), 0o600); err != nil {
		return nil, err
	}
	id := newID()
	run := filepath.Join(m.cfg.RunDir, id)
	if err := os.MkdirAll(run, 0o750); err != nil {
		return nil, err
	}
	defer os.RemoveAll(run)
	accel := firstNonEmpty(rec.Accel, vmm.PickAccel(rec.Config.Accel))
	snap := &vmm.Snapshot{RAM: filepath.Join(dir, "ram"), State: filepath.Join(dir, "state")}
	spec := m.vmSpec(id, rec.Config, accel, rootDisk, data)
	spec.Dir, spec.GuestConfig, spec.ConsoleLog = run, cfgPath, filepath.Join(dir, "console.log")
	spec.Restore, spec.RAMFile = &vmm.Snapshot{State: stream}, snap.RAM
	if m.cfg.Networks != nil {
		if a, ok := m.cfg.Networks.Attachment(rec.ID); ok {
			f, _, err := m.cfg.Networks.OpenTAP(id)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			spec.NIC = &vmm.NIC{TAP: f, MAC: a.MAC}
		}
	}
	vm, err := m.cfg.Driver.Start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("load the parent's save: %w", err)
	}
	defer func() {
		_ = vm.Kill()
		<-vm.Done()
	}()
	if err := vm.SaveSnapshot(ctx, *snap); err != nil {
		return nil, err
	}
	_ = os.Remove(stream)
	return snap, nil
}
