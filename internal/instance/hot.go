package instance

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/guest/wire"
)

// Hot standby. A standby saves the VM to its directory; that save is what
// survives a daemon restart and what a resume loads. With Config.HotStandby
// the VMM is not ended at once but kept paused for that long: a resume
// within it continues the very same VM with a QMP cont, a millisecond,
// where loading the save costs a VMM spawn and a restore, and under TCG
// a guest whose translated code is gone (hundreds of milliseconds before
// its first reply). The record says standby either way; only the memory
// held differs, and while the host has less than an eighth of its memory
// available a standby ends the VMM at once. A daemon that restarts finds
// the paused VMM unowned and ends it (killOrphans): the instance stands by
// from its save.

// holdHot keeps r's paused VMM for d, then ends it.
func (r *running) holdHot(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hotTimer = time.AfterFunc(d, func() { _ = r.vm.Kill() })
}

// takeHot claims r's paused VMM for a resume. It is false when there is
// none, or when its time is up and it is being ended.
func (r *running) takeHot() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hotTimer == nil || !r.hotTimer.Stop() {
		return false
	}
	r.hotTimer, r.standby = nil, false
	return true
}

// endHot ends r's paused VMM now, if r has one, leaving the instance
// standing by from its save; false when it had none.
func (r *running) endHot() bool {
	r.mu.Lock()
	hot := r.hotTimer != nil && r.hotTimer.Stop()
	r.hotTimer = nil
	r.mu.Unlock()
	if hot {
		_ = r.vm.Kill()
	}
	return hot
}

func (r *running) isHot() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hotTimer != nil
}

// stopHot forgets the timer of a VMM that ended.
func (r *running) stopHot() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hotTimer != nil {
		r.hotTimer.Stop()
		r.hotTimer = nil
	}
}

// standByHot records a saved instance as standing by while its VMM stays,
// paused, for d; in.op held.
func (m *Manager) standByHot(in *inst, r *running, d time.Duration) {
	r.mu.Lock()
	r.standby = true
	r.mu.Unlock()
	if m.cfg.Networks != nil {
		if err := m.cfg.Networks.Standby(in.rec.ID); err != nil {
			m.log.Warn("network standby", "vm", in.rec.ID, "err", err)
		}
	}
	in.mu.Lock()
	in.rec.State = api.StateStandby
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()
	r.holdHot(d)
	m.log.Info("standing by; the VMM stays paused for a quick resume", "vm", in.rec.ID, "name", in.rec.Name, "for", d)
}

// resumeHot continues the paused VMM of a hot standby that takeHot
// claimed; in.op held. If that fails, the VMM is ended and the instance
// resumes from its save.
func (m *Manager) resumeHot(ctx context.Context, in *inst, r *running) (api.Instance, error) {
	t0 := time.Now()
	in.mu.Lock()
	in.rec.State = api.StateStarting
	in.rec.Error = ""
	rec := in.rec
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()

	phases := map[string]float64{}
	t := t0
	fallBack := func(err error) (api.Instance, error) {
		m.log.Warn("hot resume failed; resuming from the save", "vm", rec.ID, "err", err)
		r.mu.Lock()
		r.standby = true
		r.mu.Unlock()
		_ = r.vm.Kill()
		<-r.finished
		return m.startLocked(ctx, in)
	}
	netName := firstNonEmpty(rec.Config.Network, api.NetworkDefault)
	if m.cfg.Networks != nil && netName != api.NetworkNone {
		// The VMM kept its TAP on the bridge: only the published ports
		// come back.
		if _, err := m.cfg.Networks.Attach(ctx, rec.attachRequest()); err != nil {
			return fallBack(err)
		}
		now := time.Now()
		phases[api.PhaseNetwork] = ms(now.Sub(t))
		t = now
	}
	if err := r.vm.Resume(ctx); err != nil {
		return fallBack(err)
	}
	// The app ran on where it was paused; only the clock is behind.
	payload, _ := json.Marshal(wire.Clock{TimeNS: time.Now().UnixNano()})
	if err := r.send(wire.TypeClock, payload); err != nil {
		m.log.Warn("set the guest clock", "vm", rec.ID, "err", err)
	}
	phases[api.PhaseRestore] = ms(time.Since(t))

	now := time.Now().UTC()
	in.mu.Lock()
	in.rec.State = api.StateRunning
	in.rec.StartMode = api.StartResume
	in.rec.Started = &now
	in.rec.Phases = phases
	in.rec.BootMS = ms(time.Since(t0))
	bootMS := in.rec.BootMS
	m.persistLocked(in)
	in.notifyLocked()
	in.mu.Unlock()
	// The save is stale now. A daemon that dies before this line finds a
	// running VMM beside a whole save and ends the standby from the save.
	m.discardSave(in)
	m.log.Info("resumed the paused VMM of a standby", "vm", rec.ID, "name", rec.Name, "boot_ms", bootMS)
	m.watchIdle(in, r)
	return m.view(in), nil
}

// discardSave removes the standby save of an instance that runs again. It
// is renamed out of the way at once, and deleted in the background: freeing
// the blocks of a save of tens of MB takes ~10 ms, which a resume need not
// wait for. A daemon that dies meanwhile leaves a .stale file, which
// reattach removes.
func (m *Manager) discardSave(in *inst) {
	path := in.standbyPath()
	stale := path + ".stale"
	if err := os.Rename(path, stale); err != nil {
		if !os.IsNotExist(err) {
			m.log.Warn("remove the standby save", "vm", in.rec.ID, "err", err)
		}
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := os.Remove(stale); err != nil {
			m.log.Warn("remove the standby save", "vm", in.rec.ID, "err", err)
		}
	}()
}

// memoryToSpare tells whether the host can keep a paused VMM's memory: at
// least an eighth of its memory is still available (MemAvailable of
// /proc/meminfo, which counts the paused VMM's as used already). Without
// the file it says yes.
func memoryToSpare() bool {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return true
	}
	total, avail, ok := parseMeminfo(b)
	return !ok || avail >= total/8
}

// parseMeminfo returns MemTotal and MemAvailable of a /proc/meminfo, in kB.
func parseMeminfo(b []byte) (total, avail int64, ok bool) {
	var haveTotal, haveAvail bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total, haveTotal = v, true
		case "MemAvailable:":
			avail, haveAvail = v, true
		}
	}
	return total, avail, haveTotal && haveAvail
}
