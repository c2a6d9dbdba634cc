// Package daemon is flickd's REST API: thin HTTP handlers over the image
// store and the instance engine, with the one function that maps error
// classes to status codes.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/image"
	"github.com/flick-vm/flick/internal/instance"
	"github.com/flick-vm/flick/internal/network"
	"github.com/flick-vm/flick/internal/vmm"
)

// Version is flickd's version, set at build time.
var Version = "dev"

// Server serves the API.
type Server struct {
	images    *image.Store
	instances *instance.Manager
	log       *slog.Logger
	mux       *http.ServeMux
	tmpDir    string

	qemuVersion string
	networks    *network.Manager
}

// Config configures a Server.
type Config struct {
	Images    *image.Store
	Instances *instance.Manager
	// Networks is nil when flickd runs without networking: the network
	// routes then answer 503.
	Networks *network.Manager
	Logger   *slog.Logger
	// TmpDir receives tarballs uploaded to the load route.
	TmpDir string
	// QEMUVersion is shown by the version route.
	QEMUVersion string
}

// New returns a Server with every route of api.Routes registered.
func New(cfg Config) *Server {
	s := &Server{images: cfg.Images, instances: cfg.Instances, networks: cfg.Networks, log: cfg.Logger, mux: http.NewServeMux(), tmpDir: cfg.TmpDir, qemuVersion: cfg.QEMUVersion}
	handlers := map[string]http.HandlerFunc{
		"version":         s.version,
		"imageList":       s.imageList,
		"imageInspect":    s.imageInspect,
		"imageRemove":     s.imageRemove,
		"imagePull":       s.imagePull,
		"imageLoad":       s.imageLoad,
		"instanceList":    s.instanceList,
		"instanceCreate":  s.instanceCreate,
		"instanceInspect": s.instanceInspect,
		"instanceStart":   s.instanceStart,
		"instanceStop":    s.instanceStop,
		"instanceKill":    s.instanceKill,
		"instanceRestart": s.instanceRestart,
		"instanceStandby": s.instanceStandby,
		"instanceResume":  s.instanceResume,
		"instanceFork":    s.instanceFork,
		"instanceWait":    s.instanceWait,
		"instanceRemove":  s.instanceRemove,
		"instanceLogs":    s.instanceLogs,
		"instanceConsole": s.instanceConsole,

		"instanceExec":       s.instanceExec,
		"instanceStat":       s.instanceStat,
		"instanceArchiveGet": s.instanceArchiveGet,
		"instanceArchivePut": s.instanceArchivePut,

		"networkList":    s.networkList,
		"networkCreate":  s.networkCreate,
		"networkInspect": s.networkInspect,
		"networkRemove":  s.networkRemove,
	}
	for _, r := range api.Routes {
		h, ok := handlers[r.Name]
		if !ok {
			panic("daemon: no handler for route " + r.Name)
		}
		s.mux.HandleFunc(r.Method+" "+r.Pattern, h)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errdefs.NotFound("no route %s %s", r.Method, r.URL.Path))
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s.mux.ServeHTTP(w, r)
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "ms", time.Since(start).Milliseconds())
}

// Status maps an error to its HTTP status code.
func Status(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, errdefs.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, errdefs.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, Status(err), api.ErrorResponse{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", api.MediaJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.InvalidArgument("bad request body: %v", err)
	}
	return nil
}

func boolQuery(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errdefs.InvalidArgument("bad %s=%q: give true or false", name, v)
	}
	return b, nil
}

func intQuery(r *http.Request, name string, def int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" || v == "all" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errdefs.InvalidArgument("bad %s=%q: give a whole number", name, v)
	}
	return n, nil
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.Version{
		Version: Version, APIVersion: "v1", GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		Accel: vmm.PickAccel("auto"), QEMU: s.qemuVersion,
	})
}

// ndjson streams progress lines and flushes each.
type ndjson struct {
	w   http.ResponseWriter
	enc *json.Encoder
}

func newNDJSON(w http.ResponseWriter) *ndjson {
	w.Header().Set("Content-Type", api.MediaNDJSON)
	w.WriteHeader(http.StatusOK)
	// Clients wait for the header before they go on (run opens the log
	// stream, then starts the instance), so it goes out at once.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return &ndjson{w: w, enc: json.NewEncoder(w)}
}

func (n *ndjson) send(v any) error {
	if err := n.enc.Encode(v); err != nil {
		return err
	}
	if f, ok := n.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

func (s *Server) imageList(w http.ResponseWriter, r *http.Request) {
	imgs, err := s.images.List(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	if imgs == nil {
		imgs = []api.Image{}
	}
	sizes := s.instances.SnapshotSizes()
	for i := range imgs {
		imgs[i].SnapshotSize = sizes[imgs[i].Digest]
	}
	writeJSON(w, http.StatusOK, imgs)
}

func (s *Server) imageInspect(w http.ResponseWriter, r *http.Request) {
	img, err := s.images.Resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	img.SnapshotSize = s.instances.SnapshotSizes()[img.Digest]
	writeJSON(w, http.StatusOK, img)
}

func (s *Server) imageRemove(w http.ResponseWriter, r *http.Request) {
	force, err := boolQuery(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	ref := r.PathValue("ref")
	var user, digest string
	inUse := func(d string) bool {
		name, used := s.instances.InUse(d, force)
		user, digest = name, d
		return used
	}
	if err := s.images.Remove(r.Context(), ref, inUse); err != nil {
		if errors.Is(err, errdefs.ErrConflict) && user != "" {
			err = errdefs.Conflict("image %s is in use by instance %s: remove the instance first (flick rm %s)", ref, user, user)
		}
		writeError(w, err)
		return
	}
	if digest != "" {
		if _, err := s.images.Resolve(r.Context(), digest); errors.Is(err, errdefs.ErrNotFound) {
			// The image is gone, not only one of its names.
			s.instances.RemoveImageSnapshots(digest)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) imagePull(w http.ResponseWriter, r *http.Request) {
	var req api.PullRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Ref == "" {
		writeError(w, errdefs.InvalidArgument("no image reference given"))
		return
	}
	// A pull is cached work that belongs to the daemon: it completes even
	// if the client goes away.
	ctx := context.WithoutCancel(r.Context())
	out := newNDJSON(w)
	// The store's last progress line carries the image.
	if _, err := s.images.Pull(ctx, req.Ref, func(p api.Progress) { _ = out.send(p) }); err != nil {
		_ = out.send(api.Progress{Error: err.Error()})
	}
}

func (s *Server) imageLoad(w http.ResponseWriter, r *http.Request) {
	var req api.LoadRequest
	if r.Header.Get("Content-Type") == api.MediaTar {
		f, err := os.CreateTemp(s.tmpDir, "load-*.tar")
		if err != nil {
			writeError(w, err)
			return
		}
		defer os.Remove(f.Name())
		_, err = io.Copy(f, r.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			writeError(w, fmt.Errorf("receive tarball: %w", err))
			return
		}
		req = api.LoadRequest{Path: f.Name(), Tag: r.URL.Query().Get("tag")}
	} else if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Path == "" {
		writeError(w, errdefs.InvalidArgument("no path given: name a tarball or an oci-layout directory"))
		return
	}
	out := newNDJSON(w)
	// The store reports each loaded image on a progress line of its own.
	if _, err := s.images.Load(context.WithoutCancel(r.Context()), req.Path, req.Tag, func(p api.Progress) { _ = out.send(p) }); err != nil {
		_ = out.send(api.Progress{Error: err.Error()})
	}
}

func (s *Server) instanceList(w http.ResponseWriter, r *http.Request) {
	all, err := boolQuery(r, "all")
	if err != nil {
		writeError(w, err)
		return
	}
	size, err := boolQuery(r, "size")
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.instances.List(r.Context(), all, size))
}

func (s *Server) instanceCreate(w http.ResponseWriter, r *http.Request) {
	var req api.CreateRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	inst, err := s.instances.Create(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, inst)
}

func (s *Server) instanceInspect(w http.ResponseWriter, r *http.Request) {
	inst, err := s.instances.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceStart(w http.ResponseWriter, r *http.Request) {
	inst, err := s.instances.Start(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func timeoutQuery(r *http.Request) (time.Duration, error) {
	n, err := intQuery(r, "timeout", -1)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return -1, nil
	}
	return time.Duration(n) * time.Second, nil
}

func (s *Server) instanceStop(w http.ResponseWriter, r *http.Request) {
	timeout, err := timeoutQuery(r)
	if err != nil {
		writeError(w, err)
		return
	}
	inst, err := s.instances.Stop(r.Context(), r.PathValue("id"), timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceKill(w http.ResponseWriter, r *http.Request) {
	inst, err := s.instances.Kill(r.Context(), r.PathValue("id"), r.URL.Query().Get("signal"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceRestart(w http.ResponseWriter, r *http.Request) {
	timeout, err := timeoutQuery(r)
	if err != nil {
		writeError(w, err)
		return
	}
	inst, err := s.instances.Restart(r.Context(), r.PathValue("id"), timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceStandby(w http.ResponseWriter, r *http.Request) {
	inst, err := s.instances.Standby(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceFork(w http.ResponseWriter, r *http.Request) {
	var req api.ForkRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	clones, err := s.instances.Fork(r.Context(), r.PathValue("id"), req.Count)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, clones)
}

func (s *Server) instanceResume(w http.ResponseWriter, r *http.Request) {
	inst, err := s.instances.Resume(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) instanceWait(w http.ResponseWriter, r *http.Request) {
	resp, err := s.instances.Wait(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) instanceRemove(w http.ResponseWriter, r *http.Request) {
	force, err := boolQuery(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.instances.Remove(context.WithoutCancel(r.Context()), r.PathValue("id"), force); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) instanceLogs(w http.ResponseWriter, r *http.Request) {
	var o instance.LogOptions
	var err error
	if o.Follow, err = boolQuery(r, "follow"); err == nil {
		if o.Stdout, err = boolQuery(r, "stdout"); err == nil {
			if o.Stderr, err = boolQuery(r, "stderr"); err == nil {
				o.Tail, err = intQuery(r, "tail", -1)
			}
		}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	id := r.PathValue("id")
	if _, err := s.instances.Get(r.Context(), id); err != nil {
		writeError(w, err)
		return
	}
	out := newNDJSON(w)
	_ = s.instances.Logs(r.Context(), id, o, func(rec api.LogRecord) error { return out.send(rec) })
}

func (s *Server) instanceConsole(w http.ResponseWriter, r *http.Request) {
	n, err := intQuery(r, "tail", -1)
	if err != nil {
		writeError(w, err)
		return
	}
	text, err := s.instances.Console(r.Context(), r.PathValue("id"), n)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", api.MediaText)
	_, _ = io.WriteString(w, text)
}
