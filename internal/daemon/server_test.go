package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
)

func TestStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"invalid", errdefs.InvalidArgument("bad ref %q", "X"), http.StatusBadRequest},
		{"not found wrapped", fmt.Errorf("start: %w", errdefs.NotFound("no such instance: x")), http.StatusNotFound},
		{"conflict", errdefs.Conflict("name in use"), http.StatusConflict},
		{"exists", errdefs.AlreadyExists("x"), http.StatusConflict},
		{"unavailable", errdefs.Unavailable("registry down"), http.StatusServiceUnavailable},
		{"timeout", context.DeadlineExceeded, http.StatusGatewayTimeout},
		{"other", errors.New("boom"), http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Status(tt.err); got != tt.want {
				t.Errorf("Status(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestRoutesAndErrors(t *testing.T) {
	s := New(Config{Logger: slog.New(slog.DiscardHandler)})

	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/version", nil))
	var v api.Version
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &v) != nil || v.APIVersion != "v1" {
		t.Fatalf("version: %d %s", rec.Code, rec.Body)
	}

	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/nothing", nil))
	var e api.ErrorResponse
	if rec.Code != 404 || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
		t.Fatalf("unknown route: %d %s", rec.Code, rec.Body)
	}

	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/instances", nil))
	if rec.Code != 400 {
		t.Fatalf("create with no body: %d %s", rec.Code, rec.Body)
	}
}

func TestResidentDefault(t *testing.T) {
	if n := residentDefault(); n <= 0 || n > 1024 {
		t.Errorf("residentDefault = %d MiB, want 1..1024", n)
	}
}
