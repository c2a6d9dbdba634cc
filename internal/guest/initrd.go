package guest

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// BuildInitrd writes the guest's initramfs to dir and returns its path: an
// uncompressed newc cpio holding initBinary as /init, the directories
// flick-init mounts on, and /dev/console, so that the kernel can give init a
// console before devtmpfs is mounted. The file is named after the sha256 of
// initBinary and reused when it already exists.
func BuildInitrd(initBinary, dir string) (string, error) {
	init, err := os.ReadFile(initBinary)
	if err != nil {
		return "", fmt.Errorf("build initrd: %w", err)
	}
	sum := sha256.Sum256(init)
	path := filepath.Join(dir, "initrd-"+hex.EncodeToString(sum[:])[:12]+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build initrd: %w", err)
	}
	f, err := os.CreateTemp(dir, ".initrd-*")
	if err != nil {
		return "", fmt.Errorf("build initrd: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed

	bw := bufio.NewWriterSize(f, 1<<20)
	if err := writeInitrd(bw, init); err != nil {
		f.Close()
		return "", fmt.Errorf("build initrd %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return "", fmt.Errorf("build initrd %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return "", fmt.Errorf("build initrd %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("build initrd %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return "", fmt.Errorf("build initrd: %w", err)
	}
	return path, nil
}

// PruneInitrds removes the initramfs files in dir that BuildInitrd made
// for other flick-init binaries, keeping keep, and the temporary files of
// builds that a crash cut short, and returns their names. QEMU reads its
// initramfs when it starts, and a boot snapshot's key names the
// initramfs, so nothing uses the others any more. Only one daemon builds
// in dir, and it calls this after its own build.
func PruneInitrds(dir, keep string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		name := e.Name()
		built := strings.HasPrefix(name, "initrd-") && strings.HasSuffix(name, ".cpio")
		if !built && !strings.HasPrefix(name, ".initrd-") || filepath.Join(dir, name) == keep {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// initrdEntries is the initramfs layout flick-init expects, apart from /init.
var initrdEntries = []cpioEntry{
	{name: "dev", mode: cpioModeDir | 0o755},
	{name: "dev/console", mode: cpioModeChr | 0o600, rdevMajor: 5, rdevMinor: 1},
	{name: "proc", mode: cpioModeDir | 0o555},
	{name: "sys", mode: cpioModeDir | 0o555},
	{name: "mnt", mode: cpioModeDir | 0o755},
	{name: "mnt/lower", mode: cpioModeDir | 0o755},
	{name: "mnt/data", mode: cpioModeDir | 0o755},
	{name: "newroot", mode: cpioModeDir | 0o755},
}

func writeInitrd(w *bufio.Writer, init []byte) error {
	c := &cpioWriter{w: w}
	for _, e := range initrdEntries {
		if err := c.write(e); err != nil {
			return err
		}
	}
	if err := c.write(cpioEntry{name: "init", mode: cpioModeReg | 0o755, data: init}); err != nil {
		return err
	}
	return c.close()
}
