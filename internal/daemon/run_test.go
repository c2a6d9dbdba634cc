package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunRefusesCommaPaths: a path QEMU's options could not carry is an
// error naming the flag, before anything is made.
func TestRunRefusesCommaPaths(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  RunConfig
		flag string
	}{
		{"root", RunConfig{Root: filepath.Join(dir, "a,b"), Kernel: "/k"}, "--root"},
		{"kernel", RunConfig{Root: filepath.Join(dir, "r"), Kernel: "/k,1"}, "--kernel"},
		{"kernel-smp", RunConfig{Root: filepath.Join(dir, "r"), Kernel: "/k", KernelSMP: "/k,smp"}, "--kernel-smp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			err := Run(t.Context(), tt.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), tt.flag+" ") || !strings.Contains(err.Error(), "comma") {
				t.Fatalf("Run = %v, want an error naming %s and the comma", err, tt.flag)
			}
			if _, err := os.Stat(tt.cfg.Root); err == nil {
				t.Errorf("Run made %s before refusing", tt.cfg.Root)
			}
		})
	}
}
