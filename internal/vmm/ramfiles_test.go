package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestMemPaths(t *testing.T) {
	args := []string{"qemu-system-x86_64", "-m", "128M",
		"-object", "memory-backend-file,id=mem,size=128M,mem-path=/dev/shm/flick/abc.ram,share=on",
		"-machine", "memory-backend=mem", "-name", "flick-abc"}
	if got := memPaths(args); !slices.Equal(got, []string{"/dev/shm/flick/abc.ram"}) {
		t.Errorf("memPaths = %q, want the backend's file", got)
	}
	if got := memPaths([]string{"qemu-system-x86_64", "-object", "memory-backend-ram,id=mem,size=64M"}); len(got) != 0 {
		t.Errorf("memPaths of anonymous memory = %q, want none", got)
	}
}

func TestPruneRAM(t *testing.T) {
	dir := t.TempDir()
	keep, orphan, other := filepath.Join(dir, "a.ram"), filepath.Join(dir, "b.ram"), filepath.Join(dir, "notes.txt")
	for _, p := range []string{keep, orphan, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A running process whose command line names keep as its memory, as
	// a QEMU of another daemon sharing the directory does.
	cmd := exec.Command("sh", "-c", "sleep 60", "qemu", "memory-backend-file,id=mem,mem-path="+keep+",share=on")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// Until its command line is readable.
	for i := 0; ownRAMFile(cmd.Process.Pid, dir) != keep; i++ {
		if i == 500 {
			t.Fatalf("the process's command line never named %s", keep)
		}
		time.Sleep(10 * time.Millisecond)
	}
	q := &QEMU{ramDir: dir}
	removed, err := q.PruneRAM()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{orphan}) {
		t.Errorf("PruneRAM removed %q, want only %s", removed, orphan)
	}
	for _, p := range []string{keep, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s is gone: %v", p, err)
		}
	}
}
