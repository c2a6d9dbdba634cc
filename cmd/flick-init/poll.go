package main

import (
	"fmt"
	"os"
	"time"
)

// pollInterval is short because devices usually appear within a few
// milliseconds of init starting, and long enough not to steal the only vCPU
// from the kernel threads that are probing them.
const pollInterval = 2 * time.Millisecond

// poll calls ready until it reports true or returns an error, or until
// timeout passes; it never sleeps longer than one pollInterval past the
// moment ready would first succeed.
func poll(what string, timeout time.Duration, ready func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := ready()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not there after %v", what, timeout)
		}
		time.Sleep(pollInterval)
	}
}

// dirNames lists a directory, unsorted; nil when it cannot. filepath.Glob
// would sort and match every name too: under TCG its first use costs
// several milliseconds of a boot more.
func dirNames(dir string) []string {
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	return names
}
