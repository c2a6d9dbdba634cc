package instance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// dataTemplate makes, once, an empty ext4 image of sizeMiB that every
// instance's writable layer is copied from, so no mkfs runs when an
// instance starts. The image is sparse; copying it moves only the few
// hundred KiB that mkfs wrote.
func dataTemplate(ctx context.Context, dir string, sizeMiB int) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("data-%dM.ext4", sizeMiB))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 not found: install it with apt-get install e2fsprogs")
	}
	tmp, err := os.CreateTemp(dir, ".data-*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := os.Truncate(tmp.Name(), int64(sizeMiB)<<20); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "flick-data",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp.Name()).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 writable layer template: %w: %s", err, out)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}
