package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
)

// fakeDaemon implements just enough of flickd's API, by hand, for the CLI
// tests. It records the calls it gets.
type fakeDaemon struct {
	t    *testing.T
	host string

	mu        sync.Mutex
	calls     []string // "METHOD path?query"
	images    map[string]api.Image
	instances map[string]*api.Instance
	creates   []api.CreateRequest
	nextID    int
	started   map[string]chan struct{}

	// What the app of every instance does.
	logs     []api.LogRecord
	exitCode int
	phases   map[string]float64
	bootMS   float64
	rss      int64
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	f := &fakeDaemon{
		t:         t,
		images:    map[string]api.Image{},
		instances: map[string]*api.Instance{},
		started:   map[string]chan struct{}{},
		phases: map[string]float64{
			api.PhaseImage: 0.1, api.PhaseDisk: 2.3, api.PhaseVMM: 31,
			api.PhaseKernel: 198, api.PhaseInit: 60, api.PhaseApp: 1.2,
		},
		bootMS: 312,
		rss:    35 << 20,
	}
	handlers := map[string]http.HandlerFunc{
		"imageList":       f.imageList,
		"imageInspect":    f.imageInspect,
		"imagePull":       f.imagePull,
		"instanceList":    f.instanceList,
		"instanceCreate":  f.instanceCreate,
		"instanceInspect": f.instanceInspect,
		"instanceStart":   f.instanceStart,
		"instanceKill":    f.instanceKill,
		"instanceWait":    f.instanceWait,
		"instanceRemove":  f.instanceRemove,
		"instanceLogs":    f.instanceLogs,
	}
	mux := http.NewServeMux()
	for _, r := range api.Routes {
		h := handlers[r.Name]
		if h == nil {
			h = func(w http.ResponseWriter, _ *http.Request) {
				writeError(w, http.StatusInternalServerError, "not implemented by the fake")
			}
		}
		mux.HandleFunc(r.Method+" "+r.Pattern, func(w http.ResponseWriter, req *http.Request) {
			f.mu.Lock()
			call := req.Method + " " + req.URL.Path
			if req.URL.RawQuery != "" {
				call += "?" + req.URL.RawQuery
			}
			f.calls = append(f.calls, call)
			f.mu.Unlock()
			h(w, req)
		})
	}
	sock := filepath.Join(t.TempDir(), "flickd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	f.host = "unix://" + sock
	return f
}

func (f *fakeDaemon) addImage(ref string) api.Image {
	img := api.Image{
		Digest:  "sha256:fb3e5f0c1a2b3c4d5e6f",
		Names:   []string{ref},
		Size:    12_345_678,
		Created: time.Now().Add(-time.Hour),
		Config:  api.ImageConfig{Entrypoint: []string{"/bin/app"}, Cmd: []string{"--serve"}},
	}
	f.mu.Lock()
	f.images[ref] = img
	f.mu.Unlock()
	return img
}

// run runs flick against the fake and returns exit code, stdout, stderr.
func (f *fakeDaemon) run(args ...string) (int, string, string) {
	f.t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(f.t.Context(), 20*time.Second)
	defer cancel()
	code := Run(ctx, append([]string{"--host", f.host}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func (f *fakeDaemon) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", api.MediaJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.ErrorResponse{Error: msg})
}

func (f *fakeDaemon) lookup(w http.ResponseWriter, r *http.Request) *api.Instance {
	id := r.PathValue("id")
	for _, in := range f.instances {
		if in.ID == id || in.Name == id || strings.HasPrefix(in.ID, id) {
			return in
		}
	}
	writeError(w, http.StatusNotFound, "no such instance: "+id)
	return nil
}

func (f *fakeDaemon) imageList(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	list := []api.Image{}
	for _, img := range f.images {
		list = append(list, img)
	}
	writeJSON(w, 200, list)
}

func (f *fakeDaemon) imageInspect(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.images[r.PathValue("ref")]
	if !ok {
		writeError(w, 404, "no such image: "+r.PathValue("ref"))
		return
	}
	writeJSON(w, 200, img)
}

func (f *fakeDaemon) imagePull(w http.ResponseWriter, r *http.Request) {
	var req api.PullRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, 400, err.Error())
		return
	}
	w.Header().Set("Content-Type", api.MediaNDJSON)
	enc := json.NewEncoder(w)
	if strings.Contains(req.Ref, "missing") {
		_ = enc.Encode(api.Progress{Status: "resolving"})
		_ = enc.Encode(api.Progress{Error: "image " + req.Ref + " not found in registry 127.0.0.1:5000"})
		return
	}
	_ = enc.Encode(api.Progress{Status: "resolving"})
	_ = enc.Encode(api.Progress{Status: "downloading", Layer: "sha256:1111111111111111", Current: 50, Total: 100})
	_ = enc.Encode(api.Progress{Status: "done", Layer: "sha256:1111111111111111", Current: 100, Total: 100})
	img := f.addImage(req.Ref)
	_ = enc.Encode(api.Progress{Status: "done", Image: &img})
}

func (f *fakeDaemon) instanceList(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := r.URL.Query().Get("all") == "true"
	list := []api.Instance{}
	for _, in := range f.instances {
		if all || in.State == api.StateRunning {
			list = append(list, *in)
		}
	}
	writeJSON(w, 200, list)
}

func (f *fakeDaemon) instanceCreate(w http.ResponseWriter, r *http.Request) {
	var req api.CreateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, 400, err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	img, ok := f.images[req.Image]
	if !ok {
		writeError(w, 404, "image "+req.Image+" not found locally")
		return
	}
	for _, in := range f.instances {
		if req.Name != "" && in.Name == req.Name {
			writeError(w, 409, "name "+req.Name+" is in use by instance "+in.ID[:12])
			return
		}
	}
	f.nextID++
	name := req.Name
	if name == "" {
		name = fmt.Sprintf("inst%d", f.nextID)
	}
	cfg := req.InstanceConfig
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 128
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	in := &api.Instance{
		ID:      fmt.Sprintf("3f2a9c1e0b7d%04d5e6f", f.nextID),
		Name:    name,
		State:   api.StateCreated,
		Image:   req.Image,
		ImageID: img.Digest,
		Created: time.Now().Add(-3 * time.Minute),
		Config:  cfg,
	}
	f.instances[in.ID] = in
	f.started[in.ID] = make(chan struct{})
	writeJSON(w, 201, in)
}

func (f *fakeDaemon) instanceInspect(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in := f.lookup(w, r); in != nil {
		writeJSON(w, 200, in)
	}
}

func (f *fakeDaemon) instanceStart(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.lookup(w, r)
	if in == nil {
		return
	}
	if in.State == api.StateRunning {
		writeError(w, 409, "instance "+in.Name+" is already running")
		return
	}
	now := time.Now()
	in.State = api.StateRunning
	in.Started = &now
	in.BootMS = f.bootMS
	in.Phases = f.phases
	in.Accel = "tcg"
	in.RSSBytes = f.rss
	close(f.started[in.ID])
	writeJSON(w, 200, in)
}

func (f *fakeDaemon) instanceKill(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in := f.lookup(w, r); in != nil {
		writeJSON(w, 200, in)
	}
}

// exit makes a running instance exit with f.exitCode.
func (f *fakeDaemon) exit(in *api.Instance) {
	if in.State == api.StateRunning {
		now := time.Now()
		code := f.exitCode
		in.State, in.Finished, in.ExitCode = api.StateExited, &now, &code
	}
}

func (f *fakeDaemon) instanceWait(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	in := f.lookup(w, r)
	if in == nil {
		f.mu.Unlock()
		return
	}
	started := f.started[in.ID]
	f.mu.Unlock()
	select {
	case <-started:
	case <-r.Context().Done():
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exit(in)
	writeJSON(w, 200, api.WaitResponse{ExitCode: *in.ExitCode})
}

func (f *fakeDaemon) instanceRemove(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.lookup(w, r)
	if in == nil {
		return
	}
	if in.State == api.StateRunning && r.URL.Query().Get("force") != "true" {
		writeError(w, 409, "instance "+in.Name+" is running: stop it first or use rm -f")
		return
	}
	delete(f.instances, in.ID)
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeDaemon) instanceLogs(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	in := f.lookup(w, r)
	if in == nil {
		f.mu.Unlock()
		return
	}
	started := f.started[in.ID]
	f.mu.Unlock()
	w.Header().Set("Content-Type", api.MediaNDJSON)
	w.WriteHeader(200)
	w.(http.Flusher).Flush()
	if r.URL.Query().Get("follow") == "true" {
		select {
		case <-started:
		case <-r.Context().Done():
			return
		}
	}
	enc := json.NewEncoder(w)
	for _, rec := range f.logs {
		_ = enc.Encode(rec)
	}
}
