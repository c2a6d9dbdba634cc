package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flick-vm/flick/internal/guest/wire"
)

// TestPlanAppRehearsed: a start asking for what the rehearsal looked up
// takes its result once, without reading the root; anything else is
// looked up afresh.
func TestPlanAppRehearsed(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\n",
		"bin/app":    "#!/bin/sh\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := openTestRoot(t, dir)
	t.Cleanup(func() { rehearsedTarget.Store(nil) })

	drill := wire.Config{Args: []string{"app"}, Env: []string{"PATH=/bin"}, User: "app", WorkingDir: "/srv"}
	rehearsal, err := planApp(root, drill)
	if err != nil {
		t.Fatalf("the rehearsal's plan: %v", err)
	}
	rehearsedTarget.Store(rehearsal.target)

	// The accounts go: only the rehearsal's look-up can still find "app".
	if err := os.Remove(filepath.Join(dir, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	start := drill
	start.Args = []string{"app", "--serve"}
	start.Env = []string{"PATH=/bin", "TOKEN=x"}
	l, err := planApp(root, start)
	if err != nil {
		t.Fatalf("the start's plan did not take the rehearsal's: %v", err)
	}
	want := &launch{
		argv0: "/bin/app", args: start.Args, env: []string{"PATH=/bin", "TOKEN=x", "HOME=/home/app"},
		dir: "/srv", chroot: newRoot, cred: rehearsal.cred, target: rehearsal.target,
	}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("the start's plan = %+v, want %+v", l, want)
	}
	// It was taken once: the next plan looks again and finds no user.
	if _, err := planApp(root, start); err == nil {
		t.Error("a second plan reused the rehearsal's look-up")
	}
	// And a start asking for another user never takes it.
	rehearsedTarget.Store(rehearsal.target)
	other := start
	other.User = "0"
	if l, err := planApp(root, other); err != nil || l.cred.Uid != 0 || l.env[len(l.env)-1] != "HOME=/" {
		t.Errorf("a plan for another user: %+v, %v; want uid 0 looked up afresh", l, err)
	}
}
