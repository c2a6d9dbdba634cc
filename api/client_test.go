package api

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// serveUnix serves h on a unix socket in a temporary directory and returns
// a client for it.
func serveUnix(t *testing.T, h http.Handler) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "flickd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewClientHosts(t *testing.T) {
	for _, tc := range []struct {
		name, host, where string
		bad               bool
	}{
		{name: "default", host: "", where: "/run/flick/flickd.sock"},
		{name: "unix", host: "unix:///tmp/x.sock", where: "/tmp/x.sock"},
		{name: "http", host: "http://127.0.0.1:7777", where: "http://127.0.0.1:7777"},
		{name: "no path", host: "unix://", bad: true},
		{name: "scheme", host: "ftp://x", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.host)
			if tc.bad {
				if err == nil {
					t.Fatalf("NewClient(%q) succeeded", tc.host)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.where != tc.where {
				t.Errorf("where = %q, want %q", c.where, tc.where)
			}
		})
	}
}

func TestDaemonNotRunning(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "flickd.sock")
	c, err := NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Version(t.Context())
	if err == nil {
		t.Fatal("Version succeeded without a daemon")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "cannot reach flickd at "+sock+": ") ||
		!strings.HasSuffix(msg, "(is flickd running? start it with: flickd)") {
		t.Errorf("error = %q", msg)
	}
}

func TestErrorResponse(t *testing.T) {
	var gotPath string
	c := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.EscapedPath()
		w.Header().Set("Content-Type", MediaJSON)
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(ErrorResponse{Error: "no such image: 127.0.0.1:5000/team/app:1.2"})
	}))
	_, err := c.ImageInspect(t.Context(), "127.0.0.1:5000/team/app:1.2")
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 || e.Message != "no such image: 127.0.0.1:5000/team/app:1.2" {
		t.Fatalf("err = %#v", err)
	}
	if !IsNotFound(err) {
		t.Error("IsNotFound = false")
	}
	if want := "/v1/images/127.0.0.1:5000%2Fteam%2Fapp:1.2"; gotPath != want {
		t.Errorf("path = %q, want %q", gotPath, want)
	}
}

func TestPullStream(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lines   []Progress
		wantErr string
	}{
		{name: "image", lines: []Progress{{Status: "resolving"}, {Status: "downloading", Layer: "sha256:aa", Current: 1, Total: 2}, {Status: "done", Image: &Image{Digest: "sha256:bb"}}}},
		{name: "in-band error", lines: []Progress{{Status: "resolving"}, {Error: "image x not found in registry r"}}, wantErr: "image x not found in registry r"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != "POST" || r.URL.Path != "/v1/images/pull" {
					http.NotFound(w, r)
					return
				}
				var req PullRequest
				if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Ref != "x" {
					t.Errorf("request %+v, %v", req, err)
				}
				w.Header().Set("Content-Type", MediaNDJSON)
				enc := json.NewEncoder(w)
				for _, p := range tc.lines {
					_ = enc.Encode(p)
				}
			}))
			var n int
			img, err := c.ImagePull(t.Context(), "x", func(Progress) { n++ })
			if n != len(tc.lines) {
				t.Errorf("progress called %d times, want %d", n, len(tc.lines))
			}
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || img.Digest != "sha256:bb" {
				t.Fatalf("img = %+v, err = %v", img, err)
			}
		})
	}
}
