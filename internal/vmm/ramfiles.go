package vmm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RAM files. A VM that saves a boot snapshot, and one restored from a
// fork, keeps its guest RAM in a file of its own under the RAM directory
// for its whole life, and the daemon that started it removes the file
// when its QEMU exits. A QEMU that outlives its daemon (a restart, a
// daemon killed) exits unseen by that goroutine, and its file stayed: 128
// MiB of tmpfs each, 155 of them on a development machine after a day of
// test runs.

// memPaths returns the mem-path files of a QEMU command line's memory
// backends.
func memPaths(args []string) []string {
	var paths []string
	for _, a := range args {
		for _, opt := range strings.Split(a, ",") {
			if p, ok := strings.CutPrefix(opt, "mem-path="); ok {
				paths = append(paths, filepath.Clean(p))
			}
		}
	}
	return paths
}

// procMemPaths returns the mem-path files that the command line of the
// process pid names; none when it cannot be read.
func procMemPaths(pid string) []string {
	raw, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil {
		return nil
	}
	return memPaths(strings.Split(string(raw), "\x00"))
}

// ownRAMFile returns the RAM file under dir that the process pid's
// command line names, if any: the file that goes when the process does.
func ownRAMFile(pid int, dir string) string {
	for _, p := range procMemPaths(strconv.Itoa(pid)) {
		if filepath.Dir(p) == filepath.Clean(dir) {
			return p
		}
	}
	return ""
}

// PruneRAM removes the files of the RAM directory that no running process
// names as its memory (any process: other daemons share the directory),
// and returns them.
func (q *QEMU) PruneRAM() ([]string, error) {
	ents, err := os.ReadDir(q.ramDir)
	if err != nil {
		return nil, err
	}
	inUse := map[string]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for _, p := range procMemPaths(e.Name()) {
			inUse[p] = true
		}
	}
	var removed []string
	for _, e := range ents {
		p := filepath.Join(q.ramDir, e.Name())
		if !strings.HasSuffix(e.Name(), ".ram") || inUse[p] {
			continue
		}
		if err := os.Remove(p); err == nil {
			removed = append(removed, p)
		}
	}
	return removed, nil
}
