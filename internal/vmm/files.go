package vmm

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Files returns the files that every start of QEMU reads: its binary and
// the shared libraries that the dynamic loader maps for it, which the
// daemon keeps resident (package resident).
func (q *QEMU) Files(ctx context.Context) ([]string, error) {
	files := []string{q.binary}
	f, err := elf.Open(q.binary)
	if err != nil {
		return files, nil // not an ELF file (a wrapper script): the binary alone
	}
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	f.Close()
	if !dynamic {
		return files, nil
	}
	// The dynamic loader lists what it maps, and exits, when this is set:
	// the program itself does not run.
	cmd := exec.CommandContext(ctx, q.binary)
	cmd.Env = append(os.Environ(), "LD_TRACE_LOADED_OBJECTS=1")
	out, err := cmd.Output()
	if err != nil {
		return files, fmt.Errorf("list the libraries of %s: %w", q.binary, err)
	}
	return append(files, parseLoaderTrace(string(out))...), nil
}

// parseLoaderTrace returns the files in the dynamic loader's list of what
// it maps (LD_TRACE_LOADED_OBJECTS, as ldd prints it): "name => /path
// (0x...)" lines and, for the loader, "/path (0x...)"; the vDSO and
// libraries not found have no path.
func parseLoaderTrace(out string) []string {
	var files []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if _, rest, ok := strings.Cut(line, "=> "); ok {
			line = rest
		}
		path, _, _ := strings.Cut(line, " (")
		if filepath.IsAbs(path) {
			files = append(files, path)
		}
	}
	return files
}
