package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := openTestRoot(t, dir)
	for _, content := range []string{"zygote\n", "a-much-longer-name\n", "web\n", ""} {
		if err := root.writeFile("/etc/hostname", []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "etc/hostname"))
		if err != nil || string(got) != content {
			t.Errorf("after writing %q: %q, %v", content, got, err)
		}
	}
}

// openTestRoot opens dir as a rootDir that is closed when the test ends.
func openTestRoot(t *testing.T, dir string) rootDir {
	t.Helper()
	root, err := openRootDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(root.fd) })
	return root
}
